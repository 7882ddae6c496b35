"""The embedded store's analytics: each month's conversion events, kept beside the ledger
in the same process (the same counters as the Redis layout in ``_redis_codec``)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from nasca_core.stores._base import AnalyticsEvent, MonthCounts, MonthRaw


@dataclass
class _Month:
    counters: Counter[str] = field(default_factory=Counter)
    steps: dict[str, set[str]] = field(default_factory=dict)
    users: set[str] = field(default_factory=set)
    user_blocked: Counter[str] = field(default_factory=Counter)
    user_revenue: Counter[tuple[str, str]] = field(default_factory=Counter)
    user_orders: Counter[str] = field(default_factory=Counter)

    def counts(self) -> MonthCounts:
        return MonthCounts(dict(self.counters), {k: len(v) for k, v in self.steps.items()})


class MemoryAnalytics:
    """Months of events by (namespace, YYYYMM), under their own lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._months: dict[tuple[str, str], _Month] = {}

    def record(self, namespace: str, event: AnalyticsEvent) -> None:
        with self._lock:
            m = self._months.setdefault((namespace, event.month), _Month())
            m.counters[f"e:{event.kind}"] += 1
            m.users.add(event.user_id)
            if event.kind == "blocked":
                m.user_blocked[event.user_id] += 1
            elif event.prompt_id:
                m.steps.setdefault(event.kind, set()).add(event.prompt_id)
            if event.kind == "purchase_completed":
                m.counters[f"r:{event.currency}"] += event.amount_nanos
                m.counters[f"o:{event.currency}"] += 1
                m.user_revenue[(event.currency, event.user_id)] += event.amount_nanos
                m.user_orders[event.user_id] += 1

    def read(self, namespace: str, month: str) -> MonthRaw:
        """The month's events (the ledger's part is the store's to add)."""
        with self._lock:
            m = self._months.get((namespace, month)) or _Month()
            counts = m.counts()
            return MonthRaw(counters=counts.counters, steps=counts.steps, users=set(m.users),
                            user_blocked=dict(m.user_blocked), user_revenue=dict(m.user_revenue),
                            user_orders=dict(m.user_orders))

    def totals(self, namespace: str, months: Sequence[str]) -> list[MonthCounts]:
        with self._lock:
            return [(self._months.get((namespace, month)) or _Month()).counts() for month in months]
