"""Conversion events and months, free of I/O: the event kinds, the funnel's steps, and
month ids (``YYYYMM``).

The store records events and reads months back (``Store.record_event``,
``Store.read_month``, ``Store.month_totals``; the Redis key layout is in
``nasca_core.stores._redis_codec``). Nothing here is on the reserve/settle path.
"""

from __future__ import annotations

import re
from datetime import date, datetime

from nasca_core._errors import InvalidInputError
from nasca_core.stores import EVENT_KINDS, EventKind

__all__ = ["EVENT_KINDS", "FUNNEL", "EventKind", "month_id", "month_label", "previous_months"]

FUNNEL: tuple[EventKind, ...] = ("blocked", "prompt_shown", "checkout_started", "purchase_completed")

_MONTH = re.compile(r"^(\d{4})-?(\d{2})$")


def month_id(value: str | date | datetime) -> str:
    """``"2026-11"``, ``"202611"``, a date or a datetime -> ``"202611"``.

    Raises InvalidInputError for anything else."""
    if isinstance(value, date):
        return f"{value.year:04d}{value.month:02d}"
    m = _MONTH.match(value) if isinstance(value, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 12:
        raise InvalidInputError(f"month must look like '2026-11', got {value!r}")
    return m.group(1) + m.group(2)


def month_label(month: str) -> str:
    return f"{month[:4]}-{month[4:]}"


def previous_months(month: str, count: int) -> list[str]:
    """``count`` months ending with ``month``, oldest first."""
    y, m = int(month[:4]), int(month[4:])
    out = []
    for _ in range(count):
        out.append(f"{y:04d}{m:02d}")
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
    return out[::-1]
