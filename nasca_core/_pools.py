"""Pools in this process: the chunks it took of each pool, and the calls drawn on them.

A pool (``stores._pools``: the app-wide ceiling, pool ``"app"``) is never reserved per call.
This process takes a *chunk* of it, a hold on the pool's keys with an expiry, sized by
``_pool_policy``, and draws each call's estimate from the chunk's free part under one lock
in O(1). The take rides on the user's reserve (``ReserveOp.pool_take``, no extra round trip)
or, for a call admitted with no store call (a budget lease), goes alone (``pool_take``). A
call's settle charges its cost to the pool (``SettleOp.pools``, once per hold id) and gives
its draw back; a chunk ends ``LEASE_S`` after it was taken, at the end of its day, when the
config version moves, or when a call does not fit; its hold is dropped (``pool_release``)
once nothing drawn on it is outstanding: on the background sender's thread one round after
(the calls' queued settles land first), else on a timer's thread (an idle process keeps no
hold), at ``flush()`` and ``close()``. A forked child has none. Uses only the ledger's public port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING

from nasca_core._errors import ConfigurationError, NascaCeilingError, StoreError
from nasca_core._live import UNREADABLE_CEILING
from nasca_core._pool_admit import aadmitted, aconfig, admitted, prefetch
from nasca_core._pool_book import Chunk, Timers, ceiling_block, sooner
from nasca_core._pool_marks import CeilingMarks
from nasca_core._pool_policy import chunk_ends, chunk_expiry, chunk_size, fits, room_of
from nasca_core._types import Charge, PoolDraw, Reservation, next_hold_id
from nasca_core.stores._pools import APP_POOL, PoolKeys, PoolTakeOp, PoolTakeResult

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._live import ConfigSnapshot
    from nasca_core._windows import WindowSet
    from nasca_core.stores import SettleOp

log = logging.getLogger("nasca")

# A take whose reply never came (a StoreError or a cancellation after the store may have applied
# it) is released this long after it was sent: far past any reply, so no chunk is used unheld.
LOST_TAKE_MS = 60_000


class Pools:
    """This ledger's chunks, per pool id: thread-safe, fork-safe; sync and async twins differ
    only in the store call."""

    def __init__(self, ledger: Nasca) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self._reaping = threading.Lock()  # held by the sender's thread while it drops holds
        self._dropped = 0  # chunk holds dropped (a count: a refused take retries once it moved)
        self._live: dict[str, Chunk] = {}  # pool id -> the chunk calls are drawn on
        self._chunks: dict[str, Chunk] = {}  # lease id -> each chunk whose hold is in the store
        self.draws: dict[str, tuple[Chunk, int]] = {}  # hold id of a call drawn -> (chunk, estimate)
        self._room: dict[str, int | None] = {}  # pool id -> the room its last take's reply left
        self._due: list[Chunk] = []  # ended with nothing outstanding: released a sender round on
        self._ready: list[Chunk] = []  # ... now (the calls' settles queued before have landed)
        self._timers = Timers(self._timed)  # with no sender's thread: chunks ended, holds dropped
        self._keys: tuple[tuple[str, str, str], PoolKeys] | None = None  # the windows' keys, cached
        # Takes sent, no reply yet: lease id -> (op, ``_dropped`` then); refused ones -> that count.
        self._sent: dict[str, tuple[PoolTakeOp, int]] = {}
        self._refused: dict[str, int] = {}
        self._next: dict[str, int] = {}  # pool id -> the estimate to size the chunk the sender takes next
        self._queued: dict[str, Chunk] = {}  # hold id of a call whose settle is queued -> its chunk
        self._early: set[str] = set()  # ... whose settle landed before it returned to the caller
        landed = ledger.deferred.on_landed  # the thresholds' step, then the chunks' (never raises)

        def on_landed(op: SettleOp, result: object) -> object:
            got = landed(op, result)
            if self.draws or self._queued:
                self._settle_landed(op)
            return got

        ledger.deferred.on_landed = on_landed
        before = ledger.deferred.on_idle  # the leases' reaper: both run on the sender's thread
        ledger.deferred.on_idle = lambda monotonic: sooner(before(monotonic) if before else None,
                                                            self.reap(monotonic))
        self.marks = CeilingMarks(ledger)  # warnings at this process's own charges (``_pool_marks``)
        _all.add(self)

    @property
    def ledger(self) -> Nasca:
        return self._ledger

    # -- admission -------------------------------------------------------------------------
    def take_for(self, snap: ConfigSnapshot, estimate: int) -> PoolTakeOp | None:
        """For a reserve under ``snap``'s ceiling: None when the live chunk here covers the
        call, else the take that rides on the reserve (the live chunk ends)."""
        now = self._ledger.now()
        now_ms = int(now * 1000)
        with self._lock:
            chunk = self._live.get(APP_POOL)
            if chunk is not None:
                if self._usable(chunk, snap, now_ms) and fits(chunk.size, chunk.out, chunk.used, estimate):
                    return None
                self._retire(chunk)  # with no sender, dropped on a timer's thread (``_ended``)
        return self.take_op(snap, estimate, now)

    def took(self, snap: ConfigSnapshot, op: PoolTakeOp, result: PoolTakeResult | None) -> bool:
        """A take's reply: the chunk granted becomes the live one; False when the pool granted
        nothing (the call is blocked by the ceiling). The ceiling's warnings are queued."""
        with self._lock:
            sent = self._sent.pop(op.lease_id, None)
        if result is None:  # the store answered before the take (a stale config): nothing taken
            return True
        self._ledger.thresholds.ceiling_seen(op, result, snap.ceiling.warn_at if snap.ceiling else ())
        self.marks.watch(op, result, snap.ceiling.warn_at if snap.ceiling else ())
        self._room[op.keys.pool] = room_of(op.limits, result.spent, result.held)
        if result.granted <= 0:
            with self._lock:
                if len(self._refused) > 64:  # a refusal nobody retried (the caller raised)
                    self._refused.clear()
                self._refused[op.lease_id] = sent[1] if sent is not None else self._dropped
            return False
        if sent is None:  # a reply so late its take was given up as lost (and released): unused
            return True
        ws = self._ledger.windows_at(op.now_ms / 1000)
        chunk = Chunk(op.lease_id, op.keys, result.granted,
                      chunk_ends(op.now_ms, int(ws.ends[0] * 1000), op.expiry_ms), op.expiry_ms, snap.version)
        with self._lock:
            self._forget_expired(op.now_ms)  # once per chunk: calls never settled don't pile up
            if (old := self._live.get(op.keys.pool)) is not None:
                self._retire(old)
            self._live[op.keys.pool] = self._chunks[chunk.id] = chunk
        self._ledger.stats.pool_takes += 1
        if (sender := self._ledger.deferred.sender) is not None:
            sender.wake()  # its thread ends the chunk at ``until_ms`` (``reap``)
        else:  # none: a timer ends it, so an idle process keeps no hold until it lapses
            self._timers.end_at((chunk.until_ms - op.now_ms) / 1000, chunk)
        return True

    # Drawn on a chunk (``_pool_admit``); a block, error or cancellation releases the call first.
    admitted, aadmitted, aconfig = admitted, aadmitted, aconfig

    def blocked(self, user_id: str, tier: str, op: PoolTakeOp | None,
                result: PoolTakeResult | None) -> NascaCeilingError:
        """The ceiling's block of a call, told to the block listeners (the owner's limit)."""
        return ceiling_block(self._ledger, user_id, tier, op, result)

    def retry(self, snap: ConfigSnapshot, take: PoolTakeOp | None = None) -> bool:
        """A take the pool refused under ``snap``: drop the holds of this process's ended chunks
        now (they may be what refused it), or see whether the ceiling changed elsewhere (the
        store takes the chunk before it checks the config version). True: take again."""
        if self._reaped(take):
            return True
        if (self._queued or self._due or self._ready) and self._ledger.deferred:
            self._ledger.deferred.flush()  # their calls' settles land first: charged before unheld
        if (self._due or self._ready) and self._release(self._releasable()):
            return True
        try:
            return self._ledger.live.fresh().version != snap.version
        except StoreError:
            return False

    async def aretry(self, snap: ConfigSnapshot, take: PoolTakeOp | None = None) -> bool:
        """Async twin of retry()."""
        await self._areap_done()
        if self._reaped(take, wait=False):
            return True
        if (self._queued or self._due or self._ready) and self._ledger.deferred:
            await self._ledger.deferred.aflush()
        if (self._due or self._ready) and await self._arelease(self._releasable()):
            return True
        try:
            return (await self._ledger.live.afresh()).version != snap.version
        except StoreError:
            return False

    def _reaped(self, take: PoolTakeOp | None, wait: bool = True) -> bool:
        # True when a hold of this process's was dropped since ``take`` was sent (the sender's
        # thread may be dropping one now: waited for), so the room it freed is there to take;
        # or another thread here (the sender's prefetch) has since put a chunk the call fits live.
        now_ms = int(self._ledger.now() * 1000)
        with self._lock:
            before = self._dropped
            if take is not None:
                before = self._refused.pop(take.lease_id, before)
                chunk = self._live.get(take.keys.pool)
                if chunk is not None and now_ms < chunk.until_ms and fits(chunk.size, chunk.out, chunk.used,
                                                                          take.least):
                    return True
        if wait:
            with self._reaping:
                return self._dropped != before
        return self._dropped != before

    async def _areap_done(self) -> None:
        # The sender's thread holds ``_reaping`` across store calls: waited for off the loop (a
        # cancelled wait leaves the thread to finish by itself; it takes nothing).
        if self._reaping.locked():
            await asyncio.to_thread(self._reap_done)

    def _reap_done(self) -> None:
        with self._reaping:
            pass

    # -- the end of a call -----------------------------------------------------------------
    def charged(self, op: SettleOp, draw: PoolDraw | None) -> tuple[tuple[PoolKeys, ...], tuple[str, ...]]:
        """A call's settle: the pools its cost is charged to (the ceiling's windows where the
        call ended) and the chunk it was drawn on (``draw``: its hold lowered by the cost)."""
        return (self.keys(self._ledger.windows_at(op.now_ms / 1000)),), (draw.chunk if draw else "",)

    def landed(self, hold_id: str, cost: int, charge: Charge | None = None) -> None:
        """A call's settle returned (``charge``; None: it raised): its draw given back, its cost
        counted on the chunk. A settle queued for the sender or deferred (``Charge.pending`` /
        ``deferred``) keeps its chunk's hold until it lands (``_settle_landed``): a chunk dropped
        while a call's cost is on its way to the pool lets other processes take that room again."""
        if not self.draws:
            return
        with self._lock:  # popped under the lock: the reaper walks the draws under it
            if (draw := self.draws.pop(hold_id, None)) is not None:
                chunk = draw[0]
                chunk.out -= draw[1]
                chunk.used += cost
                if self.marks.charged(cost):  # a mark crossed here: read the pool off this path
                    if (sender := self._ledger.deferred.sender) is not None:
                        sender.wake()  # its round checks it (``_pool_marks``)
                    else:
                        self._timers.arm()
                if charge is not None and (charge.pending or charge.deferred) and \
                        hold_id not in self._early:
                    self._queued[hold_id] = chunk  # ``n`` counts it until it lands
                    return
                self._early.discard(hold_id)
                chunk.n -= 1
                if chunk.retired and chunk.n == 0:
                    self._ended(chunk)

    def _settle_landed(self, op: SettleOp) -> None:
        # ``DeferredSettles.on_landed``: a queued or deferred settle (or a fold of some) landed.
        with self._lock:
            for hold in (op.hold_id, *op.of):
                if (chunk := self._queued.pop(hold, None)) is not None:
                    chunk.n -= 1
                    if chunk.retired and chunk.n == 0:
                        self._ended(chunk)
                elif hold in self.draws:  # landed before its settle returned to the caller
                    self._early.add(hold)

    def released(self, reservation: Reservation) -> None:
        """A call released (it cost nothing): its draw given back."""
        with self._lock:
            if (draw := self.draws.pop(reservation.hold_id, None)) is not None:
                chunk = draw[0]
                chunk.out -= draw[1]
                chunk.n -= 1
                if chunk.retired and chunk.n == 0:
                    self._ended(chunk)

    def keys(self, ws: WindowSet, pool: str = APP_POOL) -> PoolKeys:
        """Where ``pool`` lives for the windows ``ws`` (the app's calendar windows)."""
        cached = self._keys
        if cached is not None and cached[0] == ws.ids and cached[1].pool == pool:
            return cached[1]
        keys = PoolKeys.build(self._ledger.namespace, pool, ws.ids)
        self._keys = (ws.ids, keys)
        return keys

    # -- ends --------------------------------------------------------------------------------
    def reap(self, _monotonic: float = 0.0) -> float | None:
        """``DeferredSettles.on_idle``, on the sender's thread (after its flush): end chunks past
        their ``until_ms``, drop the holds of those ended a round ago; the seconds to the next."""
        if self.marks.due:
            self.marks.check()
        if not (self._chunks or self._next or self._sent):
            return None  # no ceiling, or nothing taken yet: nothing to do on the sender's rounds
        now_ms = int(self._ledger.now() * 1000)
        with self._reaping:  # close() waits for it: no chunk is taken or kept past a flush
            if self._next:
                prefetch(self)
            with self._lock:
                for chunk in [c for c in self._live.values() if c.until_ms <= now_ms]:
                    self._retire(chunk)
                self._forget_expired(now_ms)
                if self._ledger.deferred.stalled:  # the calls' settles may not have landed: kept held
                    ready = []
                else:
                    ready, self._ready, self._due = self._ready, self._due, []
                    for chunk in ready:
                        self._chunks.pop(chunk.id, None)
                after = min((c.until_ms for c in self._live.values()), default=None)
            if not self._release(ready) and ready:
                return 1.0  # the store refused: try again in a while
        if self._ready:
            return 0.01  # the next round releases them, after one more flush
        return None if after is None else max(0.0, (after - now_ms) / 1000)

    def wanted(self) -> dict[str, int]:
        """The chunks the sender's thread is asked to take next (``prefetch``): pool id -> estimate."""
        with self._lock:
            wanted, self._next = self._next, {}
        return wanted

    def flush(self) -> int:
        """``Nasca.flush()``: end the leases and every chunk, land the queued settles (how many
        landed), then drop the chunks' holds: a serverless request ending with it leaves none."""
        landed = self._ledger.leases.flush()
        self.close()
        self.marks.check()
        return landed

    async def aflush(self) -> int:
        """Async twin of flush()."""
        landed = await self._ledger.leases.aflush()
        await self._areap_done()  # what the sender's thread is taking or dropping ends first
        with self._lock:
            self._next.clear()
        await self._arelease(self._ending())
        await self.marks.acheck()
        return landed

    def close(self) -> None:
        """End every chunk; those with nothing outstanding have their holds dropped now (and
        any the sender's thread is dropping, before this returns)."""
        with self._reaping:
            self._next.clear()
            self._release(self._ending())
        self._timers.cancel()  # what they would drop was dropped above

    def _ending(self) -> list[Chunk]:
        with self._lock:
            for chunk in list(self._live.values()):
                self._retire(chunk)
        return self._releasable()

    # -- internals -------------------------------------------------------------------------
    def take_op(self, snap: ConfigSnapshot, estimate: int, now: float) -> PoolTakeOp:
        if snap.ceiling is UNREADABLE_CEILING:
            raise ConfigurationError("the stored ceiling can't be read by this version of nasca (written "
                                     "by a newer one?): calls are refused; upgrade, or set the ceiling again")
        ws = self._ledger.windows_at(now)
        keys, now_ms = self.keys(ws), int(now * 1000)
        want, least = chunk_size(estimate, self._room.get(keys.pool))
        op = PoolTakeOp(keys, now_ms, next_hold_id(), want, least, snap.ceiling_limits,
                        chunk_expiry(now_ms, self._ledger.hold_ttl_ms), ws.ttls_from(now))
        with self._lock:
            self._sent[op.lease_id] = (op, self._dropped)
        return op

    def draw(self, snap: ConfigSnapshot, reservation: Reservation) -> Reservation | None:
        now_ms = int(self._ledger.now() * 1000)
        amount = reservation.estimate_nanos
        with self._lock:
            chunk = self._live.get(APP_POOL)
            if chunk is None:
                return None
            if not self._usable(chunk, snap, now_ms) or not fits(chunk.size, chunk.out, chunk.used, amount):
                self._retire(chunk)  # its hold goes once its calls are done: the next take sees the room
                return None
            chunk.out += amount
            chunk.n += 1
            self.draws[reservation.hold_id] = (chunk, amount)
            sender = self._ledger.deferred.sender
            half = 2 * (chunk.out + chunk.used) > chunk.size
            if prefetch := sender is not None and half and not chunk.prefetched:
                chunk.prefetched = True  # the next chunk is taken off the caller's path
                self._next[APP_POOL] = amount
        if prefetch and sender is not None:
            sender.wake()
        r = reservation  # by position: dataclasses.replace costs several times as much
        return Reservation(r.user_id, r.tier, r.hold_id, amount, r.keys, r.degraded, r.room, r.warning,
                           r.reserved_ms, r.anchor, PoolDraw(APP_POOL, chunk.id, amount))

    def land_due(self) -> None:
        # No I/O: with no sender's thread, those ended (or put back) are dropped on a timer's.
        if (self._due or self._ready) and self._ledger.deferred.sender is None and not self._timers.armed():
            self._timers.arm()

    def _release(self, chunks: list[Chunk]) -> bool:
        for i, chunk in enumerate(chunks):
            try:
                self._ledger.store.sync.pool_release(chunk.keys, chunk.id, int(self._ledger.now() * 1000))
            except StoreError as exc:
                self._kept(chunks[i:], exc)
                return i > 0
            self._dropped += 1
        return bool(chunks)

    async def _arelease(self, chunks: list[Chunk]) -> bool:
        for i, chunk in enumerate(chunks):
            try:
                await self._ledger.store.for_loop().pool_release(chunk.keys, chunk.id,
                                                                 int(self._ledger.now() * 1000))
            except StoreError as exc:
                self._kept(chunks[i:], exc)
                return i > 0
            except BaseException:  # cancelled: the rest are dropped later (this one may be: a no-op)
                self._kept(chunks[i:], None)
                raise
            self._dropped += 1
        return bool(chunks)

    def _kept(self, chunks: list[Chunk], exc: StoreError | None) -> None:
        if exc is not None:
            self._ledger.stats.store_errors += 1
            log.warning("nasca: a ceiling chunk's hold could not be dropped; retried, else it expires: %s",
                        exc)
        with self._lock:
            for chunk in chunks:
                self._chunks[chunk.id] = chunk
            self._ready.extend(chunks)

    def _releasable(self) -> list[Chunk]:
        with self._lock:
            chunks, self._due, self._ready = self._due + self._ready, [], []
            for chunk in chunks:
                self._chunks.pop(chunk.id, None)
        return chunks

    # -- under the lock --------------------------------------------------------------------
    def _usable(self, chunk: Chunk, snap: ConfigSnapshot, now_ms: int) -> bool:
        return not chunk.retired and now_ms < chunk.until_ms and chunk.version == snap.version

    def _retire(self, chunk: Chunk, soon: bool = True) -> None:
        chunk.retired = True
        if self._live.get(chunk.keys.pool) is chunk:
            del self._live[chunk.keys.pool]
        if chunk.n == 0:
            self._ended(chunk, soon)

    def _ended(self, chunk: Chunk, soon: bool = True) -> None:
        # Not ``soon``: the timer's thread that ended it drops it itself (``_timed``).
        if chunk.id in self._chunks and chunk not in self._due:
            self._due.append(chunk)
            if soon and self._ledger.deferred.sender is None:
                self._timers.arm()  # its hold dropped off the caller's path, once for all those due

    def _timed(self, chunk: Chunk | None) -> None:
        # On a timer's thread (``Timers``): ``chunk`` ends; the holds due are dropped.
        with self._lock:
            if chunk is not None and not chunk.retired:
                self._retire(chunk, soon=False)  # none drawn on it: dropped below, else at its last call's
        if self.marks.due:
            self.marks.check()
        if self._due or self._ready:
            with self._reaping:
                self._release(self._releasable())
            if self._ready and self._ledger.deferred.sender is None:
                self._timers.arm(1.0)  # refused (put back): again in a while, else they expire

    def _lost(self, now_ms: int) -> None:
        # Takes with no reply for LOST_TAKE_MS: released like an ended chunk (a no-op if the
        # store never applied them), so a lost reply leaves no hold until the chunk's expiry.
        for op, _ in [x for x in self._sent.values() if x[0].now_ms + LOST_TAKE_MS <= now_ms]:
            del self._sent[op.lease_id]
            chunk = self._chunks[op.lease_id] = Chunk(op.lease_id, op.keys, 0, 0, op.expiry_ms, -1)
            chunk.retired = True
            self._ended(chunk)

    def _forget_expired(self, now_ms: int) -> None:
        # The store dropped their holds: calls still drawn on them just settle (charged in full).
        if self._sent:
            self._lost(now_ms)
        if not (gone := {c for c in self._chunks.values() if c.expiry_ms <= now_ms}):
            return
        for chunk in gone:
            chunk.retired = True
            if self._live.get(chunk.keys.pool) is chunk:
                del self._live[chunk.keys.pool]
            del self._chunks[chunk.id]
        for hold in [h for h, (c, _) in self.draws.items() if c in gone]:
            del self.draws[hold]
            self._early.discard(hold)
        for hold in [h for h, c in self._queued.items() if c in gone]:
            del self._queued[hold]

    def _forked(self) -> None:
        self._lock, self._reaping = threading.Lock(), threading.Lock()
        self._timers.forked()
        self.marks.forked()
        for book in (self._live, self._chunks, self.draws, self._room, self._sent, self._next, self._refused,
                     self._queued, self._early):
            book.clear()
        self._due, self._ready = [], []


_all: weakref.WeakSet[Pools] = weakref.WeakSet()


def _after_fork() -> None:  # a child never uses its parent's chunks; the parent keeps them
    for pools in list(_all):
        pools._forked()


os.register_at_fork(after_in_child=_after_fork)
