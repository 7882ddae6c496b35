"""What a journal replays after a fold's line that nothing gave back (``_journal.pending_in``),
a torn line, an older Nasca reading a fold's journal, and a fold's bounded sums. The disk
faults are real (``tests.test_fold_journal``: a file-size limit, an fsync error where
``os.fsync`` would raise it); a replay is checked by applying what it would send to the store."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import InvalidInputError, Tier
from nasca_core._fold import MAX_OF, Fold, plan
from nasca_core._journal import Journal, Torn, decode, encode, pending_in
from nasca_core.pricing._usage import MAX_TOKENS
from nasca_core.stores import SettleOp
from tests.test_fold_calls import lease_ops
from tests.test_fold_journal import JOURNALED, _fail_appends, _fail_syncs, _kept
from tests.test_fold_sender import COSTS, _ledger, _op, _queue, _spy, _usage

ALL_LANDED = (4, Decimal("0.010"), Decimal("0.010"), Decimal("0.05"), 46)


def _others(n: Any, count: int) -> list[SettleOp]:
    """Ordinary settles of other users: a flush's first batch does not empty the queue."""
    return [n._settle_op(n.reserve(nanos=1000, user=f"v{i}"), None, 1000, (1, 1)) for i in range(count)]


def _replay_changes_nothing(n: Any, lines: list[str]) -> None:
    pending = pending_in(iter(lines))
    assert not any(isinstance(op, Fold) for op in pending)
    for op in pending:  # a process killed right then: the next one replays these
        n.store.sync.settle(op)
    assert _usage(n, "u") == ALL_LANDED


def _stuck_fold(n: Any, monkeypatch: Any, others: int) -> tuple[list[SettleOp], list[str]]:
    calls, _ = lease_ops(n, "u", COSTS[:4])
    _queue(n, [*calls, *_others(n, others)])
    _fail_syncs(monkeypatch, n.deferred.journal, 1)
    _fail_appends(monkeypatch, n.deferred.journal, {1, 2}, room=0)  # the "u" line; then the fold's again
    kept = _kept(monkeypatch, n.deferred.journal)
    assert n.flush() == 0 and n.deferred.stalled
    assert n.deferred.journal.path.read_text().splitlines()[-1].startswith('{"f"')  # the fold's line stays
    return calls, kept


@JOURNALED
async def test_settles_sent_one_by_one_by_aflush_after_an_unsent_fold_replay_once(make_nasca, monkeypatch):
    n = _ledger(make_nasca)
    _, kept = _stuck_fold(n, monkeypatch, 0)
    assert await n.deferred.aflush() == 4  # one settle per store call: never a fold
    assert _usage(n, "u") == ALL_LANDED
    # Emptied once all landed; killed just before, the fold must not replay under its own id.
    kinds = [next(iter(json.loads(line))) for line in kept]
    assert kinds[:5] == ["s"] * 4 + ["f"] and kinds[5:] and set(kinds[5:]) == {"d"}
    _replay_changes_nothing(n, kept)


@JOURNALED
def test_settles_sent_one_by_one_by_the_next_flush_after_an_unsent_fold_replay_once(make_nasca, monkeypatch):
    n = _ledger(make_nasca)
    calls, kept = _stuck_fold(n, monkeypatch, 40)
    batches = _spy(n)
    assert n.flush() == 44  # the fold's line fails again, cut back: the settles go one by one
    assert not any(isinstance(op, Fold) for batch in batches for op in batch)
    assert _usage(n, "u") == ALL_LANDED
    assert any(json.loads(line) == {"d": calls[0].hold_id} for line in kept)
    _replay_changes_nothing(n, kept)


def test_a_settle_of_a_pending_fold_done_by_itself_gives_the_fold_back():
    calls = [_op(f"c{i}", cost=10) for i in range(3)]
    (whole,) = plan(calls, {op.hold_id for op in calls})
    lines = [*map(encode, calls), encode(whole.op), json.dumps({"d": "c0"})]
    assert [op.hold_id for op in pending_in(iter(lines))] == ["c1", "c2"]
    assert pending_in(iter([*lines, json.dumps({"d": "c1"}), json.dumps({"d": "c2"})])) == []
    # Under its lease close's id: the close's "d" is the fold's (the close goes after its calls).
    close = _op("L1", estimate=500, cost=0, calls=0)
    (closing,) = plan([*calls[:2], close], {"c0", "c1", "L1"})
    assert closing.op.hold_id == "L1"
    closed = [*map(encode, [*calls[:2], close]), encode(closing.op)]
    assert pending_in(iter([*closed, json.dumps({"d": "L1"})])) == []
    one_by_one = [*closed, *(json.dumps({"d": h}) for h in ("c0", "c1"))]
    assert [op.hold_id for op in pending_in(iter(one_by_one))] == ["L1"]
    assert type(pending_in(iter(one_by_one))[0]) is SettleOp  # the close by itself, not the fold
    assert pending_in(iter([*one_by_one, json.dumps({"d": "L1"})])) == []


