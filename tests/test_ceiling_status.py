"""``ceiling_status()`` / ``aceiling_status()``: the app-wide ceiling's limit, spent, held,
remaining and reset per window, read from the pool's store state on memory, SQLite, a real
Redis and a real Cluster, live as the ceiling is edited from another process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import Tier
from nasca_core._ceiling import CeilingStatus, aceiling_status, ceiling_status
from nasca_core.stores import PoolKeys, PoolTakeOp

NANO = 10**9
TTLS = (3_600_000, 7_200_000, 86_400_000)


def _status(n: Any) -> CeilingStatus | None:
    return n.ceiling_status()  # type: ignore[no-any-return]


def _keys(n: Any) -> PoolKeys:
    return PoolKeys.build(n.namespace, "app", n.windows_at().ids)


def _take(n: Any, lease: str, want: int) -> int:
    now_ms = int(n.now() * 1000)
    limits = tuple(-1 if v is None else v for v in n.live.current().ceiling.limits_nanos())
    op = PoolTakeOp(_keys(n), now_ms, lease, want, 1, limits, now_ms + 60_000, TTLS)
    return int(n.store.sync.pool_take(op).granted)


def _make(make_nasca: Callable[..., Any], **kw: Any) -> Any:
    return make_nasca(tiers={"t": Tier()}, default_tier="t", **kw)  # only the ceiling limits


def test_no_ceiling_is_none(make_nasca: Callable[..., Any]) -> None:
    assert _status(make_nasca()) is None


def test_status_is_live_and_exact(make_nasca: Callable[..., Any], clock: Any) -> None:
    app, owner = _make(make_nasca), _make(make_nasca)  # the owner edits it from another process
    owner.set_ceiling(Tier(daily=1, monthly=5, warn_at=(0.8,)))
    status = _status(app)
    assert status is not None and status.weekly is None and status.warn_at == (0.8,)
    assert [w.window for w in status.windows] == ["daily", "monthly"]
    day, month = status.daily, status.monthly
    assert day is not None and month is not None
    assert (day.limit, day.spent, day.held, day.remaining) == (Decimal(1), 0, 0, Decimal(1))
    ws = app.windows_at()
    assert day.window_id == ws.ids[0] and month.window_id == ws.ids[2]
    assert day.resets_at == datetime.fromtimestamp(ws.ends[0], app.tz)
    assert month.resets_at == datetime.fromtimestamp(ws.ends[2], app.tz)
    assert status.remaining == Decimal(1) and not status.blocked

    app.settle(app.reserve("0.30", user="u1"), "0.30")
    app.settle(app.reserve("0.05", user="u2"), "0.05")
    app.release(app.reserve("0.10", user="u3"))  # a failed call costs the ceiling nothing
    app.flush()  # its chunk ends: the hold is dropped
    assert _take(owner, "chunk-1", NANO // 4) == NANO // 4  # another process holds a quarter
    status = _status(app)
    assert status is not None and status.daily is not None and status.monthly is not None
    assert (status.daily.spent, status.daily.held, status.daily.remaining) == (
        Decimal("0.35"), Decimal("0.25"), Decimal("0.40"))
    assert (status.monthly.spent, status.monthly.remaining) == (Decimal("0.35"), Decimal("4.40"))
    assert status.daily.percent == pytest.approx(35.0)

    owner.set_ceiling(Tier(daily="0.30"))  # lowered below what is spent
    status = _status(app)
    assert status is not None and status.daily is not None and status.monthly is None
    assert status.daily.remaining == 0 and status.blocked and status.remaining == 0

    clock.advance(86_400)  # a new day: the daily window starts empty (the chunk has lapsed too)
    status = _status(app)
    assert status is not None and status.daily is not None
    assert (status.daily.spent, status.daily.held) == (0, 0)
    assert status.daily.window_id == app.windows_at().ids[0]

    owner.set_ceiling(None)
    assert _status(app) is None


def test_async_twin_answers_the_same(make_nasca: Callable[..., Any]) -> None:
    n = _make(make_nasca, ceiling=Tier(weekly=3))
    n.settle(n.reserve("0.5", user="u1"), "0.5")
    n.flush()

    async def both() -> tuple[Any, Any]:
        return await aceiling_status(n), ceiling_status(n)

    a, s = asyncio.run(both())
    assert a == s and a is not None and a.weekly is not None and a.weekly.remaining == Decimal("2.5")


def test_resets_in_the_ledgers_timezone(make_nasca: Callable[..., Any]) -> None:
    n = _make(make_nasca, timezone="Asia/Tokyo", ceiling=Tier(daily=1))
    status = _status(n)
    assert status is not None and status.daily is not None
    reset = status.daily.resets_at
    assert str(reset.tzinfo) == "Asia/Tokyo" and (reset.hour, reset.minute) == (0, 0)


def test_stored_off_is_undone_by_default(make_nasca: Callable[..., Any],
                                         caplog: pytest.LogCaptureFixture) -> None:
    """``set_ceiling(None)`` turns the code's ceiling off for every process; ``set_ceiling("default")``
    removes the stored value so each process's ``ceiling=`` stands again; a process whose
    ``ceiling=`` a stored value shadows says so once, in its log."""
    app = _make(make_nasca, ceiling=Tier(daily=2, warn_at=(0.5,)))
    owner = _make(make_nasca)  # no ceiling in its code
    status = _status(app)
    assert status is not None and status.source == "this process's default" and status.warn_at == (0.5,)
    owner.set_ceiling(None)
    with caplog.at_level("WARNING", logger="nasca"):
        assert _status(app) is None
        assert _status(app) is None
    shadowed = [r for r in caplog.records if "overrides this process's ceiling=" in r.getMessage()]
    assert len(shadowed) == 1 and "(off)" in shadowed[0].getMessage()
    assert owner.live.current().ceiling is None
    owner.set_ceiling(Tier(daily=7))
    status = _status(app)
    assert status is not None and status.source == "stored" and status.daily is not None
    assert status.daily.limit == 7 and status.warn_at == ()
    owner.set_ceiling("default")
    status = _status(app)
    assert status is not None and status.source == "this process's default"
    assert status.daily is not None and status.daily.limit == 2 and status.warn_at == (0.5,)
    assert _status(owner) is None  # its own default: none
    asyncio.run(owner.aset_ceiling(None))
    assert _status(app) is None
    asyncio.run(owner.aset_ceiling("default"))
    assert _status(app) is not None
    caplog.clear()
    with caplog.at_level("WARNING", logger="nasca"):
        third = _make(make_nasca, ceiling=Tier(daily=9))
        third.set_ceiling(Tier(daily=3))  # the process that stores it is not warned about it
        assert _status(third) is not None
    assert not [r for r in caplog.records if "overrides" in r.getMessage()]


NEWER = '{"daily": {"amount": "1", "per": "seat"}}'  # a ceiling a newer version wrote, unreadable here


def test_an_unreadable_stored_ceiling_is_reported_as_refusing(make_nasca: Callable[..., Any]) -> None:
    """With nothing to fall back on, every call is refused: the status says so, with no limits
    (not the one-nano placeholder that refuses them shown as a stored ceiling)."""
    from nasca_core._ceiling import ceiling_source

    app = _make(make_nasca)
    app.live.save("ceiling", "app", NEWER)
    for status in (_status(app), asyncio.run(aceiling_status(app))):
        assert status is not None and status.source == "unreadable"
        assert status.windows == () and status.blocked and status.remaining == 0
    assert ceiling_source(app.live.current()) == "unreadable"
    given = _make(make_nasca, ceiling=Tier(daily=2))  # its own ceiling= stands: real limits shown
    status = _status(given)
    assert status is not None and status.daily is not None and status.daily.limit == 2
    assert not status.blocked and status.source == "unreadable, standing in"  # not "stored"
