"""Small inline SVG charts for the dashboard: no JavaScript, presentation attributes only
(so the page's CSP needs no inline styles). Every text is escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from html import escape
from typing import Any

from nasca_core._display import money
from nasca_core.analytics import Funnel, UserMonth

_BLUE, _GREEN, _RED, _GREY, _INK = "#635bff", "#1a9e5f", "#d64545", "#e6e8ef", "#30313d"


def _pct(rate: float | None) -> str:
    return "" if rate is None else f" · {rate * 100:.0f}%"


def _svg(width: int, height: int, body: str, label: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>')


def funnel_svg(f: Funnel) -> str:
    """Horizontal bars, one per step, scaled to the blocked prompts."""
    steps = f.steps()
    top = max([s.prompts for s in steps] + [1])
    row, width, label_w = 30, 420, 138
    parts = []
    for i, s in enumerate(steps):
        y = i * row + 6
        w = (width - label_w - 10) * s.prompts / top
        color = _GREY if s.step == "dismissed" else _BLUE if s.step != "purchase_completed" else _GREEN
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="13" fill="{_INK}">{escape(s.step.replace("_", " "))}</text>'
            f'<rect x="{label_w}" y="{y}" width="{max(w, 2):.1f}" height="20" rx="4" fill="{color}"/>'
            f'<text x="{label_w + max(w, 2) + 6:.1f}" y="{y + 15}" font-size="13" fill="{_INK}" '
            f'data-step="{escape(s.step)}">{s.prompts}{escape(_pct(s.rate_from_previous))}</text>'
        )
    return _svg(width + 70, len(steps) * row + 8, "".join(parts), "Conversion funnel")


def economics_svg(months: Sequence[Mapping[str, Any]]) -> str:
    """Revenue (green) beside AI cost (red) per month, the profit under each pair. Each row
    has ``month``, ``revenue``, ``ai_cost``, ``profit`` (USD Decimals)."""
    top = max([m["revenue"] for m in months] + [m["ai_cost"] for m in months] + [Decimal("0.01")])
    width, height, base = 460, 214, 164
    slot = width / max(len(months), 1)
    bar = slot * 0.32
    parts = [f'<line x1="0" y1="{base}" x2="{width}" y2="{base}" stroke="{_GREY}"/>']
    for i, m in enumerate(months):
        x = i * slot + slot * 0.14
        for j, (key, color) in enumerate((("revenue", _GREEN), ("ai_cost", _RED))):
            h = float(m[key] / top) * (base - 24)
            bx = x + j * (bar + 2)
            parts.append(
                f'<rect x="{bx:.1f}" y="{base - h:.1f}" width="{bar:.1f}" height="{max(h, 1):.1f}" rx="3" '
                f'fill="{color}" data-month="{escape(str(m["month"]))}" '
                f'data-{key.replace("_", "-")}="{m[key]}">'
                f'<title>{escape(str(m["month"]))} {"revenue" if key == "revenue" else "AI cost"} '
                f'{escape(money(m[key]))}</title></rect>'
                f'<text x="{bx + bar / 2:.1f}" y="{base - h - 5:.1f}" font-size="10" text-anchor="middle" '
                f'fill="{_INK}">{escape(_short_money(m[key]))}</text>')
        cx = x + bar + 1
        profit = m["profit"]
        shown = money(profit) if profit >= 0 else "-" + money(-profit)
        parts.append(
            f'<text x="{cx:.1f}" y="{base + 16}" font-size="12" text-anchor="middle" fill="{_INK}">'
            f'{escape(str(m["month"]))}</text>'
            f'<text x="{cx:.1f}" y="{base + 32}" font-size="11" text-anchor="middle" '
            f'fill="{_GREEN if profit >= 0 else _RED}">{escape(shown)}</text>')
    parts.append(f'<rect x="0" y="{height - 10}" width="10" height="8" fill="{_GREEN}"/>'
                 f'<text x="14" y="{height - 2}" font-size="11" fill="{_INK}">revenue</text>'
                 f'<rect x="70" y="{height - 10}" width="10" height="8" fill="{_RED}"/>'
                 f'<text x="84" y="{height - 2}" font-size="11" fill="{_INK}">AI cost</text>'
                 f'<text x="140" y="{height - 2}" font-size="11" fill="#6b7085">'
                 'profit under each month</text>')
    return _svg(width, height, "".join(parts), "Revenue against AI cost per month")


def _short_money(value: Decimal) -> str:
    return f"${value:,.0f}" if value >= 100 else money(value)


def profit_svg(users: list[UserMonth]) -> str:
    """Profit per user (revenue − AI cost): green right of zero, red left of it."""
    top = max([abs(u.profit) for u in users] + [Decimal("0.01")])
    row, width, label_w = 26, 460, 90
    mid = label_w + (width - label_w) / 2
    half = (width - label_w) / 2 - 56
    parts = [f'<line x1="{mid}" y1="0" x2="{mid}" y2="{len(users) * row + 4}" stroke="{_GREY}"/>']
    for i, u in enumerate(users):
        y = i * row + 4
        w = float(abs(u.profit) / top) * half
        x = mid if u.profit >= 0 else mid - w
        shown = money(u.profit) if u.profit >= 0 else "-" + money(-u.profit)
        tx = mid + w + 4 if u.profit >= 0 else mid - w - 4
        anchor = "start" if u.profit >= 0 else "end"
        parts.append(
            f'<text x="0" y="{y + 14}" font-size="12" fill="{_INK}">{escape(u.user_id[:12])}</text>'
            f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="18" rx="3" '
            f'fill="{_GREEN if u.profit >= 0 else _RED}"/>'
            f'<text x="{tx:.1f}" y="{y + 14}" font-size="12" text-anchor="{anchor}" fill="{_INK}">'
            f'{escape(shown)}</text>'
        )
    return _svg(width, len(users) * row + 8, "".join(parts), "Profit per user")


def usage_bar_svg(percent: float, credits_pay: bool = False) -> str:
    """A usage bar for the upgrade page (percent may exceed 100). A full window whose
    overflow credits pay for is the brand colour, not an alarm: the calls go on."""
    shown = max(0.0, min(100.0, percent))
    color = ((_BLUE if credits_pay else _RED) if percent >= 100
             else "#e8a33d" if percent >= 80 else _GREEN)
    return (f'<svg class="bar" viewBox="0 0 100 8" preserveAspectRatio="none" width="100%" height="10" '
            f'aria-hidden="true" xmlns="http://www.w3.org/2000/svg">'
            f'<rect x="0" y="0" width="100" height="8" rx="4" fill="{_GREY}"/>'
            f'<rect x="0" y="0" width="{shown:.1f}" height="8" rx="4" fill="{color}" '
            f'data-percent="{percent:.1f}" data-color="{color}"/></svg>')
