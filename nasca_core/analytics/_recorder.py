"""``Analytics``: records a ledger's conversion events and reads its months back, as a
service over the ledger's public port (docs/ARCHITECTURE.md).

Blocks arrive through ``ledger.block_listeners`` and checkouts and purchases through
``ledger.billing.listeners``; the upgrade page records "prompt_shown" and "dismissed".
Recording never touches an admitted call: only a blocked reserve (one pipelined write
more, on the path that already failed) and the billing and page paths record. Inside a
running event loop on Redis the write is scheduled as a task instead of blocking the loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from nasca_core._errors import (
    ConfigurationError,
    InvalidInputError,
    NascaBlockedError,
    NascaBusyError,
    NascaCeilingError,
    NascaError,
)
from nasca_core._identity import check_user_id
from nasca_core._money import to_nanos
from nasca_core.analytics._aggregate import build_report, month_totals
from nasca_core.analytics._events import EVENT_KINDS, EventKind, month_id, previous_months
from nasca_core.analytics._models import MonthReport, MonthTotals
from nasca_core.stores import AnalyticsEvent, MonthRaw

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core.billing import BillingEvent, ReviewOrder

log = logging.getLogger("nasca.analytics")

_CURRENCY = re.compile(r"^[a-z]{3}$")
_MAX_PROMPT = 500

Month = str | date | datetime | None


class Analytics:
    """Conversion analytics of one ledger, listening to its blocks, checkouts and purchases
    from construction on; get it as ``nasca.analytics`` (built on first use).

    ``month("2026-11")`` -> ``MonthReport``; ``trend(6)`` -> the last months' headline
    numbers; ``record(kind, user, prompt_id)`` records a step by hand. Async twins:
    ``amonth``, ``atrend``, ``arecord``; ``aflush()`` waits for recordings in flight.
    """

    def __init__(self, ledger: Nasca) -> None:
        # Two listening on one ledger would record every block and purchase twice.
        if any(isinstance(getattr(f, "__self__", None), Analytics) for f in ledger.block_listeners):
            raise ConfigurationError("this Nasca already records analytics: use nasca.analytics, "
                                     "not a second Analytics(nasca)")
        self._ledger = ledger
        self._pending: set[asyncio.Task[None]] = set()
        ledger.block_listeners.append(self.on_block)
        ledger.billing.listeners.append(self.on_billing_event)

    def __repr__(self) -> str:
        return f"Analytics(namespace={self._ledger.namespace!r})"

    # -- listening -------------------------------------------------------------------------
    def on_block(self, err: NascaBlockedError) -> None:
        """Record a blocked call (a block listener: failures are logged, never raised). A busy
        user (NascaBusyError) has not spent their allowance, and the app's ceiling
        (NascaCeilingError) is the owner's limit: no upsell, so no funnel event."""
        if isinstance(err, NascaBusyError | NascaCeilingError):
            return
        self._soon(lambda: self._event("blocked", err.user_id, err.prompt_id, None, "usd", None))

    def on_billing_event(self, ev: BillingEvent) -> None:
        """Record a checkout started or a purchase completed (a billing listener: failures are
        logged, never raised)."""
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

    def _soon(self, make: Callable[[], AnalyticsEvent]) -> None:
        # Listeners must never break the call that fired them: failures are logged.
        try:
            event = make()
            loop = _running_loop()
            if loop is None or self._ledger.store.is_memory:
                self._ledger.store.sync.record_event(self._ledger.namespace, event)
                return
            task = loop.create_task(self._arecord_logged(event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        except Exception:
            log.exception("nasca: could not record an analytics event")

    async def _arecord_logged(self, event: AnalyticsEvent) -> None:
        try:
            await self._ledger.store.for_loop().record_event(self._ledger.namespace, event)
        except Exception:
            log.exception("nasca: could not record an analytics event")

    async def aflush(self) -> None:
        """Wait for analytics writes scheduled from async code."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # -- recording -------------------------------------------------------------------------
    def _event(self, kind: str, user_id: str, prompt_id: str | None, amount: Decimal | int | str | None,
               currency: str, at: datetime | float | None) -> AnalyticsEvent:
        checked = next((k for k in EVENT_KINDS if k == kind), None)
        if checked is None:
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
        return AnalyticsEvent(checked, user_id, self._month_at(at), prompt_id, nanos, cur)

    def _month_at(self, at: datetime | float | None) -> str:
        if at is None:
            return self._ledger.windows_at().ids[2]
        return self._ledger.windows_at(at.timestamp() if isinstance(at, datetime) else float(at)).ids[2]

    def record(self, kind: EventKind, user_id: str, prompt_id: str | None = None, *,
               amount: Decimal | int | str | None = None, currency: str = "usd",
               at: datetime | float | None = None) -> None:
        """Record one conversion step (``amount`` in ``currency`` units, for purchases).

        Raises InvalidInputError, InvalidUserError, StoreError."""
        # One store write: the store counts a warning's step in the warning funnel too.
        event = self._event(kind, user_id, prompt_id, amount, currency, at)
        self._ledger.store.sync.record_event(self._ledger.namespace, event)

    async def arecord(self, kind: EventKind, user_id: str, prompt_id: str | None = None, *,
                      amount: Decimal | int | str | None = None, currency: str = "usd",
                      at: datetime | float | None = None) -> None:
        """Async twin of record()."""
        event = self._event(kind, user_id, prompt_id, amount, currency, at)
        await self._ledger.store.for_loop().record_event(self._ledger.namespace, event)

    # -- reading ---------------------------------------------------------------------------
    def _month(self, month: Month) -> str:
        return self._month_at(None) if month is None else month_id(month)

    def _report(self, month: str, raw: MonthRaw, reviews: tuple[ReviewOrder, ...]) -> MonthReport:
        n = self._ledger
        report = build_report(raw, namespace=n.namespace, month=month, timezone=n.timezone,
                              generated_at=datetime.fromtimestamp(n.now(), n.tz))
        held = [o for o in reviews if self._month_at(o.at) == month]
        return report.model_copy(update={"review_orders": held}) if held else report

    def month(self, month: Month = None) -> MonthReport:
        """The report of ``month`` ("2026-11", a date; default: this month in the ledger's
        timezone). Raises InvalidInputError for a bad month, StoreError."""
        m = self._month(month)
        raw = self._ledger.store.sync.read_month(self._ledger.namespace, m, int(self._ledger.now() * 1000))
        return self._report(m, raw, self._ledger.billing.review_orders())

    async def amonth(self, month: Month = None) -> MonthReport:
        """Async twin of month()."""
        m = self._month(month)
        store = self._ledger.store.for_loop()
        raw = await store.read_month(self._ledger.namespace, m, int(self._ledger.now() * 1000))
        return self._report(m, raw, await self._ledger.billing.areview_orders())

    def trend(self, months: int = 6, end: Month = None) -> list[MonthTotals]:
        """Headline numbers of the ``months`` months ending with ``end``, oldest first
        (from the analytics counters only: cheap). Raises InvalidInputError, StoreError."""
        ids = previous_months(self._month(end), _check_months(months))
        rows = self._ledger.store.sync.month_totals(self._ledger.namespace, ids)
        return [month_totals(m, c.counters, c.steps) for m, c in zip(ids, rows, strict=True)]

    async def atrend(self, months: int = 6, end: Month = None) -> list[MonthTotals]:
        """Async twin of trend()."""
        ids = previous_months(self._month(end), _check_months(months))
        rows = await self._ledger.store.for_loop().month_totals(self._ledger.namespace, ids)
        return [month_totals(m, c.counters, c.steps) for m, c in zip(ids, rows, strict=True)]


def _check_months(months: int) -> int:
    if not isinstance(months, int) or not 1 <= months <= 36:
        raise InvalidInputError("months must be between 1 and 36")
    return months


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def analytics_for(nasca: Nasca) -> Analytics:
    """``nasca.analytics``, the old spelling: the Analytics of ``nasca``, listening to its
    blocks, checkouts and purchases from its first use on.

    Raises NascaError if ``nasca`` is not a Nasca."""
    analytics = getattr(nasca, "analytics", None)
    if not isinstance(analytics, Analytics):
        raise NascaError(f"analytics_for() needs a Nasca, got {type(nasca).__name__}")
    return analytics
