"""Settles the store could not take: kept in order, journaled to disk, retried, counted, never dropped.

A deferred settle is written to this process's journal (``_journal``) before ``settle``
returns; when the process dies with settles pending, the next ``Nasca`` on the same store
and namespace replays them when it is built. Replays are deduplicated by hold id, and the
store charges a hold id once while its settled-marker lives, so a journal entry older than
that marker (the store may have applied it and forgotten) is refused, logged and kept aside
rather than risk charging twice. The queue is bounded: a full one is a ``StoreError``.

The same queue carries the settles a model call hands to the background sender
(``send``, ``_sender``): journaled alike, applied by the sender's thread in order. A
queued settle is counted in this process's reads at its cost (``owed``, ``snapshot``)
until it has landed in the store; one flush runs at a time, so settles land in order.

A user's reads (``snapshot``, ``reserve``) and the landing of that user's settle take turns,
so a settle is never counted both in the store and as owed. Every wait is bounded: a flush
waiting for a read leaves the settle queued (the next flush sends it) and makes new reads of
that user wait; a snapshot that can't get its turn reads anyway and may count the landing
settle twice (spend over-counted, the safe side); a reserve that can't get its turn counts
the user's queued settles as the holds the store still has (as if none were owed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

from nasca_core._errors import StoreError
from nasca_core._fold import Fold, Send, Sends, marks, plan, waiting, weight
from nasca_core._journal import Journal, adopt, set_aside, sync_quietly, write, write_folds
from nasca_core._journal_home import journal_home, locate
from nasca_core._owed import Owed
from nasca_core._sender import QUEUE_LIMIT, Sender
from nasca_core._turns import aread_turn, plus, read_turn, seen
from nasca_core._types import Charge, LedgerStats
from nasca_core.stores import ReserveOp, ReserveResult, SettleOp, Snapshot, StoreHandle, UserKeys

log = logging.getLogger("nasca")

MAX_PENDING = 100_000  # settles one process keeps waiting for the store
WRITE_WAIT_S = 1.0  # a flush waits this long for reads of the next settle's user (one round trip each)
BATCH = 32  # settles per store call: Redis runs a batch's scripts back to back, other clients wait
FOLD_MAX = 1024  # queued settles one batch may take when a lease's fold into one (``_fold``)


class DeferredSettles:
    """The queue behind ``Nasca.flush_deferred()``; the sync and async flushes differ only
    in the store call."""

    def __init__(self, store: StoreHandle, stats: LedgerStats, namespace: str = "",
                 clock: Callable[[], float] = time.time, state_dir: str | os.PathLike[str] | None = None,
                 *, limit: int = MAX_PENDING, background: bool | None = None,
                 queue_limit: int = QUEUE_LIMIT) -> None:
        self._store = store
        self._stats = stats
        self._clock = clock
        self.limit, self.queue_limit = limit, queue_limit
        self._queue: deque[SettleOp] = deque()
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)  # reads of a user and its settles take turns
        self._sending: dict[str, int] = {}  # users (meta key) whose settles are on their way: how many
        self._reading: dict[str, int] = {}  # users whose snapshot is being read
        self._wanted: str | None = None  # the user whose settle waits for reads: new ones wait
        self.closed = False  # close() ran: settles go on the caller's path from now on
        self._flush_lock = threading.Lock()  # one flush at a time: settles land in queue order
        self._landed = 0  # settles applied by any flush: a waiting flush reports the sender's too
        self._sent: set[str] = set()  # hold ids handed to the sender (not deferred by a failure)
        self.early: list[tuple[SettleOp, object]] = []  # landed (op, SettleResult) before thresholds listened
        self.on_landed: Callable[..., object] = lambda op, result: self.early.append((op, result))
        self._in_flight = 0
        self._owed = Owed()
        self.leased: Callable[[str], tuple[int, int, int]] | None = None  # a user's lease holds, by meta
        self._foldable: set[str] = set()  # handed to the sender, never tried: ``_fold`` may fold them
        # Set by the ledger: called by the sender's thread each round and when it is idle
        # (never under the queue's lock) with time.monotonic(); returns the seconds until it
        # wants to be called again (None: whenever). Ends idle leases (``_leases``).
        self.on_idle: Callable[[float], float | None] | None = None
        self.stalled = False  # the last flush stopped at a settle the store (or the journal) refused
        self._pid = os.getpid()
        _all.add(self)
        self.journal: Journal | None = None
        # Off by default for memory://, whose settle is already in-process.
        on = store.identity is not None if background is None else background
        self.sender = Sender(self) if on else None
        if store.identity is not None:
            self.journal = Journal(journal_home(store, state_dir, namespace))
            weakref.finalize(self, self.journal.close)
            if self._adopt():
                self.flush()
            self.located = locate(store, state_dir, namespace, self.journal.directory,  # finds more later
                                  weakref.WeakMethod(self._adopt_late))

    def __len__(self) -> int:
        return len(self._queue) + self._in_flight  # none of them has landed

    def queued(self) -> int:
        return len(self._queue)

    def owed(self, meta: str) -> tuple[int, int, int]:
        """This process's queued settles of one user (by ``UserKeys.meta``): how many, the holds
        they still leave in the store, and what they cost (a reserve's ``owed``)."""
        return self._owed.of(meta)

    def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        """The store's snapshot of a user as this process sees it: its queued settles of the
        user counted at their cost (spent, the month's cost, calls and tokens), their holds
        taken out. No settle of the user lands during the read, so none counts twice.
        Raises StoreError."""
        if keys.meta not in self._owed.users:
            return self._store.sync.snapshot(keys, now_ms)
        entry = read_turn(self._turn, partial(self._begin_read, keys.meta), force=True) or []
        try:
            return seen(self._store.sync.snapshot(keys, now_ms), entry)
        finally:
            self._end_read(keys.meta)

    async def asnapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        """Async twin of snapshot(); waits for a landing settle without blocking the loop."""
        if keys.meta not in self._owed.users:
            return await self._store.for_loop().snapshot(keys, now_ms)
        entry = await aread_turn(self._turn, partial(self._begin_read, keys.meta), force=True) or []
        try:
            return seen(await self._store.for_loop().snapshot(keys, now_ms), entry)
        finally:
            self._end_read(keys.meta)

    def reserve(self, op: ReserveOp) -> ReserveResult:
        """The store's reserve, counting this process's queued settles of the user at their cost and
        its leases' free parts (``ReserveOp.owed``), read in one turn. Raises StoreError."""
        if op.keys.meta not in self._owed.users and not op.owed[1]:  # queued meanwhile: as its hold, safe
            return self._store.sync.reserve(op)
        if (owed := read_turn(self._turn, partial(self._begin_reserve, op), force=False)) is None:
            return self._store.sync.reserve(dataclasses.replace(op, owed=(0, 0, 0)))  # every hold counted
        try:
            return self._store.sync.reserve(dataclasses.replace(op, owed=(owed[0], owed[1], owed[2])))
        finally:
            self._end_read(op.keys.meta)

    async def areserve(self, op: ReserveOp) -> ReserveResult:
        """Async twin of reserve()."""
        if op.keys.meta not in self._owed.users and not op.owed[1]:
            return await self._store.for_loop().reserve(op)
        if (owed := await aread_turn(self._turn, partial(self._begin_reserve, op), force=False)) is None:
            return await self._store.for_loop().reserve(dataclasses.replace(op, owed=(0, 0, 0)))
        try:
            return await self._store.for_loop().reserve(
                dataclasses.replace(op, owed=(owed[0], owed[1], owed[2])))
        finally:
            self._end_read(op.keys.meta)

    def _begin_reserve(self, op: ReserveOp, force: bool = False) -> list[int] | None:
        # Under the lock, with the queue's owed: a lease's close queued in between would count twice.
        lease = op.owed if self.leased is None else self.leased(op.keys.meta)
        entry = self._begin_read(op.keys.meta, force)
        return None if entry is None else list(plus(lease, entry) if entry else lease)

    def _begin_read(self, meta: str, force: bool = False) -> list[int] | None:
        # Under the lock. None while a settle of the user is on its way to the store (it may
        # or may not be in what the store answers) or waits for reads to end.
        if not force and (meta in self._sending or meta == self._wanted):
            return None
        self._reading[meta] = self._reading.get(meta, 0) + 1
        return list(self._owed.users.get(meta, ()))

    def _end_read(self, meta: str) -> None:
        with self._turn:
            if (left := self._reading.pop(meta, 1) - 1) > 0:
                self._reading[meta] = left
            self._turn.notify_all()

    def before_settle(self, op: SettleOp, background: bool) -> Charge | None:
        """A sync settle's first step: the sender's pending charge when ``background`` and
        ``send`` takes it; else what is queued is applied first, so settles land in order."""
        if background and (queued := self.send(op)) is not None:
            return queued
        if self:
            self.flush()
        return None

    def send(self, op: SettleOp) -> Charge | None:
        """Journal and queue a model call's settle for the background sender; None when the
        sender is off or ``queue_limit`` settles behind (the caller then settles itself, and
        ``stats.settle_queue_full`` counts it) or after ``close``. The charge is ``pending``:
        its split between allowance and credits is known once it lands (both parts 0 until then)."""
        if self.sender is None or self.closed:
            return None
        with self._lock:
            self._forked()
            if len(self._queue) >= self.queue_limit:
                full = True
            elif self.journal is not None and not self._journal(op, lazy=True):
                return None  # acknowledged only once a kill can't lose it: the caller settles
            else:
                full = False
                self._sent.add(op.hold_id)
                if op.lease:
                    self._foldable.add(op.hold_id)
                self._queue.append(op)
                self._owed.add(op, 1)
        if full:
            self._stats.settle_queue_full += 1
            log.warning("nasca: the background settle queue is full (%d); settling on the caller's path",
                        self.queue_limit)
            return None
        self._stats.settle_queued += op.calls  # model calls: a lease's closing settle counts none
        self.sender.wake()
        return Charge(op.cost, 0, 0, pending=True)  # the store splits it as it lands

    @property
    def nanos(self) -> int:
        """What the queued settles cost altogether."""
        return self._owed.nanos

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
            self._owed.add(op, 1)
            pending = len(self._queue)
        self._stats.store_errors += 1
        self._stats.deferred += 1
        self._count()
        log.warning("nasca: store unreachable, deferred a settle of %d nanos for %s (%d pending%s): %s",
                    op.cost, op.keys.meta, pending,
                    f", journaled in {self.journal.path}" if journaled and self.journal else "", exc)
        return Charge(op.cost, op.cost, 0, deferred=True)

    def _journal(self, op: SettleOp, lazy: bool = False) -> bool:
        if (written := write(self.journal, op, lazy=lazy)) is None and not lazy:
            self._stats.deferred_unjournaled += 1
        return bool(written)

    def flush(self) -> int:
        """Retry the queued settles in order, ``BATCH`` per ``Store.settle_many``; returns how many landed."""
        landed = self._landed  # a waiting flush reports the sender's too
        with self._flush_lock:
            done, self.stalled = 0, False
            # Take before trying, put back (in order) what did not land, failed or unsent: nothing
            # is applied (or dropped) twice. A retry of a settle the store did apply is a no-op there.
            while ops := self._take(limit=BATCH):
                sends: list[Send] | None = None
                results: Sequence[object] = ()
                try:
                    if (sends := self._fold(ops)) is not None:
                        results = self._store.sync.settle_many([send.op for send in sends])
                        for send, result in zip(sends, results, strict=False):
                            isinstance(result, Exception) or self.on_landed(send.op, result)
                except StoreError:
                    pass
                finally:  # any other error too: the settles wait, never half-sent
                    took = self._untouched(ops) if sends is None else self._landing(sends, results)
                done += took
                if took < len(ops):
                    self.stalled = True
                    break
            self._flushed(done)
        return self._landed - landed

    async def aflush(self) -> int:
        """Async twin of flush(); waits for the sender's flush without blocking the loop."""
        landed = self._landed
        while not self._flush_lock.acquire(blocking=False):
            await asyncio.sleep(0.001)
        try:
            done, deadline = 0, time.monotonic() + WRITE_WAIT_S
            while (ops := self._take(block=False)) != []:
                if ops is None:  # a read of the user on this loop must be let finish
                    if time.monotonic() > deadline:
                        self._unwant()
                        break
                    await asyncio.sleep(0.0005)
                    continue
                results: list[object] = []
                try:
                    results.append(await self._store.for_loop().settle(ops[0]))
                    self.on_landed(ops[0], results[0])
                except StoreError:
                    break
                finally:
                    self._landing([Send(ops[0], ops)], results)
                done, deadline = done + 1, time.monotonic() + WRITE_WAIT_S
            self._flushed(done)
        finally:
            self._flush_lock.release()
        return self._landed - landed

    def close(self) -> None:
        """Flush what the store takes, stop the sender, log what is still owed (journaled).
        Final: later settles are applied on the caller's path."""
        self.closed = True
        self.flush()
        if self.sender is not None:
            self.sender.stop()
            self.flush()  # a send racing the stop
        if self:
            log.error("nasca: closing with %d settles never applied (%d nanos)", len(self), self.nanos)

    # -- the queue and the journal, under the lock -------------------------------------------
    def _forked(self) -> None:
        # A forked child inherits its parent's queue: the parent (or whoever adopts its
        # journal) applies those; the child starts empty, with a journal of its own.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._queue.clear()
            self._owed.clear()
            for kept in (self._sent, self._foldable, self._reading):
                kept.clear()
            self._sending = {}
            self._in_flight = 0

    def _take(self, block: bool = True, limit: int = 1) -> list[SettleOp] | None:
        # None (not blocking): the head's user is being read; try again in a moment. Else up to
        # ``limit`` from the head, stopping at a settle whose user is being read (order kept).
        expired: list[SettleOp] = []
        with self._lock:
            self._forked()
            # Past its settled marker's life, the store can no longer tell whether a retry was
            # applied before (a timeout after the write): set aside, as replay does, not guessed.
            now_ms = int(self._clock() * 1000)
            while self._queue and self._queue[0].marker_expiry_ms <= now_ms:
                stale = self._queue.popleft()
                self._owed.add(stale, -1)
                self._sent.discard(stale.hold_id)
                self._foldable.discard(stale.hold_id)
                expired.append(stale)
            batch: list[SettleOp] = []
            ops: list[SettleOp] | None = batch
            deadline = time.monotonic() + WRITE_WAIT_S
            while self._queue and self._reading.get(meta := self._queue[0].keys.meta):
                self._wanted = meta  # new reads of the user wait: readers can't starve the sender
                if not block:
                    ops = None
                    break
                if (left := deadline - time.monotonic()) <= 0:
                    # Its read may be suspended on the loop this flush blocks: the next flush sends.
                    self._wanted = None
                    self._turn.notify_all()
                    break
                self._turn.wait(min(left, 0.1))  # a read of that user is under way: one round trip
            else:
                self._wanted = None
                queue, sending = self._queue, self._sending
                # Owed until they land: no read sees them as holds meanwhile.
                sends = Sends(self._foldable)  # a lease's settles count as one: they fold (``_fold``)
                while queue and sends.n < limit and len(batch) < FOLD_MAX and not self._reading.get(
                        queue[0].keys.meta):
                    batch.append(op := sends.add(queue.popleft()))
                    sending[op.keys.meta] = sending.get(op.keys.meta, 0) + 1
                self._in_flight += len(batch)
        if expired:
            self._stats.deferred_refused += set_aside(self.journal, expired)
            self._count()
        return ops

    def _unwant(self) -> None:
        with self._turn:
            self._wanted = None
            self._turn.notify_all()

    def _fold(self, ops: list[SettleOp]) -> list[Send] | None:
        # A lease's settles as one (``_fold``), each fold's line on disk before it is sent, so
        # a replay applies it (not its settles) once; unfolded when the journal can't take it.
        # None: its line may be in the file and nothing could give its settles back; nothing is sent.
        return write_folds(self.journal, plan(ops, self._foldable))

    def _untouched(self, ops: list[SettleOp]) -> int:
        # Put back as they were taken, still foldable: the journal refused, not the store.
        with self._lock:
            self._sent_back(ops)
            self._queue.extendleft(reversed(ops))
        return 0

    def _landing(self, sends: list[Send], results: Sequence[object]) -> int:
        ok = [i < len(results) and not isinstance(results[i], Exception) for i in range(len(sends))]
        if landed := [send for send, y in zip(sends, ok, strict=True) if y]:
            self._applied(landed)
        if not all(ok):
            self._put_back([send for send, y in zip(sends, ok, strict=True) if not y])
        return sum(len(send.items) for send in landed)

    def _sent_back(self, ops: list[SettleOp]) -> None:  # under the lock: no longer on their way
        self._in_flight -= len(ops)
        for op in ops:
            if (left := self._sending.pop(op.keys.meta, 1) - 1) > 0:
                self._sending[op.keys.meta] = left
        self._turn.notify_all()

    def _put_back(self, sends: list[Send]) -> None:
        # A store error like any other (health checks count them): they wait for the next flush.
        # Tried, so never folded again: each may have landed under its own hold id. A fold
        # goes back as itself (its line stands for its settles), to be retried as it was.
        self._stats.store_errors += 1
        with self._lock:
            self._sent_back(items := [op for send in sends for op in send.items])
            self._foldable.difference_update(op.hold_id for op in items)
            self._queue.extendleft(reversed([waiting(send, self._sent, self._owed) for send in sends]))

    def _applied(self, sends: list[Send]) -> None:
        with self._lock:
            self._sent_back(ops := [op for send in sends for op in send.items])
            self._foldable.difference_update(op.hold_id for op in ops)
            for op in ops:
                self._landed += weight(op)
                self._owed.add(op, -1)
                if isinstance(op, Fold):  # a fold that went back once
                    self._stats.settled += op.sent
                    self._stats.deferred_retried += len(op.of) - op.sent
                elif op.hold_id in self._sent:
                    self._sent.discard(op.hold_id)
                    self._stats.settled += op.calls
                else:
                    self._stats.deferred_retried += 1
            if self.journal is None:
                return
            # Decided under the lock, written outside it: a send on the loop never waits for
            # the disk. ``empty`` does nothing if a line was written since (``writes``).
            nothing_left = (not self._queue and not self._in_flight, self.journal.writes)
        try:
            if nothing_left[0]:
                self.journal.empty(nothing_left[1])  # nothing in the file is pending any more
            else:
                self.journal.done(*(h for send in sends for h in marks(send.op)))  # a fold's: its settles
        except OSError as err:  # applied; a replay of it would be a no-op in the store
            log.warning("nasca: could not mark a deferred settle applied in %s: %s", self.journal.path, err)

    def _flushed(self, done: int) -> None:
        if self._queue:  # the store refused: what waits is synced
            sync_quietly(self.journal)
        self._count()
        if done:
            log.debug("nasca: applied %d queued settles (%d pending)", done, len(self._queue))

    def _count(self) -> None:
        self._stats.deferred_pending = len(self._queue)
        self._stats.deferred_pending_nanos = self.nanos

    def _adopt_late(self) -> None:
        self._adopt() and self.flush()

    def _adopt(self) -> int:
        """Take over the journals of dead processes on this store and namespace; returns how
        many settles were adopted."""
        assert self.journal is not None
        now_ms = int(self._clock() * 1000)
        adopted = 0
        with self._lock:
            try:  # never folded (not ``_foldable``): any of them may have landed before
                for fresh, refused in adopt(self.journal, {op.hold_id for op in self._queue}, now_ms):
                    self._queue.extend(fresh)
                    for op in fresh:
                        self._owed.add(op, 1)
                    adopted += sum(map(weight, fresh))  # a fold: the settles it stands for
                    self._stats.deferred_refused += refused
            except OSError as err:
                log.error("nasca: could not replay deferred-settle journals in %s: %s",
                          self.journal.directory, err)
        self._stats.deferred_replayed += adopted
        self._count()
        if adopted:
            log.warning("nasca: replaying %d settles deferred by a process that died (%d nanos)",
                        adopted, self.nanos)
        return adopted


_all: weakref.WeakSet[DeferredSettles] = weakref.WeakSet()


def _after_fork() -> None:
    for deferred in list(_all):
        deferred._lock = threading.Lock()  # a parent thread may have held it at the fork
        deferred._turn = threading.Condition(deferred._lock)
        deferred._flush_lock = threading.Lock()
        deferred._wanted = None
        deferred._forked()  # at once: the child's reads must not count the parent's queue
        if deferred.journal is not None:
            deferred.journal.after_fork()


os.register_at_fork(after_in_child=_after_fork)
