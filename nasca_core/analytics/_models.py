"""What the analytics API returns: frozen pydantic models, with ``to_records()`` for pandas
(``pd.DataFrame(report.to_records())``) and ``_repr_html_`` for notebooks."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from html import escape
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nasca_core._display import money
from nasca_core.billing._models import ReviewOrder

UserSort = Literal["ai_cost", "revenue", "profit", "blocked", "calls"]


def _plain(value: Any) -> Any:
    # pandas-friendly: money as float (the models keep exact Decimals), datetimes as they are.
    return float(value) if isinstance(value, Decimal) else value


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f}%"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class FunnelStep(_Model):
    step: str
    prompts: int
    rate_from_previous: float | None
    rate_from_blocked: float | None


class Funnel(_Model):
    """Prompts that reached each step this month (a prompt is one block; a reloaded page
    or a second click counts once). ``dismissed`` is the exit: prompts closed unbought."""

    blocked: int = 0
    prompt_shown: int = 0
    checkout_started: int = 0
    purchase_completed: int = 0
    dismissed: int = 0

    @property
    def show_rate(self) -> float | None:
        """Prompts shown per block."""
        return _rate(self.prompt_shown, self.blocked)

    @property
    def checkout_rate(self) -> float | None:
        """Checkouts started per prompt shown."""
        return _rate(self.checkout_started, self.prompt_shown)

    @property
    def purchase_rate(self) -> float | None:
        """Purchases per checkout started."""
        return _rate(self.purchase_completed, self.checkout_started)

    @property
    def conversion_rate(self) -> float | None:
        """Purchases per block: the funnel end to end."""
        return _rate(self.purchase_completed, self.blocked)

    @property
    def dismiss_rate(self) -> float | None:
        """Prompts dismissed per prompt shown."""
        return _rate(self.dismissed, self.prompt_shown)

    def steps(self) -> list[FunnelStep]:
        counts = [("blocked", self.blocked), ("prompt_shown", self.prompt_shown),
                  ("checkout_started", self.checkout_started),
                  ("purchase_completed", self.purchase_completed), ("dismissed", self.dismissed)]
        out = []
        previous = None
        for name, n in counts:
            prev = self.prompt_shown if name == "dismissed" else previous
            out.append(FunnelStep(step=name, prompts=n,
                                  rate_from_previous=None if prev is None else _rate(n, prev),
                                  rate_from_blocked=_rate(n, self.blocked)))
            previous = n
        return out

    def to_records(self) -> list[dict[str, Any]]:
        return [s.model_dump() for s in self.steps()]


class WarningFunnel(_Model):
    """Prompts a soft threshold opened (``Tier.warn_at``; upgrade links made with the warning's
    ``prompt_id``), apart from block-led ones (``Funnel``): thresholds crossed -> prompt shown ->
    checkout started -> purchase completed, or dismissed. ``thresholds_crossed`` counts each
    user's window and threshold once."""

    thresholds_crossed: int = 0
    prompt_shown: int = 0
    checkout_started: int = 0
    purchase_completed: int = 0
    dismissed: int = 0

    @property
    def checkout_rate(self) -> float | None:
        """Checkouts started per warning prompt shown."""
        return _rate(self.checkout_started, self.prompt_shown)

    @property
    def purchase_rate(self) -> float | None:
        """Purchases per checkout started from a warning."""
        return _rate(self.purchase_completed, self.checkout_started)

    @property
    def conversion_rate(self) -> float | None:
        """Warning-led purchases per threshold crossed."""
        return _rate(self.purchase_completed, self.thresholds_crossed)


class CurrencyTotals(_Model):
    currency: str
    revenue: Decimal
    orders: int
    average_order_value: Decimal | None


class UserMonth(_Model):
    """One user's month: AI cost (USD) from the ledger, revenue from purchases.
    ``profit`` is USD revenue minus AI cost; revenue in other currencies is in
    ``other_revenue`` and left out of profit (there is no exchange rate here)."""

    user_id: str
    ai_cost: Decimal
    credit_cost: Decimal
    calls: int
    input_tokens: int
    output_tokens: int
    blocked: int
    orders: int
    revenue: Decimal
    other_revenue: dict[str, Decimal] = {}
    profit: Decimal


class MonthTotals(_Model):
    """A month's headline numbers from the analytics counters alone (no ledger scan)."""

    month: str
    blocked: int
    prompts_shown: int
    checkouts: int
    purchases: int
    orders: int
    revenue_usd: Decimal

    def to_record(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self.model_dump().items()}


