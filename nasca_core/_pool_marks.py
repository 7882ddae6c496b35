"""``CeilingMarks``: the ceiling's warnings seen when this process's own charges cross a mark,
not only at the next chunk take (``Thresholds.ceiling_seen`` reads a take's reply).

A take's reply says how far the pool's spend is from its nearest unreached ``warn_at`` mark;
each charge landed here counts down from it (O(1), under the pools' lock, no I/O). Once this
process alone has spent that far, the next round of the background sender (after its flush,
so the charge has landed; with no sender, a timer's thread: ``Pools._timed``) reads one
``pool_snapshot`` and hands it to ``ceiling_seen``; a public ``flush()`` does the same.
Other processes' charges are seen at the next take, as before.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from nasca_core._errors import StoreError
from nasca_core._thresholds import marks
from nasca_core.stores import PoolSnapshot, PoolTakeOp, PoolTakeResult

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca


def to_go(limits: tuple[int, int, int], spent: tuple[int, int, int],
          warn_at: tuple[float, ...]) -> int | None:
    """Nanos of spend until the nearest mark not yet reached (pure); None: none left."""
    return min((mark - spent[i] for i, _, mark in marks(limits, warn_at) if spent[i] < mark), default=None)


class CeilingMarks:
    """Per ledger: the last take's op and the spend to go to its next mark."""

    def __init__(self, ledger: Nasca) -> None:
        self._ledger = ledger
        self._op: PoolTakeOp | None = None
        self._warn_at: tuple[float, ...] = ()
        self._left: int | None = None  # spend to go (None: no mark ahead)
        self.due = False  # a mark may be crossed: check off the caller's path
        # Held through a check, so a flush() waits for one running on another thread (its
        # events then queued before the flush returns).
        self._checking = threading.Lock()

    def forked(self) -> None:
        """In a forked child: a parent's thread may have held the lock."""
        self._checking = threading.Lock()

    def watch(self, op: PoolTakeOp, result: PoolTakeResult, warn_at: tuple[float, ...]) -> None:
        """A take's reply (its ``ceiling_seen`` is done)."""
        self._op, self._warn_at = op, warn_at
        self._left = to_go(op.limits, result.spent, warn_at) if warn_at else None

    def charged(self, cost: int) -> bool:
        """A call's cost counted here (under the pools' lock); True when it newly makes a check due."""
        if self._left is None:
            return False
        self._left -= cost
        if self._left > 0 or self.due:
            return False
        self.due, self._left = True, None
        return True

    def check(self) -> None:
        """If due: one snapshot of the pool, its marks to ``ceiling_seen``. Never raises."""
        with self._checking:
            if (op := self._due_op()) is None:
                return
            now_ms = int(self._ledger.now() * 1000)
            try:
                snap = self._ledger.store.sync.pool_snapshot(op.keys, now_ms)
            except StoreError:
                self._ledger.stats.store_errors += 1
                return
            self._seen(replace(op, now_ms=now_ms), snap)

    async def acheck(self) -> None:
        """Async twin of check(); a check running on another thread is waited for off the loop."""
        if not self._checking.acquire(blocking=False):
            await asyncio.to_thread(self._checking.acquire)
        try:
            if (op := self._due_op()) is None:
                return
            now_ms = int(self._ledger.now() * 1000)
            try:
                snap = await self._ledger.store.for_loop().pool_snapshot(op.keys, now_ms)
            except StoreError:
                self._ledger.stats.store_errors += 1
                return
            self._seen(replace(op, now_ms=now_ms), snap)
        finally:
            self._checking.release()

    def _due_op(self) -> PoolTakeOp | None:
        if not self.due:
            return None
        self.due = False
        return self._op

    def _seen(self, op: PoolTakeOp, snap: PoolSnapshot) -> None:
        result = PoolTakeResult(granted=1, window=0, spent=snap.spent, held=snap.held)
        self._ledger.thresholds.ceiling_seen(op, result, self._warn_at)
        self.watch(op, result, self._warn_at)
