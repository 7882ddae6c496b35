"""``ceiling_status()``: what the app-wide ceiling (``Nasca(ceiling=Tier(...))``) has left, per
window, as the owner sees it (CLI ``nasca ceiling``, the dashboard). A service over the
ledger's public port: one ``pool_snapshot`` of pool ``"app"`` at the app's calendar windows in
the ledger's timezone, shaped by pure code shared by the sync and async twins.

On ``Nasca`` they are one line each: ``ceiling_status = _ceiling.ceiling_status`` and
``aceiling_status = _ceiling.aceiling_status`` (the ledger is their first argument). The
ceiling in force is the live config's (``ConfigSnapshot.ceiling``: the constructor's
``ceiling=``, overridden by ``set_ceiling``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from nasca_core._config import Tier
from nasca_core._live import CEILING, UNREADABLE_CEILING
from nasca_core._money import to_usd
from nasca_core._types import count_store_errors
from nasca_core._windows import WINDOWS, Window, WindowSet
from nasca_core.stores import PoolKeys, PoolSnapshot
from nasca_core.stores._pools import APP_POOL

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from nasca_core._ledger import Nasca
    from nasca_core._live import ConfigSnapshot


CeilingSource = Literal["stored", "stored off", "this process's default", "unreadable",
                        "unreadable, standing in"]


class CeilingWindow(BaseModel):
    """One window of the ceiling: ``spent`` is what calls were charged in it, ``held`` what
    processes have taken as chunks and not yet spent (a chunk's hold shrinks as its calls'
    costs are charged, so nothing counts twice), ``remaining`` what is left for new chunks:
    ``limit - spent - held``, never below 0."""

    model_config = ConfigDict(frozen=True)

    window: Window
    window_id: str
    limit: Decimal
    spent: Decimal
    held: Decimal
    remaining: Decimal
    resets_at: datetime

    @property
    def percent(self) -> float:
        return float(self.spent / self.limit * 100) if self.limit else 100.0


class CeilingStatus(BaseModel):
    """The app-wide ceiling in force and what is left of it: one ``CeilingWindow`` per window
    with a limit (None for a window the ceiling leaves unlimited)."""

    model_config = ConfigDict(frozen=True)

    daily: CeilingWindow | None = None
    weekly: CeilingWindow | None = None
    monthly: CeilingWindow | None = None
    warn_at: tuple[float, ...] = ()
    # "stored": set_ceiling()/`nasca ceiling set` for every process; "this process's default":
    # nothing stored, the ceiling= of the process asking (others may have another in code);
    # "unreadable": the stored one can't be read here and there is nothing to fall back on, so
    # every call is refused (no windows: it has no limits to show); "unreadable, standing in": it
    # can't be read here, and the last one read or this process's ceiling= is enforced instead.
    source: CeilingSource = "this process's default"
    at: datetime

    @property
    def windows(self) -> tuple[CeilingWindow, ...]:
        return tuple(w for w in (self.daily, self.weekly, self.monthly) if w is not None)

    @property
    def remaining(self) -> Decimal | None:
        """What the tightest window has left (None: no window has a limit; 0 when unreadable)."""
        if self.source == "unreadable":
            return Decimal(0)
        return min((w.remaining for w in self.windows), default=None)

    @property
    def blocked(self) -> bool:
        """Every call is blocked now: a window is spent to its limit, or the ceiling is unreadable."""
        return self.source == "unreadable" or any(w.spent >= w.limit for w in self.windows)


def ceiling_keys(namespace: str, ws: WindowSet) -> PoolKeys:
    return PoolKeys.build(namespace, APP_POOL, ws.ids)


def ceiling_source(config: ConfigSnapshot) -> CeilingSource:
    """Where the ceiling in force comes from (pure): the store, or this process's ``ceiling=``;
    or, the stored one being unreadable here, what stands in for it."""
    if config.ceiling is UNREADABLE_CEILING:
        return "unreadable"
    if config.ceiling_unreadable:
        return "unreadable, standing in"
    if CEILING[1] not in config.stored.sections.get(CEILING[0], {}):
        return "this process's default"
    return "stored off" if config.ceiling is None else "stored"


def shaped(tier: Tier, snap: PoolSnapshot, ws: WindowSet, tz: ZoneInfo, now: float,
           source: CeilingSource = "this process's default") -> CeilingStatus:
    """A ``CeilingStatus`` from the pool's snapshot (pure)."""
    out: dict[str, CeilingWindow] = {}
    for i, (window, limit) in enumerate(zip(WINDOWS, tier.limits_nanos(), strict=True)):
        if limit is None:
            continue
        spent = snap.spent[i]
        out[window] = CeilingWindow(window=window, window_id=ws.ids[i], limit=to_usd(limit),
                                    spent=to_usd(spent), held=to_usd(snap.held),
                                    remaining=to_usd(max(0, limit - spent - snap.held)),
                                    resets_at=ws.end_datetime(i, tz))
    return CeilingStatus(**out, warn_at=tier.warn_at, source=source, at=datetime.fromtimestamp(now, tz))


def unreadable(tz: ZoneInfo, now: float) -> CeilingStatus:
    """The status while the stored ceiling can't be read and calls are refused (pure): no limits,
    not the placeholder's (``UNREADABLE_CEILING`` only makes every take fail)."""
    return CeilingStatus(source="unreadable", at=datetime.fromtimestamp(now, tz))


def known_ceiling(tier: Tier | None) -> Tier | None:
    """The ceiling in force as an owner may build on it: None for the unreadable placeholder
    (its one-nano limit and empty warnings are nobody's)."""
    return None if tier is UNREADABLE_CEILING else tier


def ceiling_status(ledger: Nasca) -> CeilingStatus | None:
    """The app-wide ceiling's limit, spent, held, remaining and reset per window; None when no
    ceiling is configured. Raises StoreError."""
    if (tier := (config := ledger.live.fresh()).ceiling) is None:
        return None
    now = ledger.now()
    if tier is UNREADABLE_CEILING:
        return unreadable(ledger.tz, now)
    ws = ledger.windows_at(now)
    with count_store_errors(ledger.stats):
        snap = ledger.store.sync.pool_snapshot(ceiling_keys(ledger.namespace, ws), int(now * 1000))
    return shaped(tier, snap, ws, ledger.tz, now, ceiling_source(config))


async def aceiling_status(ledger: Nasca) -> CeilingStatus | None:
    """Async twin of ceiling_status()."""
    if (tier := (config := await ledger.live.afresh()).ceiling) is None:
        return None
    now = ledger.now()
    if tier is UNREADABLE_CEILING:
        return unreadable(ledger.tz, now)
    ws = ledger.windows_at(now)
    keys = ceiling_keys(ledger.namespace, ws)
    with count_store_errors(ledger.stats):
        snap = await ledger.store.for_loop().pool_snapshot(keys, int(now * 1000))
    return shaped(tier, snap, ws, ledger.tz, now, ceiling_source(config))
