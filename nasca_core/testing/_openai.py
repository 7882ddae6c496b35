"""OpenAI wire formats: Chat Completions, Responses, Embeddings, Models, errors.

Shapes follow https://platform.openai.com/docs/api-reference (and the types of the
``openai`` SDK generated from the same OpenAPI spec).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

from nasca_core.testing._replies import Turn, Usage, new_id, openai_finish_reason
from nasca_core.testing._sse import Event, split_arguments, split_text, sse, text_of

SYSTEM_FINGERPRINT = "fp_nasca_test"
_HEX = "0123456789abcdef"
_EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}
_DEFAULT_DIMENSIONS = 1536
_EMBED_WORD = re.compile(r"\w+")

ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}
_DEFAULT_MESSAGES = {
    400: "Invalid request.",
    401: "Incorrect API key provided.",
    404: "The requested resource was not found.",
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The server is overloaded or not ready yet.",
}


def error_body(status: int, message: str | None = None, param: str | None = None) -> dict[str, Any]:
    kind, code = ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    text = message or _DEFAULT_MESSAGES.get(status, f"HTTP {status}")
    return {"error": {"message": text, "type": kind, "param": param, "code": code}}


def chat_stream_error(status: int, message: str | None) -> bytes:
    """An error after the 200: a ``data: {"error": ...}`` chunk (the SDK raises APIError)."""
    return sse(error_body(status, message))


# -- prompts ---------------------------------------------------------------------------


def chat_prompt(body: dict[str, Any]) -> list[str]:
    pieces: list[str] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        pieces += text_of(message.get("content"))
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                pieces.append(str(call["function"].get("arguments", "")))
        if isinstance(message.get("function_call"), dict):
            pieces += [str(message["function_call"].get("arguments", ""))]
    return pieces


def responses_prompt(body: dict[str, Any]) -> list[str]:
    pieces = text_of(body.get("instructions"))
    items = body.get("input")
    if isinstance(items, str):
        return [*pieces, items]
    for item in items or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            pieces += text_of(item.get("content"))
        elif kind == "function_call":
            pieces.append(str(item.get("arguments", "")))
        elif kind == "function_call_output":
            pieces += text_of(item.get("output"))
    return pieces


def max_output(body: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


# -- chat completions -------------------------------------------------------------------


def chat_usage(usage: Usage) -> dict[str, Any]:
    prompt_details: dict[str, int] = {"cached_tokens": usage.cached_tokens, "audio_tokens": 0}
    if usage.cache_write_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(turn: Turn, completion_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": turn.text if turn.text or not turn.tool_calls else None,
        "refusal": None,
        "annotations": [],
    }
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call in turn.tool_calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": turn.created,
        "model": turn.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": openai_finish_reason(turn.finish_reason),
            }
        ],
        "usage": chat_usage(turn.usage),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def chat_stream(turn: Turn, completion_id: str, *, include_usage: bool) -> Iterator[Event]:
    """Chunks as OpenAI streams them; with include_usage every chunk has ``usage: null``
    and one extra chunk with ``choices: []`` carries the usage before ``[DONE]``."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": turn.created,
            "model": turn.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            payload["usage"] = None
        return sse(payload)

    first_content = "" if turn.text or not turn.tool_calls else None
    yield Event(chunk({"role": "assistant", "content": first_content, "refusal": None}), False)
    for piece in split_text(turn.text):
        yield Event(chunk({"content": piece}), True)
    for index, call in enumerate(turn.tool_calls):
        head = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield Event(chunk({"tool_calls": [head]}), True)
        for piece in split_arguments(call.arguments_json):
            delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            yield Event(chunk(delta), True)
    yield Event(chunk({}, openai_finish_reason(turn.finish_reason)), False)
    if include_usage:
        yield Event(
            sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": turn.created,
                    "model": turn.model,
                    "service_tier": "default",
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [],
                    "usage": chat_usage(turn.usage),
                }
            ),
            False,
        )
    yield Event(sse("[DONE]"), False)


# -- responses ---------------------------------------------------------------------------


def responses_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _hex_id(prefix: str) -> str:
    return new_id(prefix, 48, alphabet=_HEX)


