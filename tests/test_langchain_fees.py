"""Tool fees and service tiers through LangChain: the recorded response shapes of
tests/test_pricing_fees.py replayed by the local provider server, read by the real
ChatAnthropic and ChatOpenAI (Responses API) under NascaCallbackHandler, charged to the
exact nano-dollar like the same call through wrap().

Prices (fixed in tests/test_pricing_fees.py and tests/test_pricing_dimensions.py):
claude-sonnet-4-6 3 in / 15 out, web search $0.01 each, code execution $0.05 / 12 per
container; gpt-4.1 2 in / 8 out, file search $2.50 per 1K, code interpreter $0.03 per GB;
gpt-5 1.25 in / 10 out (flex: half), web search $0.01 each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI

from nasca_core import Nasca, Tier
from nasca_core.testing import ProviderServer, Reply
from nasca_langchain import NascaCallbackHandler
from tests.test_pricing_dimensions import RESP_USAGE, _message, _message_stream, _response, _responses_stream
from tests.test_pricing_fees import (
    ANTHROPIC_CONTAINER,
    ANTHROPIC_USAGE,
    CODE_RUN,
    FILE_TOOL,
    FIVE_MINUTES,
    GPT41_TOKENS,
    SEARCH_ONLY,
    SONNET,
    SONNET_TOKENS,
    _ci_tool,
    _code_call,
    _file_search,
    _message_with,
    _resp,
)

SEARCH = 10_000_000  # $0.01
GPT5_TOKENS = 1200 * 1_250 + 300 * 10_000  # 4,500 µ$


def _anthropic_stream(blocks: list[dict[str, Any]], searches: int) -> list[dict[str, Any]]:
    """A code-execution stream as the API sends it: server_tool_use blocks first, the container
    on message_delta, whose cumulative usage repeats the input counts."""
    final = ANTHROPIC_USAGE | {"server_tool_use": {"web_search_requests": searches}}
    events = _message_stream(SONNET, ANTHROPIC_USAGE | {"output_tokens": 1}, final)
    for e in events:
        if "index" in e:
            e["index"] = len(blocks)
        if e["type"] == "message_delta":
            e["delta"]["container"] = ANTHROPIC_CONTAINER
    starts = [{"type": "content_block_start", "index": i, "content_block": b | {"input": {}}}
              for i, b in enumerate(blocks)]
    stops = [{"type": "content_block_stop", "index": i} for i in range(len(blocks))]
    return events[:1] + starts + stops + events[1:]


# (id, model class, stream, recorded reply, bound tools, exact nano-dollars)
CASES: list[tuple[str, str, bool, Any, list[dict[str, Any]] | None, int]] = [
    ("anthropic web search, its container free", "anthropic", False,
     _message_with(SEARCH_ONLY, ANTHROPIC_USAGE | {"server_tool_use": {"web_search_requests": 1}}), None,
     SONNET_TOKENS + SEARCH),
    ("anthropic code execution", "anthropic", False, _message_with(CODE_RUN), None,
     SONNET_TOKENS + FIVE_MINUTES),
    ("anthropic container, no server tool", "anthropic", False,
     _message(SONNET, ANTHROPIC_USAGE) | {"container": ANTHROPIC_CONTAINER}, None,
     SONNET_TOKENS + FIVE_MINUTES),
    ("anthropic three searches", "anthropic", False,
     _message(SONNET, ANTHROPIC_USAGE | {"server_tool_use": {"web_search_requests": 3}}), None,
     SONNET_TOKENS + 3 * SEARCH),
    ("anthropic stream, code execution", "anthropic", True, _anthropic_stream(CODE_RUN, 0), None,
     SONNET_TOKENS + FIVE_MINUTES),
    ("anthropic stream, web search blocks counted", "anthropic", True, _anthropic_stream(SEARCH_ONLY, 1),
     None, SONNET_TOKENS + SEARCH),
    # the request's tool versions decide (Anthropic's rule): 20260209 makes code execution free
    ("anthropic code execution with web_search_20260209", "anthropic", False, _message_with(CODE_RUN),
     [{"type": "web_search_20260209", "name": "web_search"}], SONNET_TOKENS),
    ("anthropic web search container with web_search_20250305", "anthropic", False,
     _message_with(SEARCH_ONLY, ANTHROPIC_USAGE | {"server_tool_use": {"web_search_requests": 1}}),
     [{"type": "web_search_20250305", "name": "web_search"}], SONNET_TOKENS + SEARCH + FIVE_MINUTES),
    ("openai file searches", "openai", False, _resp([_file_search(1), _file_search(2)], FILE_TOOL), None,
     GPT41_TOKENS + 2 * 2_500_000),
    ("openai code interpreter, default 1 GB", "openai", False, _resp([_code_call(1), _code_call(2)], []),
     None, GPT41_TOKENS + 30_000_000),
    ("openai code interpreter 4g from the request's tools", "openai", False,
     _resp([_code_call(1)], _ci_tool("4g")), _ci_tool("4g"), GPT41_TOKENS + 120_000_000),
    ("openai stream, file search", "openai", True, _responses_stream(_resp([_file_search(1)], FILE_TOOL)),
     None, GPT41_TOKENS + 2_500_000),
    ("openai web searches", "openai", False, _response("gpt-5-2025-08-07", RESP_USAGE, 2), None,
     GPT5_TOKENS + 2 * SEARCH),
    ("openai stream, web searches", "openai", True,
     _responses_stream(_response("gpt-5-2025-08-07", RESP_USAGE, 2)), None, GPT5_TOKENS + 2 * SEARCH),
    ("openai flex tier", "openai", False,
     _response("gpt-5-2025-08-07", RESP_USAGE, 0) | {"service_tier": "flex"}, None, GPT5_TOKENS // 2),
]


@pytest.fixture(scope="module")
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # The integrations cache their async HTTP clients per base URL, bound to the loop of
    # their first request: every async case runs in this one loop.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _model(srv: ProviderServer, provider: str, wire: Any, output_version: str = "responses/v1") -> Any:
    first = wire if isinstance(wire, dict) else wire[0]
    name = str(first.get("model") or (first.get("message") or first.get("response"))["model"])
    if provider == "anthropic":
        return ChatAnthropic(model=name, base_url=srv.anthropic_base_url, api_key="x",  # type: ignore[call-arg]
                             max_retries=0, max_tokens=1000)
    return ChatOpenAI(model=name, base_url=srv.base_url, api_key="x", use_responses_api=True,  # type: ignore[arg-type]
                      max_retries=0, output_version=output_version)


def _run(nasca: Nasca, model: Any, stream: bool, loop: asyncio.AbstractEventLoop | None) -> None:
    config: Any = {"callbacks": [NascaCallbackHandler(nasca)], "metadata": {"nasca_user_id": "u"}}

    async def go() -> None:
        if stream:
            [c async for c in model.astream("Find me the latest news.", config=config)]
        else:
            await model.ainvoke("Find me the latest news.", config=config)

    if loop is not None:
        loop.run_until_complete(go())
    elif stream:
        list(model.stream("Find me the latest news.", config=config))
    else:
        model.invoke("Find me the latest news.", config=config)


def _cost(nasca: Nasca) -> Decimal:
    usage = nasca.get_usage("u")
    assert usage.in_flight == 0
    return usage.month_cost


# langchain-anthropic warns of the server tool blocks it streams (and keeps them)
@pytest.mark.filterwarnings("ignore:Received unexpected tool content block")
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("provider", "stream", "wire", "tools", "nanos"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_langchain_charges_tool_fees_exactly(
    srv: ProviderServer, provider: str, stream: bool, wire: Any, tools: list[dict[str, Any]] | None,
    nanos: int, is_async: bool, loop: asyncio.AbstractEventLoop,
) -> None:
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        srv.queue(Reply(wire=wire))
        model = _model(srv, provider, wire)
        if tools is not None:
            model = model.bind_tools(tools)
        _run(nasca, model, stream, loop if is_async else None)
        assert _cost(nasca) == Decimal(nanos) / 10**9
    finally:
        nasca.close()


def test_openai_v0_tool_outputs_are_charged(srv: ProviderServer) -> None:
    # output_version="v0" moves the tool items to additional_kwargs["tool_outputs"]
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        wire = _resp([_code_call(1), _file_search(1)], [])
        srv.queue(Reply(wire=wire))
        _run(nasca, _model(srv, "openai", wire, output_version="v0"), False, None)
        assert _cost(nasca) == Decimal(GPT41_TOKENS + 30_000_000 + 2_500_000) / 10**9
    finally:
        nasca.close()
