"""Tool fees beyond web search, end to end: recorded response shapes replayed by the local
server, read by the real SDKs through ``nasca.wrap()``, charged to the exact nano-dollar.

Published prices fixed here (a data update that changes one fails loudly):

    gpt-4.1            2 in, 8 out (USD per 1M tokens); file search $2.50 per 1K calls
                       (genai-prices); code interpreter $0.03 per GB of container session
                       (OpenAI pricing page, in nasca_core/pricing/_fees.py)
    claude-sonnet-4-6  3 in, 15 out; code execution $0.05 per container-hour, 5-minute
                       minimum (Anthropic docs, in _fees.py): $0.05 / 12 per response
    gemini-2.5-flash   0.30 in, 2.50 out; grounding with Google Search $35 per 1K grounded
                       prompts (genai-prices)
    gemini-3-flash-preview  0.50 in, 3 out; grounding $14 per 1K search queries (genai-prices)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from genai_prices.types import ModelPrice as SourcePrice

from nasca_core import Nasca, Tier
from nasca_core.pricing import (
    ModelPrice,
    Pricer,
    PriceTable,
    TokenUsage,
    usage_from_anthropic_message,
    usage_from_gemini,
    usage_from_gemini_response,
    usage_from_openai_response,
)
from nasca_core.pricing._fees import CODE_CONTAINER_FEES
from nasca_core.pricing._genai import _compile
from nasca_core.testing import ProviderServer, Reply
from tests.test_pricing_dimensions import _call, _message, _message_stream, _model, _responses_stream

USAGE = {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 200,
         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1200}
GPT41_TOKENS = 1000 * 2_000 + 200 * 8_000  # 3,600 µ$
CONTAINER = "cntr_68a8b4a5c3f08191a6d5d6c1e4a0b4e70c2e0d3f5b1c2a7e"


def _file_search(i: int) -> dict[str, Any]:
    return {"type": "file_search_call", "id": f"fs_67c09ccd{i}", "status": "completed",
            "queries": ["deep research by OpenAI"], "results": None}


def _code_call(i: int, container: str = CONTAINER) -> dict[str, Any]:
    return {"type": "code_interpreter_call", "id": f"ci_68a8b4b0{i}", "status": "completed",
            "code": "print(3 * 7)", "container_id": container, "outputs": None}


def _resp(items: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "resp_68a8b4a0a6e88190a1b2c3d4e5f6a7b8", "object": "response", "created_at": 1755886752,
        "status": "completed", "model": "gpt-4.1-2025-04-14", "parallel_tool_calls": True,
        "tool_choice": "auto", "tools": tools, "usage": USAGE,
        "output": [*items, {
            "type": "message", "id": "msg_68a8b4b7c1e48190", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "The answer is 21.", "annotations": []}]}],
    }


FILE_TOOL = [{"type": "file_search", "vector_store_ids": ["vs_1234567890"]}]


def _ci_tool(memory: str | None) -> list[dict[str, Any]]:
    container: dict[str, Any] = {"type": "auto", "file_ids": []}
    if memory:
        container["memory_limit"] = memory
    return [{"type": "code_interpreter", "container": container}]


SONNET = "claude-sonnet-4-6"
SONNET_TOKENS = 2000 * 3_000 + 500 * 15_000  # 13,500 µ$
ANTHROPIC_CONTAINER = {"id": "container_011CPR5CNjB747bTd36fQLFk",
                       "expires_at": "2025-05-23T21:13:31.749448Z"}
ANTHROPIC_USAGE = {"input_tokens": 2000, "output_tokens": 500, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 0, "server_tool_use": {"web_search_requests": 0},
                   "service_tier": "standard"}
FIVE_MINUTES = 4_166_667  # $0.05 / 12, rounded half up once


def _server_tool(name: str, tool_input: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "server_tool_use", "id": "srvtoolu_01A2B3C4D5E6F7G8H9I0J1K2", "name": name,
             "input": tool_input}]


# The code execution docs' example: a code_execution call in a container.
CODE_RUN = _server_tool("code_execution", {"code": "import numpy as np\nprint(np.mean([1, 2, 3]))"})
# Web search's dynamic filtering runs code in a container at no charge.
SEARCH_ONLY = _server_tool("web_search", {"query": "euro 2024 winner"})


def _message_with(content: list[dict[str, Any]], usage: dict[str, Any] = ANTHROPIC_USAGE) -> dict[str, Any]:
    text = [{"type": "text", "text": "Here is the answer."}]
    return _message(SONNET, usage) | {"container": ANTHROPIC_CONTAINER, "content": content + text}


def _with_container_stream(tools: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    final = {"output_tokens": 500}
    if tools:
        final["server_tool_use"] = {"web_search_requests": 1}  # type: ignore[assignment]
    events = _message_stream(SONNET, ANTHROPIC_USAGE | {"output_tokens": 1}, final)
    for e in events:
        if e["type"] == "message_delta":
            e["delta"]["container"] = ANTHROPIC_CONTAINER
        elif e["type"] == "content_block_start":
            e["index"] = len(tools or ())
    starts = [{"type": "content_block_start", "index": i, "content_block": block | {"input": {}}}
              for i, block in enumerate(tools or ())]
    stops = [{"type": "content_block_stop", "index": i} for i in range(len(starts))]
    for e in events:
        if e["type"] in ("content_block_delta", "content_block_stop"):
            e["index"] = len(tools or ())
    return events[:1] + starts + stops + events[1:]


# (id, API, stream, recorded reply, exact nano-dollars); the request names the reply's model
CASES: list[tuple[str, str, bool, Any, int]] = [
    ("responses two file_search_calls", "responses", False,
     _resp([_file_search(1), _file_search(2)], FILE_TOOL), GPT41_TOKENS + 2 * 2_500_000),
    ("responses stream, file_search_call", "responses", True,
     _responses_stream(_resp([_file_search(1)], FILE_TOOL)), GPT41_TOKENS + 2_500_000),
    # two calls in one 4 GB container: one session at 4 x $0.03
    ("responses code_interpreter 4g", "responses", False,
     _resp([_code_call(1), _code_call(2)], _ci_tool("4g")), GPT41_TOKENS + 120_000_000),
    ("responses stream code_interpreter default 1g", "responses", True,
     _responses_stream(_resp([_code_call(1)], _ci_tool(None))), GPT41_TOKENS + 30_000_000),
    # a container the app made with the Containers API is billed there, not per response
    ("responses code_interpreter in the app's container", "responses", False,
     _resp([_code_call(1)], [{"type": "code_interpreter", "container": CONTAINER}]), GPT41_TOKENS),
    ("messages with a code execution container", "messages", False,
     _message(SONNET, ANTHROPIC_USAGE) | {"container": ANTHROPIC_CONTAINER}, SONNET_TOKENS + FIVE_MINUTES),
    ("messages stream, container in message_delta", "messages", True, _with_container_stream(),
     SONNET_TOKENS + FIVE_MINUTES),
    ("messages without a container", "messages", False, _message(SONNET, ANTHROPIC_USAGE), SONNET_TOKENS),
    ("messages code_execution call", "messages", False, _message_with(CODE_RUN),
     SONNET_TOKENS + FIVE_MINUTES),
    # one search at $0.01; the container its filtering used is free
    ("messages web search's container", "messages", False,
     _message_with(SEARCH_ONLY, ANTHROPIC_USAGE | {"server_tool_use": {"web_search_requests": 1}}),
     SONNET_TOKENS + 10_000_000),
    ("messages stream, web search's container", "messages", True, _with_container_stream(SEARCH_ONLY),
     SONNET_TOKENS + 10_000_000),
]


@pytest.fixture(scope="module")
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("api", "stream", "wire", "nanos"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_tool_fees_are_charged_exactly(
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


def test_parsed_counts() -> None:
    two = usage_from_openai_response(_resp([_code_call(1), _code_call(2), _code_call(3, "cntr_other")],
                                           _ci_tool("16g")))
    assert two is not None and (two.code_containers, two.file_searches) == (32, 0)  # 2 sessions x 16 GB
    files = usage_from_openai_response(_resp([_file_search(1)], FILE_TOOL))
    assert files is not None and (files.file_searches, files.web_searches, files.code_containers) == (1, 0, 0)
    msg = usage_from_anthropic_message(_message(SONNET, ANTHROPIC_USAGE) | {"container": ANTHROPIC_CONTAINER})
    assert msg is not None and msg.code_containers == 1 and msg.input_tokens == 2000


def test_the_fee_table_cites_its_sources() -> None:
    for provider, fee in CODE_CONTAINER_FEES.items():
        assert fee.source.startswith("https://") and fee.as_of and fee.unit, provider
    assert CODE_CONTAINER_FEES["openai"].usd == Decimal("0.03")
    assert CODE_CONTAINER_FEES["anthropic"].usd * 12 == Decimal("0.05")


def test_owner_prices_name_tool_fees_and_inherit_them() -> None:
    table = PriceTable.default().with_overrides({
        "gpt-4.1": {"input": 2, "output": 8, "file_search": "5", "code_container": "0.05"},
        "my-model": {"input": 1, "output": 1},
        "claude-sonnet-4-6": {"input": 3, "output": 15},
    })
    fees = TokenUsage(file_searches=2, code_containers=3)
    assert table.cost_nanos("gpt-4.1", fees) == 10_000_000 + 150_000_000
    # an owner price for a model genai-prices knows keeps the provider's fees it leaves out
    assert table.cost_nanos(SONNET, TokenUsage(code_containers=1)) == FIVE_MINUTES
    assert table.cost_nanos("my-model", TokenUsage(file_searches=5, code_containers=5)) == 0
    shown = table.resolve("gpt-4.1")[1]
    assert (shown.file_search, shown.code_container) == (Decimal(5), Decimal("0.05"))
    source = PriceTable.default().resolve(SONNET)[1]
    assert isinstance(source, ModelPrice) and source.code_container == Decimal("0.004166667")


# -- Gemini grounding with Google Search, and the tier served ------------------------------

def _gemini(model: str, queries: list[str], usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "candidates": [{
            "content": {"parts": [{"text": "Spain won Euro 2024."}], "role": "model"},
            "finishReason": "STOP", "index": 0,
            "groundingMetadata": {
                "webSearchQueries": queries,
                "searchEntryPoint": {"renderedContent": "<style>.container {}</style>"},
                "groundingChunks": [{"web": {"uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/1",
                                             "title": "uefa.com"}}],
            },
        }],
        "usageMetadata": usage, "modelVersion": model, "responseId": "mAitaLmkHPPlz7IPvtfUqQ4",
    }


G_USAGE = {"promptTokenCount": 1000, "candidatesTokenCount": 200, "totalTokenCount": 1200}
QUERIES = ["who won euro 2024", "euro 2024 final score"]


@pytest.mark.parametrize(
    ("model", "nanos"),
    [
        # one grounded prompt at $35 / 1K, whatever the number of queries
        ("gemini-2.5-flash", 1000 * 300 + 200 * 2_500 + 35_000_000),
        # each search query at $14 / 1K
        ("gemini-3-flash-preview", 1000 * 500 + 200 * 3_000 + 2 * 14_000_000),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_gemini_grounding_is_charged_exactly(
    srv: ProviderServer, model: str, nanos: int, stream: bool
) -> None:
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        wire: Any = _gemini(model, QUERIES, G_USAGE)
        if stream:
            first = {"candidates": [{"content": {"parts": [{"text": "Spain"}], "role": "model"}, "index": 0}],
                     "usageMetadata": {"promptTokenCount": 1000}, "modelVersion": model}
            wire = [first, wire]
        srv.queue(Reply(wire=wire))
        client = srv.gemini_client()  # kept: a collected client closes its connection
        models = client.models
        wrapped = nasca.wrap(models.generate_content_stream if stream else models.generate_content)
        result = wrapped(model=model, contents="Who won Euro 2024?", user="u")
        if stream:
            list(result)
        usage = nasca.get_usage("u")
        assert usage.in_flight == 0
        assert usage.month_cost == Decimal(nanos) / 10**9
    finally:
        nasca.close()


def test_gemini_ungrounded_costs_tokens_only() -> None:
    usage = usage_from_gemini_response(_gemini("gemini-2.5-flash", [], G_USAGE))
    assert usage == TokenUsage(input_tokens=1000, output_tokens=200)
    assert usage_from_gemini_response({"candidates": []}) is None


@pytest.mark.parametrize(
    ("extra", "tier"),
    [
        ({"serviceTier": "flex"}, "flex"),
        ({"serviceTier": "PRIORITY"}, "priority"),
        ({"serviceTier": "standard"}, None),
        ({"serviceTier": "unspecified"}, None),
        ({"trafficType": "ON_DEMAND_FLEX"}, "flex"),
        ({"trafficType": "ON_DEMAND_PRIORITY"}, "priority"),
        ({"trafficType": "ON_DEMAND"}, None),
        ({"trafficType": "PROVISIONED_THROUGHPUT"}, None),
        ({}, None),
    ],
)
def test_gemini_reads_the_tier_served(extra: dict[str, Any], tier: str | None) -> None:
    assert usage_from_gemini(G_USAGE | extra).service_tier == tier


def test_gemini_sdk_model_carries_traffic_type() -> None:
    from google.genai import types

    response = types.GenerateContentResponse.model_validate(
        _gemini("gemini-2.5-flash", QUERIES, G_USAGE | {"trafficType": "ON_DEMAND_PRIORITY"}))
    usage = usage_from_gemini_response(response)
    assert usage is not None and (usage.service_tier, usage.web_searches) == ("priority", 1)


# Anthropic: code execution is free when a web_search/web_fetch tool of version 20260209 or
# later is in the request, billed with older versions: wrap() decides from the request's tools.
REQUEST_TOOL_CASES = [
    ("code execution beside web_search_20260209",
     [{"type": "web_search_20260209", "name": "web_search"},
      {"type": "code_execution_20250825", "name": "code_execution"}],
     _message_with(CODE_RUN), SONNET_TOKENS),
    ("web_fetch_20260301 makes it free too", [{"type": "web_fetch_20260301", "name": "web_fetch"}],
     _message_with(CODE_RUN), SONNET_TOKENS),
    ("web_search_20250305's container is billed", [{"type": "web_search_20250305", "name": "web_search"}],
     _message_with(SEARCH_ONLY, ANTHROPIC_USAGE | {"server_tool_use": {"web_search_requests": 1}}),
     SONNET_TOKENS + 10_000_000 + FIVE_MINUTES),
    ("stream with web_search_20260209", [{"type": "web_search_20260209", "name": "web_search"}],
     _with_container_stream(CODE_RUN), SONNET_TOKENS + 10_000_000),  # the stream reports one search
]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("tools", "wire", "nanos"), [c[1:] for c in REQUEST_TOOL_CASES],
                         ids=[c[0] for c in REQUEST_TOOL_CASES])
def test_anthropic_container_fee_follows_the_requests_tool_versions(
    srv: ProviderServer, tools: list[dict[str, Any]], wire: Any, nanos: int, is_async: bool
) -> None:
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    stream = isinstance(wire, list)
    args = {"model": SONNET, "max_tokens": 1000, "tools": tools, "stream": stream, "user": "u",
            "messages": [{"role": "user", "content": "Find me the latest news."}]}
    try:
        srv.queue(Reply(wire=wire))
        if is_async:
            async def go() -> None:
                result = await nasca.wrap(srv.async_anthropic_client().messages.create)(**args)
                if stream:
                    [e async for e in result]
            asyncio.run(go())
        else:
            result = nasca.wrap(srv.anthropic_client().messages.create)(**args)
            if stream:
                list(result)
        usage = nasca.get_usage("u")
        assert usage.in_flight == 0
        assert usage.month_cost == Decimal(nanos) / 10**9
    finally:
        nasca.close()


@pytest.mark.parametrize(
    ("model", "nanos"),
    [
        ("gemini-2.5-flash", 1000 * 300 + 200 * 2_500 + 35_000_000),
        ("gemini-3-flash-preview", 1000 * 500 + 200 * 3_000 + 2 * 14_000_000),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_gemini_grounding_queries_on_any_chunk_and_without_model_version(
    srv: ProviderServer, model: str, nanos: int, stream: bool
) -> None:
    # The queries arrive on an early chunk, the usage on the last; no chunk names its
    # modelVersion, so the requested model says per prompt (2.x) or per query (3.x).
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        grounded = _gemini(model, QUERIES, {"promptTokenCount": 1000})
        del grounded["modelVersion"]
        last = {"candidates": [{"content": {"parts": [{"text": " It beat England."}], "role": "model"},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": G_USAGE, "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"}
        if stream:
            wire: Any = [grounded, last]
        else:
            wire = _gemini(model, QUERIES, G_USAGE)
            del wire["modelVersion"]
        srv.queue(Reply(wire=wire))
        client = srv.gemini_client()
        models = client.models
        wrapped = nasca.wrap(models.generate_content_stream if stream else models.generate_content)
        result = wrapped(model=model, contents="Who won Euro 2024?", user="u")
        if stream:
            list(result)
        usage = nasca.get_usage("u")
        assert usage.in_flight == 0
        assert usage.month_cost == Decimal(nanos) / 10**9
    finally:
        nasca.close()


def test_genai_prices_code_executions_are_not_a_container_price() -> None:
    # genai-prices prices code_executions per 1,000 executions; a container is billed per
    # session (OpenAI, by size) or time (Anthropic): never read one as the other.
    rates = _compile(SourcePrice(input_mtok=Decimal(2), output_mtok=Decimal(8),
                                 code_executions_kcount=Decimal(5)), float("inf"), "openai")
    assert rates.cost(TokenUsage(code_containers=1)) == 30_000_000  # $0.03 per GB (_fees.py)


def test_an_openai_container_reused_by_later_responses_is_charged_once(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        for container in (CONTAINER, CONTAINER, "cntr_68a8b4a5c3f08191a6d5d6c1e4a0b4e70c2e0d3f5b1c2a7f"):
            wire = _resp([_code_call(1, container)], _ci_tool(None))
            srv.queue(Reply(wire=wire))
            _call(srv, nasca, "responses", False, False, _model(wire))
        # three responses' tokens, two 1 GB containers at $0.03
        assert nasca.get_usage("u").month_cost == Decimal(3 * GPT41_TOKENS + 2 * 30_000_000) / 10**9
    finally:
        nasca.close()


def test_the_container_memory_is_bounded() -> None:
    pricer = Pricer(PriceTable.default())
    one = TokenUsage(code_containers=1, container_ids=("cntr_0",))
    assert pricer.cost("gpt-4.1", one) == 30_000_000
    assert pricer.cost("gpt-4.1", one) == 0
    for i in range(1, 4097):  # pushes cntr_0 out of the last 4,096
        pricer.cost("gpt-4.1", TokenUsage(code_containers=1, container_ids=(f"cntr_{i}",)))
    assert pricer.cost("gpt-4.1", one) == 30_000_000
