"""A MonthReport as plain text, for ``nasca report``."""

from __future__ import annotations

from decimal import Decimal

from nasca_core._display import money
from nasca_core.analytics._models import MonthReport, UserMonth


def _pct(rate: float | None) -> str:
    return "" if rate is None else f"{rate * 100:5.1f}%"


def _signed(value: Decimal) -> str:
    return money(value) if value >= 0 else "-" + money(-value)


def _amount(value: Decimal, currency: str) -> str:
    return money(value) if currency == "usd" else f"{value:,.2f} {currency.upper()}"


def _users(title: str, users: list[UserMonth]) -> list[str]:
    if not users:
        return []
    width = max(12, *(len(u.user_id) for u in users))
    head = (f"  {'user':<{width}}  {'AI cost':>10}  {'revenue':>10}  {'profit':>10}  "
            f"{'calls':>6}  {'blocked':>7}")
    lines = ["", title, head]
    for u in users:
        lines.append(f"  {u.user_id:<{width}}  {money(u.ai_cost):>10}  {money(u.revenue):>10}  "
                     f"{_signed(u.profit):>10}  {u.calls:>6}  {u.blocked:>7}")
    return lines


def report_text(report: MonthReport, top: int = 10) -> str:
    """The funnel, money and top users of one month."""
    f = report.funnel
    lines = [f"Nasca report · {report.namespace} · {report.month} ({report.timezone})", "",
             "Upgrade funnel (prompts)       count     rate"]
    for step in f.steps():
        note = "  of shown" if step.step == "dismissed" and step.rate_from_previous is not None else ""
        name = step.step.replace("_", " ")
        lines.append(f"  {name:<26} {step.prompts:>7}   {_pct(step.rate_from_previous)}{note}")
    lines.append(f"  conversion (purchases per block): {_pct(f.conversion_rate).strip() or '-'}")
    lines.append("")
    aov = money(report.average_order_value) if report.average_order_value is not None else "-"
    lines.append(f"Revenue   {money(report.revenue_usd)}  ({report.orders} orders, average {aov})")
    for c in report.revenue:
        if c.currency != "usd":
            lines.append(f"          + {_amount(c.revenue, c.currency)} ({c.orders} orders)")
    lines.append(f"AI cost   {money(report.ai_cost)}  ({report.calls:,} calls, "
                 f"{report.input_tokens:,} tokens in, {report.output_tokens:,} out; "
                 f"{money(report.credit_cost)} paid from credits)")
    lines.append(f"Profit    {_signed(report.profit)}  (USD revenue - AI cost)")
    lines.append(f"Users     {report.active_users} active, {report.paying_users} paying")
    if report.review_orders:
        lines += ["", f"Orders held for review ({len(report.review_orders)}): paid, nothing granted"]
        for o in report.review_orders:
            lines.append(f"  {o.session_id}  {o.user_id}  {o.pack}  paid {_amount(o.paid, o.currency)}"
                         f" (price {_amount(o.expected, o.expected_currency)}): {o.reason}")
    if top:
        lines += _users("Top users by AI cost", report.top_users("ai_cost", top))
        lines += _users("Least profitable users", [u for u in report.least_profitable(top) if u.profit < 0])
    return "\n".join(lines)
