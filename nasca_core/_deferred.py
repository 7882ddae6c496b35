"""Settles the store could not take: kept in order, retried, counted, never dropped."""

from __future__ import annotations

import logging
from collections import deque

from nasca_core._errors import StoreError
from nasca_core._types import Charge, LedgerStats
from nasca_core.stores import SettleOp, StoreHandle

log = logging.getLogger("nasca")


class DeferredSettles:
    """The queue behind ``Nasca.flush_deferred()``; the sync and async flushes differ only
    in the store call."""

    def __init__(self, store: StoreHandle, stats: LedgerStats) -> None:
        self._store = store
        self._stats = stats
        self._queue: deque[SettleOp] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def nanos(self) -> int:
        """What the queued settles cost altogether."""
        return sum(op.cost for op in self._queue)

    def defer(self, op: SettleOp, exc: StoreError) -> Charge:
        """Queue a settle the store refused; the charge says it was deferred."""
        self._queue.append(op)
        self._stats.store_errors += 1
        self._stats.deferred += 1
        self._stats.deferred_pending = len(self._queue)
        log.warning("nasca: store unreachable, deferred a settle of %d nanos for %s (%d pending): %s",
                    op.cost, op.keys.meta, len(self._queue), exc)
        return Charge(op.cost, op.cost, 0, deferred=True)

    def flush(self) -> int:
        """Retry the queued settles in order; returns how many went through."""
        done = 0
        # Take before trying, put back on failure: two threads flushing at once never apply
        # (or drop) the same entry. A retry of a settle the store did apply is a no-op there.
        while (op := self._take()) is not None:
            try:
                self._store.sync.settle(op)
            except StoreError:
                self._queue.appendleft(op)
                break
            done += 1
        return self._flushed(done)

    async def aflush(self) -> int:
        """Async twin of flush()."""
        done = 0
        while (op := self._take()) is not None:
            try:
                await self._store.for_loop().settle(op)
            except StoreError:
                self._queue.appendleft(op)
                break
            done += 1
        return self._flushed(done)

    def _take(self) -> SettleOp | None:
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def _flushed(self, done: int) -> int:
        self._stats.deferred_retried += done
        self._stats.deferred_pending = len(self._queue)
        if done:
            log.info("nasca: applied %d deferred settles (%d pending)", done, len(self._queue))
        return done
