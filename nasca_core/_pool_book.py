"""What ``_pools`` keeps per chunk, and what it tells the caller when a pool blocks a call or
the store can't answer a take. Uses only the ledger's public port."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nasca_core._explain import ceiling_error, tell_listeners

if TYPE_CHECKING:
    from nasca_core._errors import NascaCeilingError, StoreError
    from nasca_core._ledger import Nasca
    from nasca_core._types import Reservation
    from nasca_core.stores._pools import PoolKeys, PoolTakeOp, PoolTakeResult

log = logging.getLogger("nasca")


@dataclass(slots=True, eq=False)
class Chunk:
    id: str  # the take's lease id: the hold's id in the pool
    keys: PoolKeys
    size: int
    until_ms: int  # no call is drawn on it from then (``_pool_policy.chunk_ends``)
    expiry_ms: int  # its hold lapses in the store then
    version: int  # the config version it was taken under: a newer one ends it
    out: int = 0  # estimates of the calls drawn on it, not yet settled or released
    used: int = 0  # costs of its settled calls
    n: int = 0  # calls drawn on it, outstanding
    retired: bool = False
    prefetched: bool = False  # its successor was asked of the sender's thread (below half free)


def ceiling_block(ledger: Nasca, user_id: str, tier: str, op: PoolTakeOp | None,
                  result: PoolTakeResult | None) -> NascaCeilingError:
    """The ceiling's block of a call, told to the block listeners (the owner's limit)."""
    now = op.now_ms / 1000 if op is not None else ledger.now()
    limits = op.limits if op is not None else ledger.live.current().ceiling_limits
    spent = result.spent if result is not None else (0, 0, 0)
    window = result.window if result is not None and 1 <= result.window <= 3 else 0
    err = ceiling_error(user_id=user_id, tier=tier, limits=limits, spent=spent, window=window,
                        ws=ledger.windows_at(now), tz=ledger.tz,
                        prompt_id=op.lease_id if op is not None else "")
    if op is not None and result is not None:  # the hit: the owner's hooks and webhook, once a window
        ledger.thresholds.ceiling_seen(op, result, (), blocked=True)
    ledger.stats.blocked += 1
    tell_listeners(ledger.block_listeners, err, log)
    return err


def unchecked(ledger: Nasca, reservation: Reservation, exc: StoreError) -> Reservation:
    """A take the store could not answer: under "allow" the call runs unchecked (its settle
    still charges the pool when it lands), under "block" ``exc`` is raised (the caller releases it)."""
    ledger.stats.store_errors += 1
    if ledger.on_store_error == "block":
        raise exc  # the caller releases the call
    log.warning("nasca: store unreachable, the ceiling is not checked (on_store_error='allow'): %s", exc)
    return reservation


def sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


class Timers:
    """With no sender's thread: the timer that ends the live chunk, and at most one more that
    drops the holds due and checks a mark crossed, off the caller's path. Each runs ``timed``
    (the chunk it ends, or None) on its own thread. Thread-safe; callable under the pools' lock."""

    def __init__(self, timed: Callable[[Chunk | None], None]) -> None:
        self._timed = timed
        self._lock = threading.Lock()
        self._chunk: threading.Timer | None = None
        self._soon: threading.Timer | None = None  # armed, not yet run

    def arm(self, delay: float = 0.0) -> None:
        with self._lock:
            if self._soon is None:
                self._soon = self._start(delay, None)

    def armed(self) -> bool:
        return self._soon is not None

    def end_at(self, delay: float, chunk: Chunk) -> None:
        with self._lock:
            old, self._chunk = self._chunk, self._start(delay, chunk)
        if old is not None:
            old.cancel()  # its chunk was retired by the take that started this one

    def cancel(self) -> None:
        with self._lock:
            timers, self._chunk, self._soon = (self._chunk, self._soon), None, None
        for timer in timers:
            if timer is not None:
                timer.cancel()

    def forked(self) -> None:
        self._lock, self._chunk, self._soon = threading.Lock(), None, None

    def _start(self, delay: float, chunk: Chunk | None) -> threading.Timer:
        timer = threading.Timer(max(0.0, delay), self._run, (chunk,))
        timer.daemon = True
        timer.start()
        return timer

    def _run(self, chunk: Chunk | None) -> None:
        if chunk is None:
            with self._lock:
                self._soon = None  # the next hold due arms another
        self._timed(chunk)
