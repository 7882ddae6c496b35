"""``nasca prices [MODEL ...] [--prices FILE]``: where prices come from, and what they are.

Prints the source (genai-prices, its version, and whether its data is the one bundled with
the installed package or one its background updater fetched, with the date), then each
MODEL's resolved name and rates, and for each owner price in ``--prices FILE`` (the JSON
object you pass as ``prices=``) what it changes against the source. Prices stay current by
upgrading genai-prices (``pip install -U genai-prices`` within the pinned minor range), or
in a long-running server by opting in to ``start_price_updates()``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from nasca_core._errors import ConfigurationError, UnknownModelError
from nasca_core._money import NANOS_PER_USD
from nasca_core.pricing._rates import RATE_FIELDS, Rates, TimedRates
from nasca_core.pricing._table import PriceTable, source_date

# Per-1M-units rates shown in the unit the providers publish.
_PER = {"web_search": 1000, "file_search": 1000, "code_container": 1_000_000, "request": 1_000_000}


def _usd(field: str, nanos_per_million: int) -> str:
    value = Decimal(nanos_per_million) / NANOS_PER_USD / _PER.get(field, 1)
    return f"${value.quantize(Decimal('1e-9')).normalize():f}"


def _rate_lines(rates: Rates) -> list[str]:
    base = rates.as_dict()
    parts = [f"{name}={_usd(name, base[name])}" for name in RATE_FIELDS if base[name]]
    lines = ["  " + ", ".join(parts) + "  (USD per 1M tokens; web_search, file_search per 1K calls; "
                 "code_container per unit, from Nasca's fee table)"]
    if isinstance(rates, TimedRates):
        lines.append("  (varies by UTC time of day, peak and off-peak: these are the prices right now)")
    for threshold, tier in sorted(rates.tiers):
        lines.append(f"  above {threshold:,} input tokens (whole request): input={_usd('input', tier[0])}, "
                     f"output={_usd('output', tier[6])}")
    return lines


def report(table: PriceTable, models: Sequence[str], overrides: Mapping[str, Any]) -> str:
    """The text ``nasca prices`` prints. Raises ConfigurationError for an unusable override."""
    when = source_date()
    data = f"fetched by its background updater at {when.isoformat()}" if when else "bundled with the package"
    lines = [f"Source: {table.source} ({data})."]
    lines.append("Upgrade genai-prices to refresh; owner prices (prices=, set_price) win over it.")
    custom = table.with_overrides(overrides) if overrides else table
    for name in models:
        try:
            canonical, price = custom.resolve(name)
        except UnknownModelError:
            lines.append(f"\n{name}: not priced (add prices={{{name!r}: {{...}}}} or alias it)")
            continue
        origin = "owner price" if canonical in custom.owner_prices else f"{price.provider} via genai-prices"
        lines.append(f"\n{name} -> {canonical} ({origin})")
        lines.extend(_rate_lines(custom.rates(name)))
    for name in sorted(custom.owner_prices):
        source = table.source_rates(name)
        mine = custom.rates(name).as_dict()
        if source is None:
            lines.append(f"\noverride {name}: not in genai-prices; the override is its only price")
            continue
        theirs = source.as_dict()
        changed = [
            f"{f} {_usd(f, theirs[f])} -> {_usd(f, mine[f])}" for f in RATE_FIELDS if theirs[f] != mine[f]
        ]
        lines.append(f"\noverride {name}: " + ("; ".join(changed) if changed else "same as genai-prices"))
    return "\n".join(lines)


def add_prices_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prices [MODEL ...] [--prices FILE]`` on ``parser``."""
    parser.add_argument("models", nargs="*", metavar="MODEL", help="model names to show the prices of")
    parser.add_argument(
        "--prices", metavar="FILE", default=None, help="JSON object of owner prices, as passed to prices="
    )


def run_prices(args: argparse.Namespace) -> int:
    """Run a parsed ``prices`` command; prints the report. Returns the exit code."""
    try:
        overrides: dict[str, Any] = {}
        if args.prices:
            try:
                with open(args.prices, encoding="utf-8") as fh:
                    overrides = json.load(fh, parse_float=Decimal)
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigurationError(f"cannot read {args.prices!r}: {exc}") from None
            if not isinstance(overrides, dict):
                raise ConfigurationError(f"{args.prices!r} must hold a JSON object of model -> price")
        print(report(PriceTable.default(), args.models, overrides))
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main_prices(argv: Sequence[str] | None = None) -> int:
    """``nasca prices ...`` as a function: ``main_prices(["gpt-5", "--prices", "mine.json"])``."""
    parser = argparse.ArgumentParser(prog="nasca prices", description="Show where prices come from.")
    add_prices_arguments(parser)
    return run_prices(parser.parse_args(argv))
