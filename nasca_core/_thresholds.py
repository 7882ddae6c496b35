"""Soft thresholds (``Tier(warn_at=(0.8, 0.95))``), free of I/O.

Two decisions, on purpose apart. A call's *warning* is a projection made at its reserve from
what the reserve's reply already holds (settled spend, holds in flight, this call's estimate):
no store round trip more, and it travels with the call even when its settle goes to the
background. The *event* (``threshold_crossed``, hooks, the owner's webhook) is decided from what
a settle actually returned (``SettleResult.spent``: each window's counter after that call, in
the window it landed in, with ``SettleResult.limits`` in force): ``reached_marks``. Holds of
other calls never count there, so a call that fails or a projection that overshoots fires
nothing, and an estimate that undershoots can't skip a mark. Amounts are int nano-dollars;
windows are indexed 0 = daily, 1 = weekly, 2 = monthly, as in ``_policy``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from nasca_core._money import to_usd
from nasca_core._types import Reservation
from nasca_core._windows import WINDOWS, Window, WindowSet
from nasca_core.stores import ReserveOp, ReserveResult

MAX_THRESHOLDS = 8  # a tier's warn_at: a few marks, checked per call in O(1)
# A warning's prompt id is this + the call's hold id: an upgrade link made with it (``prompt_id=``)
# is counted as warning-led by the funnel (``MonthReport.warning_funnel``), through checkout.
WARNING_PROMPT = "w:"


def check_warn_at(value: Any) -> tuple[float, ...]:
    """``warn_at`` sorted and deduplicated. Raises ValueError (``Tier`` makes it a
    ConfigurationError) unless it is a short sequence of fractions strictly between 0 and 1."""
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise ValueError(f"warn_at must be a sequence of fractions such as (0.8, 0.95), got {value!r}")
    if len(value) > MAX_THRESHOLDS:
        raise ValueError(f"warn_at takes at most {MAX_THRESHOLDS} fractions, got {len(value)}")
    out = set()
    for f in value:
        if isinstance(f, bool) or not isinstance(f, int | float | Decimal) or not math.isfinite(f) \
                or not 0 < f < 1:
            raise ValueError(f"each warn_at fraction must be a number strictly between 0 and 1, got {f!r}")
        out.add(float(f))
    return tuple(sorted(out))


class ThresholdWarning(BaseModel):
    """A call's warning, *projected* at its reserve: with it the user's ``window`` would reach
    ``fraction`` of its limit (``spent`` counts settled spend, calls in flight and this call's
    estimate, so it may overshoot or undershoot what the call really costs)."""

    model_config = ConfigDict(frozen=True)

    window: Window
    fraction: float
    spent: Decimal
    limit: Decimal
    resets_at: datetime
    prompt_id: str  # for the upgrade link: ``UpgradeLinks.url(user, prompt_id=warning.prompt_id)``

    @property
    def percent(self) -> float:
        return float(self.spent / self.limit * 100) if self.limit else 100.0


class ThresholdEvent(BaseModel):
    """A user's ``window`` (its id ``window_id``) reached ``fraction`` of its limit: ``spent`` is
    the window's settled spend after the call whose settle took it there (no calls in flight;
    ``prompt_id`` is ``"w:"`` + that call's hold id). What ``nasca.on_threshold`` hooks get, the
    owner's webhook posts as ``data``, and analytics records as ``threshold_crossed``, once per
    user, window id and fraction.

    ``scope="ceiling"``: the app-wide ceiling's window reached ``fraction`` of its limit, or
    was hit (``fraction=1.0``: a call was blocked by it), once per window id and fraction across
    processes; ``user_id``, ``tier`` and ``prompt_id`` are ``""`` (it is the owner's limit, not an
    upgrade moment, and analytics does not record it)."""

    model_config = ConfigDict(frozen=True)

    scope: Literal["user", "ceiling"] = "user"
    user_id: str
    tier: str
    window: Window
    window_id: str
    fraction: float
    spent: Decimal
    limit: Decimal
    resets_at: datetime
    prompt_id: str
    at: datetime


@functools.lru_cache(maxsize=1024)
def marks(limits: tuple[int, ...], warn_at: tuple[float, ...]) -> tuple[tuple[int, float, int], ...]:
    """(window, fraction, mark nanos) of every threshold of every limited window."""
    return tuple((i, f, int((Decimal(limits[i]) * Decimal(repr(f))).to_integral_value(ROUND_CEILING)))
                 for i in range(3) if limits[i] >= 0 for f in warn_at)


def crossed(limits: Sequence[int], spent: Sequence[int], warn_at: tuple[float, ...]) -> list[list[float]]:
    """Per window, the fractions its settled ``spent`` has reached (``Usage.daily_crossed``...)."""
    out: list[list[float]] = [[], [], []]
    for i, f, mark in marks(tuple(limits[:3]), warn_at):
        if spent[i] >= mark:
            out[i].append(f)
    return out


def allowance_room(compiled: Sequence[int], spent: Sequence[int]) -> tuple[list[int], int]:
    """Each window's spend as its counter holds it, and what the tier's allowance can still pay
    (-1: no window credits may extend has a limit). Past that room credits pay, and a window
    credits may extend counts only the allowance's part (``_policy.split``), so spend credits
    pay never takes it to a threshold; a hard window counts everything. A reply that counts this
    process's queued settles at their full cost (``_policy.own_view``) shows such windows past
    their limit by what credits paid: that excess is taken off them all."""
    covered = [i for i in range(3) if compiled[i] >= 0 and not compiled[3 + i]]
    excess = max((spent[i] - compiled[i] for i in covered), default=0)
    own = [s - excess if i in covered and excess > 0 else s for i, s in enumerate(spent[:3])]
    room = min((max(0, compiled[i] - own[i]) for i in covered), default=-1)
    return own, room


def capped(flowing: int, room: int) -> int:
    return flowing if room < 0 else min(flowing, room)


def admitted(user_id: str, op: ReserveOp, result: ReserveResult, compiled: Sequence[int],
             warn_at: tuple[float, ...], windows: Callable[[float], WindowSet], tz: ZoneInfo) -> Reservation:
    """The Reservation of an admitted reserve, with its warning when the call's estimate takes
    a window to one of ``warn_at`` (the highest fraction reached; the longest window on a tie).
    ``compiled`` is the tier's store form: limits d, w, m (-1 = none), then hard flags d, w, m."""
    if not warn_at:
        return Reservation(user_id, result.tier, op.hold_id, op.estimate, op.keys, room=result.room,
                           anchor=op.anchor, reserved_ms=op.now_ms)
    limits, found = compiled[:3], []
    every = marks(tuple(limits), warn_at)
    reply_spent, held = result.spent, result.held
    if all(reply_spent[i] + held < mark for i, _, mark in every):  # far from every mark: most calls
        return Reservation(user_id, result.tier, op.hold_id, op.estimate, op.keys, room=result.room,
                           anchor=op.anchor, reserved_ms=op.now_ms)
    spent, room = allowance_room(compiled, result.spent)
    for i, f, mark in every:
        window_room = -1 if compiled[3 + i] else room
        # No room left on a window credits extend: credits pay this call, and a "100%" banner
        # on every call a credit payer makes would be noise (the wall is their balance).
        # The reply's holds include this call's estimate.
        if window_room != 0 and spent[i] + capped(result.held, window_room) >= mark:
            found.append((i, f, mark, window_room))
    if not found:
        return Reservation(user_id, result.tier, op.hold_id, op.estimate, op.keys, room=result.room,
                           anchor=op.anchor, reserved_ms=op.now_ms)
    ws = windows(op.now_ms / 1000)
    i, f, mark, window_room = max(found, key=lambda c: (c[1], c[0]))
    warning = ThresholdWarning(window=WINDOWS[i], fraction=f,
                               spent=to_usd(spent[i] + capped(result.held, window_room)),
                               limit=to_usd(limits[i]), resets_at=ws.end_datetime(i, tz),
                               prompt_id=WARNING_PROMPT + op.hold_id)
    return Reservation(user_id, result.tier, op.hold_id, op.estimate, op.keys, room=result.room,
                       anchor=op.anchor, reserved_ms=op.now_ms, warning=warning)


def reached_marks(limits: Sequence[int], spent: Sequence[int],
                  warn_at: tuple[float, ...]) -> list[tuple[int, float, int]]:
    """(window, fraction, mark) of every mark a settle's ``spent`` (its reply's counters after
    the call) has reached under ``limits`` (its reply's limits in force)."""
    return [(i, f, mark) for i, f, mark in marks(tuple(limits[:3]), warn_at) if spent[i] >= mark]
