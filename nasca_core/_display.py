"""HTML for Jupyter: usage as progress bars, a block as an upgrade card."""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nasca_core._errors import NascaBlockedError
    from nasca_core._usage import Usage


def money(value: Decimal | None) -> str:
    if value is None:
        return "-"
    # Cents for ordinary amounts; sub-cent amounts keep their digits rather than show $0.00.
    shown = value.quantize(Decimal("0.01")) if value >= Decimal("0.01") or value == 0 else value.normalize()
    return f"${shown:,}"


def usage_html(usage: Usage) -> str:
    rows = []
    for w in usage.windows:
        pct = min(100.0, w.percent)
        color = "#d9534f" if w.percent >= 100 else "#f0ad4e" if w.percent >= 80 else "#5cb85c"
        rows.append(
            f"<tr><td style='padding-right:8px'>{escape(w.window)}</td>"
            f"<td style='width:220px'><div style='background:#eee;border-radius:4px'>"
            f"<div data-window='{escape(w.window)}' data-percent='{w.percent:.1f}' "
            f"style='width:{pct:.1f}%;background:{color};height:12px;border-radius:4px'></div></div></td>"
            f"<td style='padding-left:8px'>{money(w.spent)} / {money(w.limit)} ({w.percent:.0f}%)</td>"
            f"<td style='padding-left:8px;color:#777'>resets {w.resets_at:%Y-%m-%d %H:%M %Z}</td></tr>"
        )
    status = (
        f"<div style='color:#d9534f'>Blocked: {escape(usage.blocked_reason or '')}</div>"
        if usage.blocked else ""
    )
    credits = (
        f"<div>Credits: {money(usage.credit_balance_display)} {escape(usage.credit_currency.upper())}</div>"
        if usage.credit_balance_display else ""
    )
    return (
        f"<div class='nasca-usage'><b>{escape(usage.user_id)}</b> · tier <b>{escape(usage.tier)}</b>"
        f"<table>{''.join(rows)}</table>{credits}{status}</div>"
    )


def blocked_html(err: NascaBlockedError) -> str:
    link = (
        f"<a href='{escape(err.checkout_url)}' target='_blank' style='display:inline-block;"
        "margin-top:8px;padding:6px 12px;background:#635bff;color:white;border-radius:4px;"
        "text-decoration:none'>Upgrade</a>"
        if err.checkout_url else ""
    )
    return (
        "<div class='nasca-blocked' style='border:1px solid #d9534f;border-radius:6px;padding:10px;"
        "max-width:520px'><b>Limit reached</b>"
        f"<div>{escape(err.upgrade_message)}</div>{link}</div>"
    )
