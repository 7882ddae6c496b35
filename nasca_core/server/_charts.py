"""Small inline SVG charts for the dashboard: no JavaScript, presentation attributes only
(so the page's CSP needs no inline styles). Every text is escaped."""

from __future__ import annotations

from decimal import Decimal
from html import escape

from nasca_core._display import money
from nasca_core.analytics import Funnel, MonthTotals, UserMonth

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


def trend_svg(months: list[MonthTotals]) -> str:
    """Revenue per month (bars) with the orders count above each bar."""
    top = max([m.revenue_usd for m in months] + [Decimal(1)])
    width, height, base = 460, 200, 170
    slot = width / max(len(months), 1)
    parts = [f'<line x1="0" y1="{base}" x2="{width}" y2="{base}" stroke="{_GREY}"/>']
    for i, m in enumerate(months):
        h = float(m.revenue_usd / top) * (base - 30)
        x = i * slot + slot * 0.2
        parts.append(
            f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{slot * 0.6:.1f}" height="{max(h, 1):.1f}" '
            f'rx="3" fill="{_GREEN}"/>'
            f'<text x="{x + slot * 0.3:.1f}" y="{base - h - 6:.1f}" font-size="12" text-anchor="middle" '
            f'fill="{_INK}">{escape(money(m.revenue_usd))}</text>'
            f'<text x="{x + slot * 0.3:.1f}" y="{base - h - 20:.1f}" font-size="11" text-anchor="middle" '
            f'fill="#6b7085">{m.orders} orders</text>'
            f'<text x="{x + slot * 0.3:.1f}" y="{base + 18}" font-size="12" text-anchor="middle" '
            f'fill="{_INK}">{escape(m.month)}</text>'
        )
    return _svg(width, height, "".join(parts), "Revenue and orders per month")


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


def usage_bar_svg(percent: float) -> str:
    """A usage bar for the upgrade page (percent may exceed 100)."""
    shown = max(0.0, min(100.0, percent))
    color = _RED if percent >= 100 else "#e8a33d" if percent >= 80 else _GREEN
    return (f'<svg class="bar" viewBox="0 0 100 8" preserveAspectRatio="none" width="100%" height="10" '
            f'aria-hidden="true" xmlns="http://www.w3.org/2000/svg">'
            f'<rect x="0" y="0" width="100" height="8" rx="4" fill="{_GREY}"/>'
            f'<rect x="0" y="0" width="{shown:.1f}" height="8" rx="4" fill="{color}" '
            f'data-percent="{percent:.1f}"/></svg>')
