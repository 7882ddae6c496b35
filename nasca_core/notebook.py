"""Charts and tables for notebooks: matplotlib figures that carry the numbers they draw.

    from nasca_core.notebook import bar_chart, funnel_chart, line_chart, usage_records
    bar_chart({"alice": 0.41, "bob": 1.20}, title="AI cost per user", money=True)

Each chart helper returns a ``Chart``. Jupyter shows it as a PNG; its output also holds
``application/vnd.nasca.chart+json`` (no front end renders it): the values read back
from the figure's artists (bar lengths, line points, tick labels) next to the records
the chart was built from. A test, or a curious reader, can check what a chart shows
rather than only that it exists. Figures are built with ``matplotlib.figure.Figure``,
never pyplot, so nothing is shown twice and no backend is needed.

matplotlib is imported on first use: ``pip install 'nasca[notebooks]'``.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from nasca_core._display import table_html

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from nasca_core._usage import Usage

__all__ = [
    "CHART_MIME",
    "Chart",
    "bar_chart",
    "figure_data",
    "funnel_chart",
    "line_chart",
    "table",
    "usage_records",
]

CHART_MIME = "application/vnd.nasca.chart+json"
Number = int | float | Decimal
_GREEN, _RED, _BLUE, _GREY = "#2e7d32", "#c62828", "#3b5bdb", "#6b7280"


@dataclass
class Chart:
    """A matplotlib figure with the records behind it.

    ``data`` is what the chart was built from (JSON-ready records); ``drawn()`` reads
    the values back from the figure's artists. Shown in Jupyter as a PNG.
    """

    figure: Figure
    title: str
    data: list[dict[str, Any]] = field(default_factory=list)

    def drawn(self) -> dict[str, Any]:
        """What the figure draws: ``figure_data(self.figure)``."""
        return figure_data(self.figure)

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()

    def to_frame(self) -> Any:
        """The records as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.data)

    def __repr__(self) -> str:
        return f"<Chart {self.title!r}: {len(self.data)} records>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {
            "image/png": base64.b64encode(self.png()).decode("ascii"),
            "text/plain": repr(self),
            CHART_MIME: {"title": self.title, "data": self.data, "drawn": self.drawn()},
        }


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _values(seq: Iterable[Any]) -> list[Any]:
    return [_json(v) for v in seq]


def figure_data(fig: Figure) -> dict[str, Any]:
    """The values a figure draws, read from its artists: per axes, each bar container's
    lengths (heights, or widths when horizontal) and each line's points, with the title,
    axis labels and tick labels."""
    from matplotlib.container import BarContainer

    axes = []
    for ax in fig.axes:
        bars = []
        for c in ax.containers:
            if not isinstance(c, BarContainer):
                continue
            horizontal = c.orientation == "horizontal"
            bars.append({
                "label": c.get_label(),
                "orientation": "horizontal" if horizontal else "vertical",
                "values": [float(p.get_width() if horizontal else p.get_height()) for p in c.patches],
            })
        lines = [
            {"label": line.get_label(), "x": _values(line.get_xdata(orig=True)),  # type: ignore[arg-type]
             "y": _values(line.get_ydata(orig=True))}  # type: ignore[arg-type]
            for line in ax.get_lines()
        ]
        axes.append({
            "title": ax.get_title(loc="left") or ax.get_title(),
            "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(),
            "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
            "yticklabels": [t.get_text() for t in ax.get_yticklabels()],
            "bars": bars,
            "lines": lines,
        })
    return {"axes": axes}


def _figure(width: float = 7.5, height: float = 3.6) -> tuple[Figure, Axes]:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("charts need matplotlib: pip install 'nasca[notebooks]'") from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="both", alpha=0.25)
    ax.set_axisbelow(True)
    return fig, ax


def _money_axis(ax: Axes, axis: str = "y") -> None:
    from matplotlib.ticker import FuncFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis

    def fmt(v: float, _pos: Any) -> str:
        # As many decimals as the tick step needs (at least cents), the same on every tick.
        locs = sorted(target.get_majorticklocs())
        step = min((b - a for a, b in itertools.pairwise(locs) if b > a), default=1.0)
        d = max(2, math.ceil(-math.log10(step)))
        if abs(round(step, d) - step) > step * 1e-6:
            d += 1
        sign = "-" if v < 0 else ""
        return f"{sign}${abs(v):,.{d}f}"

    target.set_major_formatter(FuncFormatter(fmt))


