"""Every billed dimension, end to end: recorded provider responses (the shapes in the
providers' docs) replayed verbatim by the local server, read by the real openai/anthropic
SDKs through ``nasca.wrap()``, charged to the exact nano-dollar.

The expected costs are written out from each provider's published prices, fixed here (USD
per 1M tokens unless said): a genai-prices update that changes one fails loudly, the
signal to review, never to loosen.

    gpt-5           1.25 in, 10 out; flex 0.625/5; priority 2.5/20; web search $10 per 1K calls
    gpt-5.4         2.5 in, 15 out; above 272k input tokens the whole request 5 in, 22.5 out
    gpt-audio       2.5 text in, 32 audio in, 10 text out, 64 audio out
    claude-sonnet-4-6  3 in, 15 out, 3.75 5-minute cache write, 6 1-hour cache write,
                       0.3 cache read, web search $10 per 1K; batch half of each
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import Nasca, Tier
from nasca_core.pricing import PriceTable, usage_from_anthropic
from nasca_core.testing import ProviderServer, Reply, Usage

MSG = [{"role": "user", "content": "Find me the latest news."}]


def _chat(model: str, usage: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Here you go.", "refusal": None},
             "logprobs": None, "finish_reason": "stop"}
        ],
        "usage": usage,
        "system_fingerprint": "fp_06737a9306",
        **extra,
    }


def _response(model: str, usage: dict[str, Any], searches: int) -> dict[str, Any]:
    output: list[dict[str, Any]] = [
        {"type": "web_search_call", "id": f"ws_67c9fa0502748190b7dd390736892e10{i}", "status": "completed",
         "action": {"type": "search", "query": "latest news"}}
        for i in range(searches)
    ]
    output.append({
        "type": "message", "id": "msg_67c9fa077e288190af08fdffda2e34f2", "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Here is the news.", "annotations": []}],
    })
    return {
        "id": "resp_67c9fdcecf488190bdd9a0409de3a1ec", "object": "response", "created_at": 1741290958,
        "status": "completed", "model": model, "output": output, "parallel_tool_calls": True,
        "tool_choice": "auto", "tools": [{"type": "web_search"}], "service_tier": "default",
        "usage": usage,
    }


def _message(model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Here is the news."}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": usage,
    }


def _message_stream(model: str, start: dict[str, Any], delta: dict[str, Any]) -> list[dict[str, Any]]:
    begin = _message(model, start) | {"content": [], "stop_reason": None}
    return [
        {"type": "message_start", "message": begin},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Here is"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " the news."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": delta},
        {"type": "message_stop"},
    ]


def _responses_stream(body: dict[str, Any]) -> list[dict[str, Any]]:
    started = body | {"status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": started}]
    for index, item in enumerate(body["output"]):
        if item["type"] != "message":
            events.append({"type": "response.output_item.added", "output_index": index, "item": item})
            events.append({"type": "response.output_item.done", "output_index": index, "item": item})
            continue
        text = item["content"][0]["text"]
        ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": []}
        events += [
            {"type": "response.output_item.added", "output_index": index, "item": item | {"content": []}},
            {"type": "response.content_part.added", **ids, "part": part},
            {"type": "response.output_text.delta", **ids, "delta": text},
            {"type": "response.output_text.done", **ids, "text": text},
            {"type": "response.content_part.done", **ids, "part": part | {"text": text}},
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]
    events.append({"type": "response.completed", "response": body})
    return [e | {"sequence_number": i} for i, e in enumerate(events)]


def _chat_stream(model: str, usage: dict[str, Any], tier: str) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1741570283, "model": model,
            "service_tier": tier, "system_fingerprint": "fp_1"}
    return [
        base | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Here"},
                             "finish_reason": None}]},
        base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        base | {"choices": [], "usage": usage},
    ]


GPT5_USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
RESP_USAGE = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 300,
              "output_tokens_details": {"reasoning_tokens": 100}, "total_tokens": 1500}
SONNET = "claude-sonnet-4-6"
CACHE_START = {"input_tokens": 100, "cache_creation_input_tokens": 10000, "cache_read_input_tokens": 0,
               "cache_creation": {"ephemeral_5m_input_tokens": 4000, "ephemeral_1h_input_tokens": 6000},
               "output_tokens": 1, "service_tier": "standard"}
CACHE_DELTA = {"output_tokens": 50, "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 2}}

# (id, API, stream, recorded reply, exact nano-dollars); the request names the reply's model
CASES: list[tuple[str, str, bool, Any, int]] = [
    # 1200 * 1.25 + 300 * 10 = 4500 µ$ of tokens, plus one search at $0.01.
    ("responses web_search_call", "responses", False, _response("gpt-5-2025-08-07", RESP_USAGE, 1),
     4_500_000 + 10_000_000),
    ("responses stream, two searches", "responses", True,
     _responses_stream(_response("gpt-5-2025-08-07", RESP_USAGE, 2)), 4_500_000 + 20_000_000),
    # 1000 * 0.625 + 200 * 5 (flex is half price)
    ("chat service_tier flex", "chat", False, _chat("gpt-5-2025-08-07", GPT5_USAGE, service_tier="flex"),
     1_625_000),
    # 1000 * 2.5 + 200 * 20 (priority is double)
    ("chat service_tier priority", "chat", False,
     _chat("gpt-5-2025-08-07", GPT5_USAGE, service_tier="priority"), 6_500_000),
    ("chat stream service_tier flex", "chat", True, _chat_stream("gpt-5-2025-08-07", GPT5_USAGE, "flex"),
     1_625_000),
    # 300k input > 272k: the whole request at 5 / 22.5 -> 300000 * 5 + 1000 * 22.5
    ("chat long context tier", "chat", False,
     _chat("gpt-5.4", {"prompt_tokens": 300_000, "completion_tokens": 1000, "total_tokens": 301_000}),
     1_522_500_000),
    # 200 text * 2.5 + 800 audio * 32 + 100 text * 10 + 400 audio * 64
    ("chat audio tokens", "chat", False,
     _chat("gpt-audio", {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
                         "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 800},
                         "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 400}}),
     52_700_000),
    # 2000 * 3 + 500 * 15 = 13500 µ$, plus 3 searches at $0.01
    ("messages web_search_requests", "messages", False,
     _message(SONNET, {"input_tokens": 2000, "output_tokens": 500, "cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": 0, "server_tool_use": {"web_search_requests": 3},
                       "service_tier": "standard"}),
     13_500_000 + 30_000_000),
    # 100 * 3 + 4000 * 3.75 (5m) + 6000 * 6 (1h) + 50 * 15 = 52050 µ$, one search; fetches are free
    ("messages stream 1h cache + tools", "messages", True, _message_stream(SONNET, CACHE_START, CACHE_DELTA),
     52_050_000 + 10_000_000),
    # cache read: 1000 uncached * 3 + 9000 read * 0.3 + 100 * 15
    ("messages cache read", "messages", False,
     _message(SONNET, {"input_tokens": 1000, "output_tokens": 100, "cache_read_input_tokens": 9000,
                       "cache_creation_input_tokens": 0}),
     3_000_000 + 2_700_000 + 1_500_000),
]


@pytest.fixture(scope="module")
def srv():
    with ProviderServer() as server:
        yield server


def _model(wire: Any) -> str:
    first = wire if isinstance(wire, dict) else wire[0]
    return str(first.get("model") or (first.get("message") or first.get("response"))["model"])


def _call(srv: ProviderServer, nasca: Nasca, api: str, stream: bool, is_async: bool, model: str) -> None:
    if api == "messages":
        client: Any = srv.async_anthropic_client() if is_async else srv.anthropic_client()
        fn, args = client.messages.create, {"model": model, "messages": MSG, "max_tokens": 1000}
    else:
        client = srv.async_openai_client() if is_async else srv.openai_client()
        if api == "chat":
            fn, args = client.chat.completions.create, {"model": model, "messages": MSG}
        else:
            fn, args = client.responses.create, {"model": model, "input": "Find me the latest news."}
    user = "u"
    wrapped = nasca.wrap(fn)

    async def go() -> None:
        result = await wrapped(**args, stream=stream, user=user)
        if stream:
            [e async for e in result]

    if is_async:
        asyncio.run(go())
    else:
        result = wrapped(**args, stream=stream, user=user)
        if stream:
            list(result)


def _call_helper(srv: ProviderServer, nasca: Nasca, api: str, is_async: bool, model: str) -> None:
    """The SDK's stream helper (``with client.messages.stream(...) as s``), wrapped."""
    if api == "messages":
        client: Any = srv.async_anthropic_client() if is_async else srv.anthropic_client()
        fn, args = client.messages.stream, {"model": model, "messages": MSG, "max_tokens": 1000}
    else:
        client = srv.async_openai_client() if is_async else srv.openai_client()
        if api == "chat":
            fn, args = client.chat.completions.stream, {"model": model, "messages": MSG}
        else:
            fn, args = client.responses.stream, {"model": model, "input": "Find me the latest news."}
    wrapped = nasca.wrap(fn)

    async def go() -> None:
        async with wrapped(**args, user="u") as stream:
            async for _ in stream:
                pass

    if is_async:
        asyncio.run(go())
        return
    with wrapped(**args, user="u") as stream:
        for _ in stream:
            pass


