"""``SettleOp.calls`` on every store: a settle counts ``calls`` model calls in the month's call
count (0 for a lease's closing settle, the sum for a folded one) and changes nothing else:
spend, cost, credits, tokens, holds and the reply are those of the same settle with calls=1.

The leased settles are built as the lease design has them (``_leases``, engineer A's part,
built beside this): a real reserve of the lease's hold L, then settles of calls under it
(estimate 0, ``lease`` = the lease's hold id, calls 1) and the lease's closing settle (hold id
= the lease's, estimate L, cost 0, calls 0)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

from nasca_core import Tier
from nasca_core.stores import Lot, SettleOp

TIERS = {"t": Tier(daily="0.10", monthly=5)}
L = 50_000_000  # the lease: $0.05


def lease_ops(n: Any, user: str, costs: list[int], *,
              lease_nanos: int = L) -> tuple[list[SettleOp], SettleOp]:
    """A real lease hold of ``lease_nanos`` for ``user`` in the store, the settles of calls of
    ``costs`` under it and its closing settle (none applied)."""
    r = n.reserve(nanos=lease_nanos, user=user)
    close = dataclasses.replace(n._settle_op(r, None, 0, (0, 0)), calls=0, lease=r.hold_id)
    calls = [dataclasses.replace(close, hold_id=f"{r.hold_id}-c{i}", estimate=0, cost=cost, calls=1,
                                 input_tokens=10 + i, output_tokens=20 + i)
             for i, cost in enumerate(costs)]
    return calls, close


def _reply(result: Any) -> tuple[Any, ...]:
    return (result.status, result.tier_part, result.credit_part, result.spent, result.limits)


def _usage(n: Any, user: str) -> tuple[Any, ...]:
    u = n.get_usage(user)
    return (u.daily_spent, u.monthly_spent, u.month_cost, u.month_input_tokens, u.month_output_tokens,
            u.in_flight, u.credit_balance)


def test_a_settle_counts_its_calls_and_nothing_else_changes(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    store = n.store.sync
    for user in ("one", "three", "none"):
        store.grant(n.user_keys(user, n.now()), Lot(f"lot-{user}", "p", paid=10**9, currency="usd",
                                                   granted=10**9, remaining=10**9))
    replies, usages = [], []
    for user, calls in (("one", 1), ("three", 3), ("none", 0)):
        r = n.reserve(nanos=80_000_000, user=user)
        # 0.12 against a 0.10 day: credits pay the 0.02 past the allowance, whatever the calls.
        op = dataclasses.replace(n._settle_op(r, None, 120_000_000, (7, 9)), calls=calls)
        replies.append(_reply(store.settle(op)))
        # Replayed: charged (and counted) once.
        assert store.settle(op).status == 2
        usages.append(_usage(n, user))
        assert n.get_usage(user).month_calls == calls
    assert replies[0] == replies[1] == replies[2]
    assert replies[0][:3] == (1, 100_000_000, 20_000_000)
    assert usages[0] == usages[1] == usages[2]
    assert usages[0][5] == Decimal(0)  # the hold went with its settle, calls or not
    assert usages[0][6] == Decimal("0.98")


def test_a_lease_s_settles_count_each_call_once_and_drop_its_hold(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    store = n.store.sync
    calls, close = lease_ops(n, "u", [1_000_000, 2_000_000, 3_000_000])
    assert n.get_usage("u").in_flight == Decimal("0.05")  # the lease is held like a call
    for op in calls:
        assert store.settle(op).status == 1
    u = n.get_usage("u")
    # A call under a lease has no hold of its own: the lease's hold stays until its close.
    assert (u.month_calls, u.month_cost, u.in_flight) == (3, Decimal("0.006"), Decimal("0.05"))
    assert store.settle(close).status == 1
    u = n.get_usage("u")
    assert (u.month_calls, u.month_cost, u.daily_spent, u.in_flight) == (3, Decimal("0.006"),
                                                                         Decimal("0.006"), 0)
    assert (u.month_input_tokens, u.month_output_tokens) == (33, 63)
    assert store.settle(close).status == 2 and store.settle(calls[0]).status == 2
    assert n.get_usage("u").month_calls == 3