class MonthReport(_Model):
    """A month of conversion analytics and unit economics, in the Nasca's timezone.

    ``funnel`` counts block-led prompts per step, ``warning_funnel`` those a soft threshold
    opened; ``events`` counts every recorded event; revenue
    is per currency (``revenue_usd``/``average_order_value``/``profit`` are USD); AI cost
    is what the ledger charged this month (USD); ``users`` is every user with AI spend or
    an event this month, most expensive first.
    """

    namespace: str
    month: str
    timezone: str
    generated_at: datetime
    funnel: Funnel  # block-led prompts
    warning_funnel: WarningFunnel = Field(default_factory=WarningFunnel)
    events: dict[str, int]
    revenue: list[CurrencyTotals]
    revenue_usd: Decimal
    orders: int
    average_order_value: Decimal | None
    ai_cost: Decimal
    credit_cost: Decimal
    calls: int
    input_tokens: int
    output_tokens: int
    profit: Decimal
    active_users: int
    paying_users: int
    users: list[UserMonth]
    review_orders: list[ReviewOrder] = Field(default_factory=list)  # paid this month, held for review

    def top_users(self, by: UserSort = "ai_cost", n: int = 10) -> list[UserMonth]:
        """The ``n`` users with the most ``by`` (profit: the most profitable first)."""
        return sorted(self.users, key=lambda u: (-getattr(u, by), u.user_id))[:n]

    def least_profitable(self, n: int = 10) -> list[UserMonth]:
        return sorted(self.users, key=lambda u: (u.profit, u.user_id))[:n]

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per user (money as float), ready for ``pandas.DataFrame``."""
        out = []
        for u in self.users:
            row = {k: _plain(v) for k, v in u.model_dump(exclude={"other_revenue"}).items()}
            for cur, amount in sorted(u.other_revenue.items()):
                row[f"revenue_{cur}"] = float(amount)
            row["month"] = self.month
            out.append(row)
        return out

    def summary(self) -> dict[str, Any]:
        """The month's headline numbers as one flat dict (money as float)."""
        f = self.funnel
        out: dict[str, Any] = {
            "month": self.month, "blocked": f.blocked, "prompt_shown": f.prompt_shown,
            "checkout_started": f.checkout_started, "purchase_completed": f.purchase_completed,
            "dismissed": f.dismissed, "show_rate": f.show_rate, "checkout_rate": f.checkout_rate,
            "purchase_rate": f.purchase_rate, "conversion_rate": f.conversion_rate,
            "dismiss_rate": f.dismiss_rate, "thresholds_crossed": self.warning_funnel.thresholds_crossed,
            "warning_purchases": self.warning_funnel.purchase_completed,
            "warning_conversion_rate": self.warning_funnel.conversion_rate, "orders": self.orders,
            "revenue_usd": self.revenue_usd,
            "average_order_value": self.average_order_value, "ai_cost": self.ai_cost,
            "profit": self.profit, "active_users": self.active_users,
            "paying_users": self.paying_users, "calls": self.calls,
        }
        return {k: _plain(v) for k, v in out.items()}

    def _repr_html_(self) -> str:
        f = self.funnel
        steps = "".join(
            f"<tr><td>{escape(s.step.replace('_', ' '))}</td><td style='text-align:right'>{s.prompts}</td>"
            f"<td style='text-align:right'>{_pct(s.rate_from_previous)}</td></tr>" for s in f.steps())
        users = "".join(
            f"<tr><td>{escape(u.user_id)}</td><td style='text-align:right'>{money(u.ai_cost)}</td>"
            f"<td style='text-align:right'>{money(u.revenue)}</td>"
            f"<td style='text-align:right'>{money(u.profit) if u.profit >= 0 else '-' + money(-u.profit)}"
            "</td></tr>" for u in self.top_users("ai_cost", 10))
        return (
            f"<div class='nasca-report'><b>{escape(self.namespace)} · {escape(self.month)}</b>"
            f"<div>Revenue {money(self.revenue_usd)} · AI cost {money(self.ai_cost)} · "
            f"orders {self.orders} · conversion {_pct(f.conversion_rate)}</div>"
            "<table><tr><th>step</th><th>prompts</th><th>rate</th></tr>" + steps + "</table>"
            "<table><tr><th>user</th><th>AI cost</th><th>revenue</th><th>profit</th></tr>" + users
            + "</table></div>"
        )


def _rate(n: int, of: int) -> float | None:
    return n / of if of else None
