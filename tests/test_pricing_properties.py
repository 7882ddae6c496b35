"""The compiled integer cost equals genai-prices' own ``calc_price``, rounded once.

``calc_price`` is the slow, exact Decimal reference (~250 µs); the compiled rates are what
runs per call. Over every billed dimension, service tier and long-context tier, for the
current flagships of each provider, the two agree to the nano-dollar.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import genai_prices
from hypothesis import given, settings
from hypothesis import strategies as st

from nasca_core.pricing import PriceTable, TokenUsage
from nasca_core.pricing._table import SOURCE_ALIASES
from tests._flagships import FLAGSHIPS

TABLE = PriceTable.default()
MODELS = st.sampled_from(FLAGSHIPS)
TIERS = st.sampled_from([None, "flex", "priority", "batch"])
COUNT = st.integers(min_value=0, max_value=1_500_000)


@st.composite
def usages(draw: st.DrawFn) -> TokenUsage:
    input_tokens = draw(COUNT)
    cache_read = draw(st.integers(0, input_tokens))
    cache_write = draw(st.integers(0, input_tokens - cache_read))
    one_hour = draw(st.integers(0, cache_write))
    audio_in = draw(st.integers(0, input_tokens - cache_read - cache_write))
    output = draw(COUNT)
    reasoning = draw(st.integers(0, output))
    audio_out = draw(st.integers(0, output - reasoning))
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=one_hour,
        reasoning_tokens=reasoning,
        input_audio_tokens=audio_in,
        output_audio_tokens=audio_out,
        web_searches=draw(st.integers(0, 5)),
        file_searches=draw(st.integers(0, 5)),
        service_tier=draw(TIERS),
    )


def reference_nanos(model: str, u: TokenUsage) -> int:
    usage = genai_prices.Usage(
        input_tokens=u.input_tokens,
        cache_read_tokens=u.cache_read_tokens,
        cache_write_tokens=u.cache_write_tokens,
        cache_write_5m_tokens=u.cache_write_tokens - u.cache_write_1h_tokens,
        cache_write_1h_tokens=u.cache_write_1h_tokens,
        input_audio_tokens=u.input_audio_tokens,
        cache_audio_read_tokens=0,  # our audio counts are the uncached ones
        output_tokens=u.output_tokens,
        output_reasoning_tokens=u.reasoning_tokens,
        output_audio_tokens=u.output_audio_tokens,
        web_searches=u.web_searches,
        storage_searches=u.file_searches,  # OpenAI's file_search calls
    )
    tier = u.service_tier
    context = None if tier is None else {"processing": "batch"} if tier == "batch" else {"service_tier": tier}
    resolved = SOURCE_ALIASES.get(model, model)  # our aliases first
    price = genai_prices.calc_price(usage, resolved, price_context=context).total_price
    return int((price * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@settings(max_examples=300, deadline=None)
@given(MODELS, usages())
def test_compiled_cost_equals_calc_price(model: str, usage: TokenUsage) -> None:
    assert TABLE.cost_nanos(model, usage) == reference_nanos(model, usage)


@settings(max_examples=100, deadline=None)
@given(MODELS, usages(), usages())
def test_cost_is_monotonic_in_output(model: str, a: TokenUsage, b: TokenUsage) -> None:
    more = TokenUsage(
        a.input_tokens, a.output_tokens + b.output_tokens, a.cache_read_tokens, a.cache_write_tokens,
        a.reasoning_tokens, service_tier=a.service_tier,
    )
    less = TokenUsage(
        a.input_tokens, a.output_tokens, a.cache_read_tokens, a.cache_write_tokens, a.reasoning_tokens,
        service_tier=a.service_tier,
    )
    assert TABLE.cost_nanos(model, more) >= TABLE.cost_nanos(model, less)
