"""Properties of the cost function over the whole shipped table."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from nasca_core.pricing import PriceTable, TokenUsage

TABLE = PriceTable.default()
MODELS = st.sampled_from(TABLE.models)
COUNT = st.integers(min_value=0, max_value=2_000_000)


@st.composite
def usages(draw: st.DrawFn) -> TokenUsage:
    input_tokens = draw(COUNT)
    cache_read = draw(st.integers(0, input_tokens))
    cache_write = draw(st.integers(0, input_tokens - cache_read))
    output = draw(COUNT)
    reasoning = draw(st.integers(0, output))
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


def _exact(model: str, usage: TokenUsage) -> Decimal:
    """Decimal USD, straight from the ModelPrice (independent of the integer fast path)."""
    _, p = TABLE.resolve(model)
    tier = None
    for t in p.long_context:
        if usage.input_tokens > t.above_input_tokens:
            tier = t
    inp = tier.input if tier else p.input
    out = tier.output if tier else p.output

    def pick(tier_value: Decimal | None, base: Decimal | None, fallback: Decimal) -> Decimal:
        return tier_value if tier_value is not None else base if base is not None else fallback

    cr = pick(tier.cache_read if tier else None, p.cache_read, inp)
    cw = pick(tier.cache_write if tier else None, p.cache_write, inp)
    rs = pick(tier.reasoning if tier else None, p.reasoning, out)
    return (
        (usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens) * inp
        + usage.cache_read_tokens * cr
        + usage.cache_write_tokens * cw
        + (usage.output_tokens - usage.reasoning_tokens) * out
        + usage.reasoning_tokens * rs
    ) / 1_000_000


@settings(max_examples=300, deadline=None)
@given(MODELS, usages())
def test_integer_cost_equals_exact_decimal(model: str, usage: TokenUsage) -> None:
    nanos = TABLE.cost_nanos(model, usage)
    assert nanos >= 0
    exact = (_exact(model, usage) * 10**9).to_integral_value(rounding=ROUND_HALF_UP)
    assert nanos == int(exact)


@settings(max_examples=300, deadline=None)
@given(
    MODELS,
    usages(),
    st.sampled_from(["input", "output", "cache_read", "cache_write", "reasoning"]),
    st.integers(1, 50_000),
)
def test_monotonic_in_each_count(model: str, usage: TokenUsage, field: str, extra: int) -> None:
    """More tokens never cost less. A cache/reasoning token is added together with its total,
    so it replaces nothing: the call really used one more token. (Within one price tier: a
    call crossing a long-context threshold reprices everything, upwards.)"""
    bumped = {
        "input": {"input_tokens": usage.input_tokens + extra},
        "output": {"output_tokens": usage.output_tokens + extra},
        "cache_read": {
            "input_tokens": usage.input_tokens + extra,
            "cache_read_tokens": usage.cache_read_tokens + extra,
        },
        "cache_write": {
            "input_tokens": usage.input_tokens + extra,
            "cache_write_tokens": usage.cache_write_tokens + extra,
        },
        "reasoning": {
            "output_tokens": usage.output_tokens + extra,
            "reasoning_tokens": usage.reasoning_tokens + extra,
        },
    }[field]
    more = TokenUsage(
        **{
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            **bumped,
        }
    )
    assert TABLE.cost_nanos(model, more) >= TABLE.cost_nanos(model, usage)


@settings(max_examples=300, deadline=None)
@given(MODELS, usages(), usages())
def test_additive_within_rounding(model: str, a: TokenUsage, b: TokenUsage) -> None:
    """cost(a + b) is cost(a) + cost(b) up to one nano-dollar of rounding, when all three
    calls are priced in the same (base) tier."""
    _, price = TABLE.resolve(model)
    threshold = min((t.above_input_tokens for t in price.long_context), default=None)
    if threshold is not None and (a + b).input_tokens > threshold:
        return
    together = TABLE.cost_nanos(model, a + b)
    apart = TABLE.cost_nanos(model, a) + TABLE.cost_nanos(model, b)
    assert abs(together - apart) <= 1
