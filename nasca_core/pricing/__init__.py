"""Prices, token usage and token estimates: what a model call costs, in nano-dollars.

table = PriceTable.default()                      # genai-prices, no owner prices
table = table.with_overrides({"my-model": {"input": 1, "output": 2}}, aliases={"prod": "gpt-5"})
pricer = Pricer(table, unknown_model="block")     # or "warn", "price_as:gpt-4o"
usage = usage_from_openai_response(response)      # or usage_from_anthropic(_stream), _gemini
nanos = pricer.cost(response.model, usage)        # int, 1e-9 USD, compiled once per model
"""

from nasca_core.pricing._estimate import (
    CHARS_PER_TOKEN,
    StreamTextCounter,
    count_message_tokens,
    count_tokens,
    encoding_name_for,
    estimate_cost_nanos,
)
from nasca_core.pricing._owner import LongContextPrice, ModelPrice, parse_price
from nasca_core.pricing._pricer import Pricer
from nasca_core.pricing._rates import Rates
from nasca_core.pricing._refresh import main_prices
from nasca_core.pricing._table import PriceTable, clear_source_cache, start_price_updates
from nasca_core.pricing._usage import TokenUsage, usage_from_openai, usage_from_openai_response
from nasca_core.pricing._usage_anthropic import (
    AnthropicStreamUsage,
    usage_from_anthropic,
    usage_from_anthropic_message,
    usage_from_anthropic_stream,
)
from nasca_core.pricing._usage_gemini import GeminiStreamUsage, usage_from_gemini, usage_from_gemini_response

__all__ = [
    "CHARS_PER_TOKEN",
    "AnthropicStreamUsage",
    "GeminiStreamUsage",
    "LongContextPrice",
    "ModelPrice",
    "PriceTable",
    "Pricer",
    "Rates",
    "StreamTextCounter",
    "TokenUsage",
    "clear_source_cache",
    "count_message_tokens",
    "count_tokens",
    "encoding_name_for",
    "estimate_cost_nanos",
    "main_prices",
    "parse_price",
    "start_price_updates",
    "usage_from_anthropic",
    "usage_from_anthropic_message",
    "usage_from_anthropic_stream",
    "usage_from_gemini",
    "usage_from_gemini_response",
    "usage_from_openai",
    "usage_from_openai_response",
]
