"""Settles the store could not take: kept in order, journaled to disk, retried, counted,
never dropped.

A deferred settle is written to this process's journal (``_journal``) before ``settle``
returns; when the process dies with settles pending, the next ``Nasca`` on the same store
and namespace replays them when it is built. Replays are deduplicated by hold id, and the
store charges a hold id once while its settled-marker lives, so a journal entry older than
that marker (the store may have applied it and forgotten) is refused, logged and kept aside
rather than risk charging twice. The queue is bounded: a full one is a ``StoreError``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path

from nasca_core._errors import StoreError
from nasca_core._journal import Journal, encode, journal_dir
from nasca_core._types import Charge, LedgerStats
from nasca_core.stores import SettleOp, StoreHandle

log = logging.getLogger("nasca")

MAX_PENDING = 100_000  # settles one process keeps waiting for the store


class DeferredSettles:
    """The queue behind ``Nasca.flush_deferred()``; the sync and async flushes differ only
    in the store call."""

    def __init__(self, store: StoreHandle, stats: LedgerStats, namespace: str = "",
                 clock: Callable[[], float] = time.time, state_dir: str | os.PathLike[str] | None = None,
                 *, limit: int = MAX_PENDING) -> None:
        self._store = store
        self._stats = stats
        self._clock = clock
        self.limit = limit
        self._queue: deque[SettleOp] = deque()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._nanos = 0  # what the queue holds, kept as it changes: a long outage stays O(1) a settle
        self._owed: dict[str, list[int]] = {}  # user meta key -> [settles, their holds, their costs]
        self._pid = os.getpid()
        _all.add(self)
        self.journal: Journal | None = None
        if store.identity is not None:
            self.journal = Journal(journal_dir(state_dir, store.identity, namespace))
            weakref.finalize(self, self.journal.close)
            if self._adopt():
                self.flush()

    def __len__(self) -> int:
        return len(self._queue)

    def owed(self, meta: str) -> tuple[int, int, int]:
        """This process's queued settles of one user (by ``UserKeys.meta``): how many, the
        holds they still leave in the store, and what they cost. A reserve counts them at
        their cost, never as calls in flight."""
        entry = self._owed.get(meta)
        return (entry[0], entry[1], entry[2]) if entry else (0, 0, 0)

    def _owe(self, op: SettleOp, sign: int) -> None:
        entry = self._owed.setdefault(op.keys.meta, [0, 0, 0])
        entry[0] += sign
        entry[1] += sign * op.estimate
        entry[2] += sign * op.cost
        self._nanos += sign * op.cost
        if entry[0] <= 0:
            del self._owed[op.keys.meta]

    @property
    def nanos(self) -> int:
        """What the queued settles cost altogether."""
        return self._nanos

    def defer(self, op: SettleOp, exc: StoreError) -> Charge:
        """Queue (and journal) a settle the store refused; the charge says it was deferred.

        Raises StoreError when the queue is full: then nothing recorded the charge, and the
        caller must know. A journal that can't be written keeps the settle in memory only,
        with an error in the log and ``stats.deferred_unjournaled``."""
        with self._lock:
            self._forked()
            if len(self._queue) >= self.limit:
                raise StoreError(
                    f"the store is unreachable and {len(self._queue)} deferred settles are already "
                    f"pending (the limit): a settle of {op.cost} nanos for {op.keys.meta} was not "
                    f"recorded: {exc}") from exc
            journaled = self._journal(op)
            self._queue.append(op)
            self._owe(op, 1)
            pending = len(self._queue)
        self._stats.store_errors += 1
        self._stats.deferred += 1
        self._count()
        log.warning("nasca: store unreachable, deferred a settle of %d nanos for %s (%d pending%s): %s",
                    op.cost, op.keys.meta, pending,
                    f", journaled in {self.journal.path}" if journaled and self.journal else "", exc)
        return Charge(op.cost, op.cost, 0, deferred=True)

    def _journal(self, op: SettleOp) -> bool:
        if self.journal is None:
            return False
        try:
            self.journal.append(encode(op))
            return True
        except OSError as err:
            # Raising would lose the charge for certain; in memory it is lost only if this
            # process dies before the store comes back.
            self._stats.deferred_unjournaled += 1
            log.error("nasca: the deferred-settle journal in %s can't be written (%s): a settle of %d "
                      "nanos for %s is kept in memory only", self.journal.directory, err, op.cost,
                      op.keys.meta)
            return False

    def flush(self) -> int:
        """Retry the queued settles in order; returns how many went through."""
        done = 0
        # Take before trying, put back on failure: two threads flushing at once never apply
        # (or drop) the same entry. A retry of a settle the store did apply is a no-op there.
        while (op := self._take()) is not None:
            try:
                self._store.sync.settle(op)
            except StoreError:
                self._put_back(op)
                break
            self._applied(op)
            done += 1
        return self._flushed(done)

    async def aflush(self) -> int:
        """Async twin of flush()."""
        done = 0
        while (op := self._take()) is not None:
            try:
                await self._store.for_loop().settle(op)
            except StoreError:
                self._put_back(op)
                break
            self._applied(op)
            done += 1
        return self._flushed(done)

    # -- the queue and the journal, under the lock -------------------------------------------
    def _forked(self) -> None:
        # A forked child inherits its parent's queue: the parent (or whoever adopts its
        # journal) applies those; the child starts empty, with a journal of its own.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._queue.clear()
            self._owed.clear()
            self._in_flight = self._nanos = 0

    def _take(self) -> SettleOp | None:
        expired: list[SettleOp] = []
        with self._lock:
            self._forked()
            # Past its settled marker's life, the store can no longer tell whether a retry was
            # applied before (a timeout after the write): set aside, as replay does, not guessed.
            now_ms = int(self._clock() * 1000)
            while self._queue and self._queue[0].marker_expiry_ms <= now_ms:
                stale = self._queue.popleft()
                self._owe(stale, -1)
                expired.append(stale)
            op = None
            if self._queue:
                self._in_flight += 1
                op = self._queue.popleft()
                self._owe(op, -1)
        if expired:
            self._set_aside(expired)
        return op

    def _set_aside(self, ops: list[SettleOp]) -> None:
        if self.journal is not None and self.journal.path is not None:
            self._refuse(self.journal.path, ops)
            try:
                for op in ops:  # kept in the .refused file: no replay may apply them either
                    self.journal.done(op.hold_id)
            except OSError as err:
                log.warning("nasca: could not mark set-aside settles in %s: %s", self.journal.path, err)
        else:
            self._stats.deferred_refused += len(ops)
            log.error("nasca: %d deferred settles (%d nanos) waited longer than the store remembers "
                      "settled holds and were not applied", len(ops), sum(op.cost for op in ops))
        self._count()

    def _put_back(self, op: SettleOp) -> None:
        # The store refused the retry: that is a store error like any other (health checks
        # count them), and the settle waits for the next flush.
        self._stats.store_errors += 1
        with self._lock:
            self._in_flight -= 1
            self._queue.appendleft(op)
            self._owe(op, 1)

    def _applied(self, op: SettleOp) -> None:
        with self._lock:
            self._in_flight -= 1
            if self.journal is None:
                return
            try:
                if not self._queue and not self._in_flight:
                    self.journal.empty()  # nothing in the file is pending any more
                else:
                    self.journal.done(op.hold_id)
            except OSError as err:  # applied; a replay of it would be a no-op in the store
                log.warning("nasca: could not mark a deferred settle applied in %s: %s",
                            self.journal.path, err)

    def _flushed(self, done: int) -> int:
        self._stats.deferred_retried += done
        self._count()
        if done:
            log.info("nasca: applied %d deferred settles (%d pending)", done, len(self._queue))
        return done

    def _count(self) -> None:
        self._stats.deferred_pending = len(self._queue)
        self._stats.deferred_pending_nanos = self.nanos

    def _adopt(self) -> int:
        """Take over the journals of dead processes on this store and namespace; returns how
        many settles were adopted."""
        assert self.journal is not None
        now_ms = int(self._clock() * 1000)
        adopted = 0
        with self._lock:
            held = {op.hold_id for op in self._queue}
            try:
                for path, ops in self.journal.orphans():
                    fresh = [op for op in ops if op.hold_id not in held and op.marker_expiry_ms > now_ms]
                    old = [op for op in ops if op.hold_id not in held and op.marker_expiry_ms <= now_ms]
                    if fresh:  # in our journal (and synced) before the orphan is removed
                        self.journal.append("".join(map(encode, fresh)), sync=True)
                        self._queue.extend(fresh)
                        for op in fresh:
                            self._owe(op, 1)
                        held.update(op.hold_id for op in fresh)
                        adopted += len(fresh)
                    if old:
                        self._refuse(path, old)
            except OSError as err:
                log.error("nasca: could not replay deferred-settle journals in %s: %s",
                          self.journal.directory, err)
        self._stats.deferred_replayed += adopted
        self._count()
        if adopted:
            log.warning("nasca: replaying %d settles deferred by a process that died (%d nanos)",
                        adopted, self.nanos)
        return adopted

    def _refuse(self, orphan: Path, ops: list[SettleOp]) -> None:
        assert self.journal is not None
        aside = orphan.with_suffix(".refused")
        with open(aside, "a", encoding="utf-8") as f:
            f.write("".join(map(encode, ops)))
            f.flush()
            os.fsync(f.fileno())
        self._stats.deferred_refused += len(ops)
        log.error("nasca: %d deferred settles (%d nanos) waited longer than the store remembers settled "
                  "holds, so replaying them could charge twice; they were not applied and are kept in %s",
                  len(ops), sum(op.cost for op in ops), aside)


_all: weakref.WeakSet[DeferredSettles] = weakref.WeakSet()


def _after_fork() -> None:
    for deferred in list(_all):
        deferred._lock = threading.Lock()  # a parent thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork)
