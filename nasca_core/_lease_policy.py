"""When a budget lease may be taken, and how big: pure, free of I/O (``_leases`` does the rest).

A lease draws only on the tier's allowance, never on credits, and only for a user far from
every limit and every ``warn_at`` mark: calls admitted under it then get exactly the answer
(admitted, no warning) that per-call holds would have given them. Amounts are int nano-dollars;
``applied`` is what the store applied at a reserve (``ReserveResult.applied``: limits d, w, m
(-1 = none), hard flags d, w, m, in-flight cap (-1 = none)).
"""

from __future__ import annotations

from collections.abc import Sequence

from nasca_core._thresholds import marks

LEASE_S = 5.0  # a lease's life: how stale a limit lowered in another process may be seen here
ROOM_SHARE = 4  # a lease takes at most a quarter of the tier's room left
MAX_CALLS = 64  # ... and at most this many estimates of the call that taught it
MIN_CALLS = 8  # below this many estimates a lease would not pay for its reserve
# The most a lease's settles wait for the background sender (a flush waits up to 1 s for a
# user's reads: ``_deferred.WRITE_WAIT_S``). With the lease's life, its hold must outlive that
# with a wide margin, or it could expire under calls still admitted on it.
SENDER_WAIT_S = 1.0
MIN_HOLD_TTL_S = max(60.0, 4 * (LEASE_S + SENDER_WAIT_S))


def leases_allowed(hold_ttl_s: float) -> bool:
    """Whether a ledger whose holds live ``hold_ttl_s`` seconds may take leases at all."""
    return hold_ttl_s >= MIN_HOLD_TTL_S


def lease_size(applied: Sequence[int] | None, spent: Sequence[int], held: int, estimate: int,
               warn_at: tuple[float, ...] = ()) -> int:
    """The lease a user may take after a reserve of ``estimate`` that answered ``spent`` and
    ``held`` (this call's hold included) under ``applied``; 0 = none. A user with no limit
    gets ``MAX_CALLS`` estimates (nothing to overspend; the lease saves the round trips).
    A tier's in-flight cap (``applied[6]``) does not forbid one: ``_leases`` then admits one
    call at a time under it, as the store counts a lease as one call in flight."""
    if estimate <= 0 or applied is None or len(applied) < 7 or applied[6] == 0:
        return 0
    size = MAX_CALLS * estimate
    for i in range(3):
        if applied[i] >= 0:
            size = min(size, (applied[i] - spent[i] - held) // ROOM_SHARE)
    if size < MIN_CALLS * estimate:
        return 0
    if not clear_of_marks(applied, spent, held + size, warn_at):
        return 0  # a call under it could reach a mark: it must get its warning from the store's reply
    return size


def clear_of_marks(applied: Sequence[int] | None, spent: Sequence[int], held: int,
                   warn_at: tuple[float, ...]) -> bool:
    """Whether ``spent`` plus ``held`` stays below every ``warn_at`` mark of every limited window."""
    if not warn_at:
        return True
    if applied is None:
        return False
    return all(spent[i] + held < mark for i, _, mark in marks(tuple(applied[:3]), warn_at))
