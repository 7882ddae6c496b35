"""Prices, token usage and token estimates: what a model call costs, in nano-dollars.

table = PriceTable.default()                      # shipped prices.json, loaded once
pricer = Pricer(table, unknown_model="block")     # or "warn", "price_as:gpt-4o"
usage = usage_from_openai(response.usage)         # or _anthropic, _gemini
nanos = pricer.cost(response.model, usage)        # int, 1e-9 USD
"""

from nasca_core.pricing._estimate import (
    CHARS_PER_TOKEN,
    StreamTextCounter,
    count_message_tokens,
    count_tokens,
    encoding_name_for,
    estimate_cost_nanos,
)
from nasca_core.pricing._pricer import Pricer
from nasca_core.pricing._refresh import PriceChange, PriceDiff, main_prices, refresh_prices
from nasca_core.pricing._table import LongContextPrice, ModelPrice, PriceTable, parse_price
from nasca_core.pricing._usage import (
    AnthropicStreamUsage,
    TokenUsage,
    usage_from_anthropic,
    usage_from_anthropic_stream,
    usage_from_gemini,
    usage_from_openai,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "AnthropicStreamUsage",
    "LongContextPrice",
    "ModelPrice",
    "PriceChange",
    "PriceDiff",
    "PriceTable",
    "Pricer",
    "StreamTextCounter",
    "TokenUsage",
    "count_message_tokens",
    "count_tokens",
    "encoding_name_for",
    "estimate_cost_nanos",
    "main_prices",
    "parse_price",
    "refresh_prices",
    "usage_from_anthropic",
    "usage_from_anthropic_stream",
    "usage_from_gemini",
    "usage_from_openai",
]
