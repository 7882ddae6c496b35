"""Conversion analytics: blocked -> prompt shown -> checkout started -> purchase completed
(or dismissed), per month, with revenue, AI cost and per-user profit.

    from nasca_core.analytics import analytics_for
    analytics = analytics_for(nasca)          # start listening (once per process)
    report = analytics.month("2026-11")       # MonthReport
    report.funnel.conversion_rate, report.revenue_usd, report.top_users("profit")
    pandas.DataFrame(report.to_records())

How events are stored is described in ``_events``; the arithmetic is in ``_aggregate``.
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
    "analytics_for",
]
