"""Parity with an independent current table: LiteLLM's price JSON (a trimmed copy of the one
in LiteLLM 1.110.2's wheel, tests/fixtures/litellm_prices.json).

For every first-party chat model both tables know, the standard input, output and cache
read prices must agree, except the deliberate differences listed in ``DIFFERENCES`` (where
genai-prices follows the provider's page and LiteLLM does not, or the two name different
models the same way).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from nasca_core.pricing import PriceTable
from nasca_core.pricing._rates import TimedRates

FIXTURE = Path(__file__).with_name("fixtures") / "litellm_prices.json"
_PREFIXES = ("gemini/", "xai/", "mistral/", "deepseek/", "anthropic/", "openai/", "codestral/")
FIELDS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
}


def _litellm() -> dict[str, dict[str, Decimal]]:
    raw = json.loads(FIXTURE.read_text(encoding="utf-8"), parse_float=Decimal)
    out: dict[str, dict[str, Decimal]] = {}
    for key, entry in raw.items():
        if key.startswith("_"):
            continue
        name = key
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        out.setdefault(name, {f: entry[k] * 1_000_000 for f, k in FIELDS.items() if k in entry})
    return out


def _differences() -> dict[tuple[str, str], str]:
    return json.loads(Path(__file__).with_name("fixtures").joinpath("parity_differences.json").read_text())


def _compared() -> list[tuple[str, str, Decimal, Decimal]]:
    table = PriceTable.default()
    rows = []
    for name, prices in sorted(_litellm().items()):
        if name not in table:
            continue
        rates = table.rates(name)
        if isinstance(rates, TimedRates):
            continue  # DeepSeek's peak/off-peak prices: LiteLLM has one flat price
        ours = rates.as_dict()
        for field, theirs in prices.items():
            mine = Decimal(ours[field]) / 10**9
            rows.append((name, field, mine, theirs.normalize()))
    return rows


def test_the_tables_share_many_models() -> None:
    assert len({name for name, *_ in _compared()}) >= 150


def test_every_shared_model_agrees_except_listed_differences() -> None:
    listed = {tuple(k.split("|")): v for k, v in _differences().items()}
    unexpected = [
        f"{name} {field}: genai-prices {mine} vs LiteLLM {theirs}"
        for name, field, mine, theirs in _compared()
        if mine != theirs and (name, field) not in listed
    ]
    assert unexpected == []


def test_listed_differences_are_still_differences() -> None:
    # A listed difference that went away is stale: drop it from the list.
    actual = {(name, field) for name, field, mine, theirs in _compared() if mine != theirs}
    stale = [k for k in _differences() if tuple(k.split("|")) not in actual]
    assert stale == []


@pytest.mark.parametrize("name", ["gpt-5.4", "claude-opus-4-8", "gemini-3.1-pro-preview", "deepseek-v4-pro"])
def test_recent_flagships_are_in_both(name: str) -> None:
    assert name in _litellm() and name in PriceTable.default()


def test_every_source_alias_agrees_with_litellm() -> None:
    # SOURCE_ALIASES correct genai-prices' name matching: each must price as LiteLLM does.
    from nasca_core.pricing._table import SOURCE_ALIASES

    litellm = _litellm()
    table = PriceTable.default()
    for alias in SOURCE_ALIASES:
        assert alias in litellm, alias
        ours = table.rates(alias).as_dict()
        for field, theirs in litellm[alias].items():
            assert Decimal(ours[field]) / 10**9 == theirs.normalize(), (alias, field)
