"""Our cost equals tokencost's (its shipped LiteLLM price copy) to the nano-dollar.

Every first-party entry of tokencost's ``model_prices.json`` that our table can price (after
name normalisation, so dated snapshots, provider prefixes and Bedrock ids are covered too)
is compared for several usages. Deliberate differences are listed in ``EXCEPTIONS`` with
their reason and the aspect that differs; every other aspect must still match, and every
exception must still be needed.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from nasca_core.pricing import PriceTable, TokenUsage

# Aspects: "cache" (usages with cache tokens), "long" (usages above 200k input), "price" (all).
_STALE_GEMINI_CACHE = (
    "Google cut Gemini 2.5 context-cache reads to 10% of the input price; the copy has 25%"
)
_NO_XAI_CACHE = "the copy lacks xAI's cached-input price (25% of input)"
_NO_BEDROCK_CACHE = (
    "the copy has no cache prices for this Bedrock id; cached counts are priced at "
    "Anthropic's cache rates"
)
_SONNET4_LONG = "the copy lacks Claude Sonnet 4's >200k-input tier ($6/$22.50 per 1M)"
EXCEPTIONS: dict[str, tuple[frozenset[str], str]] = {
    "o1-mini-2024-09-12": (
        frozenset({"price"}),
        "the copy keeps the launch price; OpenAI cut o1-mini to $1.10/$4.40",
    ),
    "openai/o1-mini-2024-09-12": (
        frozenset({"price"}),
        "the copy keeps the launch price; OpenAI cut o1-mini to $1.10/$4.40",
    ),
    "mistral/mistral-medium": (
        frozenset({"price"}),
        "the copy's bare mistral-medium is the retired 2312 model; ours is Mistral Medium 3",
    ),
    "deepseek-chat": (
        frozenset({"price"}),
        "DeepSeek V3.2 prices ($0.28/$0.028/$0.42); the copy has 2024 prices",
    ),
    "deepseek/deepseek-chat": (frozenset({"price"}), "DeepSeek V3.2 prices; the copy has V3's"),
    "deepseek/deepseek-reasoner": (
        frozenset({"price"}),
        "DeepSeek V3.2 prices; the copy has R1's",
    ),
    "codestral/*": (
        frozenset({"price"}),
        "the copy prices the free codestral.mistral.ai endpoint at $0; we price the paid API",
    ),
    "eu.anthropic.claude-3-5-haiku-20241022-v1:0": (
        frozenset({"price"}),
        "the copy has Claude 3 Haiku's prices under this Claude 3.5 Haiku id",
    ),
    "bedrock/us-gov-*": (
        frozenset({"price"}),
        "AWS GovCloud's regional premium is not modelled: override the model to use it",
    ),
    "gemini-2.0-flash-001": (
        frozenset({"price"}),
        "Vertex AI's price for this snapshot; we use the Gemini API price ($0.10/$0.40)",
    ),
    "claude-3-5-haiku-latest": (
        frozenset({"price"}),
        "the copy prices this alias at $1/$5; it points to claude-3-5-haiku-20241022 ($0.80/$4)",
    ),
    "*gemini-2.5-flash-preview-04-17": (
        frozenset({"price"}),
        "retired preview with its own prices, normalised to GA gemini-2.5-flash",
    ),
    "*gemini-2.5-pro*": (frozenset({"cache"}), _STALE_GEMINI_CACHE),
    "*gemini-2.5-flash*": (frozenset({"cache"}), _STALE_GEMINI_CACHE),
    "xai/grok-3*": (frozenset({"cache"}), _NO_XAI_CACHE),
    "xai/grok-4*": (frozenset({"cache"}), _NO_XAI_CACHE),
    "*anthropic.claude-3-haiku-20240307-v1:0": (frozenset({"cache"}), _NO_BEDROCK_CACHE),
    "*anthropic.claude-3-opus-20240229-v1:0": (frozenset({"cache"}), _NO_BEDROCK_CACHE),
    "*anthropic.claude-3-5-sonnet-20240620-v1:0": (frozenset({"cache"}), _NO_BEDROCK_CACHE),
    "anthropic.claude-3-5-sonnet-latest-v2:0": (frozenset({"cache"}), _NO_BEDROCK_CACHE),
    "eu.anthropic.claude-3-5-sonnet-20241022-v2:0": (frozenset({"cache"}), _NO_BEDROCK_CACHE),
    "eu.anthropic.claude-3-7-sonnet-20250219-v1:0": (frozenset({"cache"}), _NO_BEDROCK_CACHE),
    "*claude-sonnet-4-20250514*": (frozenset({"long"}), _SONNET4_LONG),
    "claude-4-sonnet-20250514": (frozenset({"long"}), _SONNET4_LONG),
}

# (name, usage, aspects it exercises)
USAGES: list[tuple[str, TokenUsage, frozenset[str]]] = [
    ("plain", TokenUsage(input_tokens=1234, output_tokens=567), frozenset()),
    ("one token", TokenUsage(input_tokens=1, output_tokens=1), frozenset()),
    (
        "reasoning",
        TokenUsage(input_tokens=5000, output_tokens=4000, reasoning_tokens=3100),
        frozenset(),
    ),
    (
        "cached",
        TokenUsage(
            input_tokens=10_000,
            output_tokens=3000,
            cache_read_tokens=6000,
            cache_write_tokens=1500,
            reasoning_tokens=1200,
        ),
        frozenset({"cache"}),
    ),
    ("long", TokenUsage(input_tokens=250_000, output_tokens=4000), frozenset({"long"})),
    (
        "long cached",
        TokenUsage(
            input_tokens=300_000,
            output_tokens=2000,
            cache_read_tokens=120_000,
            reasoning_tokens=500,
        ),
        frozenset({"long", "cache"}),
    ),
]

_FIRST_PARTY = {
    "openai",
    "text-completion-openai",
    "anthropic",
    "gemini",
    "vertex_ai-language-models",
    "xai",
    "mistral",
    "codestral",
    "deepseek",
}


def _tokencost_prices() -> dict[str, Any]:
    spec = importlib.util.find_spec("tokencost")  # read the json; importing tokencost may fetch
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tokencost is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _d(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def tokencost_nanos(entry: dict[str, Any], usage: TokenUsage) -> int:
    """tokencost/LiteLLM's per-token fields, applied with exact Decimal arithmetic."""
    inp = _d(entry["input_cost_per_token"])
    out = _d(entry["output_cost_per_token"])
    assert inp is not None and out is not None
    if usage.input_tokens > 200_000 and entry.get("input_cost_per_token_above_200k_tokens"):
        inp = _d(entry["input_cost_per_token_above_200k_tokens"])
        out = _d(entry.get("output_cost_per_token_above_200k_tokens")) or out
        assert inp is not None
    cache_read = _d(entry.get("cache_read_input_token_cost"))
    if cache_read is None:
        cache_read = _d(entry.get("input_cost_per_token_cache_hit"))
    cache_write = _d(entry.get("cache_creation_input_token_cost"))
    reasoning = _d(entry.get("output_cost_per_reasoning_token"))
    cache_read = inp if cache_read is None else cache_read
    cache_write = inp if cache_write is None else cache_write
    reasoning = out if reasoning is None else reasoning
    usd = (
        (usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens) * inp
        + usage.cache_read_tokens * cache_read
        + usage.cache_write_tokens * cache_write
        + (usage.output_tokens - usage.reasoning_tokens) * out
        + usage.reasoning_tokens * reasoning
    )
    return int((usd * 10**9).to_integral_value(rounding=ROUND_HALF_UP))


