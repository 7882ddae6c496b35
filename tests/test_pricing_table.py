"""PriceTable: genai-prices lookups, owner prices, aliases, validation and the cost formula."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from nasca_core._errors import ConfigurationError, PricingError, UnknownModelError
from nasca_core.pricing import LongContextPrice, ModelPrice, PriceTable, TokenUsage, parse_price


@pytest.fixture
def table() -> PriceTable:
    return PriceTable.default()


def test_default_is_cached(table: PriceTable) -> None:
    assert PriceTable.default() is table


def test_prices_are_exact_decimals(table: PriceTable) -> None:
    _, price = table.resolve("gpt-4o-mini")
    assert price.input == Decimal("0.15")
    assert price.cache_read == Decimal("0.075")
    assert isinstance(price.output, Decimal)


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        # What genai-prices' model matching resolves each spelling to (its ids).
        ("gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("  gpt-4o ", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # its own, higher price
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("o3-2025-04-16", "o3"),
        ("codex-mini-latest", "codex-mini"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        ("openai/gpt-4o", "gpt-4o"),
        ("azure/gpt-4o-2024-11-20", "azure/gpt-4o"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("gemini-2.5-pro-preview-06-05", "gemini-2.5-pro"),
        # Bedrock ids are priced as AWS bills them.
        ("anthropic.claude-3-5-sonnet-20241022-v2:0",
         "aws/regional.anthropic.claude-3-5-sonnet-20241022-v2:0"),
        ("bedrock/global.anthropic.claude-sonnet-4-5-20250929-v1:0",
         "aws/global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        ("publishers/anthropic/models/claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        (
            "projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash-001",
            "gemini-2.0-flash",
        ),
        # -latest maps to the model the provider serves under it, not to a stripped name.
        ("mistral-large-latest", "mistral-large-2512"),
        ("codestral-latest", "codestral"),
        ("mistral-medium-latest", "mistral-medium-latest"),
        ("grok-4-0709", "grok-4-0709"),
        ("xai/grok-3-mini-latest", "grok-3-mini"),
        ("deepseek/deepseek-chat", "deepseek-chat"),
        ("gpt-35-turbo", "gpt-3.5-turbo"),  # Azure's spelling
    ],
)
def test_normalize(table: PriceTable, name: str, canonical: str) -> None:
    assert table.normalize(name) == canonical
    assert table.resolve(name)[0] == canonical
    assert name in table


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "gpt-7",
        "my-deployment",
        "mistral-nemo:free",  # genai-prices lists it at $0: never free by accident
        "llama-3-70b",
        "2024-08-06",
    ],
)
def test_unknown_names(table: PriceTable, name: str) -> None:
    assert table.normalize(name) is None
    assert name not in table
    with pytest.raises(UnknownModelError) as info:
        table.resolve(name)
    assert info.value.model == name
    assert "price_as" in str(info.value)  # the message says how to fix it
    with pytest.raises(UnknownModelError):
        table.cost_nanos(name, TokenUsage(input_tokens=1))


def test_unknown_model_error_is_pricing_error() -> None:
    assert issubclass(UnknownModelError, PricingError)


def test_normalize_cache_is_bounded(table: PriceTable) -> None:
    fresh = table.with_overrides({})
    for i in range(5000):
        fresh.normalize(f"unknown-{i}")
    assert len(fresh._norm_cache) <= 4096
    assert fresh.normalize("gpt-4o") == "gpt-4o"


# --------------------------------------------------------------------------- aliases, overrides


def test_user_aliases_for_azure_deployments(table: PriceTable) -> None:
    custom = table.with_overrides({}, aliases={"prod-chat": "gpt-4o-2024-08-06", "Cheap": "gpt-4o-mini"})
    assert custom.normalize("prod-chat") == "gpt-4o"
    assert custom.normalize("azure/prod-chat") == "gpt-4o"
    assert custom.normalize("cheap") == "gpt-4o-mini"
    assert custom.aliases["prod-chat"] == "gpt-4o"
    assert table.normalize("prod-chat") is None  # the original is unchanged


def test_alias_errors(table: PriceTable) -> None:
    with pytest.raises(ConfigurationError, match="unknown model"):
        table.with_overrides({}, aliases={"x": "not-a-model"})
    with pytest.raises(ConfigurationError, match="also a model name"):
        table.with_overrides({"house": {"input": 1, "output": 1}}, aliases={"house": "gpt-4o-mini"})
    with pytest.raises(ConfigurationError):
        table.with_overrides({}, aliases={"": "gpt-4o"})


def test_overrides_add_and_replace(table: PriceTable) -> None:
    custom = table.with_overrides(
        {
            "my-model": {"input": "1", "output": 2},
            "gpt-4o": ModelPrice(input=Decimal(3), output=Decimal(12)),
            "gpt-4o-2024-11-20": {"input": 2.6, "output": 10.5},
        }
    )
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert custom.cost_nanos("my-model", usage) == 3 * 10**9
    assert custom.cost_nanos("gpt-4o", usage) == 15 * 10**9
    assert custom.cost_nanos("gpt-4o-2024-08-06", usage) == 15 * 10**9
    assert custom.cost_nanos("gpt-4o-2024-11-20", usage) == 13_100_000_000  # exact name wins
    assert table.cost_nanos("gpt-4o", usage) == 12_500_000_000
    assert "my-model" in custom.models and "my-model" not in table.models


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"output": 1}, "input"),
        ({"input": 1}, "output"),
        ({"input": -1, "output": 1}, "input"),
        ({"input": "NaN", "output": 1}, "input"),
        ({"input": "inf", "output": 1}, "input"),
        ({"input": float("inf"), "output": 1}, "input"),
        ({"input": "abc", "output": 1}, "input"),
        ({"input": "1e999998", "output": 1}, "input"),  # the shared O(1) parser refuses it
        ({"input": 1, "output": "9" * 5000}, "output"),
        ({"input": True, "output": 1}, "input"),
        ({"input": 1, "output": 1, "cache_read": -0.1}, "cache_read"),
        ({"input": 1, "output": 1, "cache_wirte": 1}, "cache_wirte"),
        ({"input": 1, "output": 1e-10}, "output"),
        ({"input": 5_000_000, "output": 1}, "input"),
        (
            {"input": 1, "output": 1, "long_context": [{"input": 2, "output": 2}]},
            "above_input_tokens",
        ),
        (
            {
                "input": 1,
                "output": 1,
                "long_context": [{"above_input_tokens": 0, "input": 2, "output": 2}],
            },
            "above_input_tokens",
        ),
    ],
)
def test_invalid_price_entries(table: PriceTable, entry: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        table.with_overrides({"bad-model": entry})
    assert "bad-model" in str(info.value)
    assert field in str(info.value)


def test_constructor_errors() -> None:
    one = ModelPrice(input=Decimal(1), output=Decimal(1))
    with pytest.raises(ConfigurationError, match="twice"):
        PriceTable({"A": one, "a": one})
    with pytest.raises(ConfigurationError, match="ModelPrice"):
        PriceTable({"a": {"input": 1, "output": 1}})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="unknown model"):
        PriceTable({"a": one}, {"b": "c"}, use_source=False)


def test_zero_prices_need_free() -> None:
    with pytest.raises(ConfigurationError, match="free=True"):
        parse_price("house", {"input": 0, "output": 0})
    with pytest.raises(ConfigurationError, match="free=True"):
        parse_price("house", {"input": 0, "output": 3})
    free = PriceTable().with_overrides({"house": {"free": True}, "mistral-nemo:free": {"free": True}})
    assert free.cost_nanos("house", TokenUsage(10**6, 10**6)) == 0
    assert free.normalize("mistral-nemo:free") == "mistral-nemo:free"  # declared free: priced at $0


# --------------------------------------------------------------------------- the cost formula


def _table(**price: Any) -> PriceTable:
    return PriceTable({"m": ModelPrice.model_validate(price)})


def test_cost_formula_every_term() -> None:
    t = _table(input=2, output=8, cache_read=0.5, cache_write=2.5, reasoning=16)
    usage = TokenUsage(
        input_tokens=1000,
        cache_read_tokens=300,
        cache_write_tokens=200,
        output_tokens=400,
        reasoning_tokens=100,
    )
    # (500*2 + 300*0.5 + 200*2.5 + 300*8 + 100*16) USD per 1M = 5650 / 1e6 USD
    assert t.cost_nanos("m", usage) == 5_650_000


def test_missing_cache_and_reasoning_prices_fall_back() -> None:
    t = _table(input=2, output=8)
    usage = TokenUsage(
        input_tokens=1000,
        cache_read_tokens=300,
        cache_write_tokens=200,
        output_tokens=400,
        reasoning_tokens=100,
    )
    assert t.cost_nanos("m", usage) == (1000 * 2 + 400 * 8) * 1000


def test_rounding_half_up_once() -> None:
    # 0.0004 USD per 1M tokens is 0.4 nano-dollars per token; 0.0003 is 0.3.
    t = _table(input=0.0004, output=0.0003)
    assert t.cost_nanos("m", TokenUsage(input_tokens=1)) == 0
    assert t.cost_nanos("m", TokenUsage(input_tokens=2)) == 1
    # Rounded once over the sum, not per term: 0.4 + 0.3 = 0.7 -> 1, though each rounds to 0.
    assert t.cost_nanos("m", TokenUsage(input_tokens=1, output_tokens=1)) == 1
    half = _table(input=0.0005, output=0)
    assert half.cost_nanos("m", TokenUsage(input_tokens=1)) == 1  # 0.5 -> 1
    assert half.cost_nanos("m", TokenUsage(input_tokens=3)) == 2  # 1.5 -> 2


def test_long_context_tiers() -> None:
    t = _table(
        input=1,
        output=10,
        cache_read=0.1,
        long_context=[
            {"above_input_tokens": 200_000, "input": 2, "output": 15},
            {"above_input_tokens": 500_000, "input": 3, "output": 20, "cache_read": 0.9},
        ],
    )
    at = TokenUsage(input_tokens=200_000, output_tokens=1000)
    over = TokenUsage(input_tokens=200_001, output_tokens=1000)
    far = TokenUsage(input_tokens=600_000, cache_read_tokens=100_000, output_tokens=1000)
    assert t.cost_nanos("m", at) == (200_000 * 1 + 1000 * 10) * 1000
    assert t.cost_nanos("m", over) == (200_001 * 2 + 1000 * 15) * 1000
    assert t.cost_nanos("m", far) == int((500_000 * 3 + 100_000 * 0.9 + 1000 * 20) * 1000)
    # A tier without a cache price inherits the base model's explicit one.
    mid = TokenUsage(input_tokens=300_000, cache_read_tokens=100_000)
    assert t.cost_nanos("m", mid) == int((200_000 * 2 + 100_000 * 0.1) * 1000)


def test_long_context_tier_model() -> None:
    tier = LongContextPrice(above_input_tokens=128_000, input=Decimal(6), output=Decimal(30))
    price = ModelPrice(input=Decimal(3), output=Decimal(15), long_context=(tier,))
    assert price.long_context[0].above_input_tokens == 128_000
    with pytest.raises(ConfigurationError, match="distinct"):
        parse_price(
            "m",
            {
                "input": 1,
                "output": 1,
                "long_context": [
                    {"above_input_tokens": 10, "input": 1, "output": 1},
                    {"above_input_tokens": 10, "input": 2, "output": 2},
                ],
            },
        )


def test_cost_of_zero_usage_is_zero(table: PriceTable) -> None:
    for model in ("gpt-5", "claude-sonnet-4-5", "gemini-2.5-pro", "grok-4.7", "deepseek-chat"):
        assert table.cost_nanos(model, TokenUsage()) == 0


def test_known_prices(table: PriceTable) -> None:
    million_each = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert table.cost_nanos("gpt-4o", million_each) == 12_500_000_000
    assert table.cost_nanos("gemini-2.5-flash", million_each) == 2_800_000_000
    # Claude Sonnet 4.5 at 100k/100k: $3 + $15 per 1M -> $1.80.
    tenth = TokenUsage(input_tokens=100_000, output_tokens=100_000)
    assert table.cost_nanos("claude-sonnet-4-5", tenth) == 1_800_000_000
    # Above 200k input the whole call moves to $6/$22.50.
    assert table.cost_nanos("claude-sonnet-4-5", million_each) == 28_500_000_000
    # Anthropic cache write (1.25x) and read (0.1x).
    cached = TokenUsage(input_tokens=100_000, cache_write_tokens=50_000, cache_read_tokens=50_000)
    assert table.cost_nanos("claude-sonnet-4-5", cached) == 187_500_000 + 15_000_000


def test_parse_price_names_model_and_field() -> None:
    from nasca_core.pricing import parse_price

    assert parse_price("m", {"input": "0.1", "output": 0.4}).output == Decimal("0.4")
    with pytest.raises(ConfigurationError, match=r"'house'.*output"):
        parse_price("house", {"input": 1})
    with pytest.raises(ConfigurationError, match="'house'"):
        parse_price("house", [1, 2])


def test_public_names() -> None:
    import nasca_core.pricing as pricing

    for name in pricing.__all__:
        assert getattr(pricing, name) is not None
    assert len(set(pricing.__all__)) == len(pricing.__all__)


def test_owner_price_keeps_the_sources_other_dimensions(table: PriceTable) -> None:
    # An owner who sets input and output keeps gpt-5's cache discount and web search fee.
    custom = table.with_overrides({"gpt-5": {"input": 1, "output": 8}})
    usage = TokenUsage(input_tokens=1000, cache_read_tokens=600, output_tokens=100, web_searches=1)
    # 400 * 1 + 600 * 0.125 + 100 * 8 = 1275 µ$, plus $0.01 for the search
    assert custom.cost_nanos("gpt-5-2025-08-07", usage) == 1_275_000 + 10_000_000
    free = table.with_overrides({"gpt-5": {"free": True}})
    assert free.cost_nanos("gpt-5", usage) == 0  # free is free: nothing inherited
    own = table.with_overrides({"gpt-5": {"input": 1, "output": 8, "cache_read": 1, "web_search": 0}})
    assert own.cost_nanos("gpt-5", usage) == 1000 * 1000 + 100 * 8000
