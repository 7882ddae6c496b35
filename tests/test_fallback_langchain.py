"""Degrade instead of block in LangChain agents: NascaMiddleware rewrites the step's model
(``request.override(model=...)``) when the tier's allowance is spent. Real ChatOpenAI and
ChatAnthropic clients talk HTTP to the local provider server; every store.

A callback handler can't change a request, so on the same tier it still blocks.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI

from nasca_core import NascaBlockedError, Tier
from nasca_core.pricing import TokenUsage
from nasca_core.testing import ProviderServer, Reply, Usage
from nasca_langchain import NascaCallbackHandler, NascaMiddleware

SPEND_ALL = Usage(input_tokens=2000, output_tokens=1000)
SMALL = Usage(input_tokens=300, output_tokens=40)
HUGE = Usage(input_tokens=20_000, output_tokens=5_000)


def tier() -> Tier:
    return Tier(monthly="0.01", on_exhausted="fallback",
                fallback_model={"gpt-*": "gpt-4o-mini", "claude-*": "claude-haiku-4-5"},
                fallback_allowance=Tier(daily="0.002"))


@pytest.fixture
def srv():  # one per test: langchain-openai caches an async client per base URL, bound to its loop
    with ProviderServer() as server:
        yield server


def _model(srv: ProviderServer, provider: str) -> Any:
    if provider == "openai":
        return ChatOpenAI(model="gpt-4o", base_url=srv.base_url, api_key="x", max_retries=0)
    return ChatAnthropic(model="claude-sonnet-4-6", base_url=srv.anthropic_base_url, api_key="x",
                         max_retries=0, max_tokens=200)


@pytest.fixture
def loop():
    """One event loop for a test's async turns: langchain-openai shares its async HTTP client,
    whose connections belong to the loop that opened them."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _ask(srv, nasca, provider, loop, user="u1", **kw):
    """One agent turn (on ``loop`` when given, else sync)."""
    agent = create_agent(_model(srv, provider), tools=[], middleware=[NascaMiddleware(nasca, **kw)])
    state = {"messages": [HumanMessage("Summarise the plot of Hamlet.")]}
    context = {"nasca_user_id": user}
    if loop is not None:
        out = loop.run_until_complete(agent.ainvoke(state, context=context))
    else:
        out = agent.invoke(state, context=context)
    return out["messages"][-1]


LITE = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
MAIN = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-6"}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_spent_step_runs_on_the_fallback_model_and_is_marked(srv, make_nasca, provider, is_async, loop):
    loop = loop if is_async else None
    nasca = make_nasca(tiers={"free": tier()}, default_tier="free")
    srv.queue(Reply("long", usage=SPEND_ALL))
    first = _ask(srv, nasca, provider, loop)
    assert srv.last_request.json["model"] == MAIN[provider]
    assert "nasca_fallback" not in first.response_metadata
    nasca.flush()
    spent = nasca.get_usage("u1").monthly_spent

    srv.queue(Reply("short", usage=SMALL))
    reply = _ask(srv, nasca, provider, loop)
    assert srv.last_request.json["model"] == LITE[provider]  # what the provider received
    assert isinstance(reply, AIMessage) and reply.text == "short"
    marked = reply.response_metadata["nasca_fallback"]
    assert (marked["model"], marked["requested"]) == (LITE[provider], MAIN[provider])
    assert marked["window"] == "monthly" and marked["upgrade_message"]
    nasca.flush()
    usage = nasca.get_usage("u1")
    assert usage.monthly_spent == spent
    assert usage.fallback.daily_spent == Decimal(nasca.cost_of(LITE[provider], TokenUsage(300, 40))) / 10**9


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_spent_fallback_allowance_ends_the_turn_as_a_block(srv, make_nasca, is_async, loop):
    loop = loop if is_async else None
    nasca = make_nasca(tiers={"free": tier()}, default_tier="free")
    srv.queue(Reply("long", usage=SPEND_ALL), Reply("lite", usage=HUGE))
    _ask(srv, nasca, "openai", loop, user="u2")
    _ask(srv, nasca, "openai", loop, user="u2")
    assert srv.last_request.json["model"] == "gpt-4o-mini"
    before = srv.request_count
    with pytest.raises(NascaBlockedError) as blocked:
        _ask(srv, nasca, "openai", loop, user="u2")
    assert blocked.value.window == "monthly" and srv.request_count == before
    reply = _ask(srv, nasca, "openai", loop, user="u2", exit_behavior="end")
    assert reply.response_metadata["nasca_blocked"]["window"] == "monthly"
    assert srv.request_count == before


def test_the_callback_handler_still_blocks(srv, make_nasca):
    nasca = make_nasca(tiers={"free": tier()}, default_tier="free")
    handler = NascaCallbackHandler(nasca)
    config = {"callbacks": [handler], "metadata": {"nasca_user_id": "u3"}}
    srv.queue(Reply("long", usage=SPEND_ALL))
    _model(srv, "openai").invoke("Summarise the plot of Hamlet.", config=config)
    before = srv.request_count
    with pytest.raises(NascaBlockedError):
        _model(srv, "openai").invoke("Again.", config=config)
    assert srv.request_count == before