def _compared_entries() -> list[tuple[str, dict[str, Any]]]:
    table = PriceTable.default()
    entries = []
    for key, entry in _tokencost_prices().items():
        if not isinstance(entry, dict) or entry.get("mode") not in ("chat", "responses"):
            continue
        if entry.get("input_cost_per_token") is None or entry.get("output_cost_per_token") is None:
            continue
        provider = entry.get("litellm_provider")
        bedrock_claude = provider in ("bedrock", "bedrock_converse") and "anthropic." in key
        if provider not in _FIRST_PARTY and not bedrock_claude:
            continue
        if table.normalize(key) is not None:
            entries.append((key, entry))
    return entries


def _exception_for(key: str) -> tuple[frozenset[str], str] | None:
    for pattern, value in EXCEPTIONS.items():
        if fnmatch.fnmatchcase(key, pattern):
            return value
    return None


def test_many_tokencost_entries_are_compared() -> None:
    compared = _compared_entries()
    assert len(compared) > 150
    canonical = {PriceTable.default().normalize(k) for k, _ in compared}
    # Every provider family is represented.
    for name in ("gpt-4o", "claude-sonnet-4", "gemini-2.5-pro", "mistral-large", "grok-4", "o3"):
        assert name in canonical


@pytest.mark.parametrize("key_entry", _compared_entries(), ids=lambda ke: ke[0])
def test_cost_equals_tokencost(key_entry: tuple[str, dict[str, Any]]) -> None:
    key, entry = key_entry
    table = PriceTable.default()
    excepted = _exception_for(key)
    aspects = excepted[0] if excepted else frozenset()
    for name, usage, exercised in USAGES:
        ours = table.cost_nanos(key, usage)
        theirs = tokencost_nanos(entry, usage)
        if "price" in aspects or exercised & aspects:
            continue
        assert ours == theirs, f"{key} [{name}]: ours {ours} != tokencost {theirs}"


def test_every_exception_is_still_needed() -> None:
    table = PriceTable.default()
    used: dict[str, bool] = dict.fromkeys(EXCEPTIONS, False)
    for key, entry in _compared_entries():
        for pattern in EXCEPTIONS:
            if not fnmatch.fnmatchcase(key, pattern):
                continue
            aspects = EXCEPTIONS[pattern][0]
            for _, usage, exercised in USAGES:
                relevant = "price" in aspects or exercised & aspects
                if relevant and table.cost_nanos(key, usage) != tokencost_nanos(entry, usage):
                    used[pattern] = True
            break
    assert [p for p, needed in used.items() if not needed] == []


def test_long_context_tiers_are_shipped() -> None:
    table = PriceTable.default()
    for model in ("gemini-2.5-pro", "claude-sonnet-4", "claude-sonnet-4-5"):
        _, price = table.resolve(model)
        assert price.long_context and price.long_context[0].above_input_tokens == 200_000
    below = TokenUsage(input_tokens=200_000, output_tokens=1000)
    above = TokenUsage(input_tokens=200_001, output_tokens=1000)
    # claude-sonnet-4: $3/$15 at 200k input, $6/$22.50 for the whole call above it.
    assert table.cost_nanos("claude-sonnet-4-20250514", below) == 600_000_000 + 15_000_000
    assert table.cost_nanos("claude-sonnet-4-20250514", above) == 1_200_006_000 + 22_500_000
