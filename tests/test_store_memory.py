"""The memory store keeps only what a user still needs: nothing for users that were only
asked about or blocked, nothing once their holds are settled or released."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core.stores import MemoryStore
from nasca_core.stores._base import ReserveOp, SettleOp


def test_reads_blocks_and_finished_holds_leave_nothing_behind():
    store = MemoryStore()
    n = Nasca(store, tiers={"t": Tier(daily="0.01")}, default_tier="t")
    n.settle(n.reserve("0.01", user="spender"), "0.01")  # a day counter, a week, a month, a marker
    kept = len(store._data)  # what the store holds, counted from outside
    for i in range(2000):
        n.get_usage(f"visitor-{i}")
        n.set_user_tier(f"visitor-{i}", None)
    for _ in range(50):
        with pytest.raises(NascaBlockedError):
            n.reserve("0.01", user="spender")
    holds = [n.reserve("0", user=f"caller-{i}") for i in range(100)]
    for i, r in enumerate(holds):
        n.release(r) if i % 2 else n.settle(r, "0")
    assert n.get_usage("caller-0").in_flight == 0 and n.get_usage("spender").daily_spent == Decimal("0.01")
    # Each settled caller: day, week, month, settled marker, its emptied holds (they expire);
    # a released caller keeps nothing.
    settled_users = 50 * 5
    assert len(store._data) == kept + settled_users
    far = 10**15  # past every expiry: the sweep (every 10,000 ops) leaves only what never expires
    for _ in range(10_000):
        store.claim_marker("sweep-me", 1, far)
    assert list(store._data) == ["sweep-me"]


def test_a_settle_counts_its_calls_in_the_month():
    store = MemoryStore()
    n = Nasca(store, tiers={"t": Tier(monthly="1")}, default_tier="t", settle_in_background=False)
    n.settle(n.reserve("0.01", user="u"), "0.01")
    keys = next(k for k in store._data if ":m:" in k)
    settles: list[SettleOp] = []
    real = store.settle
    store.settle = lambda op: (settles.append(op), real(op))[1]  # type: ignore[method-assign]
    n.settle(n.reserve("0.01", user="u"), "0.01")
    store.settle = real  # type: ignore[method-assign]
    for calls in (3, 0):  # a folded settle of three calls, then a lease's closing settle
        real(replace(settles[0], hold_id=f"folded-{calls}", calls=calls))
    usage = n.get_usage("u")
    assert store._data[keys]["n"] == usage.month_calls == 2 + 3 + 0
    assert usage.monthly_spent == Decimal("0.04")


def test_reserves_alone_sweep_what_expired():
    """A store that only reserves and releases (every settle long past) still empties."""
    store = MemoryStore()
    n = Nasca(store, tiers={"t": Tier(monthly="100")}, default_tier="t", settle_in_background=False)
    for i in range(30):
        n.settle(n.reserve("0.01", user=f"u{i}"), "0.01")
    assert len(store._data) == 30 * 5  # day, week, month, settled marker, emptied holds
    reserves: list[ReserveOp] = []
    real = store.reserve
    store.reserve = lambda op: (reserves.append(op), real(op))[1]  # type: ignore[method-assign]
    n.release(n.reserve("0.01", user="probe"))
    store.reserve = real  # type: ignore[method-assign]
    far = 10**15  # past every expiry
    for i in range(10_000):  # one sweep's worth of ops, reserves only
        op = replace(reserves[0], now_ms=far, hold_expiry_ms=far + 1000, hold_id=f"h{i}")
        assert store.reserve(op).status == 1
        store.release(op.keys, op.hold_id, op.estimate)
    assert store._data == {} and store._expiry == {}
