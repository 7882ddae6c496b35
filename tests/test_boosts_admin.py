"""Boosts and own limits from the owner's tools: the dashboard's user page (CSRF-checked,
audited, errors inline, nothing changed by a bad or forged form) and the CLI (on a real Redis)."""

from __future__ import annotations

import json
import logging
import re
import tomllib
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from nasca_core import Nasca, NascaBusyError, Tier
from nasca_core.analytics import analytics_for
from nasca_core.cli import main
from nasca_core.server import create_app
from tests._webapp import ADMIN, PUBLIC, billed, client, settings

ORIGIN = {"Origin": PUBLIC}


async def signed_in(c):
    r = await c.post("/admin/login", data={"token": ADMIN}, headers=ORIGIN)
    assert r.status_code == 303
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', (await c.get("/admin")).text).group(1)


def section(page: str, section_id: str) -> str:
    start = page.index(f'id="{section_id}"')
    return page[start:page.index("</section>", start)]


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_boost_and_own_limits_forms_are_checked_audited_and_shown(make_nasca, clock, caplog):
    n = billed(make_nasca)
    app = create_app(n, settings())
    user = "u 42"
    async with client(app) as c:
        csrf = await signed_in(c)
        page = (await c.get("/admin/user", params={"id": user})).text
        assert "No boost in force." in section(page, "boost")
        form = section(page, "own-limits")  # starts from the tier's limits: saved as is, nothing changes
        assert 'name="daily" inputmode="decimal" placeholder="none" value="0.1"' in form
        assert 'name="monthly" inputmode="decimal" placeholder="none" value="1"' in form
        assert 'name="max_in_flight" inputmode="numeric" placeholder="tier&#39;s: 64" value=""' in form
        assert 'name="hard_weekly"' in form and 'name="hard_daily" checked' not in form
        key = re.search(r'name="key" value="(dashboard-[^"]+)"', section(page, "boost")).group(1)
        boost = {"csrf": csrf, "id": user, "action": "grant", "key": key, "window": "daily",
                 "amount": "0.40", "until": "2d"}
        with caplog.at_level(logging.INFO, logger="nasca.audit"):
            r = await c.post("/admin/user/boost", headers=ORIGIN, data=boost)
            assert r.status_code == 303
            shown = (await c.get(r.headers["location"])).text
            assert "Boost granted: +$0.40 daily until Nov 20, 12:00 UTC." in shown
            assert f'data-boost="{key}"' in section(shown, "boost")
            assert re.search(r"<b>\$0.00</b> of \$0.50", section(shown, "windows"))  # 0.10 + 0.40
            again = await c.post("/admin/user/boost", headers=ORIGIN, data=boost)  # a double submit
            assert again.status_code == 303
            shown = (await c.get(again.headers["location"])).text
            assert f"Nothing granted: the boost {key} was granted before" in shown
            limits = {"csrf": csrf, "id": user, "action": "set", "daily": "0.25", "monthly": "3",
                      "hard_daily": "on"}
            r = await c.post("/admin/user/limits", headers=ORIGIN, data=limits)
            shown = (await c.get(r.headers["location"])).text
            assert "Own limits set: daily $0.25, monthly $3.00." in shown
            assert "daily $0.25 · weekly unlimited · monthly $3.00" in section(shown, "own-limits")
            form = section(shown, "own-limits")
            assert 'name="hard_daily" checked' in form and 'placeholder="none" value="0.25"' in form
        u = n.get_usage(user)
        assert len(u.boosts) == 1 and u.daily_limit == Decimal("0.65") and u.monthly_limit == Decimal(3)
        assert u.hard_windows == frozenset({"daily"})
        audit = [rec.getMessage() for rec in caplog.records if rec.name == "nasca.audit"]
        assert len(audit) == 2 and "boost_granted of 'u 42'" in audit[0] and "by session" in audit[0]
        assert "limits_set of 'u 42' (daily $0.25, monthly $3.00)" in audit[1]
        events = analytics_for(n).month().events
        assert events["boost_granted"] == 1 and events["limits_set"] == 1  # the double submit: once

        # Bad values: the page again with the message beside that form, the typed values kept.
        for bad, message in [({"amount": "-1"}, "amount must be &gt; 0"),
                             ({"amount": "nan"}, "Not saved"),
                             ({"until": "yesterday"}, "until must be like 7d"),
                             ({"until": "²d"}, "until must be like 7d"),  # "²".isdigit(); int() fails
                             ({"until": "99999d"}, "a boost lasts at most 400 days"),
                             ({"until": "2020-01-01T00:00+00:00"}, "until must be in the future"),
                             ({"window": "hourly"}, "window must be one of")]:
            r = await c.post("/admin/user/boost", headers=ORIGIN, data={**boost, "key": "k2", **bad})
            assert r.status_code == 400 and message in section(r.text, "boost"), bad
        r = await c.post("/admin/user/limits", headers=ORIGIN, data={**limits, "daily": "abc"})
        assert r.status_code == 400 and "Not saved" in section(r.text, "own-limits")
        assert 'value="abc"' in section(r.text, "own-limits")
        for cap in ("²", "9" * 5000, "-3"):  # str.isdigit() says yes to the first two
            r = await c.post("/admin/user/limits", headers=ORIGIN, data={**limits, "max_in_flight": cap})
            assert r.status_code == 400
            assert "max in flight must be a whole number" in section(r.text, "own-limits")
        # Forged or cross-site posts change nothing.
        for data, headers in [({**boost, "csrf": "0" * 64, "key": "k3"}, ORIGIN),
                              ({**boost, "key": "k4"}, {"Origin": "https://evil.example"})]:
            assert (await c.post("/admin/user/boost", headers=headers, data=data)).status_code == 403
        r = await c.post("/admin/user/limits", headers={"Origin": "https://evil.example"},
                         data={**limits, "action": "clear"})
        assert r.status_code == 403
        assert len(n.get_usage(user).boosts) == 1 and n.get_usage(user).own_limits is not None

        plain = {"csrf": csrf, "id": user}
        r = await c.post("/admin/user/boost", headers=ORIGIN, data={**plain, "action": "end"})
        assert "Boosts ended: all windows." in (await c.get(r.headers["location"])).text
        r = await c.post("/admin/user/limits", headers=ORIGIN, data={**plain, "action": "clear"})
        assert "Own limits cleared" in (await c.get(r.headers["location"])).text
    u = n.get_usage(user)
    assert u.boosts == () and u.own_limits is None and u.daily_limit == Decimal("0.10")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_the_limits_form_sets_the_in_flight_cap_and_weekly_hard_cap(make_nasca):
    n = billed(make_nasca)
    n.set_user_tier("u1", "pro")
    async with client(create_app(n, settings())) as c:
        csrf = await signed_in(c)
        form = section((await c.get("/admin/user", params={"id": "u1"})).text, "own-limits")
        assert 'value="2"' in form and 'value="10"' in form  # pro's daily and monthly
        r = await c.post("/admin/user/limits", headers=ORIGIN, data={
            "csrf": csrf, "id": "u1", "action": "set", "daily": "2", "weekly": "4", "monthly": "10",
            "hard_weekly": "on", "max_in_flight": "3"})
        assert r.status_code == 303
        form = section((await c.get(r.headers["location"])).text, "own-limits")
        assert 'name="max_in_flight" inputmode="numeric" placeholder="tier&#39;s: 64" value="3"' in form
        assert 'name="hard_weekly" checked' in form
        u = n.get_usage("u1")
        assert u.own_limits.max_in_flight == 3 and u.hard_windows == frozenset({"weekly"})
        r = await c.post("/admin/user/limits", headers=ORIGIN, data={  # no cap typed: the tier's
            "csrf": csrf, "id": "u1", "action": "set", "daily": "2"})
        assert r.status_code == 303
        assert n.get_usage("u1").own_limits == Tier(daily=2)
        held = [n.reserve("0.001", user="u1") for _ in range(64)]  # pro's cap of 64 stays
        with pytest.raises(NascaBusyError):
            n.reserve("0.001", user="u1")
        for h in held:
            n.release(h)


