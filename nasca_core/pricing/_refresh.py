"""``nasca prices refresh FILE``: replace the price table from a user file, report the changes.

Two input formats:

* Nasca's own (``{"models": {...}, "aliases": {...}}``, see ``prices.json``);
* LiteLLM's ``model_prices_and_context_window.json`` (also shipped by tokencost as
  ``model_prices.json``): per-token USD floats. Only chat/responses entries of first-party
  providers are taken (OpenAI, Anthropic, Gemini, Vertex Gemini, xAI, Mistral, DeepSeek);
  proxies and clouds (Azure, Bedrock, OpenRouter...) reach those models through name
  normalisation and aliases. Provider prefixes are stripped (``gemini/gemini-2.5-pro`` ->
  ``gemini-2.5-pro``); when two keys give the same name the first-party, prefixed one wins.
  ``*_above_200k_tokens``/``*_above_128k_tokens`` fields become long-context tiers. Aliases
  of the current target whose model survives are kept.

Everything is validated before anything is written: a missing or bad field raises
``ConfigurationError`` naming the model and field, and the target file is untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from nasca_core._errors import ConfigurationError
from nasca_core.pricing._table import (
    PriceTable,
    clear_default_cache,
    parse_price,
    read_json_file,
    shipped_price_file,
)

_PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "reasoning")
_FIRST_PARTY = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "vertex_ai-language-models": "google",
    "xai": "xai",
    "mistral": "mistral",
    "codestral": "mistral",
    "deepseek": "deepseek",
}
_PREFERRED_PROVIDERS = {"openai", "anthropic", "gemini", "xai", "mistral", "deepseek"}
_MODES = {"chat", "responses", "completion"}
_MILLION = Decimal(1_000_000)
_TIER_SUFFIXES = (("_above_200k_tokens", 200_000), ("_above_128k_tokens", 128_000))


@dataclass(frozen=True, slots=True)
class PriceChange:
    """One price that changed: ``field`` is e.g. ``"input"`` or ``"long_context>200000.output"``."""

    model: str
    field: str
    old: Decimal | None
    new: Decimal | None


@dataclass(frozen=True, slots=True)
class PriceDiff:
    """What a refresh changed (or would change, on a dry run)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[PriceChange, ...] = ()
    aliases_added: tuple[str, ...] = ()
    aliases_removed: tuple[str, ...] = ()
    written_to: Path | None = None
    model_count: int = 0

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.aliases_added or self.aliases_removed)

    def format(self) -> str:
        """A human-readable report."""
        lines = []
        if self.is_empty:
            lines.append("No price changes.")
        for name in self.added:
            lines.append(f"+ {name}")
        for name in self.removed:
            lines.append(f"- {name}")
        for c in self.changed:
            lines.append(f"~ {c.model} {c.field}: {_fmt(c.old)} -> {_fmt(c.new)}")
        for name in self.aliases_added:
            lines.append(f"+ alias {name}")
        for name in self.aliases_removed:
            lines.append(f"- alias {name}")
        summary = (
            f"{len(self.added)} added, {len(self.removed)} removed, "
            f"{len(self.changed)} prices changed; {self.model_count} models"
        )
        where = f"written to {self.written_to}" if self.written_to else "dry run, nothing written"
        lines.append(f"{summary} ({where})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _fmt(value: Decimal | None) -> str:
    return "-" if value is None else f"${value}/1M"


# --------------------------------------------------------------------------- LiteLLM import


def _per_million(model: str, key: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise ConfigurationError(f"model {model!r}: field {key!r} must be a number, got {value!r}")
    try:
        per_token = Decimal(value) if not isinstance(value, float) else Decimal(repr(value))
    except ArithmeticError:
        raise ConfigurationError(f"model {model!r}: field {key!r} is not a number") from None
    if not per_token.is_finite() or per_token < 0:
        raise ConfigurationError(f"model {model!r}: field {key!r} must be finite and >= 0")
    return (per_token * _MILLION).normalize()


def litellm_entry_to_price(model: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """One LiteLLM entry as a Nasca price dict; None when it is not priced per token.

    Raises ConfigurationError when an entry has one of input/output prices but not the other.
    """
    has_in = entry.get("input_cost_per_token") is not None
    has_out = entry.get("output_cost_per_token") is not None
    if not has_in and not has_out:
        return None
    for key, present in (("input_cost_per_token", has_in), ("output_cost_per_token", has_out)):
        if not present:
            raise ConfigurationError(f"model {model!r} is missing field {key!r}")

    def get(key: str) -> Decimal | None:
        value = entry.get(key)
        return None if value is None else _per_million(model, key, value)

    out: dict[str, Any] = {
        "input": get("input_cost_per_token"),
        "output": get("output_cost_per_token"),
    }
    cache_read = get("cache_read_input_token_cost")
    if cache_read is None:
        cache_read = get("input_cost_per_token_cache_hit")  # DeepSeek entries
    for name, value in (
        ("cache_read", cache_read),
        ("cache_write", get("cache_creation_input_token_cost")),
        ("reasoning", get("output_cost_per_reasoning_token")),
    ):
        if value is not None:
            out[name] = value
    if out.get("reasoning") == out["output"]:
        del out["reasoning"]  # only kept where priced apart
    tiers = []
    for suffix, threshold in _TIER_SUFFIXES:
        t_in = get("input_cost_per_token" + suffix)
        t_out = get("output_cost_per_token" + suffix)
        if t_in is None and t_out is None:
            continue
        tier: dict[str, Any] = {
            "above_input_tokens": threshold,
            "input": t_in if t_in is not None else out["input"],
            "output": t_out if t_out is not None else out["output"],
        }
        for name, key in (
            ("cache_read", "cache_read_input_token_cost" + suffix),
            ("cache_write", "cache_creation_input_token_cost" + suffix),
        ):
            value = get(key)
            if value is not None:
                tier[name] = value
        tiers.append(tier)
    if tiers:
        out["long_context"] = tiers
    provider = _FIRST_PARTY.get(str(entry.get("litellm_provider")))
    if provider:
        out["provider"] = provider
    return out


def _canonical(key: str) -> str:
    name = key.strip().lower()
    for prefix in ("openai/", "anthropic/", "gemini/", "xai/", "mistral/", "deepseek/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def from_litellm(data: Mapping[str, Any], *, keep_aliases: Mapping[str, str]) -> PriceTable:
    """Convert a LiteLLM price map to a PriceTable. Raises ConfigurationError."""
    chosen: dict[str, tuple[int, dict[str, Any]]] = {}
    for key, entry in data.items():
        if key == "sample_spec" or not isinstance(entry, Mapping):
            continue
        provider = str(entry.get("litellm_provider"))
        if provider not in _FIRST_PARTY or entry.get("mode", "chat") not in _MODES:
            continue
        price = litellm_entry_to_price(key, entry)
        if price is None:
            continue
        name = _canonical(key)
        rank = (2 if provider in _PREFERRED_PROVIDERS else 0) + (1 if name != key.lower() else 0)
        if name not in chosen or rank > chosen[name][0]:
            chosen[name] = (rank, price)
    if not chosen:
        raise ConfigurationError("the LiteLLM file has no chat model with per-token prices")
    models = {name: parse_price(name, price) for name, (_, price) in chosen.items()}
    aliases = {a: t for a, t in keep_aliases.items() if t in models and a not in models}
    return PriceTable(
        models,
        aliases,
        source="LiteLLM model_prices_and_context_window.json, imported by `nasca prices refresh`",
        as_of=datetime.now(UTC).date().isoformat(),
    )


# --------------------------------------------------------------------------- refresh


def load_price_source(path: str | Path, *, keep_aliases: Mapping[str, str] = {}) -> PriceTable:
    """Read a price file in Nasca's or LiteLLM's format. Raises ConfigurationError."""
    data = read_json_file(Path(path))
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"price file {str(path)!r} must hold a JSON object")
    if "models" in data:
        return PriceTable.from_dict(data)
    return from_litellm(data, keep_aliases=keep_aliases)


def diff_tables(old: PriceTable | None, new: PriceTable) -> PriceDiff:
    """What changes from ``old`` (None: an empty table) to ``new``."""
    old_models = set(old.models) if old else set()
    new_models = set(new.models)
    changed: list[PriceChange] = []
    for name in sorted(old_models & new_models):
        assert old is not None
        before = _flat(old.resolve(name)[1].to_dict())
        after = _flat(new.resolve(name)[1].to_dict())
        changed.extend(_price_changes(name, before, after))
    old_aliases = dict(old.aliases) if old else {}
    new_aliases = dict(new.aliases)
    return PriceDiff(
        added=tuple(sorted(new_models - old_models)),
        removed=tuple(sorted(old_models - new_models)),
        changed=tuple(changed),
        aliases_added=tuple(sorted(f"{a} -> {t}" for a, t in new_aliases.items() if old_aliases.get(a) != t)),
        aliases_removed=tuple(sorted(a for a in old_aliases if a not in new_aliases)),
        model_count=len(new_models),
    )


def _flat(entry: Mapping[str, Any]) -> dict[str, Decimal]:
    flat: dict[str, Decimal] = {}
    for key in _PRICE_FIELDS:
        if key in entry:
            flat[key] = Decimal(str(entry[key]))
    for tier in entry.get("long_context", []):
        prefix = f"long_context>{tier['above_input_tokens']}."
        for key in _PRICE_FIELDS:
            if key in tier:
                flat[prefix + key] = Decimal(str(tier[key]))
    return flat


def _price_changes(model: str, old: Mapping[str, Decimal], new: Mapping[str, Decimal]) -> list[PriceChange]:
    return [
        PriceChange(model, key, old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def refresh_prices(
    source_file: str | Path,
    target_file: str | Path | None = None,
    *,
    dry_run: bool = False,
) -> PriceDiff:
    """Validate ``source_file`` and write it as the price table at ``target_file``.

    ``target_file`` defaults to the table shipped in the package (for maintainers of a
    checkout; apps pass ``prices=`` overrides instead). Returns what changed; with
    ``dry_run`` nothing is written. Raises ConfigurationError, leaving the target untouched.
    """
    target = Path(target_file) if target_file is not None else shipped_price_file()
    old: PriceTable | None = None
    if target.exists():
        try:
            old = PriceTable.from_file(target)
        except ConfigurationError:
            old = None  # replacing a corrupt table is a legitimate refresh
    new = load_price_source(source_file, keep_aliases=old.aliases if old else {})
    diff = diff_tables(old, new)
    if dry_run:
        return diff
    _atomic_write(target, new.to_json())
    if target.resolve() == shipped_price_file().resolve():
        clear_default_cache()
    return replace(diff, written_to=target)


def _atomic_write(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".prices-", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- CLI


def add_prices_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prices refresh FILE [--output PATH] [--dry-run]`` on ``parser``."""
    sub = parser.add_subparsers(dest="prices_command", metavar="COMMAND", required=True)
    refresh = sub.add_parser(
        "refresh",
        help="replace the price table from a price file and report what changed",
        description="Validate FILE (Nasca or LiteLLM format) and write it as the price table.",
    )
    refresh.add_argument("file", metavar="FILE", help="price file to read")
    refresh.add_argument(
        "--output",
        metavar="PATH",
        default=None,
        help="price file to write (default: the table shipped in the package)",
    )
    refresh.add_argument("--dry-run", action="store_true", help="report the changes without writing anything")


def run_prices(args: argparse.Namespace) -> int:
    """Run a parsed ``prices`` command; prints the report. Returns the exit code."""
    if args.prices_command == "refresh":
        try:
            diff = refresh_prices(args.file, args.output, dry_run=args.dry_run)
        except ConfigurationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(diff.format())
        return 0
    raise AssertionError(args.prices_command)  # argparse already rejected anything else


def main_prices(argv: Sequence[str] | None = None) -> int:
    """``nasca prices ...`` as a function: ``main_prices(["refresh", "FILE", "--dry-run"])``."""
    parser = argparse.ArgumentParser(prog="nasca prices", description="Manage the price table.")
    add_prices_arguments(parser)
    return run_prices(parser.parse_args(argv))
