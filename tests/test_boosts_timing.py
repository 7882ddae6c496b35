"""A boost cleared in a reserve's own millisecond, and the own-limits form saved unchanged."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest

from nasca_core import NascaBlockedError, Tier
from nasca_core.server import create_app
from tests._webapp import ADMIN, PUBLIC, billed, client, settings

ORIGIN = {"Origin": PUBLIC}


def test_a_boost_cleared_in_the_reserves_millisecond_pays_at_its_settle(make_nasca, clock):
    clock.now = 1_780_000_000.0  # the clock stands still: reserve, clear and settle share a ms
    n = make_nasca(tiers={"free": Tier(daily=1)}, default_tier="free")
    n.grant_credits("u1", spend=10, idempotency_key="g1")
    n.limits.grant("u1", "daily", amount=4, until=timedelta(hours=1), id="b1")
    call = n.reserve("4", user="u1")  # admitted on the boost: 1 + 4 of room
    n.limits.clear_boosts("u1")
    done = n.settle(call, "4")
    assert (done.tier_nanos, done.credit_nanos) == (4_000_000_000, 0)
    assert n.get_usage("u1").credit_balance == Decimal(10)
    # Reserved after the clear in the same ms: the reserve doesn't count the boost, the settle
    # (which can't tell the two orders apart) does: it pays, never the other way round.
    n.settle(n.reserve("1", user="u2"), "1")  # no credits: the day's 1 is spent
    n.limits.grant("u2", "daily", amount=4, until=timedelta(hours=1), id="b2")
    n.limits.clear_boosts("u2")
    with pytest.raises(NascaBlockedError):
        n.reserve("0.5", user="u2")
    clock.now += 0.001  # a ms later: the boost is gone at reserve and settle alike
    with pytest.raises(NascaBlockedError):
        n.reserve("0.5", user="u2")


def test_a_boost_that_lapsed_before_the_reserve_pays_nothing_at_its_settle(make_nasca, clock):
    clock.now = 1_780_000_000.0
    n = make_nasca(tiers={"free": Tier(daily=1)}, default_tier="free")
    n.grant_credits("u1", spend=10, idempotency_key="g1")
    n.limits.grant("u1", "daily", amount=4, until=timedelta(seconds=1), id="b1")
    clock.now += 1.001  # a ms after its end
    call = n.reserve("3", user="u1")
    assert n.settle(call, "3").credit_nanos == 2_000_000_000


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_the_own_limits_form_saved_unchanged_stores_nothing(make_nasca, clock):
    """The form starts from the tier's limits; "Set limits" on it unchanged must not freeze
    them on the user (they would outlive a cancelled subscription)."""
    n = billed(make_nasca)
    user = "u7"
    async with client(create_app(n, settings())) as c:
        assert (await c.post("/admin/login", data={"token": ADMIN}, headers=ORIGIN)).status_code == 303
        page = (await c.get("/admin/user", params={"id": user})).text
        start = page.index('id="limits-form"')
        form = page[start:page.index("</form>", start)]
        data = dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', form))
        typed = r'name="([a-z_]+)" inputmode="[a-z]+" placeholder="[^"]*" value="([^"]*)"'
        data.update(re.findall(typed, form))
        data.update({m: "on" for m in re.findall(r'name="(hard_[a-z]+)" checked', form)})
        data = {k: v for k, v in data.items() if v != ""}
        assert data["daily"] == "0.1" and data["action"] == "set"
        r = await c.post("/admin/user/limits", headers=ORIGIN, data=data)
        assert r.status_code == 303
        assert "no own limits stored" in (await c.get(r.headers["location"])).text
        assert n.get_usage(user).own_limits is None
        n.set_user_tier(user, "pro")  # the tier's limits follow, nothing frozen
        assert n.get_usage(user).daily_limit != Decimal("0.1")
        changed = await c.post("/admin/user/limits", headers=ORIGIN, data={**data, "daily": "0.2"})
        assert changed.status_code == 303 and n.get_usage(user).own_limits is not None
