"""``Store.settle_many`` (the background sender's batches) on every store: the same results as
the same settles one by one, retried batches charged once, and a batch cut short by the store
leaving the rest queued, each settle landing (and reaching the thresholds) exactly once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from nasca_core import StoreError, Tier
from nasca_core.stores import Lot

TIERS = {"t": Tier(daily="0.10", monthly=5, warn_at=(0.5,))}
COSTS = ["0.03", "0.04", "0.05", "0.02", "0.06"]  # crosses the daily limit: credits pay the rest


def _ops(n: Any, user: str, costs: list[str]) -> list[Any]:
    """The settles the ledger makes for ``user``'s calls of ``costs``, none applied: each is
    caught on its way to the store (and left deferred in the ledger's queue)."""
    store, caught = n.store.sync, []

    def catch(op: Any) -> Any:
        caught.append(op)
        raise StoreError("caught on its way")

    def refuse(ops: Any) -> Any:
        raise StoreError("caught on its way")

    store.settle, store.settle_many = catch, refuse
    try:
        for cost in costs:
            n.settle(n.reserve(cost, user=user), cost)
    finally:
        del store.settle, store.settle_many
    assert len(caught) == len(costs)
    return caught


def _grant(n: Any, user: str) -> None:
    n.store.sync.grant(n.user_keys(user, n.now()), Lot(f"lot-{user}", "p", paid=10**9, currency="usd",
                                                      granted=10**9, remaining=10**9))


def _as_tuple(result: Any) -> tuple[Any, ...]:
    return (result.status, result.tier_part, result.credit_part, result.spent, result.limits)


def test_a_batch_lands_as_its_settles_one_by_one(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    store = n.store.sync
    for user in ("one", "many"):
        _grant(n, user)
    singles, batch = _ops(n, "one", COSTS), _ops(n, "many", COSTS)
    one = [store.settle(op) for op in singles]
    many = store.settle_many(batch)
    # Each user's counters differ only by name: the results must be the same, in order, the
    # split between allowance and credits included (it depends on what landed before).
    assert [_as_tuple(r) for r in many] == [_as_tuple(r) for r in one]
    assert [r.status for r in many] == [1] * len(COSTS)
    assert sum(r.credit_part for r in many) == 100_000_000  # 0.20 spent, 0.10 allowed
    assert many[-1].spent[0] == 100_000_000 and many[-1].limits[0] == 100_000_000
    # The queue the catching left behind lands as no-ops: nothing is charged twice.
    assert n.flush_deferred() == 2 * len(COSTS)
    a, b = n.get_usage("one"), n.get_usage("many")
    assert (b.daily_spent, b.month_cost, b.month_calls, b.in_flight) == \
        (a.daily_spent, a.month_cost, a.month_calls, a.in_flight) == \
        (Decimal("0.10"), Decimal("0.20"), len(COSTS), 0)
    assert b.credit_balance == a.credit_balance == Decimal("0.9")


def test_a_retried_batch_is_charged_once(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    store = n.store.sync
    batch = _ops(n, "u", COSTS[:3])
    first = store.settle_many(batch)
    # Retried whole (its reply lost), and with a duplicate inside: applied ones answer 2.
    again = store.settle_many([*batch, batch[0]])
    assert [r.status for r in first] == [1, 1, 1] and [r.status for r in again] == [2, 2, 2, 2]
    assert n.flush_deferred() == 3
    u = n.get_usage("u")
    assert u.daily_spent == Decimal("0.12") and u.month_calls == 3 and u.in_flight == 0
    assert store.settle_many([]) == []


def test_a_refused_batch_stays_queued_and_counted_once(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    store = n.store.sync
    _ops(n, "u", COSTS[:2])
    assert n.deferred.queued() == 2
    store.settle_many = lambda ops: (_ for _ in ()).throw(StoreError("down"))
    try:
        assert n.flush_deferred() == 0
    finally:
        del store.settle_many
    u = n.get_usage("u")  # still owed by the queue: counted once each, at their cost
    assert u.daily_spent == Decimal("0.07") and u.month_calls == 2 and n.deferred.queued() == 2
    assert n.flush_deferred() == 2
    u = n.get_usage("u")
    assert u.daily_spent == Decimal("0.07") and u.month_calls == 2 and u.in_flight == 0


def test_a_batch_cut_short_leaves_the_rest_queued_in_order(make_nasca):
    """The store takes only part of a batch (a connection lost midway): what landed is
    counted once and reaches the thresholds once; the rest lands on the next flush, in order."""
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    store = n.store.sync
    batch = _ops(n, "u", ["0.01", "0.02", "0.03", "0.04"])
    real, seen, landed = store.settle_many, [], []
    n.deferred.on_landed = lambda op, result: landed.append((op.hold_id, result.status))

    def two_at_most(ops: Any) -> Any:
        seen.append([op.hold_id for op in ops])
        return real(ops[:2])

    store.settle_many = two_at_most
    try:
        assert n.flush_deferred() == 2
        assert len(n.deferred) == 2
        assert n.flush_deferred() == 2
    finally:
        del store.settle_many
    ids = [op.hold_id for op in batch]
    assert seen == [ids, ids[2:]]
    assert landed == [(i, 1) for i in ids]  # each once, in order
    u = n.get_usage("u")
    assert u.daily_spent == Decimal("0.10") and u.month_calls == 4 and u.in_flight == 0
    assert len(n.deferred) == 0



def test_sqlite_a_transaction_left_open_fails_the_next_write(tmp_path):
    """Only settle_many's own batch joins a transaction already open: one left open by
    accident (an interrupt between BEGIN and its block) makes the next write fail, typed,
    instead of joining it and never committing."""
    from nasca_core.stores import UserKeys
    from nasca_core.stores.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "ledger.db"))
    keys = UserKeys.build("ns", "u", ("d", "w", "m"))
    store.set_user_tier(keys, "t")
    store._connection().execute("BEGIN IMMEDIATE")  # the accident
    with pytest.raises(StoreError):
        store.set_user_tier(keys, "pro")
    store._connection().execute("ROLLBACK")
    store.set_user_tier(keys, "pro")
    assert SqliteStore(store.path).snapshot(keys, 0).stored_tier == "pro"  # committed: seen elsewhere
