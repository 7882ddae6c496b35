"""Budget leases against per-call holds, where a review found them apart (every store).

Each test runs the same calls with leases on and off (``test_leases.pair``) and asserts the
answers per-call holds give; each failed before its fix (the review's repro in its docstring).
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import NascaBlockedError, Tier
from nasca_core._lease_policy import LEASE_S

from .test_leases import pair

ONE = {"t": Tier(daily=1, max_in_flight=None)}
E = 10_000_000  # $0.01


def _more(n: Any, limit: int = 40, **kwargs: Any) -> int:
    got = 0
    try:
        for _ in range(limit):
            n.settle(n.reserve(nanos=E, user="u", **kwargs), nanos=E, background=True)
            got += 1
    except NascaBlockedError:
        pass
    return got


def test_a_live_lease_free_part_is_not_handed_out_twice(make_nasca):
    # Was: $0.98 strict call admitted beside the lease, then 23 more $0.01 calls under it.
    on, off = pair(make_nasca, tiers=ONE, default_tier="t")
    runs = []
    for n in (on, off):
        n.settle(n.reserve(nanos=E, user="u"), nanos=E, background=True)  # learns: the next call leases
        r2 = n.reserve(nanos=E, user="u")
        big = n.reserve(nanos=1_000_000_000 - 2 * E, user="u", strict=True)  # another lease key
        runs.append((big.estimate_nanos, _more(n)))
        n.settle(r2, nanos=E)
        n.settle(big, nanos=0)
    assert on.stats.leased >= 1
    assert runs[0] == runs[1] == (1_000_000_000 - 2 * E, 0)
    on.flush()
    off.flush()
    assert on.get_usage("u").daily_spent == off.get_usage("u").daily_spent == Decimal("0.02")


def test_the_in_flight_cap_counts_every_lease_of_the_user(make_nasca):
    # Was: 10 calls in flight on max_in_flight=4, alternating strict= (two lease keys).
    tiers = {"t": Tier(daily=1, max_in_flight=4)}
    on, off = pair(make_nasca, tiers=tiers, default_tier="t")
    counts = []
    for n in (on, off):
        for strict in (False, True):  # both keys learn: their next calls lease
            n.settle(n.reserve(nanos=E, user="u", strict=strict), nanos=E)
        held = []
        try:
            for i in range(12):
                held.append(n.reserve(nanos=E, user="u", strict=bool(i % 2)))
        except NascaBlockedError:
            pass
        counts.append(len(held))
        for r in held:
            n.release(r)
    # Each key's lease carries a call; a call under the other key retires it (the user as per-call
    # holds show them: ``test_leases_final``), so the next calls reserve in the store.
    assert on.stats.leases == 2 and on.stats.leased == 2
    assert counts == [4, 4]


@pytest.mark.parametrize("background", [True, False])
def test_a_retried_settle_charges_once_after_the_first_landed(make_nasca, background):
    # Was: 0.007 spent for 4 calls of 0.001 (a retry went out under an id no marker knew).
    on, off = pair(make_nasca, tiers=ONE, default_tier="t")
    charges = []
    for n in (on, off):
        rs = [n.reserve(nanos=E // 10, user="u") for _ in range(4)]
        first = [n.settle(r, nanos=E // 10, background=background) for r in rs]
        n.deferred.flush()  # the first settles land (folded, when queued) before the retries
        again = [n.settle(r, nanos=E // 10, background=background) for r in rs]
        charges.append(([c.cost_nanos for c in first], [c.cost_nanos for c in again]))
        n.flush()
    assert on.stats.leased == 3
    assert charges[0] == charges[1]
    assert on.get_usage("u").daily_spent == off.get_usage("u").daily_spent == Decimal("0.004")


def _change_during_the_lease_reserve(n: Any, change: Any) -> None:
    store = n.store.sync
    real = store.reserve

    def reserve(op: Any) -> Any:
        result = real(op)
        if op.keys.meta.startswith(f"{n.namespace}:") and op.estimate > E:  # the lease's reserve
            change()  # another thread of this process, right after the store answered
        return result

    store.reserve = reserve


@pytest.mark.parametrize("what", ["set_tier", "set_user_limits"])
def test_a_change_here_while_a_lease_reserve_is_in_flight_ends_it(make_nasca, what):
    # Was: 24 calls admitted on the old terms after the limit went to $0.02.
    on, off = pair(make_nasca, tiers=ONE, default_tier="t")
    low = Tier(daily="0.02", max_in_flight=None)
    admitted = []
    for n in (on, off):
        def change(n: Any = n) -> None:
            if what == "set_tier":
                n.set_tier("t", low)
            else:
                n.set_user_limits("u", low)

        n.settle(n.reserve(nanos=E, user="u"), nanos=E, background=True)
        if n is on:
            _change_during_the_lease_reserve(n, change)
        else:
            change()  # per-call holds: the change is simply there for the next call
        admitted.append(_more(n))
        n.flush()
    assert on.stats.leases == 1 and on.stats.leased == 0
    assert admitted == [1, 1]
    assert on.get_usage("u").daily_spent == off.get_usage("u").daily_spent == Decimal("0.02")


def test_a_lease_hold_stays_until_every_call_settle_landed(make_nasca):
    # Was: a second thread's settle closed the lease while the first's was on its way: for a
    # moment the store counted the first call nowhere (neither its cost nor the lease's hold).
    n = make_nasca(leases=True, tiers=ONE, default_tier="t", settle_in_background=False)
    n.settle(n.reserve(nanos=E, user="u"), nanos=E)
    c1, c2 = n.reserve(nanos=E, user="u"), n.reserve(nanos=E, user="u")
    assert n.stats.leased == 2
    n.limits.set_user_limits("u", None)  # retires the lease: two calls out under it
    store, seen = n.store.sync, []
    real = store.settle

    def settle(op: Any) -> Any:
        if op.hold_id == c1.hold_id and not seen:  # c1's settle is on its way; c2's lands first
            n.settle(c2, nanos=E)
            snap = real.__self__.snapshot(n.user_keys("u"), int(n.now() * 1000))
            seen.append(snap.spent[0] + snap.held)
        return real(op)

    store.settle = settle
    n.settle(c1, nanos=E)
    assert seen and seen[0] >= 3 * E  # c1's cost is covered by the lease's hold meanwhile
    snap = n.store.sync.snapshot(n.user_keys("u"), int(n.now() * 1000))
    assert snap.held == 0 and snap.spent[0] == 3 * E


def test_retired_leases_with_calls_out_are_forgotten_once_their_hold_expired(make_nasca, clock):
    # Was: 3,000 users' retired leases kept forever (by_user 3000, calls 3000 after two hours).
    n = make_nasca(leases=True, tiers=ONE, default_tier="t")
    stuck = []
    for i in range(50):
        u = f"user{i}"
        n.settle(n.reserve(nanos=E, user=u), nanos=E)
        stuck.append(n.reserve(nanos=E, user=u))  # under a lease, never settled nor released
        n.set_user_limits(u, None)  # retires the lease: one call still out
    assert n.stats.leases == 50 and len(n.leases.calls) == 50
    clock.advance(n.hold_ttl_ms / 1000 + 1)  # every hold (lease or call) expired in the store
    n.settle(n.reserve(nanos=E, user="late"), nanos=E)
    n.reserve(nanos=E, user="late")  # a lease is taken: the expired ones are forgotten
    assert len(n.leases.calls) == 1
    n.settle(stuck[0], nanos=E)  # a settle long after: charged in full, as a plain one
    n.flush()
    assert n.get_usage("user0").daily_spent == Decimal("0.02") and n.get_usage("user0").in_flight == 0


def test_a_call_under_a_lease_gets_the_room_a_per_call_hold_shows(make_nasca):
    # Was: room -1 under a lease, so LLMCall.output_cap gave no cap.
    on, off = pair(make_nasca, tiers={"t": Tier(daily="0.05", max_in_flight=None)}, default_tier="t")
    caps = []
    for n in (on, off):
        got = []
        for _ in range(5):
            c = n.start_call("gpt-4o-mini", prompt="hi", max_tokens=100, user="u")
            got.append((c.reservation.room, c.output_cap(100_000)))
            c.finish()
        caps.append(got)
    assert on.stats.leased >= 3
    assert caps[0] == caps[1] and all(cap is not None for _, cap in caps[0])


@pytest.mark.parametrize("backend", ["sqlite", "redis", "cluster"])  # the sender's thread reaps
def test_an_idle_lease_ends_within_its_life(make_nasca, clock, tmp_path, backend):
    n = make_nasca(leases=True, tiers=ONE, default_tier="t")
    other = make_nasca(leases=False, tiers=ONE, default_tier="t", state_dir=str(tmp_path / "other"))
    for _ in range(4):
        n.settle(n.reserve(nanos=E, user="u"), nanos=E, background=True)
    assert n.stats.leased == 3
    n.deferred.flush()
    assert other.get_usage("u").in_flight > 0  # the lease's hold, to another process
    clock.advance(LEASE_S)
    deadline = time.monotonic() + LEASE_S + 1
    while other.get_usage("u").in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    u = other.get_usage("u")
    assert u.in_flight == 0 and u.daily_spent == Decimal("0.04")
    assert n.leases.calls == {} and n.stats.leases == 1



def test_async_a_retried_settle_charges_once_and_the_lease_hold_goes(make_nasca):
    import asyncio

    on, off = pair(make_nasca, tiers=ONE, default_tier="t")

    async def run(n: Any) -> list[int]:
        rs = [await n.areserve(nanos=E // 10, user="u") for _ in range(4)]
        first = [await n.asettle(r, nanos=E // 10, background=True) for r in rs]
        await asyncio.sleep(0.3)  # the sender lands the first settles (folded) before the retries
        await n.deferred.aflush()
        again = [await n.asettle(r, nanos=E // 10, background=True) for r in rs]
        await n.aflush()
        return [c.cost_nanos for c in first + again]

    assert asyncio.run(run(on)) == asyncio.run(run(off))
    assert on.stats.leased == 3
    for n in (on, off):
        snap = n.store.sync.snapshot(n.user_keys("u"), int(n.now() * 1000))
        assert snap.held == 0 and snap.spent[0] == 4 * E // 10
