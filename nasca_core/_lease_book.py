"""A budget lease's record and the bounded, expiring books ``_leases`` keeps about leases.

Free of I/O; every method runs under the lease table's lock (``_leases.Leases``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from nasca_core.stores import ReserveOp, ReserveResult

if TYPE_CHECKING:
    from nasca_core._live import ConfigSnapshot
    from nasca_core._types import Charge

MAX_SETTLED = 65_536  # settled leased calls remembered (for a retry of their settle), at most


class Lease:
    __slots__ = ("anchor", "cap", "config", "expiry_ms", "holds", "id", "key", "keys", "n", "out",
                 "reserved_ms", "retired", "room", "size", "tier", "until_ms", "used", "user")

    def __init__(self, key: tuple[str, str, bool], op: ReserveOp, result: ReserveResult,
                 config: ConfigSnapshot, until_ms: int) -> None:
        self.key, self.user, self.id, self.size = key, key[0], op.hold_id, op.estimate
        self.keys, self.anchor, self.reserved_ms, self.tier = op.keys, op.anchor, op.now_ms, result.tier
        self.config, self.until_ms, self.expiry_ms = config, until_ms, op.hold_expiry_ms
        # Estimates outstanding (a call whose settle is on its way: at its cost), costs settled
        # (in the store or in this process's queue), calls outstanding (their settle not yet queued
        # or landed): the lease's hold is dropped only once that is 0.
        self.out = self.used = self.n = 0
        # The tier's in-flight cap (-1 = none): under a cap a lease carries one call at a time, since
        # every store counts a lease's hold as one call in flight, in every process.
        self.cap = result.applied[6] if result.applied is not None and len(result.applied) > 6 else -1
        self.room = result.room  # the store's room left after the lease's hold (-1: no limit)
        self.holds: set[str] = set()  # the calls outstanding under it
        self.retired = False

    def room_left(self, amount: int) -> int:
        """For the call of ``amount`` just carved out: the ``Reservation.room`` a per-call hold
        would show in this process (the other calls' holds counted, not this one's, nor the
        lease's free part). The lease's reply counts neither its own hold; -1: no limit."""
        return -1 if self.room < 0 else max(0, self.room - self.used - (self.out - amount))

    def unbacked(self) -> int:
        """The part of the lease's hold that ``held`` must not count again for another reserve
        of the user here: the costs of its settled calls (already in spent). Once retired, its
        whole unused part (no call will take it)."""
        if self.retired:
            return max(0, self.size - self.out)
        return max(0, min(self.used, self.size - self.out))


class Settled:
    """Hold ids of settled leased calls -> their Charge, for ``_MARKER_MS`` (as the store's
    settled markers) and at most ``MAX_SETTLED``: a retried settle is answered from here, since
    the store's marker may be under a folded settle's id."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: OrderedDict[str, tuple[int, Charge]] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._ids)

    def __contains__(self, hold_id: object) -> bool:
        return hold_id in self._ids

    def get(self, hold_id: str) -> Charge | None:
        got = self._ids.get(hold_id)
        return None if got is None else got[1]

    def add(self, hold_id: str, charge: Charge, expiry_ms: int, now_ms: int) -> None:
        ids = self._ids
        ids[hold_id] = (expiry_ms, charge)
        while ids and (len(ids) > MAX_SETTLED or next(iter(ids.values()))[0] <= now_ms):
            ids.popitem(last=False)  # amortised O(1): each id is added once and dropped once

    def clear(self) -> None:
        self._ids.clear()


class Aging:
    """Leases in the order they were taken, so the first is the one to end first (its
    ``until_ms`` or ``expiry_ms`` is the earliest, but for a window's end): amortised O(1)."""

    __slots__ = ("_leases",)

    def __init__(self) -> None:
        self._leases: deque[Lease] = deque()

    def add(self, lease: Lease) -> None:
        self._leases.append(lease)

    def due(self, at_ms: int, when: str) -> list[Lease]:
        """The leases whose ``when`` (``until_ms`` or ``expiry_ms``) is at or before ``at_ms``."""
        leases, out = self._leases, []
        while leases and getattr(leases[0], when) <= at_ms:
            out.append(leases.popleft())
        return out

    def next_ms(self, when: str) -> int | None:
        return getattr(self._leases[0], when) if self._leases else None

    def clear(self) -> None:
        self._leases.clear()
