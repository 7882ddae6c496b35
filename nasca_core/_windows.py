"""Calendar windows: day, ISO week and month in one timezone, with no reset job.

Each window has an id that names its counter key; the key expires by TTL after the
window ends, so a new window starts from a key that does not exist yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nasca_core._errors import ConfigurationError

Window = Literal["daily", "weekly", "monthly"]
WINDOWS: tuple[Window, ...] = ("daily", "weekly", "monthly")

# How long a counter outlives its window. Months are kept for a year so the owner's
# analytics can show past months; days and weeks only until nobody can ask about them.
_GRACE_S = {"daily": 3600, "weekly": 3600, "monthly": 400 * 86400}


@dataclass(frozen=True, slots=True)
class WindowSet:
    """The three current windows at one instant."""

    ids: tuple[str, str, str]  # day, week, month ids, e.g. ("20261122", "2026W47", "202611")
    ends: tuple[float, float, float]  # epoch seconds at which each window ends
    forget_at_ms: tuple[int, int, int]  # when each counter may expire (window end + grace)
    computed_at: float
    valid_until: float  # the earliest end: the set is reusable until then

    def end_datetime(self, index: int, tz: ZoneInfo) -> datetime:
        return datetime.fromtimestamp(self.ends[index], tz)

    def ttls_from(self, now: float) -> tuple[int, int, int]:
        """Key TTLs relative to ``now``: relative, because the store's clock may differ."""
        now_ms = int(now * 1000)
        d, w, m = self.forget_at_ms
        return max(1000, d - now_ms), max(1000, w - now_ms), max(1000, m - now_ms)


def load_zone(name: str) -> ZoneInfo:
    """Raises ConfigurationError for a name the tz database doesn't know."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(
            f"Unknown timezone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'."
        ) from None


def _midnight(d: date, tz: ZoneInfo) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()


def windows_at(now: float, tz: ZoneInfo) -> WindowSet:
    local = datetime.fromtimestamp(now, tz)
    today = local.date()
    iso_year, iso_week, iso_day = today.isocalendar()
    next_day = today + timedelta(days=1)
    next_week = today + timedelta(days=8 - iso_day)
    next_month = date(today.year + (today.month == 12), today.month % 12 + 1, 1)
    ends = (_midnight(next_day, tz), _midnight(next_week, tz), _midnight(next_month, tz))
    ids = (today.strftime("%Y%m%d"), f"{iso_year}W{iso_week:02d}", today.strftime("%Y%m"))
    d, w, m = (int((end + _GRACE_S[name]) * 1000) for end, name in zip(ends, WINDOWS, strict=True))
    return WindowSet(ids, ends, (d, w, m), now, min(ends))


class WindowClock:
    """Caches the current WindowSet until the next boundary (it is on every call's path)."""

    __slots__ = ("_cached", "tz")

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._cached: WindowSet | None = None

    def at(self, now: float) -> WindowSet:
        ws = self._cached
        if ws is None or not (ws.computed_at <= now < ws.valid_until):
            ws = self._cached = windows_at(now, self.tz)
        return ws
