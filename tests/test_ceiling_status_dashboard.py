"""The app-wide ceiling on the owner's dashboard: its windows with what is left and when each
resets, and a CSRF-checked form that changes it live for every process (another process
blocks on it at once); over HTTP on memory and a real Redis, then in headless Chromium
against a real uvicorn."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import NascaCeilingError, Tier
from nasca_core.server import create_app
from tests._webapp import ADMIN, CHROMIUM_ARGS, PUBLIC, LiveServer, artifacts, chromium, client, settings

ORIGIN = {"Origin": PUBLIC}
BEARER = {"Authorization": f"Bearer {ADMIN}"}
TIERS = {"free": Tier(monthly=20)}


def _section(page: str) -> str:
    start = page.index('id="ceiling"')
    return page[start:page.index("</section>", start)]


async def _signed_in(c: Any) -> str:
    r = await c.post("/admin/login", data={"token": ADMIN}, headers=ORIGIN)
    assert r.status_code == 303
    page = await c.get("/admin")
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)
async def test_the_ceiling_is_shown_and_edited_live(make_nasca: Any) -> None:
    n = make_nasca(tiers=TIERS, default_tier="free")
    other_process = make_nasca(tiers=TIERS, default_tier="free")
    app = create_app(n, settings())
    async with client(app) as c:
        csrf = await _signed_in(c)
        shown = _section((await c.get("/admin")).text)
        assert 'id="ceiling-off"' in shown and "Turn off" not in shown
        r = await c.post("/admin/ceiling", headers=ORIGIN, data={
            "csrf": csrf, "daily": "0.05", "weekly": "", "monthly": "200", "action": "save"})
        assert r.status_code == 303 and "notice=ceiling_saved" in r.headers["location"]

        for user in ("u1", "u2", "u3", "u4", "u5"):  # five users, one app budget
            other_process.settle(other_process.reserve("0.01", user=user), "0.01")
        with pytest.raises(NascaCeilingError):
            other_process.reserve("0.01", user="u6")
        other_process.flush()

        page = (await c.get(r.headers["location"])).text
        assert "ceiling is saved" in page
        shown = _section(page)
        assert 'id="ceiling-blocked"' in shown
        day = re.search(r'<tr data-window="daily">(.*?)</tr>', shown, re.S).group(1)  # type: ignore[union-attr]
        cells = re.findall(r"<td[^>]*>(?:<b>)?([^<]*)", day)
        resets = n.ceiling_status().daily.resets_at.strftime("%b %d, %H:%M %Z")
        assert cells == ["daily", "$0.05", "$0.05", "$0.00", "$0.00", resets]
        month = re.search(r'<tr data-window="monthly">(.*?)</tr>', shown, re.S).group(1)  # type: ignore[union-attr]
        assert "$199.95" in month and 'data-window="weekly"' not in shown
        assert 'name="daily" value="0.05"' in shown and 'name="monthly" value="200"' in shown

        # Bad input: a 400 with the message beside the form, what was typed kept, nothing saved.
        bad = (({"daily": "-1"}, "Not saved"), ({"daily": "", "monthly": ""}, "give the ceiling"))
        for data, says in bad:
            r = await c.post("/admin/ceiling", headers=ORIGIN, data={"csrf": csrf, "action": "save", **data})
            assert r.status_code == 400 and says in _section(r.text)
        assert n.ceiling_status().daily.limit == Decimal("0.05")
        # A form from another site (no CSRF token, no same origin) changes nothing.
        r = await c.post("/admin/ceiling", headers={"Origin": "https://evil.example"},
                         data={"action": "off"})
        assert r.status_code == 403 and n.ceiling_status() is not None

        r = await c.post("/admin/ceiling", headers=BEARER, data={"action": "off"})  # a script, by token
        assert r.status_code == 303 and "notice=ceiling_off" in r.headers["location"]
    other_process.settle(other_process.reserve("0.01", user="u6"), "0.01")  # live: no ceiling now
    assert n.ceiling_status() is None


@pytest.mark.browser
async def test_the_owner_sets_the_ceiling_in_chromium() -> None:
    pytest.importorskip("playwright")
    from playwright.async_api import async_playwright

    from nasca_core import Nasca
    from tests._webapp import free_port

    chromium()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    n = Nasca("memory://", tiers=TIERS, default_tier="free", namespace="bceil")
    try:
        with LiveServer(create_app(n, settings(public_url=url)), port):
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
                page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
                await page.goto(f"{url}/admin/login")
                await page.fill("#token", ADMIN)
                await page.click("button[type=submit]")
                await page.wait_for_selector("#ceiling-off")
                await page.fill("#ceiling-form input[name=daily]", "15")
                await page.fill("#ceiling-form input[name=monthly]", "200")
                await page.click("#ceiling-form button[value=save]")
                await page.wait_for_selector("#ceiling-table")
                n.settle(n.reserve("2.50", user="alice"), "2.50")
                n.flush()
                await page.reload()
                row = page.locator("#ceiling-table tr[data-window=daily]")
                text = await row.inner_text()
                assert "$15.00" in text and "$2.50" in text and "$12.50" in text
                assert n.ceiling_status().daily.resets_at.strftime("%b %d, %H:%M") in text
                assert await page.locator("#ceiling-table tr[data-window=weekly]").count() == 0
                await page.locator("#ceiling").screenshot(path=str(artifacts("browser") / "ceiling.png"))
                await page.click("#ceiling-form button[value=off]")
                await page.wait_for_selector("#ceiling-off")
                await browser.close()
        assert n.ceiling_status() is None
    finally:
        n.close()


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_the_dashboard_says_where_the_ceiling_comes_from(make_nasca: Any,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The code's ceiling is shown as this process's default, its warnings rounded (29%, not
    28%); "Turn off" stores an override, "Remove stored value" takes it away; the audit line
    of each change has the old and new limits."""
    n = make_nasca(tiers=TIERS, default_tier="free", ceiling=Tier(daily=3, warn_at=(0.29,)))
    app = create_app(n, settings())
    async with client(app) as c:
        csrf = await _signed_in(c)
        shown = _section((await c.get("/admin")).text)
        assert "warned at 29%" in shown and "This process's default" in shown
        assert 'id="ceiling-unset"' not in shown  # nothing stored: nothing to remove
        with caplog.at_level("INFO", logger="nasca.audit"):
            r = await c.post("/admin/ceiling", headers=ORIGIN, data={
                "csrf": csrf, "daily": "5", "weekly": "", "monthly": "", "action": "save"})
            assert r.status_code == 303
            shown = _section((await c.get("/admin")).text)
            assert "Stored: it applies in every process" in shown and 'id="ceiling-unset"' in shown
            r = await c.post("/admin/ceiling", headers=ORIGIN, data={"csrf": csrf, "action": "off"})
            assert r.status_code == 303 and n.ceiling_status() is None
            shown = _section((await c.get("/admin")).text)
            assert 'id="ceiling-off"' in shown and "Turned off in the store" in shown
            r = await c.post("/admin/ceiling", headers=ORIGIN, data={"csrf": csrf, "action": "unset"})
            assert r.status_code == 303 and "notice=ceiling_unset" in r.headers["location"]
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "nasca.audit"]
        assert any("ceiling_saved 'app' (daily $3 -> daily $5)" in m for m in lines), lines
        assert any("ceiling_off 'app' (daily $5 -> off)" in m for m in lines), lines
        assert any("ceiling_unset 'app' (off -> daily $3)" in m for m in lines), lines
        status = n.ceiling_status()
        assert status is not None and status.daily is not None and status.daily.limit == 3
        assert status.source == "this process's default" and status.warn_at == (0.29,)
        shown = _section((await c.get("/admin")).text)
        assert 'id="ceiling-unset"' not in shown


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_an_unreadable_stored_ceiling_is_shown_as_refusing(make_nasca: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    n = make_nasca(tiers=TIERS, default_tier="free")
    n.live.save("ceiling", "app", '{"daily": {"amount": "1", "per": "seat"}}')  # a newer version wrote it
    app = create_app(n, settings())
    async with client(app) as c:
        csrf = await _signed_in(c)
        shown = _section((await c.get("/admin")).text)
        assert "Unreadable: calls refused" in shown and 'id="ceiling-table"' not in shown
        assert "$0.00" not in shown and "Stored, but unreadable by this version" in shown
        with caplog.at_level("INFO", logger="nasca.audit"):
            r = await c.post("/admin/ceiling", headers=ORIGIN, data={
                "csrf": csrf, "daily": "5", "weekly": "", "monthly": "", "action": "save"})
            assert r.status_code == 303
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "nasca.audit"]
        assert any("ceiling_saved 'app' (unreadable -> daily $5)" in m for m in lines), lines
        status = n.ceiling_status()
        assert status is not None and status.daily is not None and status.daily.limit == 5
        assert status.source == "stored" and status.warn_at == ()
