"""The memory store keeps only what a user still needs: nothing for users that were only
asked about or blocked, nothing once their holds are settled or released."""

from __future__ import annotations

from decimal import Decimal

import pytest

from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core.stores import MemoryStore


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
    settled_users = 50 * 4  # each settled caller: day, week, month, settled marker (they expire)
    assert len(store._data) == kept + settled_users
