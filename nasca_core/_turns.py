"""A user's reads and the landing of that user's queued settle take turns (``_deferred``):
the bounded waits for a read's turn, and what a read sees of the settles still owed."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable

from nasca_core.stores import Snapshot

READ_WAIT_S = 5.0  # a read waits this long for a settle of its user to land

Begin = Callable[[bool], "list[int] | None"]  # forced or not: the owed entry, None: not your turn


def read_turn(turn: threading.Condition, begin: Begin, *, force: bool) -> list[int] | None:
    """Wait for a read's turn; past ``READ_WAIT_S``, read anyway when ``force`` (None else).
    Bounded: a sync read on a loop whose own aflush is sending would wait forever."""
    deadline = time.monotonic() + READ_WAIT_S
    with turn:
        while (entry := begin(False)) is None:
            if (left := deadline - time.monotonic()) <= 0:
                return begin(True) if force else None
            turn.wait(min(left, 0.1))
    return entry


async def aread_turn(turn: threading.Condition, begin: Begin, *, force: bool) -> list[int] | None:
    """Async twin of read_turn(): polls without blocking the loop, backing off to 10 ms."""
    deadline, pause = time.monotonic() + READ_WAIT_S, 0.0005
    while True:
        with turn:
            if (entry := begin(False)) is not None:
                return entry
            if time.monotonic() >= deadline:
                return begin(True) if force else None
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.01)


def seen(snap: Snapshot, owed: list[int]) -> Snapshot:
    """The store's snapshot with a user's owed settles (``DeferredSettles.owed``) at their cost."""
    if not owed or not owed[0]:
        return snap
    _, holds, cost, tokens_in, tokens_out, calls = owed[:6]  # calls: a fold counts its settles' (``_owed``)
    d, w, m = snap.spent
    return dataclasses.replace(snap, held=max(snap.held - holds, 0), spent=(d + cost, w + cost, m + cost),
                               month_cost=snap.month_cost + cost, month_calls=snap.month_calls + calls,
                               month_input_tokens=snap.month_input_tokens + tokens_in,
                               month_output_tokens=snap.month_output_tokens + tokens_out)


def plus(owed: tuple[int, int, int], entry: list[int]) -> tuple[int, int, int]:
    """A reserve's ``owed`` (this process's leases, ``_leases.owed``) plus the user's owed settles:
    the count is of the settles whose hold is in the store (the in-flight count drops them)."""
    return owed[0] + entry[6], owed[1] + entry[1], owed[2] + entry[2]
