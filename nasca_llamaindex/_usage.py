"""``usage_from_llamaindex``: the usage a LlamaIndex response carries, as the core's TokenUsage."""

from __future__ import annotations

from collections.abc import Mapping

from nasca_core import UsageParseError
from nasca_core.pricing import (
    TokenUsage,
    usage_from_anthropic,
    usage_from_anthropic_message,
    usage_from_openai_response,
)


def usage_from_llamaindex(chat_response: object) -> TokenUsage | None:
    """Read a LlamaIndex ``ChatResponse``/``CompletionResponse``; None when it carries no usage.

    Prefers ``raw.usage`` (llama-index-llms-openai keeps cached and reasoning counts only
    there, and ``raw.service_tier``; an Anthropic-shaped usage is recognised by its cache
    counters, and carries its own tier and tool counts), then falls back
    to ``additional_kwargs`` ``prompt_tokens``/``completion_tokens``. None means "no usage
    reported" (streams without ``include_usage``, other integrations): the caller must then
    count the text itself. A usage that is present but malformed raises UsageParseError.
    """
    raw = getattr(chat_response, "raw", None)
    usage = raw.get("usage") if isinstance(raw, Mapping) else getattr(raw, "usage", None)
    if usage is not None:
        if _has(usage, "cache_creation_input_tokens") or _has(usage, "cache_read_input_tokens"):
            # the whole message: its code-execution container is billed too
            return usage_from_anthropic_message(raw) or usage_from_anthropic(usage)
        # The whole response: its service_tier and Responses web_search_call items are billed too.
        return usage_from_openai_response(raw)
    extra = getattr(chat_response, "additional_kwargs", None)
    if not isinstance(extra, Mapping):
        return None
    prompt, completion = extra.get("prompt_tokens"), extra.get("completion_tokens")
    if prompt is None and completion is None:
        return None
    if prompt is None or completion is None:
        raise UsageParseError(f"LlamaIndex additional_kwargs usage is incomplete: {dict(extra)!r}")
    try:
        return TokenUsage.of(prompt, completion)
    except UsageParseError as exc:
        raise UsageParseError(f"LlamaIndex additional_kwargs usage is inconsistent: {exc}") from None


def _has(usage: object, key: str) -> bool:
    # a dict from the wire, or the provider SDK's pydantic object
    if isinstance(usage, Mapping):
        return key in usage
    if key in (getattr(usage, "__dict__", None) or ()):
        return True
    extra = getattr(usage, "__pydantic_extra__", None)
    # a pydantic model has its fields and extras, nothing more: no hasattr, which for a
    # field it lacks costs ~5 µs (pydantic formats the error)
    return key in extra if isinstance(extra, dict) else hasattr(usage, key)
