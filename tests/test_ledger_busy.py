"""Busy is not spent: the in-flight cap and NascaBusyError, on every store.

A block caused only by holds in flight (the settled spend alone would admit the call) or by
``Tier(max_in_flight=...)`` raises NascaBusyError: retry, don't upgrade.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from decimal import Decimal

import pytest

from nasca_core import NascaBlockedError, NascaBusyError, StoreError, Tier
from nasca_core._config import DEFAULT_MAX_IN_FLIGHT


def test_the_cap_is_enforced_in_the_reserve_and_frees_on_settle(make_nasca):
    # The store's cap, call by call (under a budget lease: tests/test_leases.py).
    n = make_nasca(tiers={"t": Tier(monthly=100, max_in_flight=3)}, default_tier="t", leases=False)
    holds = [n.reserve("0.01", user="u") for _ in range(3)]
    with pytest.raises(NascaBusyError) as info:
        n.reserve("0.01", user="u")
    err = info.value
    assert isinstance(err, NascaBlockedError)  # existing handlers keep working
    assert err.reason == "cap" and err.retry_after > 0 and err.checkout_url is None
    assert "try again in a moment" in err.upgrade_message.lower()
    assert "upgrade" not in err.upgrade_message.lower()
    assert n.get_usage("u").in_flight == Decimal("0.03")  # the refused call held nothing
    n.reserve("0.01", user="other")  # per user: someone else is not capped
    n.settle(holds[0], "0.01")
    n.release(holds[1])
    n.reserve("0.01", user="u")
    n.reserve("0.01", user="u")
    with pytest.raises(NascaBusyError):
        n.reserve("0.01", user="u")


def test_an_expired_hold_no_longer_counts_toward_the_cap(make_nasca, clock):
    n = make_nasca(tiers={"t": Tier(monthly=100, max_in_flight=2)}, default_tier="t", hold_ttl=30)
    n.reserve("0.01", user="u")
    n.reserve("0.01", user="u")
    with pytest.raises(NascaBusyError):
        n.reserve("0.01", user="u")
    clock.advance(31)
    n.reserve("0.01", user="u")


def test_the_stored_tier_cap_applies(make_nasca):
    n = make_nasca(tiers={"free": Tier(monthly=100, max_in_flight=1), "pro": Tier(monthly=100)},
                   default_tier="pro")
    n.set_user_tier("u", "free")
    n.reserve("0.01", user="u")
    with pytest.raises(NascaBusyError) as info:
        n.reserve("0.01", user="u")
    assert info.value.tier == "free"


def test_the_default_cap_and_none(make_nasca):
    assert Tier().max_in_flight == DEFAULT_MAX_IN_FLIGHT == 64
    n = make_nasca(tiers={"capped": Tier(monthly=100), "open": Tier(monthly=100, max_in_flight=None)},
                   default_tier="capped")
    for _ in range(DEFAULT_MAX_IN_FLIGHT):
        n.reserve("0", user="a")
    with pytest.raises(NascaBusyError):
        n.reserve("0", user="a")
    for _ in range(DEFAULT_MAX_IN_FLIGHT + 5):
        n.reserve("0", user="b", tier="open")


def test_bad_caps_are_configuration_errors():
    from nasca_core import ConfigurationError

    for bad in (0, -1, 1.5, "x"):
        with pytest.raises(ConfigurationError):
            Tier(max_in_flight=bad)


def test_holds_in_flight_block_as_busy_not_spent(make_nasca):
    n = make_nasca(tiers={"t": Tier(daily="0.10")}, default_tier="t")
    r = n.reserve("0.10", user="u")  # nothing settled, the hold covers the allowance
    with pytest.raises(NascaBusyError) as info:
        n.reserve("0.01", user="u")
    assert info.value.reason == "in_flight" and info.value.checkout_url is None
    assert info.value.spent == 0 and info.value.window == "daily"
    n.settle(r, "0.02")  # it cost far less than held: the user may go on
    n.settle(n.reserve("0.01", user="u"), "0.08")
    with pytest.raises(NascaBlockedError) as spent:  # now the allowance is really spent
        n.reserve("0.01", user="u")
    assert not isinstance(spent.value, NascaBusyError)
    assert "upgrade" in spent.value.upgrade_message.lower()


def test_strict_busy_only_when_the_estimate_would_fit_without_holds(make_nasca):
    n = make_nasca(tiers={"t": Tier(daily="0.10")}, default_tier="t", strict=True)
    n.reserve("0.05", user="u")
    with pytest.raises(NascaBusyError):
        n.reserve("0.06", user="u")  # 0.06 fits the settled spend of 0
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.11", user="u")  # would not fit even with nothing in flight
    assert not isinstance(info.value, NascaBusyError)


def test_busy_errors_get_no_checkout_link_and_no_funnel_event(make_nasca):
    made = []

    def link(err):
        made.append(err)
        return "https://pay.example/checkout"

    n = make_nasca(tiers={"t": Tier(daily="0.10", max_in_flight=1)}, default_tier="t", checkout_url=link)
    seen = []
    n.block_listeners.append(seen.append)
    analytics = n.analytics
    r = n.reserve("0.05", user="u")
    with pytest.raises(NascaBusyError) as info:
        n.reserve("0.01", user="u")
    assert info.value.checkout_url is None and made == []
    assert seen == [info.value]  # listeners still hear of it, and can tell it apart
    n.settle(r, "0.10")
    with pytest.raises(NascaBlockedError) as real:
        n.reserve("0.01", user="u")
    assert real.value.checkout_url == "https://pay.example/checkout"
    assert analytics.month().funnel.blocked == 1  # the real block only


def test_busy_error_pickles_as_itself(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=1, max_in_flight=1)}, default_tier="t")
    n.reserve("0.01", user="u")
    with pytest.raises(NascaBusyError) as info:
        n.reserve("0.01", user="u")
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is NascaBusyError and back.retry_after == info.value.retry_after
    assert back.reason == "cap" and str(back) == str(info.value)


def test_busy_wait_queues_a_burst_until_holds_settle(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=100, max_in_flight=1)}, default_tier="t", busy_wait=5)
    first = n.reserve("0.01", user="u")
    threading.Timer(0.2, n.settle, (first, "0.01")).start()
    t0 = time.monotonic()
    second = n.reserve("0.01", user="u")  # waits for the first to settle, then goes
    assert 0.15 < time.monotonic() - t0 < 3
    n.settle(second, "0.01")
    assert n.get_usage("u").month_calls == 2


def test_busy_wait_gives_up_at_its_deadline(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=100, max_in_flight=1)}, default_tier="t", busy_wait=0.3)
    seen = []
    n.block_listeners.append(seen.append)
    n.reserve("0.01", user="u")
    t0 = time.monotonic()
    with pytest.raises(NascaBusyError):
        n.reserve("0.01", user="u")
    assert 0.25 < time.monotonic() - t0 < 2
    assert len(seen) == 1 and n.stats.blocked == 1  # told once, not once per retry


async def test_async_busy_wait(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=100, max_in_flight=2)}, default_tier="t", busy_wait=5)

    async def call():
        r = await n.areserve("0.01", user="u")
        await asyncio.sleep(0.05)
        await n.asettle(r, "0.01")

    await asyncio.gather(*(call() for _ in range(10)))
    u = await n.aget_usage("u")
    assert u.month_calls == 10 and u.in_flight == 0


def test_busy_wait_is_checked():
    from nasca_core import ConfigurationError, Nasca

    for bad in (-1, 61, "1", True):
        with pytest.raises(ConfigurationError):
            Nasca(tiers={"t": Tier()}, busy_wait=bad)


def test_own_deferred_settles_count_at_their_cost_not_as_holds(make_nasca):
    n = make_nasca(tiers={"t": Tier(daily="0.10", max_in_flight=2)}, default_tier="t")
    store = n.store.sync
    real_settle, real_many = store.settle, store.settle_many

    def down(op):
        raise StoreError("down for a moment")

    store.settle = store.settle_many = down  # the store takes reserves but not settles: they are deferred
    try:
        r1, r2 = n.reserve("0.04", user="u"), n.reserve("0.04", user="u")
        assert n.settle(r1, "0.01").deferred and n.settle(r2, "0.01").deferred
        # Both finished: their holds, still in the store, are neither in flight nor held.
        n.reserve("0.04", user="u")
        n.reserve("0.04", user="u")  # 4 holds in the store, 2 of them finished calls
        with pytest.raises(NascaBusyError) as info:
            n.reserve("0.01", user="u")
        assert info.value.reason == "cap"
        # A finished call's real cost counts as spend: this block is real, not busy.
        r = n.reserve("0.01", user="v")
        assert n.settle(r, "0.10").deferred
        with pytest.raises(NascaBlockedError) as spent:
            n.reserve("0.01", user="v")
        assert not isinstance(spent.value, NascaBusyError)
    finally:
        store.settle, store.settle_many = real_settle, real_many
    assert n.flush_deferred() == 3
    u = n.get_usage("u")
    assert u.daily_spent == Decimal("0.02") and u.in_flight == Decimal("0.08")
    assert n.deferred.owed(n.user_keys("u").meta) == (0, 0, 0)