class ResponseBuilder:
    """One Responses API answer, as a JSON object or as its stream of typed events."""

    def __init__(self, turn: Turn, body: dict[str, Any]) -> None:
        self.turn = turn
        self.body = body
        self.id = _hex_id("resp_")
        self.message_id = _hex_id("msg_")
        self.call_item_ids = [_hex_id("fc_") for _ in turn.tool_calls]
        reason = openai_finish_reason(turn.finish_reason)
        self.incomplete_reason = {
            "length": "max_output_tokens",
            "content_filter": "content_filter",
        }.get(reason)
        self.item_status = "incomplete" if self.incomplete_reason else "completed"
        self.sequence = 0  # the next event's sequence_number; an injected error takes it

    def _text_part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self._text_part(text)]
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _call(self, index: int, status: str, arguments: str) -> dict[str, Any]:
        call = self.turn.tool_calls[index]
        return {
            "id": self.call_item_ids[index],
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": call.id,
            "name": call.name,
        }

    def _has_message(self) -> bool:
        return bool(self.turn.text) or not self.turn.tool_calls

    def response(self, *, final: bool) -> dict[str, Any]:
        body = self.body
        output: list[dict[str, Any]] = []
        if final:
            if self._has_message():
                output.append(self._message(self.item_status, self.turn.text))
            for index, call in enumerate(self.turn.tool_calls):
                output.append(self._call(index, "completed", call.arguments_json))
        status = ("incomplete" if self.incomplete_reason else "completed") if final else "in_progress"
        text_config = body.get("text") if isinstance(body.get("text"), dict) else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.turn.created,
            "status": status,
            "background": False,
            "completed_at": self.turn.created if final and not self.incomplete_reason else None,
            "error": None,
            "incomplete_details": {"reason": self.incomplete_reason}
            if final and self.incomplete_reason
            else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "model": self.turn.model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": text_config or {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": responses_usage(self.turn.usage) if final else None,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def failure(self, status: int, message: str | None) -> bytes:
        """An error after the 200: an ``error`` event, then ``response.failed``.

        The SDK yields both as events (it raises only for ``data: {"error": ...}``).
        """
        error = error_body(status, message)["error"]
        code = error["code"] or error["type"]
        failed = self.response(final=False)
        failed.update(status="failed", error={"code": code, "message": error["message"]})
        # it replaces the delta event just built, so it takes that event's number
        sequence = self.sequence - 1
        first = {
            "type": "error",
            "code": code,
            "message": error["message"],
            "param": None,
            "sequence_number": sequence,
        }
        second = {
            "type": "response.failed",
            "sequence_number": sequence + 1,
            "response": failed,
        }
        self.sequence = sequence + 2
        return sse(first, event="error") + sse(second, event="response.failed")

    def events(self) -> Iterator[Event]:
        def event(kind: str, **fields: Any) -> Event:
            is_delta = kind.endswith(".delta")  # text and tool-argument deltas
            payload = {"type": kind, "sequence_number": self.sequence, **fields}
            self.sequence += 1
            return Event(sse(payload, event=kind), is_delta)

        yield event("response.created", response=self.response(final=False))
        yield event("response.in_progress", response=self.response(final=False))
        output_index = 0
        if self._has_message():
            where = {"item_id": self.message_id, "output_index": output_index}
            yield event(
                "response.output_item.added",
                output_index=output_index,
                item=self._message("in_progress", None),
            )
            yield event("response.content_part.added", **where, content_index=0, part=self._text_part(""))
            for piece in split_text(self.turn.text):
                yield event(
                    "response.output_text.delta",
                    **where,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            yield event(
                "response.output_text.done",
                **where,
                content_index=0,
                text=self.turn.text,
                logprobs=[],
            )
            yield event(
                "response.content_part.done",
                **where,
                content_index=0,
                part=self._text_part(self.turn.text),
            )
            yield event(
                "response.output_item.done",
                output_index=output_index,
                item=self._message(self.item_status, self.turn.text),
            )
            output_index += 1
        for index, call in enumerate(self.turn.tool_calls):
            item_id = self.call_item_ids[index]
            yield event(
                "response.output_item.added",
                output_index=output_index,
                item=self._call(index, "in_progress", ""),
            )
            for piece in split_arguments(call.arguments_json):
                yield event(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=output_index,
                    delta=piece,
                )
            yield event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=output_index,
                name=call.name,
                arguments=call.arguments_json,
            )
            yield event(
                "response.output_item.done",
                output_index=output_index,
                item=self._call(index, "completed", call.arguments_json),
            )
            output_index += 1
        final = "response.incomplete" if self.incomplete_reason else "response.completed"
        yield event(final, response=self.response(final=True))


# -- embeddings and models ---------------------------------------------------------------


def embedding_inputs(raw: Any) -> list[str | list[int]]:
    """The request's ``input`` as a list of strings or token-id lists."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        return [list(raw)]
    if isinstance(raw, list):
        out: list[str | list[int]] = []
        for item in raw:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, list) and all(isinstance(x, int) for x in item):
                out.append(list(item))
            else:
                raise ValueError("input must be a string, a list of strings or of token ids")
        return out
    raise ValueError("input must be a string, a list of strings or of token ids")


def embed(item: str | list[int], dimensions: int) -> list[float]:
    """A deterministic unit vector by feature hashing of lower-cased words.

    Texts sharing words point in similar directions, so retrieval demos rank sensibly.
    """
    vector = [0.0] * dimensions
    words = _EMBED_WORD.findall(item.lower()) if isinstance(item, str) else [str(t) for t in item]
    for word in words or ["<empty>"]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:6], "little") % dimensions
        vector[slot] += 1.0 if digest[7] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def embeddings_response(body: dict[str, Any], count: Callable[[str], int]) -> tuple[dict[str, Any], int]:
    """The embeddings list and the prompt tokens it reports. Raises ValueError on bad input."""
    items = embedding_inputs(body.get("input"))
    model = str(body.get("model", ""))
    dimensions = body.get("dimensions") or _EMBEDDING_DIMENSIONS.get(model, _DEFAULT_DIMENSIONS)
    if not isinstance(dimensions, int) or dimensions <= 0:
        raise ValueError("dimensions must be a positive integer")
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = embed(item, dimensions)
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(count(item) if isinstance(item, str) else len(item) for item in items)
    payload = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return payload, tokens


def models_list(models: list[str], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [model_object(m, created) for m in models],
    }


def model_object(model: str, created: int) -> dict[str, Any]:
    owner = "openai" if not model.startswith("claude") else "anthropic"
    return {"id": model, "object": "model", "created": created, "owned_by": owner}


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()
