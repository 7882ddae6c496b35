"""Anthropic Messages wire format: JSON, SSE events, token counting, models, errors.

Shapes follow https://docs.anthropic.com/en/api/messages and /messages-streaming.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from nasca_core.testing._replies import Turn, Usage, anthropic_stop_reason
from nasca_core.testing._sse import Event, split_arguments, split_text, sse, text_of

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_DEFAULT_MESSAGES = {
    400: "Invalid request.",
    401: "invalid x-api-key",
    404: "Not found",
    429: "Number of request tokens has exceeded your rate limit.",
    500: "Internal server error",
    529: "Overloaded",
}


def error_body(status: int, message: str | None = None, request_id: str | None = None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body: dict[str, Any] = {
        "type": "error",
        "error": {
            "type": kind,
            "message": message or _DEFAULT_MESSAGES.get(status, f"HTTP {status}"),
        },
    }
    if request_id:
        body["request_id"] = request_id
    return body


def stream_error(status: int, message: str | None) -> bytes:
    # a failure after the 200 arrives as an "error" event (the docs' example: overloaded_error)
    return sse(error_body(status, message), event="error")


def prompt(body: dict[str, Any]) -> list[str]:
    pieces = text_of(body.get("system"))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            pieces += text_of(message.get("content"))
    return pieces


def usage_fields(usage: Usage) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "input_tokens": usage.uncached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_tokens,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": usage.output_tokens,
        "service_tier": "standard",
    }
    if usage.reasoning_tokens:
        fields["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return fields


def _blocks(turn: Turn) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if turn.text or not turn.tool_calls:
        blocks.append({"type": "text", "text": turn.text})
    for call in turn.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": dict(call.arguments)})
    return blocks


def message(turn: Turn, message_id: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": turn.model,
        "content": _blocks(turn),
        "stop_reason": anthropic_stop_reason(turn.finish_reason),
        "stop_sequence": None,
        "usage": usage_fields(turn.usage),
    }


def stream(turn: Turn, message_id: str) -> Iterator[Event]:
    """message_start (input and cache counts, an early output count), content blocks,
    message_delta (cumulative final counts, which replace those of message_start), message_stop."""
    start_usage = usage_fields(turn.usage)
    # Anthropic reports an early, tiny output count here; consumers must take the
    # message_delta total instead of adding the two.
    start_usage["output_tokens"] = min(1, turn.usage.output_tokens)
    start_usage.pop("output_tokens_details", None)
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": turn.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    yield Event(sse({"type": "message_start", "message": start}, event="message_start"), False)
    for index, block in enumerate(_blocks(turn)):
        opening = dict(block, text="") if block["type"] == "text" else dict(block, input={})
        yield Event(
            sse(
                {"type": "content_block_start", "index": index, "content_block": opening},
                event="content_block_start",
            ),
            False,
        )
        if index == 0:
            yield Event(sse({"type": "ping"}, event="ping"), False)
        if block["type"] == "text":
            deltas = [{"type": "text_delta", "text": piece} for piece in split_text(block["text"])]
        else:
            arguments = json.dumps(block["input"], ensure_ascii=False)
            deltas = [
                {"type": "input_json_delta", "partial_json": piece} for piece in split_arguments(arguments)
            ]
        for delta in deltas:
            yield Event(
                sse(
                    {"type": "content_block_delta", "index": index, "delta": delta},
                    event="content_block_delta",
                ),
                True,
            )
        yield Event(sse({"type": "content_block_stop", "index": index}, event="content_block_stop"), False)
    final = usage_fields(turn.usage)
    delta_usage = {
        key: final[key]
        for key in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
            "output_tokens_details",
        )
        if key in final
    }
    yield Event(
        sse(
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": anthropic_stop_reason(turn.finish_reason),
                    "stop_sequence": None,
                },
                "usage": delta_usage,
            },
            event="message_delta",
        ),
        False,
    )
    yield Event(sse({"type": "message_stop"}, event="message_stop"), False)


def models_list(models: list[str], created_at: str) -> dict[str, Any]:
    data = [model_object(m, created_at) for m in models]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def model_object(model: str, created_at: str) -> dict[str, Any]:
    return {"type": "model", "id": model, "display_name": model, "created_at": created_at}
