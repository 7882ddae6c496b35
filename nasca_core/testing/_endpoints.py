"""The provider server's per-API handlers: check a request the way the provider does,
take the turn, and answer in the provider's wire format (as JSON or as an SSE stream).

Each handler talks to the request through ``Exchange`` (the HTTP handler implements it),
so this module knows nothing of sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import nasca_core.testing._anthropic as anthropic_wire
import nasca_core.testing._gemini as gemini_wire
import nasca_core.testing._openai as openai_wire
from nasca_core.testing._replies import Failure, Turn, Usage, new_id
from nasca_core.testing._sse import Event, sse
from nasca_core.testing._state import RecordedRequest


class Exchange(Protocol):
    """One request being answered."""

    record: RecordedRequest
    anthropic_shape: bool  # answer errors and ids the way Anthropic does

    @property
    def models(self) -> list[str]: ...

    def count_tokens(self, text: str) -> int: ...

    def turn(self, pieces: list[str], max_tokens: int | None, id_prefix: str) -> Turn: ...

    def send_json(self, status: int, payload: Any) -> None: ...

    def fail(self, status: int, message: str | None = None, param: str | None = None) -> None: ...

    def send_stream(
        self, events: Iterator[Event], failure: Failure | None, error_event: Callable[[Failure], bytes]
    ) -> None: ...


def serve(x: Exchange, endpoint: str, failure: Failure | None) -> None:
    """Answer ``x`` on ``endpoint``; ``failure`` breaks a stream off after its chunks."""
    body = x.record.json
    if endpoint == "models":
        _models(x)
        return
    if endpoint == "unknown":
        x.fail(404, f"Invalid URL ({x.record.method} {x.record.path})")
        return
    if not isinstance(body, dict):
        x.fail(400, "The request body must be a JSON object.")
        return
    handler = {
        "chat.completions": _chat,
        "responses": _responses,
        "embeddings": _embeddings,
        "messages": _messages,
        "messages.count_tokens": _count_tokens,
        "gemini.generate": _gemini,
        "gemini.stream": _gemini,
    }[endpoint]
    handler(x, body, failure)


def _chat(x: Exchange, body: dict[str, Any], failure: Failure | None) -> None:
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        x.fail(400, "Missing required parameter: 'messages'.", "messages")
        return
    if not body.get("model"):
        x.fail(400, "you must provide a model parameter", "model")
        return
    if body.get("stream_options") is not None and body.get("stream") is not True:
        # OpenAI rejects this; a wrapper that always adds include_usage must not
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        x.fail(400, message, "stream_options")
        return
    turn = x.turn(
        openai_wire.chat_prompt(body),
        openai_wire.max_output(body, "max_completion_tokens", "max_tokens"),
        "call_",
    )
    if _replay(x, turn, named_events=False):
        return
    completion_id = new_id("chatcmpl-", 29)
    if not x.record.stream:
        x.send_json(200, openai_wire.chat_completion(turn, completion_id))
        return
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    events = openai_wire.chat_stream(turn, completion_id, include_usage=include_usage)
    x.send_stream(events, failure, lambda f: openai_wire.chat_stream_error(f.status, f.message))


def _responses(x: Exchange, body: dict[str, Any], failure: Failure | None) -> None:
    if not body.get("model"):
        x.fail(400, "Missing required parameter: 'model'.", "model")
        return
    turn = x.turn(
        openai_wire.responses_prompt(body),
        openai_wire.max_output(body, "max_output_tokens"),
        "call_",
    )
    if _replay(x, turn, named_events=True):
        return
    builder = openai_wire.ResponseBuilder(turn, body)
    if not x.record.stream:
        x.send_json(200, builder.response(final=True))
        return
    x.send_stream(builder.events(), failure, lambda f: builder.failure(f.status, f.message))


def _messages(x: Exchange, body: dict[str, Any], failure: Failure | None) -> None:
    for required in ("model", "messages", "max_tokens"):
        if required not in body:
            x.fail(400, f"{required}: Field required")
            return
    turn = x.turn(
        anthropic_wire.prompt(body),
        openai_wire.max_output(body, "max_tokens"),
        "toolu_01",
    )
    if _replay(x, turn, named_events=True):
        return
    message_id = new_id("msg_01", 22)
    if not x.record.stream:
        x.send_json(200, anthropic_wire.message(turn, message_id))
        return
    x.send_stream(
        anthropic_wire.stream(turn, message_id),
        failure,
        lambda f: anthropic_wire.stream_error(f.status, f.message),
    )


def _gemini(x: Exchange, body: dict[str, Any], failure: Failure | None) -> None:
    if not isinstance(body.get("contents"), list) or not body["contents"]:
        x.fail(400, "* GenerateContentRequest.contents: contents is not specified")
        return
    turn = x.turn(gemini_wire.prompt(body), gemini_wire.max_output(body), "call_")
    turn.model = x.record.path.rsplit("/", 1)[-1].split(":", 1)[0]
    if _replay(x, turn, named_events=False, done=False):
        return
    if not x.record.stream:
        x.send_json(200, gemini_wire.response(turn))
        return
    error = gemini_wire.error_body
    x.send_stream(gemini_wire.stream(turn), failure, lambda f: sse(error(f.status, f.message)))


def _replay(x: Exchange, turn: Turn, *, named_events: bool, done: bool = True) -> bool:
    """Send a recorded response (``Reply(wire=...)``) verbatim; False when there is none."""
    wire = turn.wire
    if wire is None:
        return False
    if isinstance(wire, Mapping) != (not x.record.stream):
        x.fail(500, "the recorded reply is a " + ("body" if isinstance(wire, Mapping) else "stream")
               + " but the request asked for " + ("a stream" if x.record.stream else "a body"))
        return True
    if isinstance(wire, Mapping):
        x.send_json(200, dict(wire))
        return True
    events = [Event(sse(dict(e), event=str(e.get("type")) if named_events else None), False) for e in wire]
    if done and not named_events:
        events.append(Event(sse("[DONE]"), False))
    x.send_stream(iter(events), None, lambda f: b"")
    return True


def _count_tokens(x: Exchange, body: dict[str, Any], failure: Failure | None) -> None:
    prompt = "\n".join(anthropic_wire.prompt(body))
    x.record.prompt = prompt
    x.send_json(200, {"input_tokens": x.count_tokens(prompt)})


def _embeddings(x: Exchange, body: dict[str, Any], failure: Failure | None) -> None:
    try:
        payload, tokens = openai_wire.embeddings_response(body, x.count_tokens)
    except ValueError as exc:
        x.fail(400, str(exc))
        return
    x.record.usage = Usage(input_tokens=tokens, output_tokens=0)
    x.send_json(200, payload)


def _models(x: Exchange) -> None:
    path = x.record.path
    one = path[len("/v1/models/") :] if path.startswith("/v1/models/") else None
    if x.anthropic_shape:
        created_at = datetime(2025, 1, 1, tzinfo=UTC).isoformat().replace("+00:00", "Z")
        payload = (
            anthropic_wire.model_object(one, created_at)
            if one
            else anthropic_wire.models_list(x.models, created_at)
        )
    else:
        created = 1_735_689_600  # 2025-01-01: fixed, so listings compare equal
        payload = (
            openai_wire.model_object(one, created) if one else openai_wire.models_list(x.models, created)
        )
    x.send_json(200, payload)
