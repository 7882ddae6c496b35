"""``Analytics``: records a Nasca's conversion events and reads its months back.

Blocks arrive through ``nasca.block_listeners`` and checkouts and purchases through
``nasca.billing_listeners``; the upgrade page records "prompt_shown" and "dismissed".
Recording never touches an admitted call: only a blocked reserve (one pipelined write
more, on the path that already failed) and the billing and page paths record. Inside a
running event loop on Redis the write is scheduled as a task instead of blocking the loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import weakref
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from nasca_core._errors import InvalidInputError, NascaBlockedError, NascaError
from nasca_core._identity import check_user_id
from nasca_core._money import to_nanos
from nasca_core._windows import windows_at
from nasca_core.analytics._aggregate import build_report, month_totals
from nasca_core.analytics._events import EVENT_KINDS, Event, EventKind, month_id, previous_months
from nasca_core.analytics._models import MonthReport, MonthTotals
from nasca_core.analytics._stores import AsyncRedisAnalytics, MemoryAnalytics, RedisAnalytics

if TYPE_CHECKING:
    from nasca_core._client import Nasca
    from nasca_core.billing import BillingEvent

log = logging.getLogger("nasca.analytics")

_CURRENCY = re.compile(r"^[a-z]{3}$")
_MAX_PROMPT = 500
_memory: weakref.WeakKeyDictionary[Any, MemoryAnalytics] = weakref.WeakKeyDictionary()
_redis: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_lock = threading.Lock()

Month = str | date | datetime | None


class Analytics:
    """Conversion analytics of one Nasca; get it with ``analytics_for(nasca)``.

    ``month("2026-11")`` -> ``MonthReport``; ``trend(6)`` -> the last months' headline
    numbers; ``record(kind, user, prompt_id)`` records a step by hand. Async twins:
    ``amonth``, ``atrend``, ``arecord``; ``aflush()`` waits for recordings in flight.
    """

    def __init__(self, nasca: Nasca) -> None:
        self._nasca = nasca
        self._pending: set[asyncio.Task[None]] = set()
        self._attached = False

    # -- wiring ------------------------------------------------------------------------
    def attach(self) -> Analytics:
        """Listen to the Nasca's blocks, checkouts and purchases (once)."""
        with _lock:
            if not self._attached:
                self._nasca.block_listeners.append(self._on_block)
                self._nasca.billing_listeners.append(self._on_billing)
                self._attached = True
        return self

    def _on_block(self, err: NascaBlockedError) -> None:
        self._soon(lambda: self._event("blocked", err.user_id, err.prompt_id, None, "usd", None))

    def _on_billing(self, ev: BillingEvent) -> None:
        amount: Any
        if ev.kind == "checkout_started":
            kind: EventKind = "checkout_started"
            amount = None
        elif ev.kind == "purchase_completed":
            kind = "purchase_completed"
            amount = ev.data.get("amount") or 0
        else:
            return
        prompt_id, currency = ev.data.get("prompt_id"), str(ev.data.get("currency") or "usd")
        self._soon(lambda: self._event(kind, ev.user_id, prompt_id, amount, currency, ev.at))

    def _soon(self, make: Callable[[], Event]) -> None:
        # Listeners must never break the call that fired them: failures are logged.
        try:
            event = make()
            loop = _running_loop()
            if loop is None or self._nasca._store.is_memory:
                self._sync_adapter().record(self._nasca.namespace, event)
                return
            task = loop.create_task(self._arecord_logged(event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        except Exception:
            log.exception("nasca: could not record an analytics event")

    async def _arecord_logged(self, event: Event) -> None:
        try:
            await (await self._async_adapter()).record(self._nasca.namespace, event)
        except Exception:
            log.exception("nasca: could not record an analytics event")

    async def aflush(self) -> None:
        """Wait for analytics writes scheduled from async code."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # -- adapters ----------------------------------------------------------------------
    def _sync_adapter(self) -> MemoryAnalytics | RedisAnalytics:
        handle = self._nasca._store
        store = handle.sync
        with _lock:
            if handle.is_memory:
                found = _memory.get(store)
                if found is None:
                    found = _memory[store] = MemoryAnalytics(store)  # type: ignore[arg-type]
                return found
            adapter: RedisAnalytics | None = _redis.get(store)
            if adapter is None:
                adapter = _redis[store] = RedisAnalytics(store.client)  # type: ignore[attr-defined]
            return adapter

    async def _async_adapter(self) -> _AsyncFace:
        handle = self._nasca._store
        if handle.is_memory:
            return _AsyncFace(self._sync_adapter())
        store = handle.for_loop()
        with _lock:
            adapter = _redis.get(store)
            if adapter is None:
                adapter = _redis[store] = AsyncRedisAnalytics(store.client)  # type: ignore[attr-defined]
        return _AsyncFace(adapter)

    # -- recording ---------------------------------------------------------------------
    def _event(self, kind: str, user_id: str, prompt_id: str | None, amount: Decimal | int | str | None,
               currency: str, at: datetime | float | None) -> Event:
        if kind not in EVENT_KINDS:
            raise InvalidInputError(f"analytics event kind must be one of {', '.join(EVENT_KINDS)}, "
                                    f"got {kind!r}")
        check_user_id(user_id)
        if prompt_id is not None and (not isinstance(prompt_id, str) or not prompt_id
                                      or len(prompt_id) > _MAX_PROMPT):
            raise InvalidInputError(f"prompt_id must be a string of 1-{_MAX_PROMPT} characters")
        cur = currency.lower() if isinstance(currency, str) else ""
        if not _CURRENCY.match(cur):
            raise InvalidInputError(f"currency must be a 3-letter ISO code, got {currency!r}")
        nanos = 0 if amount is None else to_nanos(amount, what="amount")
        return Event(kind, user_id, self._month_at(at), prompt_id, nanos, cur)  # type: ignore[arg-type]

    def _month_at(self, at: datetime | float | None) -> str:
        n = self._nasca
        if at is None:
            return n._windows.at(n._now()).ids[2]
        ts = at.timestamp() if isinstance(at, datetime) else float(at)
        return windows_at(ts, n.tz).ids[2]

    def record(self, kind: EventKind, user_id: str, prompt_id: str | None = None, *,
               amount: Decimal | int | str | None = None, currency: str = "usd",
               at: datetime | float | None = None) -> None:
        """Record one conversion step (``amount`` in ``currency`` units, for purchases).

        Raises InvalidInputError, InvalidUserError, StoreError."""
        event = self._event(kind, user_id, prompt_id, amount, currency, at)
        self._sync_adapter().record(self._nasca.namespace, event)

    async def arecord(self, kind: EventKind, user_id: str, prompt_id: str | None = None, *,
                      amount: Decimal | int | str | None = None, currency: str = "usd",
                      at: datetime | float | None = None) -> None:
        """Async twin of record()."""
        event = self._event(kind, user_id, prompt_id, amount, currency, at)
        await (await self._async_adapter()).record(self._nasca.namespace, event)

    # -- reading -----------------------------------------------------------------------
    def _month(self, month: Month) -> str:
        return self._month_at(None) if month is None else month_id(month)

    def _report(self, month: str, raw: Any) -> MonthReport:
        n = self._nasca
        return build_report(raw, namespace=n.namespace, month=month, timezone=n.timezone,
                            generated_at=datetime.fromtimestamp(n._now(), n.tz))

    def month(self, month: Month = None) -> MonthReport:
        """The report of ``month`` ("2026-11", a date; default: this month in the Nasca's
        timezone). Raises InvalidInputError for a bad month, StoreError."""
        m = self._month(month)
        raw = self._sync_adapter().read(self._nasca.namespace, m, int(self._nasca._now() * 1000))
        return self._report(m, raw)

    async def amonth(self, month: Month = None) -> MonthReport:
        """Async twin of month()."""
        m = self._month(month)
        adapter = await self._async_adapter()
        raw = await adapter.read(self._nasca.namespace, m, int(self._nasca._now() * 1000))
        return self._report(m, raw)

    def trend(self, months: int = 6, end: Month = None) -> list[MonthTotals]:
        """Headline numbers of the ``months`` months ending with ``end``, oldest first
        (from the analytics counters only: cheap). Raises InvalidInputError, StoreError."""
        ids = previous_months(self._month(end), _check_months(months))
        rows = self._sync_adapter().totals(self._nasca.namespace, ids)
        return [month_totals(m, c, s) for m, (c, s) in zip(ids, rows, strict=True)]

    async def atrend(self, months: int = 6, end: Month = None) -> list[MonthTotals]:
        """Async twin of trend()."""
        ids = previous_months(self._month(end), _check_months(months))
        rows = await (await self._async_adapter()).totals(self._nasca.namespace, ids)
        return [month_totals(m, c, s) for m, (c, s) in zip(ids, rows, strict=True)]


class _AsyncFace:
    """One awaitable face over the memory adapter (inline) and the async Redis one."""

    def __init__(self, adapter: Any) -> None:
        self._a = adapter

    async def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self._a, name)(*args)
        return await result if isinstance(result, Awaitable) else result

    async def record(self, namespace: str, event: Event) -> None:
        await self._call("record", namespace, event)

    async def read(self, namespace: str, month: str, now_ms: int) -> Any:
        return await self._call("read", namespace, month, now_ms)

    async def totals(self, namespace: str, months: list[str]) -> Any:
        return await self._call("totals", namespace, months)


def _check_months(months: int) -> int:
    if not isinstance(months, int) or not 1 <= months <= 36:
        raise InvalidInputError("months must be between 1 and 36")
    return months


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_instances: weakref.WeakKeyDictionary[Any, Analytics] = weakref.WeakKeyDictionary()


def analytics_for(nasca: Nasca) -> Analytics:
    """The Analytics of ``nasca``, listening to its blocks, checkouts and purchases from
    now on (call it once at start-up in every process that serves model calls).

    Raises NascaError if ``nasca`` is not a Nasca."""
    if not hasattr(nasca, "block_listeners") or not hasattr(nasca, "billing_listeners"):
        raise NascaError(f"analytics_for() needs a Nasca, got {type(nasca).__name__}")
    with _lock:
        found = _instances.get(nasca)
        if found is None:
            found = _instances[nasca] = Analytics(nasca)
    return found.attach()