STREAMS = [c for c in CASES if c[2]]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("api", "wire", "nanos"), [(c[1], c[3], c[4]) for c in STREAMS],
                         ids=[c[0] for c in STREAMS])
def test_sdk_stream_helpers_are_charged_exactly(
    srv: ProviderServer, api: str, wire: Any, nanos: int, is_async: bool
) -> None:
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        srv.queue(Reply(wire=wire))
        _call_helper(srv, nasca, api, is_async, _model(wire))
        usage = nasca.get_usage("u")
        assert usage.in_flight == 0
        assert usage.month_cost == Decimal(nanos) / 10**9
        if api == "chat":
            assert srv.last_request.json["stream_options"] == {"include_usage": True}
    finally:
        nasca.close()


def test_stream_helper_stopped_early_charges_what_streamed(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        srv.queue(Reply("one two three four five six seven", usage=Usage(input_tokens=10, output_tokens=7)))
        wrapped = nasca.wrap(srv.anthropic_client().messages.stream)
        with wrapped(model=SONNET, messages=MSG, max_tokens=100, user="u") as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    break
        usage = nasca.get_usage("u")
        assert usage.in_flight == 0 and usage.month_calls == 1
        assert usage.month_output_tokens == 1  # the one delta read, counted
        assert usage.month_input_tokens > 0
    finally:
        nasca.close()


def test_blocked_user_gets_no_stream_helper_request(srv: ProviderServer) -> None:
    from nasca_core import NascaBlockedError

    nasca = Nasca("memory://", tiers={"t": Tier(daily="0.01")}, default_tier="t")
    try:
        nasca.settle(nasca.reserve("0.01", user="broke"), "0.01")
        before = srv.request_count
        wrapped = nasca.wrap(srv.anthropic_client().messages.stream)
        args = {"model": SONNET, "messages": MSG, "max_tokens": 100, "user": "broke"}
        with pytest.raises(NascaBlockedError), wrapped(**args):
            pass
        assert srv.request_count == before
    finally:
        nasca.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("api", "stream", "wire", "nanos"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_recorded_response_is_charged_exactly(
    srv: ProviderServer, api: str, stream: bool, wire: Any, nanos: int, is_async: bool
) -> None:
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        srv.queue(Reply(wire=wire))
        _call(srv, nasca, api, stream, is_async, _model(wire))
        usage = nasca.get_usage("u")
        assert usage.in_flight == 0
        assert usage.month_cost == Decimal(nanos) / 10**9
    finally:
        nasca.close()


def test_batch_tier_is_half_price() -> None:
    # Anthropic reports service_tier "batch" on Message Batches results.
    usage = usage_from_anthropic({"input_tokens": 1000, "output_tokens": 100, "service_tier": "batch"})
    assert usage.service_tier == "batch"
    assert PriceTable.default().cost_nanos(SONNET, usage) == 1000 * 1_500 + 100 * 7_500  # 1.5 / 7.5


def test_unknown_service_tier_keeps_standard_prices() -> None:
    usage = usage_from_anthropic({"input_tokens": 1000, "output_tokens": 100, "service_tier": "scale"})
    assert PriceTable.default().cost_nanos(SONNET, usage) == 1000 * 3_000 + 100 * 15_000


# gemini-2.5-flash: 0.30 text in, 1.00 audio in, 0.03 cache read, 2.50 out (thoughts too).
GEMINI_USAGE = {
    "promptTokenCount": 1000, "cachedContentTokenCount": 400, "candidatesTokenCount": 200,
    "thoughtsTokenCount": 300, "totalTokenCount": 1500,
    "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 900},
        {"modality": "AUDIO", "tokenCount": 100},
    ],
}
# 500 uncached text * 0.3 + 400 cached * 0.03 + 100 audio * 1.0 + (200 + 300) * 2.5
GEMINI_NANOS = 150_000 + 12_000 + 100_000 + 1_250_000


def _gemini_chunk(text: str, usage: dict[str, Any], final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if final:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash",
            "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_gemini_generate_content_is_charged_exactly(
    srv: ProviderServer, stream: bool, is_async: bool
) -> None:
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    srv.reset()
    try:
        if stream:
            early = {"promptTokenCount": 1000, "cachedContentTokenCount": 400}
            wire: Any = [
                _gemini_chunk("Here is", early, False),
                _gemini_chunk(" the news.", GEMINI_USAGE, True),
            ]
        else:
            wire = _gemini_chunk("Here is the news.", GEMINI_USAGE, True)
        srv.queue(Reply(wire=wire))
        client = srv.gemini_client()
        models = client.aio.models if is_async else client.models
        fn = models.generate_content_stream if stream else models.generate_content
        wrapped = nasca.wrap(fn)

        async def go() -> None:
            result = await wrapped(model="gemini-2.5-flash", contents="Find me the latest news.", user="u")
            if stream:
                [c async for c in result]

        if is_async:
            asyncio.run(go())
        else:
            result = wrapped(model="gemini-2.5-flash", contents="Find me the latest news.", user="u")
            if stream:
                list(result)
        assert srv.last_request.endpoint == ("gemini.stream" if stream else "gemini.generate")
        usage = nasca.get_usage("u")
        assert usage.in_flight == 0
        assert (usage.month_input_tokens, usage.month_output_tokens) == (1000, 500)
        assert usage.month_cost == Decimal(GEMINI_NANOS) / 10**9
    finally:
        nasca.close()


def test_gemini_blocked_user_makes_no_request(srv: ProviderServer) -> None:
    from nasca_core import NascaBlockedError

    nasca = Nasca("memory://", tiers={"t": Tier(daily="0.01")}, default_tier="t")
    try:
        nasca.settle(nasca.reserve("0.01", user="broke"), "0.01")
        before = srv.request_count
        wrapped = nasca.wrap(srv.gemini_client().models.generate_content)
        with pytest.raises(NascaBlockedError):
            wrapped(model="gemini-2.5-flash", contents="hi", user="broke")
        assert srv.request_count == before
    finally:
        nasca.close()


def test_embeddings_are_not_charged_unless_opted_in(srv: ProviderServer) -> None:
    from nasca_core import ConfigurationError

    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        with pytest.raises(ConfigurationError, match="charge_embeddings=True"):
            nasca.wrap(srv.openai_client().embeddings.create)
    finally:
        nasca.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_embeddings_charged_with_charge_embeddings(srv: ProviderServer, is_async: bool) -> None:
    # text-embedding-3-small: $0.02 per 1M tokens.
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t", charge_embeddings=True)
    try:
        client: Any = srv.async_openai_client() if is_async else srv.openai_client()
        wrapped = nasca.wrap(client.embeddings.create)
        args = {"model": "text-embedding-3-small", "input": ["first chunk of the document", "second"]}
        result = asyncio.run(wrapped(**args, user="u")) if is_async else wrapped(**args, user="u")
        tokens = result.usage.prompt_tokens
        assert tokens > 0 and len(result.data) == 2
        usage = nasca.get_usage("u")
        assert (usage.month_input_tokens, usage.month_output_tokens, usage.in_flight) == (tokens, 0, 0)
        assert usage.month_cost == Decimal(tokens * 20) / 10**9
    finally:
        nasca.close()


def test_gemini_image_output_tokens_are_charged_exactly(srv: ProviderServer) -> None:
    # gemini-2.5-flash-image: 0.30 in, 2.50 text out, $30 per 1M image output tokens (an
    # image is 1290 tokens, $0.039). 10 * 0.3 + 10 * 2.5 + 1290 * 30 µ$.
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 1300, "totalTokenCount": 1310,
             "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290},
                                         {"modality": "TEXT", "tokenCount": 10}]}
    wire = {"candidates": [{"content": {"parts": [{"text": "Here it is."}], "role": "model"},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage, "modelVersion": "gemini-2.5-flash-image"}
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        srv.queue(Reply(wire=wire))
        client = srv.gemini_client()
        nasca.wrap(client.models.generate_content)(
            model="gemini-2.5-flash-image", contents="Draw an axolotl.", user="u")
        assert nasca.get_usage("u").month_cost == Decimal(3_000 + 25_000 + 38_700_000) / 10**9
    finally:
        nasca.close()