def test_the_cli_refuses_bad_input_and_says_a_replay(tmp_path: Path, capsys) -> None:
    config = tmp_path / "nasca.toml"
    config.write_text(TOML.format(namespace="clibad", store=f"sqlite:///{tmp_path}/ledger.db")
                      + '\n[tiers.big]\ndaily = "9000000"\n')

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--config", str(config)])
        out = capsys.readouterr()
        return code, out.out, out.err

    for bad in (["user", "boost", "u", "--amount", "1", "--until", "²d"],
                ["user", "limits", "u", "--daily", "1", "--max-in-flight", "0"],
                ["user", "limits", "u", "--max-in-flight", "-1"]):
        code, _, err = run(*bad)
        assert code == 2 and err.startswith("nasca: "), (bad, err)
    assert run("user", "show", "u", "--json")[0] == 0
    boost = ["user", "boost", "u", "--amount", "1", "--until", "1d", "--id", "t-1", "--json"]
    code, out, _ = run(*boost)
    assert code == 0 and "repeated" not in json.loads(out)
    code, out, _ = run(*boost)
    assert code == 0 and json.loads(out)["repeated"] == "granted before: nothing added"
    assert run("user", "set-tier", "u", "big")[0] == 0
    for _ in range(2):  # $9.2M: past the ledger's maximum, shown capped
        assert run("user", "boost", "u", "--amount", "100000", "--until", "1d")[0] == 0
    code, out, err = run("user", "show", "u", "--json")
    assert code == 0, err
    assert " of $9007199.254740992, " in json.loads(out)["daily"]


