"""HTML for Jupyter: usage as per-window progress bars, a block as an upgrade card, records as a table.

Pure functions of their argument (no store, no clock): ``Usage._repr_html_`` and
``NascaBlockedError._repr_html_`` call them, so this module imports those types only
for type checking. Every value is escaped, and a link is only made of an ``http(s)``
URL. The ``data-*`` attributes name what each element shows, so tests can read the
figures back without parsing styles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nasca_core._errors import NascaBlockedError
    from nasca_core._usage import Usage, WindowUsage

_GREEN, _AMBER, _RED, _GREY, _PURPLE = "#2e7d32", "#ef8f00", "#c62828", "#6b7280", "#635bff"
_CARD = 'font-family:system-ui,-apple-system,"Segoe UI",sans-serif;font-size:13px;line-height:1.45'
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}


def money(value: Decimal | None) -> str:
    if value is None:
        return "-"
    # Cents for ordinary amounts; sub-cent amounts keep their digits rather than show $0.00.
    size = abs(value)
    shown = size.quantize(Decimal("0.01")) if size >= Decimal("0.01") or size == 0 else size.normalize()
    return f"{'-' if value < 0 else ''}${shown:,}"


def reader_money(value: Decimal, currency: str = "usd") -> str:
    """Money as people read it, for end users: whole cents (half up), and a sub-cent amount
    above zero as ``<$0.01``, never ``$0.0001584``."""
    code = currency.lower()
    symbol = _SYMBOLS.get(code)
    size = abs(value)
    if 0 < size < Decimal("0.01"):
        text = "<" + (f"{symbol}0.01" if symbol else f"0.01 {code.upper()}")
        return text if value > 0 else "-" + text
    shown = f"{size.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"
    sign = "-" if value < 0 and size >= Decimal("0.005") else ""
    return f"{sign}{symbol}{shown}" if symbol else f"{sign}{shown} {code.upper()}"


@dataclass(frozen=True)
class SpendDisplay:
    """How an end user reads AI spend: dollars (``reader_money``), or whole units of
    ``unit_cost`` dollars each (``unit="messages"``: "120 messages"), rounded down so a
    user is never shown more than they have. Prices are always money."""

    unit: str | None = None
    unit_cost: Decimal | None = None

    def __call__(self, value: Decimal) -> str:
        if self.unit is None or self.unit_cost is None:
            return reader_money(value)
        count = int((max(value, Decimal(0)) / self.unit_cost).to_integral_value(rounding=ROUND_FLOOR))
        return f"{count:,} {self.unit}"


def amount(value: Decimal, currency: str = "usd") -> str:
    """``money`` in any currency: its symbol when it has a common one, else its code."""
    text = money(value)[1:]
    code = currency.lower()
    return f"{_SYMBOLS[code]}{text}" if code in _SYMBOLS else f"{text} {code.upper()}"


def _when(at: datetime | None) -> str:
    return "-" if at is None else f"{at:%b} {at.day}, {at:%H:%M %Z}".rstrip()


def _color(percent: float) -> str:
    return _RED if percent >= 100 else _AMBER if percent >= 80 else _GREEN


def _is_link(url: str | None) -> bool:
    return isinstance(url, str) and url.lower().startswith(("https://", "http://"))


def _bar_row(w: WindowUsage, credits_left: bool) -> str:
    pct = max(0.0, min(100.0, w.percent))
    color = _color(w.percent)
    tag = ""
    if not w.covered_by_credits:
        tag = _tag("hard cap", "credits do not extend this window", _GREY)
    elif w.percent >= 100 and credits_left:
        color = _PURPLE  # over the allowance, and the calls go on: credits are paying
        tag = _tag("on credits", "credits pay for what goes beyond this window's limit", _PURPLE)
    return (
        f"<tr class='nasca-window' data-window='{escape(w.window)}' data-spent='{w.spent}' "
        f"data-limit='{w.limit}' data-percent='{w.percent:.1f}'>"
        f"<td style='padding:2px 8px 2px 0;text-align:left'>{escape(w.window)}</td>"
        f"<td style='width:170px;min-width:120px;padding:2px 0'><div role='progressbar' "
        f"aria-valuemin='0' aria-valuemax='100' aria-valuenow='{pct:.0f}' style='background:#e5e7eb;"
        f"border-radius:4px;height:12px;overflow:hidden'><div style='width:{pct:.1f}%;height:12px;"
        f"background:{color}'></div></div></td>"
        f"<td style='padding:2px 8px;text-align:left;white-space:nowrap'>{money(w.spent)} of "
        f"{money(w.limit)} <span style='color:{_GREY}'>({w.percent:.0f}%)</span>{tag}</td>"
        f"<td style='padding:2px 0;text-align:left;color:{_GREY};white-space:nowrap'>"
        f"resets {escape(_when(w.resets_at))}</td></tr>"
    )


def _tag(text: str, title: str, color: str) -> str:
    return (f"<span title='{escape(title)}' style='margin-left:6px;padding:0 5px;border:1px solid "
            f"{color};border-radius:8px;color:{color};font-size:11px'>{escape(text)}</span>")


def _bars(usage: Usage) -> str:
    credits_left = usage.credit_balance > 0
    rows = [_bar_row(w, credits_left) for w in usage.windows]
    if not rows:
        return f"<div style='color:{_GREY}'>No limits on this tier.</div>"
    return f"<table style='border-collapse:collapse;margin:4px 0;font-size:inherit'>{''.join(rows)}</table>"


def usage_html(usage: Usage) -> str:
    """A user's windows as progress bars, with credits, in-flight holds and the month's totals."""
    badge = (
        f" <span style='background:{_RED};color:white;border-radius:8px;padding:0 6px;"
        f"font-size:11px'>blocked</span>" if usage.blocked else ""
    )
    lines = []
    if usage.in_flight:
        lines.append(f"<div class='nasca-in-flight' data-in-flight='{usage.in_flight}'>"
                     f"In flight: {money(usage.in_flight)} reserved by calls still running</div>")
    if usage.credit_balance or usage.credit_balance_display:
        lines.append(
            f"<div class='nasca-credits' data-display='{usage.credit_balance_display}' "
            f"data-currency='{escape(usage.credit_currency)}' data-spend='{usage.credit_balance}'>"
            f"Credits: <b>{escape(amount(usage.credit_balance_display, usage.credit_currency))}</b> left"
            f" <span style='color:{_GREY}'>(covers {money(usage.credit_balance)} of AI spend)</span></div>"
        )
    credit_part = (f", {money(usage.month_credit_spend)} of it from credits"
                   if usage.month_credit_spend else "")
    calls = "call" if usage.month_calls == 1 else "calls"
    lines.append(
        f"<div class='nasca-month' data-calls='{usage.month_calls}' data-cost='{usage.month_cost}' "
        f"style='color:{_GREY}'>This month: {usage.month_calls:,} {calls}, "
        f"{usage.month_input_tokens:,} tokens in, {usage.month_output_tokens:,} out, "
        f"AI cost {money(usage.month_cost)}{credit_part}</div>"
    )
    if usage.blocked:
        lines.append(f"<div style='color:{_RED}'>Blocked: {escape(usage.blocked_reason or '')}</div>")
    return (
        f"<div class='nasca-usage' data-user='{escape(usage.user_id)}' data-tier='{escape(usage.tier)}' "
        f"data-blocked='{str(usage.blocked).lower()}' style='{_CARD};max-width:640px'>"
        f"<div><b>{escape(usage.user_id)}</b> · tier <b>{escape(usage.tier)}</b>{badge}</div>"
        f"{_bars(usage)}{''.join(lines)}</div>"
    )


def blocked_html(err: NascaBlockedError) -> str:
    """The upgrade card: why the call was blocked, where the user stands, and the checkout link."""
    url = err.checkout_url
    if _is_link(url):
        action = (
            f"<a class='nasca-upgrade-link' href='{escape(str(url))}' target='_blank' rel='noopener' "
            "style='display:inline-block;margin-top:8px;padding:6px 14px;background:#635bff;"
            "color:white;border-radius:6px;text-decoration:none;font-weight:600'>"
            "Upgrade or buy credits</a>"
        )
    elif url:
        action = f"<div style='margin-top:8px'>Upgrade: {escape(str(url))}</div>"
    else:
        action = (f"<div style='margin-top:8px;color:{_GREY}'>No upgrade link: give "
                  "<code>Nasca(checkout_url=...)</code> to put one here.</div>")
    bars = _bars(err.usage) if err.usage is not None else ""
    if err.usage is not None and err.window in err.usage.hard_windows:
        bars += (f"<div class='nasca-hard-cap' style='color:{_GREY}'>Credits do not extend the "
                 f"{escape(err.window)} limit on the {escape(err.tier)} tier: it is a hard cap.</div>")
    # The bars show the spend and when each window resets; without them, say it.
    figures = (f"<div class='nasca-spent'>Spent {money(err.spent)} of the {escape(err.window)} "
               f"limit of {money(err.limit)}.</div>"
               if err.usage is None and err.spent is not None and err.limit is not None else "")
    resets = (f"<div style='color:{_GREY}'>The {escape(err.window)} allowance resets "
              f"{escape(_when(err.resets_at))}.</div>" if err.resets_at and err.usage is None else "")
    return (
        f"<div class='nasca-blocked' data-user='{escape(err.user_id)}' data-tier='{escape(err.tier)}' "
        f"data-window='{escape(err.window)}' data-prompt-id='{escape(err.prompt_id or '')}' "
        f"data-spent='{'' if err.spent is None else err.spent}' "
        f"data-limit='{'' if err.limit is None else err.limit}' "
        f"style='{_CARD};border:1px solid {_RED};border-left-width:5px;border-radius:8px;"
        "padding:10px 14px;max-width:640px'>"
        f"<div style='font-weight:600;font-size:14px'>{escape(err.window.capitalize())} limit reached "
        f"<span style='font-weight:normal;color:{_GREY}'>· {escape(err.user_id)} on "
        f"{escape(err.tier)}</span></div>"
        f"<div style='margin:4px 0'>{escape(err.upgrade_message)}</div>{bars}{figures}{resets}{action}</div>"
    )


def _cell(value: Any) -> str:
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, datetime):
        return _when(value)
    return "" if value is None else str(value)


def table_html(
    rows: Iterable[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    title: str | None = None,
    max_rows: int = 50,
) -> str:
    """Records (e.g. an analytics result's ``to_records()``) as an HTML table.

    Decimals show as money, ints with thousands separators; after ``max_rows`` rows a
    line says how many more there are.
    """
    data = list(rows)
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in data for k in r))
    head = "".join(f"<th style='text-align:left;padding:2px 10px 2px 0'>{escape(str(c))}</th>"
                   for c in cols)
    body = []
    for r in data[:max_rows]:
        cells = "".join(
            f"<td style='padding:2px 10px 2px 0;text-align:{'right' if _numeric(r.get(c)) else 'left'}'>"
            f"{escape(_cell(r.get(c)))}</td>" for c in cols
        )
        body.append(f"<tr>{cells}</tr>")
    more = (f"<div style='color:{_GREY}'>… {len(data) - max_rows:,} more rows</div>"
            if len(data) > max_rows else "")
    caption = f"<div style='font-weight:600;margin-bottom:4px'>{escape(title)}</div>" if title else ""
    return (
        f"<div class='nasca-table' style='{_CARD}'>{caption}"
        "<table style='border-collapse:collapse;font-size:inherit'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}</div>"
    )


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)
