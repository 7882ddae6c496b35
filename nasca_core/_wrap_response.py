"""What each API's response looks like to ``wrap()`` (pure; the request: ``_wrap_request``):
the usage the provider reported, and the text it answered (counted when no usage is)."""

from __future__ import annotations

import logging
from typing import Any

from nasca_core._errors import UsageParseError
from nasca_core._wrap_request import Kind, field_of, gemini_text
from nasca_core.pricing import (
    GeminiStreamUsage,
    TokenUsage,
    usage_from_anthropic_message,
    usage_from_gemini_response,
    usage_from_openai_response,
)

log = logging.getLogger("nasca")


def response_usage(kind: Kind, response: Any, tools: Any = None, model: Any = None) -> TokenUsage | None:
    """The usage the provider reported, or None when it reported none or none we can read:
    then the call is charged for its counted tokens (the provider has answered, so the hold
    must close with a charge, never $0 and never left dangling)."""
    try:
        return _parse_usage(kind, response, tools, model)
    except UsageParseError as exc:
        if kind not in _unreadable:
            _unreadable.add(kind)
            log.warning("nasca: unreadable %s usage, charging counted tokens instead: %s", kind, exc)
        return None


_unreadable: set[str] = set()


def _parse_usage(kind: Kind, response: Any, tools: Any = None, model: Any = None) -> TokenUsage | None:
    if kind == "embeddings":
        usage = field_of(response, "usage")
        tokens = field_of(usage, "prompt_tokens") if usage is not None else None
        return TokenUsage(input_tokens=tokens) if isinstance(tokens, int) else None
    if kind == "gemini":  # grounding searches live on the candidates; the model says how they bill
        if isinstance(response, GeminiStreamUsage):
            return response.usage
        return usage_from_gemini_response(response, model=model)
    # OpenAI's service_tier and tool-call items live beside the usage, not in it.
    if kind != "messages":
        return usage_from_openai_response(response)
    # and the code-execution container, free or not by the request's tool versions
    return usage_from_anthropic_message(response, tools=tools)


def response_text(kind: Kind, response: Any) -> str:
    if kind == "chat":
        return "".join(str(field_of(field_of(c, "message"), "content") or "")
                       for c in field_of(response, "choices") or [])
    if kind == "responses":
        return str(field_of(response, "output_text") or "")
    if kind == "gemini":
        return "".join(gemini_text(field_of(c, "content")) for c in field_of(response, "candidates") or [])
    return "".join(str(field_of(b, "text") or "") for b in field_of(response, "content") or [])
