"""How big a chunk of a pool is, when it ends, and whether a call fits it: pure, free of I/O
(``_pools`` does the rest). Sized like a user's budget lease (``_lease_policy``): a share of the
pool's room, at most ``MAX_CALLS`` estimates, down to the call's own estimate near the limit
(then a chunk is exactly a per-call hold). Amounts are int nano-dollars, times epoch ms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasca_core._lease_policy import LEASE_S, MAX_CALLS, MIN_HOLD_TTL_S, ROOM_SHARE

if TYPE_CHECKING:
    from nasca_core._config import Tier

NO_LIMITS = (-1, -1, -1)


def pool_limits(tier: Tier | None) -> tuple[int, int, int]:
    """A pool's limits d, w, m in nanos (-1 = none) from its Tier (None: no pool)."""
    if tier is None:
        return NO_LIMITS
    d, w, m = (-1 if v is None else v for v in tier.limits_nanos())
    return d, w, m


def room_of(limits: tuple[int, int, int], spent: tuple[int, int, int], held: int) -> int | None:
    """The tightest limited window's limit - spent - held (None: no window is limited)."""
    rooms = [limits[i] - spent[i] - held for i in range(3) if limits[i] >= 0]
    return min(rooms) if rooms else None


def chunk_size(estimate: int, room: int | None) -> tuple[int, int]:
    """(want, least) for a take that must cover a call of ``estimate``: ``room`` is what the
    last take's reply left (``room_of``; None: no take yet, or no window limited). least is the
    estimate (1 nano for a call of 0: a spent pool admits none). A process's first take asks
    for the estimate alone: a chunk sized before the room is known could take all of it, and
    every other process would be blocked while this one holds it."""
    least = estimate if estimate > 0 else 1
    if room is None:
        return least, least
    want = min(MAX_CALLS * least, room // ROOM_SHARE)
    return (want if want > least else least), least


def chunk_ends(now_ms: int, day_end_ms: int, expiry_ms: int) -> int:
    """When a chunk taken at ``now_ms`` stops admitting calls: ``LEASE_S`` later (a limit
    lowered in another process is seen here by then), at the end of its day, or before its
    hold can lapse."""
    return min(now_ms + int(LEASE_S * 1000), day_end_ms, expiry_ms)


def chunk_expiry(now_ms: int, hold_ttl_ms: int) -> int:
    """When a chunk's hold lapses in the store if never released (a crashed process): no
    sooner than ``MIN_HOLD_TTL_S``, so calls admitted under it settle before it does."""
    return now_ms + max(hold_ttl_ms, int(MIN_HOLD_TTL_S * 1000))


def fits(size: int, out: int, used: int, estimate: int) -> bool:
    """Whether a call of ``estimate`` fits a chunk's free part (size - estimates out - costs charged)."""
    return estimate <= size - out - used
