"""The ledger's decisions, free of I/O.

The memory store calls these functions; ``stores/lua/_lib.lua`` and the Lua scripts
implement the very same rules inside Redis, and the contract suite holds the two
to identical results. Every amount is an int of nano-dollars; windows are indexed
0 = daily, 1 = weekly, 2 = monthly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

NO_LIMIT = -1


def admit(
    limits: Sequence[int],
    hard: Sequence[int],
    spent: Sequence[int],
    held: int,
    estimate: int,
    credits: int,
    strict: bool,
) -> int:
    """Return -1 when a call may start, else the index of the window that blocks it.

    Default admission lets a call start while every window has budget left counting
    in-flight holds, so concurrent callers overshoot by at most one call each round;
    ``strict`` admits only a call whose estimate fits. A hard window must fit on its
    own; the other windows may run over by what the user's credits cover.
    """
    extra = estimate if strict else 0
    deficit = None
    worst = -1
    for i in (2, 1, 0):  # longest first: that is the window the user waits longest for
        limit = limits[i]
        if limit == NO_LIMIT:
            continue
        need = spent[i] + held + extra - limit
        fits = need <= 0 if strict else need < 0
        if fits:
            continue
        if hard[i]:
            return i
        if deficit is None or need > deficit:
            deficit, worst = need, i
    if deficit is None:
        return -1
    covered = deficit <= credits if strict else deficit < credits
    return -1 if covered else worst


def room(limits: Sequence[int], hard: Sequence[int], spent: Sequence[int], held: int,
         credits: int) -> int:
    """What a user may still spend beside the ``held`` calls in flight before a window stops
    them: a window's room plus the credits (-1 = not read) where they may cover it, the least
    over the windows with a limit; NO_LIMIT when none has one. ``LLMCall.output_cap`` caps a call's
    output to it."""
    left = NO_LIMIT
    for i in (0, 1, 2):  # on every reserve: plain comparisons, not max/min calls
        limit = limits[i]
        if limit != NO_LIMIT:
            r = limit - spent[i] - held
            if credits > 0 and not hard[i]:
                r += credits
            if r < 0:
                r = 0
            if left == NO_LIMIT or r < left:
                left = r
    return left


def room_of(limits: Sequence[int], hard: Sequence[int], spent: Sequence[int], held: int,
            credits: int, ceiling: int, read_credits: Callable[[], int]) -> tuple[int, int]:
    """(room, credits) for an admitted call: the credits are read (``read_credits``) only
    when a call asking for a room (``ceiling`` > 0) could cost more than the allowance left."""
    left = room(limits, hard, spent, held, credits)
    if credits < 0 and ceiling > 0 and 0 <= left < ceiling:
        credits = read_credits()
        left = room(limits, hard, spent, held, credits)
    return left, credits


def own_view(spent: Sequence[int], held: int, in_flight: int,
             owed: Sequence[int]) -> tuple[tuple[int, int, int], int, int]:
    """(spent, held, in flight) as this process sees them: its deferred settles (``owed``:
    count, holds, costs) are finished calls, counted at their cost rather than as holds."""
    n, holds, cost = owed
    if not (n or holds or cost):  # n is 0 for a lease's hold: the in-flight count keeps it as one
        return (spent[0], spent[1], spent[2]), held, in_flight
    return ((spent[0] + cost, spent[1] + cost, spent[2] + cost), max(held - holds, 0),
            max(in_flight - n, 0))


def over_cap(in_flight: int, cap: int) -> bool:
    """Whether a user with ``in_flight`` live holds is at the tier's in-flight cap (-1 = none)."""
    return 0 <= cap <= in_flight


def busy(limits: Sequence[int], hard: Sequence[int], spent: Sequence[int], estimate: int,
         credits: int, strict: bool) -> bool:
    """Whether a blocked call was blocked only by holds in flight: with none, it would start.

    Such a user has not spent their allowance, so they are told to retry, not to upgrade.
    """
    return admit(limits, hard, spent, 0, estimate, max(credits, 0), strict) < 0


def split(
    cost: int, limits: Sequence[int], hard: Sequence[int], spent: Sequence[int], credits: int
) -> tuple[int, int]:
    """Split a settled cost into (tier-funded, credit-funded) parts.

    The tier pays while every window credits may extend has room; credits pay the
    excess; what neither covers stays on the tier (spend is never dropped).
    """
    room = None
    for i in (0, 1, 2):  # on every settle: plain comparisons, not max/min calls
        limit = limits[i]
        if limit != NO_LIMIT and not hard[i]:
            left = limit - spent[i]
            if left < 0:
                left = 0
            if room is None or left < room:
                room = left
    tier_part = cost if room is None or cost <= room else room
    credit_part = cost - tier_part
    return tier_part, credit_part if credit_part <= credits else credits


def window_charges(cost: int, credit_part: int, limits: Sequence[int], hard: Sequence[int]) -> list[int]:
    """What each window counts of a settled call: a hard cap counts all spend."""
    return [cost if (hard[i] and limits[i] != NO_LIMIT) else cost - credit_part for i in range(3)]


def draw(lots: Sequence[tuple[int, int]], amount: int) -> list[int]:
    """Take ``amount`` from lots given as (seq, remaining), oldest first; return new remainders."""
    order = sorted(range(len(lots)), key=lambda k: lots[k][0])
    out = [r for _, r in lots]
    for k in order:
        if amount <= 0:
            break
        take = min(out[k], amount)
        out[k] -= take
        amount -= take
    return out
