"""nasca_core.testing.ProviderServer, driven by the real openai and anthropic SDKs over HTTP."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nasca_core._errors import ConfigurationError
from nasca_core.testing import (
    DEFAULT_REPLY_TEXT,
    ProviderServer,
    RecordedRequest,
    Reply,
    ToolCall,
    Usage,
)

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")

GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"  # not in the SDK's deprecated list: no DeprecationWarning
WEATHER = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"})
OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server
        assert server.errors == []


@pytest.fixture
def oai(srv: ProviderServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
def ant(srv: ProviderServer) -> Iterator[Any]:
    with anthropic.Anthropic(base_url=srv.anthropic_base_url, api_key="x", max_retries=0) as client:
        yield client


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def expected_usage(srv: ProviderServer, prompt: str, reply: str = DEFAULT_REPLY_TEXT) -> Usage:
    return Usage(input_tokens=srv.count_tokens(prompt), output_tokens=srv.count_tokens(reply))


def sse_events(body: str) -> list[tuple[str | None, str]]:
    """(event name, data) per server-sent event."""
    out = []
    for block in body.strip().split("\n\n"):
        event, data = None, ""
        for line in block.splitlines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        out.append((event, data))
    return out


# -- OpenAI Chat Completions ----------------------------------------------------------------------


def test_chat_json_reports_the_computed_usage(srv: ProviderServer, oai: Any) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=GPT,
        messages=[{"role": "system", "content": "Be brief."}, *user("What is the time?")],
    )
    completion = raw.parse()
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-request-id"].startswith("req_")
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == GPT
    assert abs(completion.created - time.time()) < 60
    assert completion.choices[0].message.content == DEFAULT_REPLY_TEXT
    assert completion.choices[0].finish_reason == "stop"
    rec = srv.last_request
    assert rec.usage == expected_usage(srv, "Be brief.\nWhat is the time?")
    assert rec.prompt == "Be brief.\nWhat is the time?"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        rec.usage.input_tokens,
        rec.usage.output_tokens,
    )
    assert usage.total_tokens == rec.usage.total_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert rec.request_id == raw.headers["x-request-id"]
    assert (rec.method, rec.path, rec.endpoint, rec.model) == (
        "POST",
        "/v1/chat/completions",
        "chat.completions",
        GPT,
    )
    assert rec.headers["authorization"] == "Bearer x"
    assert rec.json["messages"][1]["content"] == "What is the time?"


def test_chat_stream_without_include_usage_has_no_usage(srv: ProviderServer, oai: Any) -> None:
    chunks = list(oai.chat.completions.create(model=GPT, messages=user("hi"), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == DEFAULT_REPLY_TEXT
    assert len(chunks) > 5  # really streamed in pieces
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert srv.last_request.stream is True


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(srv: ProviderServer, oai: Any) -> None:
    stream = oai.chat.completions.create(
        model=GPT, messages=user("hi"), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == srv.last_request.usage.input_tokens
    assert chunks[-1].usage.completion_tokens == srv.count_tokens(DEFAULT_REPLY_TEXT)
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_wire_format(srv: ProviderServer) -> None:
    """The raw SSE: ``usage: null`` on every chunk only when asked, then ``[DONE]``."""
    for include in (False, True):
        body: dict[str, Any] = {"model": GPT, "messages": user("hi"), "stream": True}
        if include:
            body["stream_options"] = {"include_usage": True}
        r = httpx.post(f"{srv.base_url}/chat/completions", json=body)
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert events[-1] == (None, "[DONE]")
        chunks = [json.loads(data) for _, data in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(c["object"] == "chat.completion.chunk" and c["model"] == GPT for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        if include:
            assert chunks[-1]["choices"] == []
            assert chunks[-1]["usage"]["prompt_tokens"] == srv.count_tokens("hi")
            assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
        else:
            assert all("usage" not in c for c in chunks)


def test_chat_tool_calls_json_and_stream(srv: ProviderServer, oai: Any) -> None:
    srv.queue(Reply(tool_calls=[WEATHER]))
    completion = oai.chat.completions.create(model=GPT, messages=user("weather?"), tools=[OPENAI_TOOL])
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    (call,) = message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert completion.usage.completion_tokens == srv.count_tokens("get_weather") + srv.count_tokens(
        WEATHER.arguments_json
    )

    srv.queue(Reply("Checking.", tool_calls=[WEATHER, ToolCall("get_time", {}, id="call_fixed")]))
    with oai.chat.completions.stream(model=GPT, messages=user("weather?"), tools=[OPENAI_TOOL]) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Checking."
    assert [c.function.name for c in message.tool_calls] == ["get_weather", "get_time"]
    assert json.loads(message.tool_calls[0].function.arguments) == dict(WEATHER.arguments)
    assert message.tool_calls[1].id == "call_fixed"
    assert final.choices[0].finish_reason == "tool_calls"


async def test_async_openai_chat_and_stream(srv: ProviderServer) -> None:
    async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0) as client:
        completion = await client.chat.completions.create(model=GPT, messages=user("hi"))
        assert completion.usage.prompt_tokens == srv.count_tokens("hi")
        stream = await client.chat.completions.create(
            model=GPT, messages=user("hi"), stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        assert chunks[-1].usage.completion_tokens == srv.count_tokens(DEFAULT_REPLY_TEXT)
    assert srv.counts["chat.completions"] == 2


def test_max_tokens_cuts_the_reply(srv: ProviderServer, oai: Any) -> None:
    long_text = "one two three four five six seven eight nine ten " * 5
    srv.queue(Reply(long_text), Reply(long_text))
    completion = oai.chat.completions.create(model=GPT, messages=user("count"), max_tokens=7)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens <= 7
    assert long_text.startswith(completion.choices[0].message.content)
    assert completion.usage.completion_tokens == srv.count_tokens(completion.choices[0].message.content)
    response = oai.responses.create(model=GPT, input="count", max_output_tokens=7)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens <= 7


# -- OpenAI Responses -----------------------------------------------------------------------------


def test_responses_json(srv: ProviderServer, oai: Any) -> None:
    response = oai.responses.create(model=GPT, instructions="Be brief.", input="Hello there")
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == GPT
    assert response.output_text == DEFAULT_REPLY_TEXT
    assert response.output[0].id.startswith("msg_")
    assert response.usage.input_tokens == srv.count_tokens("Be brief.\nHello there")
    assert response.usage.output_tokens == srv.count_tokens(DEFAULT_REPLY_TEXT)
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert srv.last_request.endpoint == "responses"


def test_responses_stream_events(srv: ProviderServer, oai: Any) -> None:
    stream = oai.responses.create(
        model=GPT,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}],
        stream=True,
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") > 3
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.usage is None
    usage = events[-1].response.usage
    assert usage.input_tokens == srv.count_tokens("Hello there")
    assert usage.output_tokens == srv.last_request.usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == DEFAULT_REPLY_TEXT


def test_responses_stream_helper_and_tool_calls(srv: ProviderServer, oai: Any) -> None:
    srv.queue(Reply(tool_calls=[WEATHER]))
    with oai.responses.stream(model=GPT, input="weather?") as stream:
        final = stream.get_final_response()
    (call,) = final.output
    assert call.type == "function_call"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == dict(WEATHER.arguments)

    srv.queue(Reply(tool_calls=[WEATHER]))
    response = oai.responses.create(model=GPT, input="weather?")
    assert response.output[0].type == "function_call"
    assert response.output[0].name == "get_weather"


# -- Anthropic Messages ---------------------------------------------------------------------------


def test_anthropic_json(srv: ProviderServer, ant: Any) -> None:
    raw = ant.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=100, system="Be brief.", messages=user("Hello there")
    )
    message = raw.parse()
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["request-id"].startswith("req_")
    assert message.id.startswith("msg_")
    assert message.model == CLAUDE
    assert message.content[0].text == DEFAULT_REPLY_TEXT
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == srv.count_tokens("Be brief.\nHello there")
    assert message.usage.output_tokens == srv.count_tokens(DEFAULT_REPLY_TEXT)
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    rec = srv.last_request
    assert rec.endpoint == "messages"
    # anthropic 2.x sends the key as a bearer token; older SDKs used x-api-key
    assert "Bearer x" in (
        rec.headers.get("authorization"),
        "Bearer " + rec.headers.get("x-api-key", ""),
    )
    assert "anthropic-version" in rec.headers


def test_anthropic_stream_events(srv: ProviderServer, ant: Any) -> None:
    events = list(ant.messages.create(model=CLAUDE, max_tokens=100, messages=user("hi"), stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[-2] == "message_delta"
    assert kinds.count("content_block_delta") > 3
    start, delta = events[0], events[-2]
    assert start.message.usage.input_tokens == srv.count_tokens("hi")
    assert start.message.usage.output_tokens == 1  # early count, replaced by message_delta
    assert delta.usage.output_tokens == srv.count_tokens(DEFAULT_REPLY_TEXT)
    assert delta.delta.stop_reason == "end_turn"


def test_anthropic_stream_helper_final_message(srv: ProviderServer, ant: Any) -> None:
    with ant.messages.stream(model=CLAUDE, max_tokens=100, messages=user("hi")) as stream:
        assert "".join(stream.text_stream) == DEFAULT_REPLY_TEXT
        final = stream.get_final_message()
    assert final.usage.input_tokens == srv.last_request.usage.input_tokens
    assert final.usage.output_tokens == srv.last_request.usage.output_tokens


def test_anthropic_tool_use_json_and_stream(srv: ProviderServer, ant: Any) -> None:
    srv.queue(Reply(tool_calls=[WEATHER]), Reply("Let me check.", tool_calls=[WEATHER]))
    message = ant.messages.create(
        model=CLAUDE, max_tokens=100, messages=user("weather?"), tools=[ANTHROPIC_TOOL]
    )
    (block,) = message.content
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.input == dict(WEATHER.arguments)
    assert message.stop_reason == "tool_use"

    with ant.messages.stream(
        model=CLAUDE, max_tokens=100, messages=user("weather?"), tools=[ANTHROPIC_TOOL]
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == dict(WEATHER.arguments)
    assert final.stop_reason == "tool_use"


async def test_async_anthropic(srv: ProviderServer) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=srv.anthropic_base_url, api_key="x", max_retries=0
    ) as client:
        message = await client.messages.create(model=CLAUDE, max_tokens=50, messages=user("hi"))
        assert message.usage.output_tokens == srv.count_tokens(DEFAULT_REPLY_TEXT)
        async with client.messages.stream(model=CLAUDE, max_tokens=50, messages=user("hi")) as stream:
            final = await stream.get_final_message()
        assert final.usage.output_tokens == srv.last_request.usage.output_tokens
    assert srv.counts["messages"] == 2


def test_count_tokens_endpoint(srv: ProviderServer, ant: Any) -> None:
    counted = ant.messages.count_tokens(model=CLAUDE, system="sys", messages=user("Hello there"))
    assert counted.input_tokens == srv.count_tokens("sys\nHello there")
    assert srv.counts["messages.count_tokens"] == 1


# -- usage overrides ------------------------------------------------------------------------------


def test_usage_override_maps_to_each_wire_format(srv: ProviderServer, oai: Any, ant: Any) -> None:
    usage = Usage(
        input_tokens=1000,
        output_tokens=300,
        cached_tokens=600,
        cache_write_tokens=100,
        reasoning_tokens=200,
    )
    srv.queue(*[Reply("ok", usage=usage)] * 5)

    chat = oai.chat.completions.create(model=GPT, messages=user("hi")).usage
    assert (chat.prompt_tokens, chat.completion_tokens, chat.total_tokens) == (1000, 300, 1300)
    assert chat.prompt_tokens_details.cached_tokens == 600
    assert chat.prompt_tokens_details.cache_write_tokens == 100
    assert chat.completion_tokens_details.reasoning_tokens == 200

    resp = oai.responses.create(model=GPT, input="hi").usage
    assert (resp.input_tokens, resp.output_tokens) == (1000, 300)
    assert resp.input_tokens_details.cached_tokens == 600
    assert resp.output_tokens_details.reasoning_tokens == 200

    # Anthropic's input_tokens excludes cache reads and writes
    msg = ant.messages.create(model=CLAUDE, max_tokens=10, messages=user("hi")).usage
    assert (msg.input_tokens, msg.cache_read_input_tokens, msg.cache_creation_input_tokens) == (
        300,
        600,
        100,
    )
    assert msg.output_tokens == 300
    with ant.messages.stream(model=CLAUDE, max_tokens=10, messages=user("hi")) as stream:
        streamed = stream.get_final_message().usage
    assert (streamed.input_tokens, streamed.cache_read_input_tokens) == (300, 600)
    assert (streamed.cache_creation_input_tokens, streamed.output_tokens) == (100, 300)

    chunks = list(
        oai.chat.completions.create(
            model=GPT, messages=user("hi"), stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 600
    assert [r.usage for r in srv.requests] == [usage] * 5


@pytest.mark.parametrize(
    "fields",
    [
        {"input_tokens": -1, "output_tokens": 0},
        {"input_tokens": 10, "output_tokens": 0, "cached_tokens": 8, "cache_write_tokens": 3},
        {"input_tokens": 1, "output_tokens": 1, "reasoning_tokens": 2},
        {"input_tokens": 1.5, "output_tokens": 1},
        {"input_tokens": True, "output_tokens": 1},
    ],
)
def test_invalid_usage_is_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Usage(**fields)


# -- scripting: queue, responder, default ---------------------------------------------------------


def test_queue_then_responder_then_default() -> None:
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> Reply | str:
        seen.append(body)
        return "echo: " + body["messages"][-1]["content"]

    def ask(client: Any, text: str) -> str:
        completion = client.chat.completions.create(model=GPT, messages=user(text))
        return str(completion.choices[0].message.content)

    with (
        ProviderServer(reply="default", responder=responder) as server,
        server.openai_client() as client,
    ):
        server.queue("first", Reply("second"))
        assert [ask(client, f"m{i}") for i in range(3)] == ["first", "second", "echo: m2"]
        assert len(seen) == 1 and server.pending_replies == 0
        server.responder = None
        assert ask(client, "x") == "default"


def test_a_failing_responder_answers_500_and_is_recorded() -> None:
    def responder(body: dict[str, Any]) -> Reply:
        raise RuntimeError("boom")

    with ProviderServer(responder=responder) as server, server.openai_client() as client:
        with pytest.raises(openai.InternalServerError, match="boom"):
            client.chat.completions.create(model=GPT, messages=user("x"))
        assert [type(e) for e in server.errors] == [RuntimeError]


# -- recording ------------------------------------------------------------------------------------


def test_request_recording_counts_and_reset(srv: ProviderServer, oai: Any, ant: Any) -> None:
    assert srv.request_count == 0 and srv.counts["chat.completions"] == 0
    with pytest.raises(LookupError):
        _ = srv.last_request
    oai.chat.completions.create(model=GPT, messages=user("a"))
    oai.chat.completions.create(model=GPT, messages=user("b"))
    ant.messages.create(model=CLAUDE, max_tokens=5, messages=user("c"))
    oai.embeddings.create(model="text-embedding-3-small", input="d")
    assert srv.request_count == 4
    assert dict(srv.counts) == {"chat.completions": 2, "messages": 1, "embeddings": 1}
    assert srv.wait_idle()  # the client can read the last byte before the server marks it done
    assert all(isinstance(r, RecordedRequest) and r.done and r.status == 200 for r in srv.requests)
    srv.queue("left over")
    srv.fail_next(500)
    srv.reset()
    assert srv.request_count == 0 and srv.pending_replies == 0
    assert oai.chat.completions.create(model=GPT, messages=user("x")).choices[0].message.content
    assert srv.request_count == 1


def test_a_client_that_is_never_called_makes_no_request(srv: ProviderServer) -> None:
    srv.openai_client().close()
    srv.anthropic_client().close()
    assert srv.request_count == 0


# -- errors ---------------------------------------------------------------------------------------


def test_fail_next_raises_the_openai_sdks_typed_errors(srv: ProviderServer, oai: Any) -> None:
    srv.fail_next(429)
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model=GPT, messages=user("x"))
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.request_id == srv.last_request.request_id
    assert srv.last_request.status == 429 and srv.last_request.usage is None

    srv.fail_next(500, message="kaput")
    with pytest.raises(openai.InternalServerError, match="kaput"):
        oai.responses.create(model=GPT, input="x")

    srv.fail_next(503, body={"error": {"message": "custom", "type": "x"}})
    with pytest.raises(openai.InternalServerError, match="custom"):
        oai.embeddings.create(model="text-embedding-3-small", input="x")

    # the failure was consumed: the next call succeeds
    assert oai.chat.completions.create(model=GPT, messages=user("x")).usage is not None
    assert srv.request_count == 4


def test_fail_next_raises_the_anthropic_sdks_typed_errors(srv: ProviderServer, ant: Any) -> None:
    srv.fail_next(429, times=2)
    for _ in range(2):
        with pytest.raises(anthropic.RateLimitError) as info:
            ant.messages.create(model=CLAUDE, max_tokens=5, messages=user("x"))
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert info.value.request_id == srv.last_request.request_id

    srv.fail_next(529)
    with pytest.raises(anthropic.OverloadedError):
        ant.messages.create(model=CLAUDE, max_tokens=5, messages=user("x"))
    assert ant.messages.create(model=CLAUDE, max_tokens=5, messages=user("x")).content


def test_fail_next_for_one_endpoint_leaves_the_others_alone(srv: ProviderServer, oai: Any, ant: Any) -> None:
    srv.fail_next(500, endpoint="messages")
    assert oai.chat.completions.create(model=GPT, messages=user("x")).choices
    with pytest.raises(anthropic.InternalServerError):
        ant.messages.create(model=CLAUDE, max_tokens=5, messages=user("x"))
    with pytest.raises(ConfigurationError):
        srv.fail_next(500, endpoint="chat")
    with pytest.raises(ConfigurationError):
        srv.fail_next(200)


def test_failure_after_some_chunks_breaks_the_stream(srv: ProviderServer, oai: Any, ant: Any) -> None:
    srv.fail_next(500, message="mid-stream", after_chunks=2)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="mid-stream"):
        for chunk in oai.chat.completions.create(model=GPT, messages=user("x"), stream=True):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "This is"  # two word-sized deltas of the default reply
    assert srv.last_request.status == 200 and srv.last_request.usage is None

    srv.fail_next(529, after_chunks=1)
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
        ant.messages.stream(model=CLAUDE, max_tokens=50, messages=user("x")) as stream,
    ):
        stream.get_final_message()

    # the Responses API reports a broken stream with events, which the SDK yields
    srv.fail_next(500, after_chunks=1)
    events = list(oai.responses.create(model=GPT, input="x", stream=True))
    assert [e.type for e in events[-3:]] == [
        "response.output_text.delta",
        "error",
        "response.failed",
    ]
    assert events[-1].response.status == "failed" and events[-1].response.usage is None
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_wrong_api_key_is_a_401(oai: Any) -> None:
    with ProviderServer(api_key="right") as server:
        with (
            openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError),
        ):
            bad.chat.completions.create(model=GPT, messages=user("x"))
        with server.anthropic_client() as good:
            assert good.messages.create(model=CLAUDE, max_tokens=5, messages=user("x")).content
        with (
            anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0) as bad_a,
            pytest.raises(anthropic.AuthenticationError),
        ):
            bad_a.messages.create(model=CLAUDE, max_tokens=5, messages=user("x"))


def test_bad_requests_get_provider_shaped_400_and_404(srv: ProviderServer) -> None:
    r = httpx.post(f"{srv.base_url}/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{srv.url}/v1/messages", json={"model": CLAUDE, "messages": user("x")})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }
    assert r.headers["request-id"] == r.json()["request_id"]
    r = httpx.post(
        f"{srv.base_url}/chat/completions",
        json={"model": GPT, "messages": user("x"), "stream_options": {"include_usage": True}},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
    r = httpx.post(f"{srv.base_url}/nope", json={})
    assert r.status_code == 404 and "Invalid URL" in r.json()["error"]["message"]
    assert srv.counts["unknown"] == 1


# -- aborted streams ------------------------------------------------------------------------------


def test_client_closing_mid_stream_leaves_the_server_healthy(
    oai: Any, ant: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    with ProviderServer(reply="word " * 200, chunk_delay=0.002) as server:
        client = server.openai_client()
        stream = client.chat.completions.create(model=GPT, messages=user("x"), stream=True)
        next(iter(stream))
        stream.close()
        a_client = server.anthropic_client()
        with a_client.messages.stream(model=CLAUDE, max_tokens=500, messages=user("x")) as s:
            next(iter(s))
        assert server.wait_idle(timeout=5)
        assert [r.aborted for r in server.requests] == [True, True]
        assert all(r.done for r in server.requests)
        # the next requests on the same clients are answered normally
        done = client.chat.completions.create(model=GPT, messages=user("again"))
        assert done.usage.completion_tokens == server.count_tokens("word " * 200)
        assert a_client.messages.create(model=CLAUDE, max_tokens=500, messages=user("x")).content
        assert server.errors == []
        client.close()
        a_client.close()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "Error" not in captured.err


# -- embeddings and models ------------------------------------------------------------------------


def test_embeddings(srv: ProviderServer, oai: Any) -> None:
    texts = ["the cat sat on the mat", "a cat on a mat", "quarterly revenue report"]
    result = oai.embeddings.create(model="text-embedding-3-small", input=texts)  # base64 on the wire
    vectors = [d.embedding for d in result.data]
    assert [len(v) for v in vectors] == [1536] * 3
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-5 for v in vectors)

    def cos(a: list[float], b: list[float]) -> float:
        return math.fsum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    assert result.usage.prompt_tokens == sum(srv.count_tokens(t) for t in texts)
    assert srv.last_request.json["encoding_format"] == "base64"
    assert srv.last_request.usage == Usage(input_tokens=result.usage.prompt_tokens, output_tokens=0)

    floats = oai.embeddings.create(
        model="text-embedding-3-large", input="x", encoding_format="float", dimensions=8
    )
    assert len(floats.data[0].embedding) == 8
    again = httpx.post(
        f"{srv.base_url}/embeddings",
        json={"model": "m", "input": "x", "dimensions": 8, "encoding_format": "base64"},
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(again))
    assert decoded == pytest.approx(floats.data[0].embedding)


def test_models(srv: ProviderServer, oai: Any, ant: Any) -> None:
    assert GPT in [m.id for m in oai.models.list()]
    assert oai.models.retrieve("gpt-anything").id == "gpt-anything"
    listed = [m.id for m in ant.models.list()]
    assert CLAUDE in listed
    assert srv.counts["models"] == 3


# -- tokenizer, lifecycle, latency ----------------------------------------------------------------


def test_tokenizers() -> None:
    words = ProviderServer(tokenizer="words")
    assert words.tokenizer == "words"
    assert words.count_tokens("Hello, world!") == 4
    custom = ProviderServer(tokenizer=len)
    assert custom.count_tokens("abc") == 3
    auto = ProviderServer()
    assert auto.tokenizer in ("o200k_base", "words")
    with pytest.raises(ConfigurationError):
        ProviderServer(tokenizer="nope")


def test_lifecycle_and_latency() -> None:
    server = ProviderServer(latency=0.05)
    with pytest.raises(RuntimeError):
        _ = server.base_url
    assert server.start() is server.start()  # idempotent
    port = server.port
    try:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.anthropic_base_url == server.url
        with server.openai_client() as client:
            began = time.perf_counter()
            client.chat.completions.create(model=GPT, messages=user("x"))
            assert time.perf_counter() - began >= 0.05
    finally:
        server.stop()
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models")


def test_auto_tokenizer_falls_back_to_words_without_a_tiktoken_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from nasca_core.pricing import _estimate

    _estimate.clear_encoder_cache()
    monkeypatch.setattr(_estimate, "search_dirs", lambda: [tmp_path])  # no BPE file anywhere
    monkeypatch.delenv(_estimate.DOWNLOAD_ENV, raising=False)
    try:
        assert ProviderServer().tokenizer == "words"
        with pytest.raises(ConfigurationError, match="offline"):
            ProviderServer(tokenizer="o200k_base")
    finally:
        _estimate.clear_encoder_cache()


def test_finish_reasons_are_translated_per_wire_format(srv: ProviderServer, oai: Any, ant: Any) -> None:
    srv.queue(*[Reply("x", finish_reason="max_tokens")] * 3, Reply("x", finish_reason="pause_turn"))
    chat = oai.chat.completions.create(model=GPT, messages=user("x"))
    assert chat.choices[0].finish_reason == "length"
    assert ant.messages.create(model=CLAUDE, max_tokens=9, messages=user("x")).stop_reason == ("max_tokens")
    assert oai.responses.create(model=GPT, input="x").status == "incomplete"
    # a value neither vocabulary knows is passed through unchanged
    assert ant.messages.create(model=CLAUDE, max_tokens=9, messages=user("x")).stop_reason == ("pause_turn")


async def test_concurrent_requests_are_all_recorded(srv: ProviderServer) -> None:
    import asyncio

    async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0) as client:

        async def one(i: int) -> int:
            if i % 2:
                stream = await client.chat.completions.create(
                    model=GPT,
                    messages=user(f"question {i}"),
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [c async for c in stream]
                return int(chunks[-1].usage.prompt_tokens)
            completion = await client.chat.completions.create(model=GPT, messages=user(f"question {i}"))
            return int(completion.usage.prompt_tokens)

        tokens = await asyncio.gather(*(one(i) for i in range(40)))
    assert tokens == [srv.count_tokens(f"question {i}") for i in range(40)]
    assert srv.request_count == 40 and srv.counts["chat.completions"] == 40
    assert srv.wait_idle() and all(r.done and not r.aborted for r in srv.requests)


def test_a_json_answer_is_not_held_back_by_nagle(srv: ProviderServer, oai: Any) -> None:
    """Headers and body are two writes: without TCP_NODELAY each call waits ~40 ms."""
    timings = []
    for _ in range(15):
        began = time.perf_counter()
        oai.chat.completions.create(model=GPT, messages=user("x"))
        timings.append(time.perf_counter() - began)
    assert sorted(timings)[len(timings) // 2] < 0.025
