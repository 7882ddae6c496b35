"""A folded settle marks every settle it stands for (``SettleOp.of``) as settled in the store,
in the same step and with its own marker's expiry, on every store: a later settle of one of
them under its own hold id (a retry the lease side no longer remembers, a journal line
replayed) is a retried settle (status 2) that charges and counts nothing, while a settle of
any other hold id still applies."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from nasca_core._fold import MAX_OF, fold, plan
from nasca_core._journal import encode, pending_in
from tests.test_fold_calls import TIERS, lease_ops

COSTS = [1_000_000, 2_000_000, 3_000_000]


def _usage(n: Any) -> tuple[Any, ...]:
    u = n.get_usage("u")
    return (u.daily_spent, u.monthly_spent, u.month_cost, u.month_calls, u.in_flight,
            u.month_input_tokens, u.month_output_tokens)


@pytest.mark.parametrize("closing", [False, True], ids=["own_id", "with_close"])
@pytest.mark.parametrize("batched", [False, True], ids=["settle", "settle_many"])
def test_each_settle_of_a_landed_fold_is_a_retry_under_its_own_id(make_nasca, closing, batched):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    store = n.store.sync
    calls, close = lease_ops(n, "u", COSTS)
    parts = [*calls, close] if closing else calls
    f = fold(parts)
    assert f.of == tuple(op.hold_id for op in parts)
    assert (f.hold_id == close.hold_id) is closing
    landed = store.settle_many([f])[0] if batched else store.settle(f)
    assert getattr(landed, "status", None) == 1
    after = _usage(n)
    assert after[2:4] == (Decimal("0.006"), 3)
    for op in parts:  # each alone, under its own id, later: already settled
        again = dataclasses.replace(op, now_ms=f.now_ms + 1_000)
        reply = store.settle_many([again])[0] if batched else store.settle(again)
        assert getattr(reply, "status", None) == 2, op.hold_id
    assert [getattr(r, "status", None) for r in store.settle_many(parts)] == [2] * len(parts)
    assert _usage(n) == after
    # A settle of a hold id the fold doesn't name is charged as ever.
    other = dataclasses.replace(calls[0], hold_id=f"{close.hold_id}-other", now_ms=f.now_ms + 2_000)
    assert store.settle(other).status == 1
    u = n.get_usage("u")
    assert (u.month_cost, u.month_calls) == (Decimal("0.007"), 4)


def test_the_marks_last_as_long_as_the_fold_s_own(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    store = n.store.sync
    calls, _ = lease_ops(n, "u", COSTS)
    f = fold(calls)
    assert store.settle(f).status == 1
    assert store.settle(dataclasses.replace(calls[1], now_ms=f.marker_expiry_ms - 1)).status == 2
    # Past the marker's expiry a settle is no longer known, the fold's own id as the others.
    assert store.settle(dataclasses.replace(calls[1], now_ms=f.marker_expiry_ms + 1)).status == 1
    assert store.settle(dataclasses.replace(f, now_ms=f.marker_expiry_ms + 1)).status == 1


def test_a_plain_settle_marks_only_its_own_id(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    store = n.store.sync
    calls, _ = lease_ops(n, "u", COSTS)
    assert store.settle(calls[0]).status == 1
    assert [store.settle(op).status for op in calls] == [2, 1, 1]
    assert n.get_usage("u").month_calls == 3


def test_a_fold_stands_for_at_most_max_of_settles(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    calls, _ = lease_ops(n, "u", [1] * (MAX_OF + 3))
    sends = plan(calls, {op.hold_id for op in calls})
    assert [len(s.items) for s in sends] == [MAX_OF, 3]
    assert [len(s.op.of) for s in sends] == [MAX_OF, 3]
    store = n.store.sync
    assert [getattr(r, "status", None) for r in store.settle_many([s.op for s in sends])] == [1, 1]
    assert store.settle(calls[MAX_OF - 1]).status == 2 and store.settle(calls[-1]).status == 2
    assert n.get_usage("u").month_calls == MAX_OF + 3


def test_the_journal_carries_a_fold_s_settles(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    calls, close = lease_ops(n, "u", COSTS)
    f = fold([*calls, close])
    [back] = pending_in(iter([encode(f)]))
    assert back == f and back.of == f.of
    [plain] = pending_in(iter([encode(calls[0])]))
    assert plain.of == ()


@pytest.mark.parametrize("backend", ["sqlite", "redis", "cluster"], indirect=True)
def test_a_replayed_settle_of_a_landed_fold_charges_nothing(make_nasca, tmp_path):
    """A dead process's journal naming the settles of a fold that landed (their fold's line
    lost): the next process replays each by its own hold id, and the store answers 2."""
    state = str(tmp_path / "state")
    n = make_nasca(tiers=TIERS, default_tier="t", state_dir=state)
    calls, close = lease_ops(n, "u", COSTS)
    assert n.store.sync.settle(fold([*calls, close])).status == 1
    after = _usage(n)
    assert n.deferred.journal is not None
    directory = n.deferred.journal.directory
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "999999-dead.jsonl").write_text("".join(encode(op) for op in [*calls, close]))
    m = make_nasca(tiers=TIERS, default_tier="t", state_dir=state)
    assert m.stats.deferred_replayed == 4
    assert m.flush() == 0 and len(m.deferred) == 0
    assert not (directory / "999999-dead.jsonl").exists()
    assert _usage(m) == after


async def test_the_async_store_marks_them_too(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False)
    store = n.store.for_loop()
    calls, close = lease_ops(n, "u", COSTS)
    assert (await store.settle(fold(calls))).status == 1
    assert [(await store.settle(op)).status for op in calls] == [2, 2, 2]
    assert (await store.settle(close)).status == 1  # not among them: the lease's hold dropped
    u = n.get_usage("u")
    assert (u.month_cost, u.month_calls, u.in_flight) == (Decimal("0.006"), 3, 0)
    await store.close()
