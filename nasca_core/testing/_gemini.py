"""Gemini API wire format (``models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``): JSON, SSE chunks, ``usageMetadata``, errors.

Shapes follow https://ai.google.dev/api/generate-content: camelCase JSON; ``usageMetadata``
has ``promptTokenCount`` (cached tokens included, ``cachedContentTokenCount``),
``candidatesTokenCount`` (thoughts NOT included) and ``thoughtsTokenCount``; proto3 JSON
leaves zero counts out. Every stream chunk carries the usage so far; the last has it all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nasca_core.testing._replies import Turn, Usage, new_id
from nasca_core.testing._sse import Event, split_text, sse, text_of

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
_FINISH = {"stop": "STOP", "end_turn": "STOP", "length": "MAX_TOKENS", "max_tokens": "MAX_TOKENS",
           "content_filter": "SAFETY", "refusal": "SAFETY", "tool_calls": "STOP", "tool_use": "STOP"}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    return {"error": {"code": status, "message": message or f"HTTP {status}",
                      "status": _STATUS.get(status, "UNKNOWN")}}


def prompt(body: dict[str, Any]) -> list[str]:
    pieces: list[str] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    for content in ([system] if isinstance(system, dict) else []) + list(body.get("contents") or []):
        if isinstance(content, dict):
            for part in content.get("parts") or []:
                if isinstance(part, dict):
                    pieces += text_of(part.get("text"))
    return pieces


def max_output(body: dict[str, Any]) -> int | None:
    config = body.get("generationConfig") or body.get("generation_config") or {}
    value = config.get("maxOutputTokens") if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_metadata(usage: Usage) -> dict[str, Any]:
    thoughts = usage.reasoning_tokens
    fields = {
        "promptTokenCount": usage.input_tokens,
        "cachedContentTokenCount": usage.cached_tokens,
        "candidatesTokenCount": usage.output_tokens - thoughts,
        "thoughtsTokenCount": thoughts,
        "totalTokenCount": usage.input_tokens + usage.output_tokens,
    }
    return {k: v for k, v in fields.items() if v}  # proto3 JSON omits zeros


def _chunk(turn: Turn, response_id: str, text: str, final: bool, usage: dict[str, Any]) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if final:
        candidate["finishReason"] = _FINISH.get(turn.finish_reason, "STOP")
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": turn.model,
            "responseId": response_id}


def response(turn: Turn) -> dict[str, Any]:
    return _chunk(turn, new_id("", 22), turn.text, True, usage_metadata(turn.usage))


def stream(turn: Turn) -> Iterator[Event]:
    response_id = new_id("", 22)
    pieces = split_text(turn.text) or [""]
    # Gemini reports the prompt on every chunk and the output only when it is known.
    early = {"promptTokenCount": turn.usage.input_tokens} if turn.usage.input_tokens else {}
    for i, piece in enumerate(pieces):
        final = i == len(pieces) - 1
        usage = usage_metadata(turn.usage) if final else early
        yield Event(sse(_chunk(turn, response_id, piece, final, usage)), True)
