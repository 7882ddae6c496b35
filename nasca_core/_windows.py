"""Calendar windows: day, ISO week and month in one timezone, with no reset job.

Each window has an id that names its counter key; the key expires by TTL after the
window ends, so a new window starts from a key that does not exist yet. A subscriber's
monthly window may instead follow their billing cycle (``anchored_month``).
"""

from __future__ import annotations

import functools
import re
import threading
from calendar import monthrange
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nasca_core._errors import ConfigurationError, InvalidInputError
from nasca_core.stores._base import UserKeys

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
        d, w, m = d - now_ms, w - now_ms, m - now_ms  # at least 1 s each (comparisons: on every settle)
        return d if d > 1000 else 1000, w if w > 1000 else 1000, m if m > 1000 else 1000


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


# -- monthly windows anchored to a subscriber's billing cycle --------------------------------
# An anchor spec is what a user's meta record holds (``_billing_rules.anchor_spec`` writes it):
# "" for calendar months, else "S,E,N" (epoch s): the monthly window in force is [S, E), and
# from E the months of N take over (N: a billing-cycle anchor, Stripe's billing_cycle_anchor;
# months start on its day of month and time of day in the ledger's timezone, clamped to a
# short month's last day; 0: calendar months), the first one cut to start at E. "0,0,N" is
# N's months from the start. The spec is rolled forward by this math at read time; a change
# of subscription only replaces N while an anchored window is in force, so that window, and
# what was spent in it, is never replaced mid-period.
_SPEC = re.compile(r"([0-9]{1,12}),([0-9]{1,12}),([0-9]{1,12})")


def anchor_parts(spec: str) -> tuple[int, int, int]:
    """(start, end, next) of a spec; (0, 0, 0) = calendar months. Raises InvalidInputError
    for anything else (``Reservation.anchor`` is public: a settle may be handed any string)."""
    if not spec:
        return 0, 0, 0
    m = _SPEC.fullmatch(spec) if isinstance(spec, str) and len(spec) <= 38 else None
    if m is None:
        raise InvalidInputError(f"Malformed anchor spec {str(spec)[:40]!r}: expected '' or 'start,end,next'.")
    return int(m[1]), int(m[2]), int(m[3])


def _pattern(anchor: int, tz: ZoneInfo) -> tuple[int, int, int, int]:
    if anchor <= 0:
        return 1, 0, 0, 0
    a = datetime.fromtimestamp(anchor, tz)
    return a.day, a.hour, a.minute, a.second


def _bound(year: int, month: int, pattern: tuple[int, int, int, int], tz: ZoneInfo) -> float:
    day, hour, minute, second = pattern
    return datetime(year, month, min(day, monthrange(year, month)[1]), hour, minute, second,
                    tzinfo=tz).timestamp()


def _step(year: int, month: int, by: int) -> tuple[int, int]:
    n = year * 12 + month - 1 + by
    return n // 12, n % 12 + 1


def anchored_period(now: float, anchor: int, tz: ZoneInfo) -> tuple[float, float]:
    """[start, end) epoch s of the month under ``anchor`` (0 = calendar) holding ``now``."""
    pattern, local = _pattern(anchor, tz), datetime.fromtimestamp(now, tz)
    y, m = local.year, local.month
    start = _bound(y, m, pattern, tz)
    while start > now:  # before this month's boundary: the period began last month
        y, m = _step(y, m, -1)
        start = _bound(y, m, pattern, tz)
    end = _bound(*_step(y, m, 1), pattern, tz)
    while end <= now:  # only when a DST gap moved a boundary across now
        y, m = _step(y, m, 1)
        start, end = end, _bound(*_step(y, m, 1), pattern, tz)
    return start, end


def _name(start: float, tz: ZoneInfo, calendar: bool) -> str:
    # Calendar months keep their "YYYYMM" ids, so no key of a user without an anchor moves;
    # an anchored or shortened month is named by its local start, to the second.
    return datetime.fromtimestamp(start, tz).strftime("%Y%m" if calendar else "%Y%m%d%H%M%S")


def month_span(now: float, tz: ZoneInfo, spec: str) -> tuple[str, float, float, bool]:
    """(id, start, end, anchored) of the monthly window at ``now`` under an anchor spec;
    ``anchored``: the window is one of a billing cycle's (not a calendar month's)."""
    start, end, nxt = anchor_parts(spec)
    if now < end:
        return _name(start, tz, False), start, end, True
    s, e = anchored_period(now, nxt, tz)
    if s >= end:
        return _name(s, tz, nxt <= 0), s, e, nxt > 0
    return _name(end, tz, False), float(end), e, nxt > 0  # the first month after E, cut short


_HALF_MONTH_S, _MONTH_S = 15 * 86400, 2_629_746  # the second: an average Gregorian month


