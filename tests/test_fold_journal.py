"""A fold's journal line when the disk fails (``_journal.write_folds``, ``Journal.append``): a
write that fails is cut back to the last whole line, a fold line that may be in the file is
given back (``{"u"}``) before its settles go one by one, and when not even that can be
written nothing is sent; the batch waits as it was and folds again under the same hold id.
The disk faults are real: a file-size limit (``RLIMIT_FSIZE``) makes the kernel cut a write
short and fail the rest (EFBIG); an fsync error (EIO), which no test can make a disk do, is
raised where ``os.fsync`` would."""

from __future__ import annotations

import json
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest

from nasca_core._fold import Fold, plan
from nasca_core._journal import encode, pending_in
from tests.test_fold_calls import lease_ops
from tests.test_fold_sender import COSTS, _ledger, _op, _queue, _spy, _usage

JOURNALED = pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)


@contextmanager
def _file_size_limit(size: int) -> Iterator[None]:
    """Writes past ``size`` bytes fail in this process (EFBIG; a write across it is cut short)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _journal_lines(n: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in n.deferred.journal.path.read_text().splitlines()]


def _fail_appends(monkeypatch: Any, journal: Any, which: set[int],
                  room: int = 40) -> list[tuple[bytes, bytes]]:
    """The journal's appends numbered in ``which`` (0 the first) run with the file allowed
    ``room`` more bytes: real short writes, then EFBIG. Returns the file before and after each."""
    real, seen, files = journal.append, [], []

    def append(lines: str, **kwargs: Any) -> None:
        seen.append(len(seen))
        if seen[-1] not in which:
            return real(lines, **kwargs)
        before = journal.path.read_bytes()
        try:
            with _file_size_limit(len(before) + room):
                return real(lines, **kwargs)
        finally:
            files.append((before, journal.path.read_bytes()))

    monkeypatch.setattr(journal, "append", append)
    return files


def _kept(monkeypatch: Any, journal: Any) -> list[str]:
    """The journal's lines as they were when it was last emptied (nothing pending)."""
    real, kept = journal.empty, []

    def empty(writes: int) -> None:
        kept[:] = journal.path.read_text().splitlines()
        real(writes)

    monkeypatch.setattr(journal, "empty", empty)
    return kept


def _fail_syncs(monkeypatch: Any, journal: Any, times: int) -> None:
    real, left = journal.sync, [times]

    def sync() -> None:
        if left[0]:
            left[0] -= 1
            raise OSError(5, "Input/output error")
        real()

    monkeypatch.setattr(journal, "sync", sync)


@JOURNALED
def test_a_short_write_is_cut_back_and_the_settles_go_one_by_one(make_nasca, monkeypatch):
    n = _ledger(make_nasca)
    calls, close = lease_ops(n, "u", COSTS[:3])
    _queue(n, [*calls, close])
    files = _fail_appends(monkeypatch, n.deferred.journal, {0})  # the fold's line
    kept = _kept(monkeypatch, n.deferred.journal)
    batches = _spy(n)
    assert n.flush() == 4
    assert [len(b) for b in batches] == [4] and not any(isinstance(op, Fold) for op in batches[0])
    assert _usage(n, "u") == (3, Decimal("0.006"), Decimal("0.006"), Decimal(0), 33)
    # No part line left to glue to the next: cut back, every line reads, none is pending.
    ((before, after),) = files
    assert after == before
    assert [next(iter(json.loads(line))) for line in kept] == ["s"] * 4  # then emptied: all landed
    assert n.deferred.journal.path.read_bytes() == b""


