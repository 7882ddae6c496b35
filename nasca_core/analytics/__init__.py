"""Conversion analytics: blocked -> prompt shown -> checkout started -> purchase completed
(or dismissed), per month, with revenue, AI cost and per-user profit.

    analytics = nasca.analytics               # built and listening on first use
    report = analytics.month("2026-11")       # MonthReport
    report.funnel.conversion_rate, report.revenue_usd, report.top_users("profit")
    pandas.DataFrame(report.to_records())

``Analytics`` (``_recorder``) is a service over the ledger's public port; the store
records and reads the events (``nasca_core.stores``); the arithmetic is ``_aggregate``,
the models ``_models``. ``analytics_for(nasca)`` is the old spelling of ``nasca.analytics``.
"""

from nasca_core.analytics._events import EVENT_KINDS, FUNNEL, EventKind
from nasca_core.analytics._models import (
    CurrencyTotals,
    Funnel,
    FunnelStep,
    MonthReport,
    MonthTotals,
    UserMonth,
    UserSort,
    WarningFunnel,
)
from nasca_core.analytics._recorder import Analytics, analytics_for

__all__ = [
    "EVENT_KINDS",
    "FUNNEL",
    "Analytics",
    "CurrencyTotals",
    "EventKind",
    "Funnel",
    "FunnelStep",
    "MonthReport",
    "MonthTotals",
    "UserMonth",
    "UserSort",
    "WarningFunnel",
    "analytics_for",
]
