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
                if (led := event.warning_step) is not None:
                    m.steps.setdefault(led, set()).add(event.prompt_id)
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

    def user_months(self, namespace: str, user: str, forget: bool) -> dict[str, dict[str, int]]:
        """One user's counts per month (``_user_data``); ``forget``: take them out, leaving
        the month's counters (its totals) as they are."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for (ns, month), m in self._months.items():
                if ns != namespace or user not in m.users:
                    continue
                counts = {"seen": 1, "blocked": m.user_blocked.get(user, 0),
                          "orders": m.user_orders.get(user, 0)}
                counts.update({f"revenue:{cur}": n for (cur, u), n in m.user_revenue.items() if u == user})
                out[month] = {k: v for k, v in counts.items() if v}
                if forget:
                    m.users.discard(user)
                    m.user_blocked.pop(user, None)
                    m.user_orders.pop(user, None)
                    for cur_user in [k for k in m.user_revenue if k[1] == user]:
                        del m.user_revenue[cur_user]
        return out
