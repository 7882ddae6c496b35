"""``usage_from_langchain``: LangChain's ``AIMessage.usage_metadata`` as the core's TokenUsage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nasca_core import UsageParseError
from nasca_core.pricing import TokenUsage

# langchain-openai prefixes details with the service tier on priority/flex requests
_CACHE_READ = ("cache_read", "priority_cache_read", "flex_cache_read")
_CACHE_WRITE = ("cache_creation", "priority_cache_creation", "flex_cache_creation")
_CACHE_WRITE_TTL = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
_REASONING = ("reasoning", "priority_reasoning", "flex_reasoning")
_TIERS = ("priority", "flex")


def usage_from_langchain(usage_metadata: object) -> TokenUsage:
    """Read LangChain's ``AIMessage.usage_metadata``.

    LangChain already normalises to all-inclusive ``input_tokens``/``output_tokens`` with
    ``input_token_details.cache_read``/``cache_creation`` and ``output_token_details.reasoning``
    as subsets. Two integration quirks are handled:

    * langchain-anthropic reports cache writes split by TTL
      (``ephemeral_5m_input_tokens``/``ephemeral_1h_input_tokens``) and then sets
      ``cache_creation`` to 0 to avoid double counting; we sum the TTL keys back, and the
      1-hour ones are priced at the 1-hour write price.
    * langchain-openai prefixes details with the service tier on ``priority``/``flex``
      (``priority_cache_read``, ``flex_reasoning``); we add those in, and the prefix is the
      service tier the call is priced at.

    Audio tokens (``input_token_details.audio``, ``output_token_details.audio``) are read.

    Raises UsageParseError.
    """
    if not isinstance(usage_metadata, Mapping):
        raise UsageParseError(f"LangChain usage must be a mapping, got {type(usage_metadata)!r}")
    inp = _details(usage_metadata, "input_token_details")
    out = _details(usage_metadata, "output_token_details")
    input_tokens = _count(usage_metadata, "input_tokens", required=True)
    output_tokens = _count(usage_metadata, "output_tokens", required=True)
    cache_read = _sum(inp, _CACHE_READ)
    cache_write = _sum(inp, _CACHE_WRITE) or _sum(inp, _CACHE_WRITE_TTL)
    reasoning = _sum(out, _REASONING)
    tier = next((t for t in _TIERS if any(k.startswith(t + "_") for k in (*inp, *out))), None)
    try:
        return TokenUsage(
            input_tokens,
            output_tokens,
            cache_read,
            cache_write,
            reasoning,
            cache_write_1h_tokens=_count(inp, "ephemeral_1h_input_tokens"),
            input_audio_tokens=min(_count(inp, "audio"), max(input_tokens - cache_read - cache_write, 0)),
            output_audio_tokens=min(_count(out, "audio"), max(output_tokens - reasoning, 0)),
            service_tier=tier,
        )
    except UsageParseError as exc:
        raise UsageParseError(f"LangChain usage is inconsistent: {exc}") from None


def _details(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageParseError(f"LangChain {key} must be a mapping, got {value!r}")
    return value


def _count(data: Mapping[str, Any], key: str, required: bool = False) -> int:
    value = data.get(key)
    if value is None:
        if required:
            raise UsageParseError(f"LangChain usage is missing {key!r}: {dict(data)!r}")
        return 0
    # bool is an int subclass: True tokens is a bug upstream, not a count
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageParseError(f"LangChain {key} must be an int >= 0, got {value!r}")
    return value


def _sum(data: Mapping[str, Any], keys: tuple[str, ...]) -> int:
    return sum(_count(data, key) for key in keys)
