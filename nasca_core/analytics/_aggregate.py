"""From what the store holds to a report: arithmetic only, no I/O."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from nasca_core._money import to_usd
from nasca_core.analytics._events import EVENT_KINDS, month_label
from nasca_core.analytics._models import (
    CurrencyTotals,
    Funnel,
    MonthReport,
    MonthTotals,
    UserMonth,
    WarningFunnel,
)
from nasca_core.stores import MonthRaw

_CENT = Decimal("0.000001")


def funnel(raw: MonthRaw) -> Funnel:
    """The block-led funnel: every prompt's steps less those a warning opened (recorded twice)."""
    def step(kind: str) -> int:
        return max(0, raw.steps.get(kind, 0) - raw.steps.get(f"warning_{kind}", 0))

    return Funnel(blocked=raw.counters.get("e:blocked", 0), prompt_shown=step("prompt_shown"),
                  checkout_started=step("checkout_started"), purchase_completed=step("purchase_completed"),
                  dismissed=step("dismissed"))


def warning_funnel(raw: MonthRaw) -> WarningFunnel:
    return WarningFunnel(
        thresholds_crossed=raw.counters.get("e:threshold_crossed", 0),
        prompt_shown=raw.steps.get("warning_prompt_shown", 0),
        checkout_started=raw.steps.get("warning_checkout_started", 0),
        purchase_completed=raw.steps.get("warning_purchase_completed", 0),
        dismissed=raw.steps.get("warning_dismissed", 0),
    )


def currency_totals(counters: dict[str, int]) -> list[CurrencyTotals]:
    out = []
    for name in sorted(counters):
        if not name.startswith("r:"):
            continue
        cur = name[2:]
        revenue = to_usd(counters[name])  # currency nanos -> currency units
        orders = counters.get(f"o:{cur}", 0)
        out.append(CurrencyTotals(currency=cur, revenue=revenue, orders=orders,
                                  average_order_value=_div(revenue, orders)))
    return out


def build_report(raw: MonthRaw, *, namespace: str, month: str, timezone: str,
                 generated_at: datetime) -> MonthReport:
    """A month's report from its raw counters and ledger rows."""
    revenue = currency_totals(raw.counters)
    usd = next((c for c in revenue if c.currency == "usd"), None)
    revenue_usd = usd.revenue if usd else Decimal(0)
    usd_orders = usd.orders if usd else 0
    by_user: dict[str, dict[str, Decimal]] = {}
    for (cur, u), n in raw.user_revenue.items():
        by_user.setdefault(u, {})[cur] = to_usd(n)
    users = []
    for user in sorted(set(raw.ledger) | raw.users | set(raw.user_orders) | set(raw.user_blocked)
                       | set(by_user)):
        led = raw.ledger.get(user)
        cost = to_usd(led.cost) if led else Decimal(0)
        paid = dict(by_user.get(user, {}))
        user_usd = paid.pop("usd", Decimal(0))
        users.append(UserMonth(
            user_id=user, ai_cost=cost, credit_cost=to_usd(led.credit) if led else Decimal(0),
            calls=led.calls if led else 0, input_tokens=led.input_tokens if led else 0,
            output_tokens=led.output_tokens if led else 0, blocked=raw.user_blocked.get(user, 0),
            orders=raw.user_orders.get(user, 0), revenue=user_usd, other_revenue=paid,
            profit=user_usd - cost,
        ))
    users.sort(key=lambda u: (-u.ai_cost, u.user_id))
    ai_cost = sum((u.ai_cost for u in users), Decimal(0))
    return MonthReport(
        namespace=namespace, month=month_label(month), timezone=timezone, generated_at=generated_at,
        funnel=funnel(raw), warning_funnel=warning_funnel(raw),
        events={kind: raw.counters.get(f"e:{kind}", 0) for kind in EVENT_KINDS},
        revenue=revenue, revenue_usd=revenue_usd,
        orders=sum(c.orders for c in revenue),
        average_order_value=_div(revenue_usd, usd_orders),
        ai_cost=ai_cost, credit_cost=sum((u.credit_cost for u in users), Decimal(0)),
        calls=sum(u.calls for u in users), input_tokens=sum(u.input_tokens for u in users),
        output_tokens=sum(u.output_tokens for u in users),
        profit=revenue_usd - ai_cost,
        active_users=sum(1 for u in users if u.calls),
        paying_users=sum(1 for u in users if u.orders),
        users=users,
    )


def month_totals(month: str, counters: dict[str, int], steps: dict[str, int]) -> MonthTotals:
    return MonthTotals(
        month=month_label(month), blocked=counters.get("e:blocked", 0),
        prompts_shown=steps.get("prompt_shown", 0), checkouts=steps.get("checkout_started", 0),
        purchases=steps.get("purchase_completed", 0),
        orders=sum(v for k, v in counters.items() if k.startswith("o:")),
        revenue_usd=to_usd(counters.get("r:usd", 0)),
    )


def _div(amount: Decimal, n: int) -> Decimal | None:
    return (amount / n).quantize(_CENT, rounding=ROUND_HALF_EVEN) if n else None