def bar_chart(
    values: Mapping[str, Number],
    *,
    title: str,
    ylabel: str = "",
    xlabel: str = "",
    money: bool = False,
    sort: bool = False,
    show_labels: bool = True,
    reference: Number | None = None,
    reference_label: str = "",
    signed_colors: bool = False,
) -> Chart:
    """One bar per key. ``sort`` orders them largest first; ``show_labels=False`` hides the
    category names (many bars); ``reference`` draws a dashed horizontal line (a limit);
    ``signed_colors`` paints negative bars red and the rest green."""
    items = [(str(k), float(v)) for k, v in values.items()]
    if sort:
        items.sort(key=lambda kv: kv[1], reverse=True)
    fig, ax = _figure(width=max(7.5, min(11.0, 0.6 * len(items) + 4)) if show_labels else 9.0)
    xs = list(range(len(items)))
    colors = [(_RED if v < 0 else _GREEN) if signed_colors else _BLUE for _, v in items]
    ax.bar(xs, [v for _, v in items], color=colors, width=0.8 if show_labels else 1.0,
           label=ylabel or title)
    if show_labels:
        ax.set_xticks(xs, [k for k, _ in items], rotation=30 if len(items) > 6 else 0,
                      ha="right" if len(items) > 6 else "center")
    else:
        ax.set_xticks([])
    if reference is not None:
        ax.axhline(float(reference), color=_RED, linestyle="--", linewidth=1.2,
                   label=reference_label or "reference")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # never over a bar
    if signed_colors:
        ax.axhline(0, color=_GREY, linewidth=0.8, label="zero")
    ax.set_title(title, loc="left", fontweight="bold")
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    if money:
        _money_axis(ax)
    return Chart(fig, title, [{"label": k, "value": v} for k, v in items])


def line_chart(
    x: Sequence[Any],
    series: Mapping[str, Sequence[Number]],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    money: bool = False,
    steps: bool = False,
    markers: bool = False,
) -> Chart:
    """One line per series over ``x`` (``steps=True`` draws a balance that jumps).

    Raises ValueError when a series' length differs from ``x``'s."""
    xs = list(x)
    fig, ax = _figure()
    palette = [_BLUE, _RED, _GREEN, "#8e44ad", "#ef8f00"]
    records: list[dict[str, Any]] = [{"x": _json(v)} for v in xs]
    for i, (name, ys) in enumerate(series.items()):
        if len(ys) != len(xs):
            raise ValueError(f"series {name!r} has {len(ys)} points for {len(xs)} x values")
        yf = [float(v) for v in ys]
        kwargs: dict[str, Any] = {"label": name, "color": palette[i % len(palette)], "linewidth": 1.8}
        if markers:
            kwargs["marker"] = "o"
            kwargs["markersize"] = 3
        if steps:
            ax.step(xs, yf, where="post", **kwargs)
        else:
            ax.plot(xs, yf, **kwargs)
        for rec, v in zip(records, yf, strict=True):
            rec[name] = v
    ax.set_title(title, loc="left", fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(frameon=False)
    if money:
        _money_axis(ax)
    return Chart(fig, title, records)


def funnel_chart(steps: Mapping[str, int] | Sequence[tuple[str, int]], *,
                 title: str = "Upgrade funnel") -> Chart:
    """Horizontal bars, first step on top, each labelled with its count and its
    conversion from the step before."""
    items = [(str(k), int(v)) for k, v in (steps.items() if isinstance(steps, Mapping) else steps)]
    fig, ax = _figure(height=0.55 * len(items) + 1.2)
    ys = list(range(len(items)))
    counts = [v for _, v in items]
    ax.barh(ys, counts, color=_BLUE, label="users")
    ax.set_yticks(ys, [k for k, _ in items])
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    top = max(counts, default=0) or 1
    records = []
    for i, (name, n) in enumerate(items):
        prev = counts[i - 1] if i else None
        rate = (n / prev) if prev else None
        note = f"{n:,}" + (f"  ({rate:.0%} of previous)" if rate is not None else "")
        ax.text(n + top * 0.01, i, note, va="center", fontsize=9)
        records.append({"step": name, "count": n, "rate_from_previous": rate})
    ax.set_xlim(0, top * 1.35)
    ax.set_title(title, loc="left", fontweight="bold")
    return Chart(fig, title, records)


def usage_records(usages: Iterable[Usage]) -> list[dict[str, Any]]:
    """One flat record per ``Usage`` (``pd.DataFrame(usage_records(...))``): tier, the
    month's calls, tokens and AI cost, each window's spend and percent, credits, blocked."""
    out = []
    for u in usages:
        rec: dict[str, Any] = {
            "user": u.user_id, "tier": u.tier, "calls": u.month_calls,
            "input_tokens": u.month_input_tokens, "output_tokens": u.month_output_tokens,
            "ai_cost": u.month_cost, "credit_spend": u.month_credit_spend,
        }
        for w in u.windows:
            rec[f"{w.window}_spent"] = w.spent
            rec[f"{w.window}_percent"] = round(w.percent, 1)
        rec.update(credits_left=u.credit_balance_display, blocked=u.blocked)
        out.append(rec)
    return out


class _Table:
    def __init__(self, html: str, rows: list[dict[str, Any]]) -> None:
        self.html, self.rows = html, rows

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"<table: {len(self.rows)} rows>"


def table(rows: Iterable[Mapping[str, Any]], *, title: str | None = None,
          columns: Sequence[str] | None = None, max_rows: int = 50) -> Any:
    """Records shown as an HTML table in Jupyter (money as dollars, counts with separators)."""
    data = [dict(r) for r in rows]
    return _Table(table_html(data, columns=columns, title=title, max_rows=max_rows), data)