@JOURNALED
def test_an_unsynced_fold_line_is_given_back_before_its_settles_go_one_by_one(make_nasca, monkeypatch):
    n = _ledger(make_nasca)
    calls, _ = lease_ops(n, "u", COSTS[:4])
    _queue(n, calls)  # without the close: the fold's own hold id
    _fail_syncs(monkeypatch, n.deferred.journal, 1)
    text = _kept(monkeypatch, n.deferred.journal)
    batches = _spy(n)
    assert n.flush() == 4
    assert [op.hold_id for op in batches[0]] == [op.hold_id for op in calls]
    kinds = [next(iter(json.loads(line))) for line in text]
    assert kinds[4:6] == ["f", "u"]  # the fold's line reached the file; its settles came back
    # Killed once the settles landed one by one, before a "d" line: they replay (the store
    # takes each once), never the fold under its own id as well.
    assert [op.hold_id for op in pending_in(iter(text))] == [op.hold_id for op in calls]
    assert n.deferred.journal.path.read_bytes() == b""  # all landed
    assert _usage(n, "u") == (4, Decimal("0.010"), Decimal("0.010"), Decimal("0.05"), 46)


@JOURNALED
def test_when_nothing_can_give_the_fold_back_nothing_is_sent_and_it_folds_again(make_nasca, monkeypatch):
    n = _ledger(make_nasca)
    calls, _ = lease_ops(n, "u", COSTS[:4])
    _queue(n, calls)
    _fail_syncs(monkeypatch, n.deferred.journal, 1)
    _fail_appends(monkeypatch, n.deferred.journal, {1}, room=0)  # the "u" line
    text = _kept(monkeypatch, n.deferred.journal)
    batches = _spy(n)
    assert n.flush() == 0
    assert batches == [] and n.deferred.stalled
    assert n.deferred.queued() == 4 and len(n.deferred) == 4  # as they were taken, none in flight
    assert _usage(n, "u")[:2] == (4, Decimal("0.010"))
    (fold,) = [line["f"] for line in _journal_lines(n) if "f" in line]
    # The disk is back: the same four fold again, under the same hold id, once.
    assert n.flush() == 4
    (batch,) = batches
    assert len(batch) == 1 and batch[0].hold_id == fold["h"] and batch[0].calls == 4
    assert [json.loads(line)["f"]["h"] for line in text if '"f"' in line] == [fold["h"], fold["h"]]
    assert _usage(n, "u") == (4, Decimal("0.010"), Decimal("0.010"), Decimal("0.05"), 46)
    # The line written twice replays as one fold, under its one id.
    assert [op.hold_id for op in pending_in(iter(text))] == [fold["h"]]


def test_a_fold_s_hold_id_is_its_settles_and_a_later_fold_replaces_an_unsent_one():
    calls = [_op(f"c{i}", cost=10 * (i + 1)) for i in range(4)]
    ids = {op.hold_id for op in calls}
    (first,) = plan(calls[:2], ids)
    (again,) = plan(calls[:2], ids)
    (other,) = plan(calls[1:3], ids)
    assert first.op.hold_id == again.op.hold_id != other.op.hold_id
    (bigger,) = plan(calls[:3], ids)
    lines = [*map(encode, calls), encode(first.op), encode(bigger.op)]
    # The first fold was never sent (one that was is never planned again): the later stands.
    assert [op.hold_id for op in pending_in(iter(lines))] == ["c3", bigger.op.hold_id]
    given_back = [*lines, json.dumps({"u": bigger.op.hold_id})]
    assert [op.hold_id for op in pending_in(iter(given_back))] == ["c3", "c0", "c1", "c2"]
    assert [op.hold_id for op in pending_in(iter([*lines, json.dumps({"d": bigger.op.hold_id})]))] == ["c3"]
    # A fold with its lease's close given back: the close stands again, by itself.
    close = _op("L1", estimate=500, cost=0, calls=0)
    (whole,) = plan([*calls[:2], close], {*ids, "L1"})
    closing = [*map(encode, [*calls[:2], close]), encode(whole.op)]
    assert [type(op).__name__ for op in pending_in(iter(closing))] == ["Fold"]
    assert [op.hold_id for op in pending_in(iter([*closing, json.dumps({"u": "L1"})]))] == ["c0", "c1", "L1"]
    assert pending_in(iter([*closing, json.dumps({"d": "L1"})])) == []