TOML = """
namespace = "{namespace}"
store = "{store}"
default_tier = "free"

[tiers.free]
daily = "0.10"
monthly = "1"
"""


@pytest.mark.redis
def test_the_cli_boosts_and_sets_own_limits(tmp_path: Path, redis_url: str, capsys) -> None:
    config = tmp_path / "nasca.toml"
    config.write_text(TOML.format(namespace=f"cliboost{uuid.uuid4().hex[:8]}", store=redis_url))
    data = tomllib.loads(config.read_text())
    app = Nasca(data["store"], namespace=data["namespace"], default_tier="free",
                tiers={"free": Tier(daily="0.10", monthly=1)})

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--config", str(config)])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = run("user", "boost", "u_9", "--window", "daily", "--amount", "0.5", "--until", "12h",
                         "--id", "ticket-1", "--json")
    assert code == 0, err
    assert json.loads(out)["boost"] == "ticket-1" and Decimal(json.loads(out)["amount"]) == Decimal("0.5")
    assert app.get_usage("u_9").daily_limit == Decimal("0.60")  # the app sees it on its next call
    code, out, _ = run("user", "limits", "u_9", "--daily", "1", "--hard", "daily", "--max-in-flight", "2")
    assert code == 0 and "daily $1 (hard)" in out
    u = app.get_usage("u_9")
    assert u.daily_limit == Decimal("1.5") and u.monthly_limit is None and u.own_limits.max_in_flight == 2
    code, out, _ = run("user", "show", "u_9")
    assert "own_limits: daily $1 (hard), weekly unlimited, monthly unlimited" in out
    assert "boost ticket-1: +$0.5 daily until" in out
    for bad in (["user", "boost", "u_9", "--amount", "-1", "--until", "1d"],
                ["user", "boost", "u_9", "--amount", "1", "--until", "soon"],
                ["user", "limits", "u_9"], ["user", "limits", "u_9", "--daily", "1", "--clear"]):
        code, _, err = run(*bad)
        assert code == 2 and err.startswith("nasca: "), bad
    assert run("user", "unboost", "u_9")[0] == 0
    assert run("user", "limits", "u_9", "--clear")[0] == 0
    u = app.get_usage("u_9")
    assert u.boosts == () and u.own_limits is None and u.daily_limit == Decimal("0.10")
    app.close()
