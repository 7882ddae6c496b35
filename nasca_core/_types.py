"""The ledger's small result types, shared by the ledger, its services and the call tracker."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from nasca_core._errors import StoreError
from nasca_core._money import to_usd
from nasca_core.stores import UserKeys

if TYPE_CHECKING:
    from nasca_core._thresholds import ThresholdWarning

_hold_seq = itertools.count(1)
_HOLD_PREFIX = os.urandom(6).hex()


def next_hold_id() -> str:
    """A hold id unique across processes: it dedupes retried settles."""
    return f"{_HOLD_PREFIX}{next(_hold_seq)}"


def _new_hold_prefix() -> None:
    # A forked worker (multiprocessing, Celery, gunicorn --preload) must not reuse its
    # parent's ids, or its settles would look like replays.
    global _HOLD_PREFIX, _hold_seq
    _HOLD_PREFIX = os.urandom(6).hex()
    _hold_seq = itertools.count(1)


os.register_at_fork(after_in_child=_new_hold_prefix)


@dataclass
class LedgerStats:
    """Counters of what happened in this process (for logs and health checks)."""

    reserved: int = 0
    blocked: int = 0
    settled: int = 0
    released: int = 0
    store_errors: int = 0
    deferred: int = 0  # settles the store could not take (journaled to disk, except on memory://)
    deferred_retried: int = 0
    deferred_pending: int = 0
    deferred_pending_nanos: int = 0
    deferred_replayed: int = 0  # adopted from the journal of a process that died
    deferred_refused: int = 0  # journaled too long ago to replay safely (kept aside, logged)
    deferred_unjournaled: int = 0  # kept in memory only: the journal could not be written
    stale_config_retries: int = 0
    settle_queued: int = 0  # model calls' settles handed to the background sender (``_sender``)
    settle_queue_full: int = 0  # settled on the caller's path because the sender was too far behind
    fallbacks: int = 0  # calls a spent tier sent to its fallback model instead (``_fallback``)
    leases: int = 0  # budget leases taken (``_leases``)
    leased: int = 0  # calls admitted under a lease, with no store call (counted in ``reserved`` too)
    lease_misses: int = 0  # a lease's reserve the store refused: the call then reserved alone
    pool_takes: int = 0  # chunks of the app-wide ceiling taken (``_pools``)


class count_store_errors:
    """``with count_store_errors(stats):`` counts a StoreError raised in the block (and lets it through)."""

    __slots__ = ("stats",)

    def __init__(self, stats: LedgerStats) -> None:
        self.stats = stats

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and issubclass(kind, StoreError):
            self.stats.store_errors += 1


@dataclass(frozen=True, slots=True)
class PoolDraw:
    """A call's draw on this process's chunk of a pool (``_pools``): returned by its settle or release."""

    pool: str  # the pool id ("app": the ceiling)
    chunk: str  # the chunk's lease id
    amount: int  # the call's estimate, in nano-dollars


# Frozen although built on every call (~2 µs of a reserve+settle): callers hash them, share
# them across threads and subclass them as frozen dataclasses (which a non-frozen base refuses).
@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold on a user's budget for one call: settle it with the real cost, or release it."""

    user_id: str
    tier: str
    hold_id: str
    estimate_nanos: int
    keys: UserKeys
    degraded: bool = False  # admitted without the store (on_store_error="allow")
    # What the user could still spend at admission beside the other calls in flight, this one's
    # hold not taken (``ReserveResult.room``; -1 = no limit or not known): ``LLMCall.output_cap``.
    room: int = -1
    # Tier(warn_at=...): the threshold this call's estimate projects a window to (``_thresholds``).
    warning: ThresholdWarning | None = None
    reserved_ms: int = 0  # when the store admitted it (epoch ms; 0 = not known): its settle's boosts
    # The user's billing-cycle anchor spec the reserve was checked against (``_windows``;
    # "" = calendar months): the settle names its month from it, in any process.
    anchor: str = ""
    # The call's part of this process's chunk of a pool (the app-wide ceiling: ``_pools``);
    # None when no pool was drawn (no ceiling, or admitted unchecked).
    pool: PoolDraw | None = None

    @property
    def estimate(self) -> Decimal:
        return to_usd(self.estimate_nanos)


@dataclass(frozen=True, slots=True)
class Charge:
    """What a settled call cost and who paid: the tier's allowance or the user's credits.

    A ``pending`` charge (queued for the background sender) has not been split yet: its
    ``tier_nanos`` and ``credit_nanos`` are 0, and the store decides the split as it lands."""

    cost_nanos: int
    tier_nanos: int
    credit_nanos: int
    deferred: bool = False  # the store was unreachable; the charge is queued for retry
    pending: bool = False  # queued for the background sender: the split is known once it lands

    @property
    def cost(self) -> Decimal:
        return to_usd(self.cost_nanos)