def cycle_end(start: int, end: int, now: float, anchor: int, tz: ZoneInfo) -> int:
    """Where the window in force [start, end) ends when ``anchor``'s months (0: calendar)
    take over: at the boundary of those months nearest its end (at most a month after its
    start) among those more than half a month after its start. If that one is already past,
    the window keeps its end, or runs to the new cycle's next boundary when the first window
    from there would last less than half a month. So no window lasts less than half a month
    (each has one allowance: neither a change of plan nor a cancel and resubscribe opens a
    fresh one before its time), nor more than about a month and a half (half a month more
    for a change late in a window already that long)."""
    target = min(end, start + _MONTH_S)
    _, best = anchored_period(start + _HALF_MONTH_S, anchor, tz)
    while abs((nxt := anchored_period(best, anchor, tz)[1]) - target) < abs(best - target):
        best = nxt
    if best > now:
        return int(best)
    first, after = anchored_period(end, anchor, tz)
    return end if first == end or after - end >= _HALF_MONTH_S else int(after)


def carried_months(now: float, tz: ZoneInfo, anchor: int) -> tuple[str, str]:
    """The ids of the calendar month at ``now`` and of ``anchor``'s month holding it: at a
    switch from calendar months to a billing cycle at once, the first's spend seeds the second."""
    return windows_at(now, tz).ids[2], month_span(now, tz, f"0,0,{anchor}")[0]


def anchored_month(now: float, tz: ZoneInfo, spec: str) -> tuple[str, float]:
    """(id, end epoch s) of the monthly window at ``now`` under an anchor spec."""
    name, _, end, _ = month_span(now, tz, spec)
    return name, end


def cycle_window(now: float, tz: ZoneInfo, spec: str) -> tuple[int, int]:
    """[start, end) of the billing-cycle window in force at ``now`` under ``spec``, or (0, 0)
    when it is a calendar month: what a subscription change keeps (``SubChange.window``)."""
    _, start, end, anchored = month_span(now, tz, spec)
    return (int(start), int(end)) if anchored else (0, 0)


@functools.lru_cache(maxsize=4096)
def user_keys(namespace: str, user_id: str, window_ids: tuple[str, str, str]) -> UserKeys:
    """``UserKeys.build``, cached: it is on every call's path."""
    return UserKeys.build(namespace, user_id, window_ids)


class WindowClock:
    """Caches the current WindowSet until the next boundary (it is on every call's path),
    and, per process, the anchor spec of users whose monthly window follows their billing
    cycle: a bounded LRU (users absent from it are on calendar months). A reserve made with a
    stale spec is refused by the store with the stored one (status -2), which ``learn`` takes."""

    __slots__ = ("_anchored", "_cached", "_lock", "_specs", "max_users", "tz")

    def __init__(self, tz: ZoneInfo, max_users: int = 65_536) -> None:
        self.tz, self.max_users = tz, max_users
        self._cached: WindowSet | None = None
        self._specs: OrderedDict[str, str] = OrderedDict()  # user -> non-empty spec
        self._anchored: dict[str, WindowSet] = {}  # spec -> its window set, while valid
        self._lock = threading.Lock()

    def at(self, now: float, user: str | None = None) -> WindowSet:
        return self.spec_at(now, self.anchor(user) if user is not None and self._specs else "")

    def spec_at(self, now: float, spec: str) -> WindowSet:
        """The windows at ``now`` with the month under ``spec``, whatever this process holds
        for the user (a settle names its month from the spec its reserve was checked against)."""
        ws = self._cached
        if ws is None or not (ws.computed_at <= now < ws.valid_until):
            ws = self._cached = windows_at(now, self.tz)
        if not spec:
            return ws
        hit = self._anchored.get(spec)
        if hit is None or not (hit.computed_at <= now < hit.valid_until):
            month, end = anchored_month(now, self.tz, spec)
            forget = int((end + _GRACE_S["monthly"]) * 1000)
            hit = WindowSet((ws.ids[0], ws.ids[1], month), (ws.ends[0], ws.ends[1], end),
                            (ws.forget_at_ms[0], ws.forget_at_ms[1], forget), now, min(ws.valid_until, end))
            with self._lock:
                if len(self._anchored) >= self.max_users:
                    self._anchored.clear()
                self._anchored[spec] = hit
        return hit

    def anchor(self, user: str) -> str:
        """The spec this process holds for ``user`` ("" = calendar months)."""
        if not self._specs:
            return ""
        with self._lock:
            spec = self._specs.get(user)
            if spec is not None:
                self._specs.move_to_end(user)
        return spec or ""

    def restale(self, user: str, status: int, spec: str, invalidate: Callable[..., None]) -> None:
        """After a reserve refused as stale: hold the store's anchor spec (-2), or reload the
        live config (-1). The anchor is read before the keys are named, so a race between
        two threads reads as stale rather than naming keys from another spec."""
        if status == -2:
            self.learn(user, spec)
        else:
            invalidate(stale=True)

    def learn(self, user: str, spec: str) -> bool:
        """Hold the store's spec for ``user``; True when this process held another."""
        with self._lock:
            old = self._specs.pop(user, "")
            if spec:
                self._specs[user] = spec
                if len(self._specs) > self.max_users:
                    self._specs.popitem(last=False)
        return old != spec
