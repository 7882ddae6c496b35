"""The background sender folds a lease's queued settles into one store settle (``_fold``), on
every store: each call charged and counted exactly once, whether the fold lands, fails, or
may have landed; a fold's journal line replays as the fold; settles that may have landed
under their own hold id (tried once, replayed) are never folded."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import StoreError, Tier
from nasca_core._fold import Fold, plan
from nasca_core._journal import encode, pending_in
from tests.test_fold_calls import L, lease_ops

TIERS = {"t": Tier(daily="0.10", monthly=5, warn_at=(0.5,))}
COSTS = [1_000_000 * (i + 1) for i in range(10)]  # $0.001 .. $0.010: $0.055 in all


def _ledger(make_nasca: Any) -> Any:
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=True)
    # Woken by nobody: the test flushes once everything is queued.
    n.deferred.sender.wake = lambda: None
    return n


def _spy(n: Any) -> list[list[Any]]:
    store, batches = n.store.sync, []
    real = store.settle_many

    def settle_many(ops: Any) -> Any:
        batches.append(list(ops))
        return real(ops)

    store.settle_many = settle_many
    return batches


def _usage(n: Any, user: str) -> tuple[Any, ...]:
    u = n.get_usage(user)
    return u.month_calls, u.month_cost, u.daily_spent, u.in_flight, u.month_input_tokens


def _queue(n: Any, ops: list[Any]) -> None:
    for op in ops:
        assert n.deferred.send(op) is not None


def test_a_lease_s_settles_and_its_close_land_as_one_settle(make_nasca):
    n = _ledger(make_nasca)
    calls, close = lease_ops(n, "u", COSTS)
    other = lease_ops(n, "v", COSTS[:3])
    _queue(n, [*calls[:5], other[0][0], *calls[5:], *other[0][1:], close])
    batches, landed = _spy(n), []
    n.deferred.on_landed = lambda op, result: landed.append((op, result))
    # Owed while queued: this process counts each call at its cost, the lease's hold as gone.
    assert _usage(n, "u") == (10, Decimal("0.055"), Decimal("0.055"), Decimal(0), sum(range(10, 20)))
    assert n.flush() == 14
    (batch,) = batches
    assert len(batch) == 2  # u's ten calls and close; v's three (its lease stays open)
    fold_u, fold_v = batch
    assert isinstance(fold_u, Fold) and isinstance(fold_v, Fold)
    assert fold_u.hold_id == close.hold_id and fold_u.estimate == L  # the close drops the lease's hold
    assert (fold_u.cost, fold_u.calls, fold_u.input_tokens) == (55_000_000, 10, sum(range(10, 20)))
    assert fold_v.hold_id not in {op.hold_id for op in other[0]} and fold_v.calls == 3
    assert fold_v.estimate == 0
    assert [op.hold_id for op, _ in landed] == [fold_u.hold_id, fold_v.hold_id]  # thresholds: once each
    assert landed[0][1].spent[0] == 55_000_000
    assert _usage(n, "u") == (10, Decimal("0.055"), Decimal("0.055"), Decimal(0), sum(range(10, 20)))
    assert _usage(n, "v") == (3, Decimal("0.006"), Decimal("0.006"), Decimal("0.05"), 33)
    assert n.stats.settled == 13 and len(n.deferred) == 0  # model calls: the lease's close counts none
    # The close of v's lease comes later, by itself: its hold goes, nothing else changes.
    _queue(n, [other[1]])
    assert n.flush() == 1
    assert _usage(n, "v") == (3, Decimal("0.006"), Decimal("0.006"), Decimal(0), 33)


def test_a_refused_fold_waits_as_itself_and_lands_once(make_nasca):
    n = _ledger(make_nasca)
    calls, close = lease_ops(n, "u", COSTS)
    _queue(n, [*calls, close])
    store, sent = n.store.sync, []
    real = store.settle_many

    def lands_then_fails(ops: Any) -> Any:
        sent.append(list(ops))
        real(ops)  # the store took it; the reply was lost
        raise StoreError("timeout")

    store.settle_many = lands_then_fails
    assert n.flush() == 0
    (fold,) = sent[0]
    assert n.deferred.queued() == 1 and n.stats.settled == 0
    # Until the retry, counted in the store (it landed) and as owed by the queue: over, the
    # safe side, as for any settle whose reply was lost; exactly once again once it is retried.
    u = n.get_usage("u")
    assert (u.month_calls, u.month_cost) == (20, Decimal("0.110"))
    store.settle_many = real
    batches = _spy(n)
    assert n.flush() == 11
    assert [[op.hold_id for op in b] for b in batches] == [[fold.hold_id]]  # retried as itself
    assert _usage(n, "u") == (10, Decimal("0.055"), Decimal("0.055"), Decimal(0), sum(range(10, 20)))
    assert n.stats.settled == 11 and len(n.deferred) == 0


def test_a_fold_that_never_landed_is_retried_as_itself(make_nasca):
    n = _ledger(make_nasca)
    calls, close = lease_ops(n, "u", COSTS[:4])
    _queue(n, calls)
    store = n.store.sync
    store.settle_many = lambda ops: (_ for _ in ()).throw(StoreError("down"))
    assert n.flush() == 0
    assert _usage(n, "u")[:2] == (4, Decimal("0.010"))  # owed as before: once each
    del store.settle_many
    _queue(n, [close])
    batches = _spy(n)
    assert n.flush() == 5
    # The put-back fold goes as it was; the close, queued after, by itself behind it.
    (batch,) = batches
    assert len(batch) == 2 and isinstance(batch[0], Fold) and batch[0].calls == 4
    assert batch[1].hold_id == close.hold_id and not isinstance(batch[1], Fold)
    assert _usage(n, "u") == (4, Decimal("0.010"), Decimal("0.010"), Decimal(0), 46)


def test_settles_tried_once_are_never_folded(make_nasca):
    n = _ledger(make_nasca)
    calls, close = lease_ops(n, "u", COSTS[:3])
    _queue(n, calls[:1])
    store = n.store.sync
    real = store.settle_many

    def lands_then_fails(ops: Any) -> Any:
        real(ops)
        raise StoreError("timeout")

    store.settle_many = lands_then_fails
    assert n.flush() == 0
    del store.settle_many
    _queue(n, [*calls[1:], close])
    batches = _spy(n)
    assert n.flush() == 4
    (batch,) = batches
    # The first may have landed under its own id: it goes as itself, the others fold.
    assert batch[0].hold_id == calls[0].hold_id
    assert batch[1].of == tuple(op.hold_id for op in [*calls[1:], close])
    assert _usage(n, "u") == (3, Decimal("0.006"), Decimal("0.006"), Decimal(0), 33)


def test_a_fold_s_journal_line_replays_as_the_fold():
    calls = [_op(f"c{i}", cost=10 * (i + 1)) for i in range(3)]
    close = _op("L1", estimate=500, cost=0, calls=0)
    (send,) = plan([*calls, close], {op.hold_id for op in [*calls, close]})
    fold = send.op
    assert isinstance(fold, Fold) and fold.hold_id == "L1" and fold.of == ("c0", "c1", "c2", "L1")
    lines = [encode(op) for op in [*calls, close]]
    # Before the fold's line: the settles, one by one.
    assert [op.hold_id for op in pending_in(iter(lines))] == ["c0", "c1", "c2", "L1"]
    # After it (sent or not, answered or not): the fold alone, as it was.
    (again,) = pending_in(iter([*lines, encode(fold)]))
    assert again == fold and isinstance(again, Fold)
    assert (again.cost, again.calls, again.estimate) == (60, 3, 500)
    assert pending_in(iter([*lines, encode(fold), json.dumps({"d": "L1"}) + "\n"])) == []
    # A fold without its lease's close: a fresh hold id; the close stays pending by itself.
    (part, rest) = plan([*calls, close], {"c0", "c1", "c2"})
    assert part.op.hold_id not in {"c0", "c1", "c2", "L1"} and part.op.estimate == 0
    assert rest.op is close
    assert [op.hold_id for op in pending_in(iter([*lines, encode(part.op)]))] == ["L1", part.op.hold_id]


def test_only_one_lease_s_same_settles_fold():
    a = [_op("a0"), _op("a1", reserved_ms=7), _op("a2", lease="L2"), _op("a3", lease=""), _op("a4")]
    sends = plan(a, {op.hold_id for op in a})
    assert [[op.hold_id for op in s.items] for s in sends] == [["a0", "a4"], ["a1"], ["a2"], ["a3"]]
    assert sends[0].op.now_ms == 1_004 and sends[0].op.marker_expiry_ms == 9_004  # the latest's
    big = [_op(f"b{i}", cost=2**52) for i in range(3)]  # sums stay exact in Lua (2^53)
    assert [len(s.items) for s in plan(big, {op.hold_id for op in big})] == [2, 1]
    # A fold is never folded again.
    (fold,) = plan(a[:1] + a[4:], {"a0", "a4"})
    assert [len(s.items) for s in plan([fold.op, _op("a5")], {fold.op.hold_id, "a5"})] == [1, 1]


def _op(hold_id: str, *, cost: int = 10, estimate: int = 0, calls: int = 1, lease: str = "L1",
        reserved_ms: int = 5) -> Any:
    from nasca_core.stores import SettleOp, UserKeys

    keys = UserKeys(*(f"{{u}}:{k}" for k in ("m", "h", "s", "d", "w", "mo", "c", "hd")))
    i = int(hold_id[1:]) if hold_id[1:].isdigit() else 9
    return SettleOp(keys, 1_000 + i, hold_id, estimate, cost, "t", "{}", (1, 2, 3, 4, 5, 6, -1),
                    (10, 20, 30), 9_000 + i, 1, 2, reserved_ms, calls, lease)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_fold_s_line_in_the_journal_is_synced_before_it_is_sent(make_nasca, monkeypatch):
    n = _ledger(make_nasca)
    calls, close = lease_ops(n, "u", COSTS[:2])
    _queue(n, [*calls, close])
    journal, events = n.deferred.journal, []
    real_sync, real_many = journal.sync, n.store.sync.settle_many
    monkeypatch.setattr(journal, "sync", lambda: (events.append("sync"), real_sync())[1])
    n.store.sync.settle_many = lambda ops: (events.append("send"), real_many(ops))[1]
    assert n.flush() == 3
    assert events[:2] == ["sync", "send"]


def _wait_for(check: Any, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_the_sender_folds_what_is_queued_when_it_takes_a_batch(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=True)
    calls, close = lease_ops(n, "u", COSTS)
    batches = _spy(n)
    with n.deferred._flush_lock:  # a burst: the woken sender takes its batch once all are queued
        _queue(n, calls[:4])
    _wait_for(lambda: len(n.deferred) == 0)
    # Nothing held back: the four fold at once, without their lease's close.
    assert [[(type(op).__name__, op.calls) for op in b] for b in batches] == [[("Fold", 4)]]
    assert _usage(n, "u") == (4, Decimal("0.010"), Decimal("0.010"), Decimal("0.05"), 46)
    with n.deferred._flush_lock:
        _queue(n, [*calls[4:], close])
    _wait_for(lambda: len(n.deferred) == 0)
    assert [[(type(op).__name__, op.hold_id, op.calls) for op in b] for b in batches[1:]] == [
        [("Fold", close.hold_id, 6)]]
    assert _usage(n, "u") == (10, Decimal("0.055"), Decimal("0.055"), Decimal(0), sum(range(10, 20)))


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_with_opentelemetry_a_fold_is_one_settle_span(make_nasca):
    from tests.test_otel import Telemetry

    telemetry = Telemetry()
    n = _ledger(make_nasca)
    telemetry.instrument(n)
    calls, close = lease_ops(n, "u", COSTS[:5])
    _queue(n, [*calls, close])
    assert n.flush() == 6
    (span,) = telemetry.spans("nasca.settle")  # the instrumented store settles one at a time
    assert span.attributes["nasca.hold_id"] == close.hold_id
    assert _usage(n, "u") == (5, Decimal("0.015"), Decimal("0.015"), Decimal(0), 60)


@pytest.mark.parametrize("seed", range(3))
def test_a_fold_charges_what_its_settles_one_by_one_would(make_nasca, seed):
    """Across the daily limit, with credits paying the rest and a hard weekly cap: the same
    spend in every window, the same credits left, the same calls, folded or not."""
    import random

    from nasca_core.stores import Lot

    rnd = random.Random(seed)
    tier = Tier(daily="0.05", weekly="0.50", monthly=5, credits_cover=("daily", "monthly"))
    n = make_nasca(tiers={"t": tier}, default_tier="t", settle_in_background=True)
    n.deferred.sender.wake = lambda: None
    costs = [rnd.randrange(1, 12_000_000) for _ in range(rnd.randrange(5, 30))]
    for user in ("folded", "single"):
        n.store.sync.grant(n.user_keys(user, n.now()), Lot(f"lot-{user}", "p", paid=10**9, currency="usd",
                                                           granted=30_000_000, remaining=30_000_000))
    calls, close = lease_ops(n, "folded", costs, lease_nanos=40_000_000)
    batches = _spy(n)
    _queue(n, [*calls, close])
    assert n.flush() == len(costs) + 1
    assert sum(len(b) for b in batches) == 1
    del n.store.sync.settle_many
    single, close1 = lease_ops(n, "single", costs, lease_nanos=40_000_000)
    for op in [*single, close1]:
        n.store.sync.settle(op)
    a, b = n.get_usage("folded"), n.get_usage("single")
    assert (a.daily_spent, a.weekly_spent, a.monthly_spent, a.month_cost, a.month_calls, a.credit_balance,
            a.in_flight) == (b.daily_spent, b.weekly_spent, b.monthly_spent, b.month_cost, b.month_calls,
                             b.credit_balance, b.in_flight)
    assert a.month_calls == len(costs) and a.in_flight == 0