def test_after_a_torn_write_the_next_line_starts_a_line_of_its_own(tmp_path, monkeypatch):
    journal = Journal(tmp_path)
    calls = [_op(f"c{i}", cost=10) for i in range(3)]
    for op in calls:
        journal.append(encode(op))
    real_write, real_truncate, failing = os.write, os.ftruncate, [True]

    def write(fd: int, data: bytes) -> int:  # a disk that takes part of a write, then fails
        if failing[0]:
            real_write(fd, data[:20])
            raise OSError(errno.EIO, "Input/output error")
        return real_write(fd, data)

    def ftruncate(fd: int, length: int) -> None:
        if failing[0]:
            raise OSError(errno.EIO, "Input/output error")
        real_truncate(fd, length)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    with pytest.raises(Torn):
        journal.append(encode(_op("x", cost=5)))
    failing[0] = False
    (whole,) = plan(calls, {op.hold_id for op in calls})
    journal.append(encode(whole.op))
    journal.done(whole.op.hold_id)
    assert journal.path is not None
    lines = journal.path.read_text().splitlines(True)
    assert pending_in(iter(lines)) == []  # the fold landed: none of its settles replays
    assert sum(line.startswith('{"f"') for line in lines) == 1  # the fold's line, whole
    journal.append(encode(_op("y", cost=5)))  # a write that worked: no empty line before the next
    assert journal.path.read_text().splitlines(True)[len(lines):] == [encode(_op("y", cost=5))]


def _old_decode(d: dict[str, Any]) -> SettleOp:
    ttl = d["ttl"]
    return SettleOp(keys=decode(d).keys, now_ms=int(d["t"]), hold_id=str(d["h"]), estimate=int(d["e"]),
                    cost=int(d["c"]), tier=str(d["tr"]), tiers_json=str(d["tj"]),
                    tier_compiled=tuple(int(x) for x in d["tc"]),
                    ttls_ms=(int(ttl[0]), int(ttl[1]), int(ttl[2])), marker_expiry_ms=int(d["mx"]),
                    input_tokens=int(d["ti"]), output_tokens=int(d["to"]),
                    reserved_ms=int(d.get("rt", 0)))


def _old_pending_in(lines: Any) -> list[SettleOp]:
    """``pending_in`` before folding (811f858): it knows only ``{"s"}`` and ``{"d"}`` lines."""
    ops: dict[str, SettleOp] = {}
    for line in lines:
        try:
            entry = json.loads(line)
            if "s" in entry:
                op = _old_decode(entry["s"])
                ops.setdefault(op.hold_id, op)
            elif "d" in entry:
                ops.pop(str(entry["d"]), None)
        except (ValueError, KeyError, TypeError, IndexError):
            pass
    return list(ops.values())


@JOURNALED
def test_an_older_nasca_replaying_a_landed_fold_s_journal_charges_nothing_again(make_nasca, monkeypatch):
    n = _ledger(make_nasca)
    calls, close = lease_ops(n, "u", COSTS[:3])
    other = _others(n, 1)
    _queue(n, [*calls, close, *other])
    store, real = n.store.sync, n.store.sync.settle_many
    monkeypatch.setattr(store, "settle_many", lambda ops: [*real(ops[:-1]), Exception("down")])
    n.flush()  # the fold lands, the other user's settle does not: the file keeps its lines
    lines = n.deferred.journal.path.read_text().splitlines()
    assert json.loads(lines[-len(calls) - 1]) == {"d": close.hold_id}  # the fold's own "d" first
    assert [op.hold_id for op in pending_in(iter(lines))] == [other[0].hold_id]
    assert [op.hold_id for op in _old_pending_in(iter(lines))] == [other[0].hold_id]


def test_a_fold_s_token_and_call_sums_are_bounded():
    big = [dataclasses.replace(_op(f"c{i}", cost=1), input_tokens=MAX_TOKENS) for i in range(3)]
    sends = plan(big, {op.hold_id for op in big})
    assert [len(send.items) for send in sends] == [1, 1, 1]
    out = [dataclasses.replace(_op(f"c{i}", cost=1), output_tokens=MAX_TOKENS // 2) for i in range(3)]
    assert [len(send.items) for send in plan(out, {op.hold_id for op in out})] == [2, 1]
    many = [dataclasses.replace(_op(f"c{i}", cost=1), calls=MAX_TOKENS // 2) for i in range(3)]
    assert [len(send.items) for send in plan(many, {op.hold_id for op in many})] == [2, 1]
    ids = [_op(f"c{i}", cost=1) for i in range(MAX_OF + 1)]
    assert [len(send.items) for send in plan(ids, {op.hold_id for op in ids})] == [MAX_OF, 1]


@JOURNALED
def test_settle_rejects_bad_token_counts_with_a_typed_error_and_nothing_changed(make_nasca):
    n = make_nasca(tiers={"t": Tier(daily="0.10", monthly=5)}, default_tier="t")
    r = n.reserve(nanos=1000, user="u")
    before = n.get_usage("u")
    for bad in [(MAX_TOKENS + 1, 0), (0, -1), (1.5, 0), (True, 0), (1, 2, 3), "12", None]:
        with pytest.raises(InvalidInputError):
            n.settle(r, nanos=10, tokens=bad)
    assert n.get_usage("u") == before
    n.settle(r, nanos=10, tokens=(MAX_TOKENS, 3))
    assert n.get_usage("u").month_input_tokens == MAX_TOKENS
