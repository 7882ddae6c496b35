"""Where the app sees a soft-threshold warning: ``warning_of`` on what ``wrap()`` returned, and
``response_metadata["nasca_warning"]`` from the LangChain middleware and callback handler;
real SDK clients talking HTTP to the local provider server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI

import nasca_llamaindex
from nasca_core import Nasca, ThresholdWarning, Tier, warning_of
from nasca_core.testing import ProviderServer, Reply, Usage
from nasca_langchain import NascaCallbackHandler, NascaMiddleware

GPT = "gpt-4o-mini"
MSG = [{"role": "user", "content": "How many tokens is this question?"}]
# $0.001 a token: a call's estimate (its prompt + 256 output tokens) is about $0.27, so the first
# call of the day takes a $1 daily window past 10%; "plain" has no threshold.
PRICES = {GPT: {"input": 1000, "output": 1000}}


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server


@pytest.fixture
def nasca(make_nasca: Any) -> Nasca:
    n: Nasca = make_nasca(tiers={"warned": Tier(daily=1, warn_at=(0.1,)), "plain": Tier(daily=1)},
                          default_tier="warned", prices=PRICES)
    return n


def _check(warning: Any) -> None:
    assert isinstance(warning, ThresholdWarning)
    assert (warning.window, warning.fraction) == ("daily", 0.1)


@pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)
def test_wrap_remembers_the_warning_with_the_response(nasca: Nasca, srv: ProviderServer) -> None:
    srv.queue(*(Reply("hi", usage=Usage(10, 2)) for _ in range(3)))
    create = nasca.wrap(srv.openai_client(max_retries=0).chat.completions.create)
    reply = create(model=GPT, messages=MSG, user="u1")
    _check(warning_of(reply))
    assert "nasca_warning" not in reply.model_dump_json()  # the provider's data stays the provider's
    plain = create(model=GPT, messages=MSG, user="u2", tier="plain")
    assert warning_of(plain) is None
    stream = create(model=GPT, messages=MSG, user="u1", stream=True)
    _check(warning_of(stream))
    list(stream)
    assert warning_of(object()) is None


HAIKU = "claude-haiku-4-5"


@pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)
def test_the_sdks_stream_helpers_carry_the_warning(make_nasca: Any, srv: ProviderServer) -> None:
    n = make_nasca(tiers={"warned": Tier(daily=1, warn_at=(0.1,))}, default_tier="warned",
                   prices={**PRICES, HAIKU: {"input": 1000, "output": 1000}})
    srv.queue(*(Reply("hi", usage=Usage(10, 2)) for _ in range(2)))
    stream = n.wrap(srv.anthropic_client(max_retries=0).messages.stream)
    manager = stream(model=HAIKU, max_tokens=256, messages=MSG, user="s1")
    _check(warning_of(manager))
    with manager as s:
        _check(warning_of(s))
        assert "".join(s.text_stream) == "hi"
    chat = n.wrap(srv.openai_client(max_retries=0).chat.completions.stream)
    with chat(model=GPT, max_tokens=256, messages=MSG, user="s2") as s:
        _check(warning_of(s))
        for _ in s:
            pass


def test_the_async_stream_helper_carries_the_warning(make_nasca: Any, srv: ProviderServer) -> None:
    n = make_nasca(tiers={"warned": Tier(daily=1, warn_at=(0.1,))}, default_tier="warned",
                   prices={HAIKU: {"input": 1000, "output": 1000}})
    srv.queue(Reply("hi", usage=Usage(10, 2)))
    stream = n.wrap(srv.async_anthropic_client(max_retries=0).messages.stream)

    async def main() -> None:
        manager = stream(model=HAIKU, max_tokens=256, messages=MSG, user="s3")
        async with manager as s:
            _check(warning_of(s))
            _check(warning_of(manager))  # known from the reserve, made in __aenter__
            async for _ in s.text_stream:
                pass

    asyncio.run(main())


def test_async_wrap_remembers_the_warning(nasca: Nasca, srv: ProviderServer) -> None:
    create = nasca.wrap(srv.async_openai_client(max_retries=0).chat.completions.create)
    _check(warning_of(asyncio.run(create(model=GPT, messages=MSG, user="u1"))))


@pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)
def test_middleware_puts_the_warning_in_response_metadata(nasca: Nasca, srv: ProviderServer) -> None:
    agent = create_agent(ChatOpenAI(model=GPT, base_url=srv.base_url, api_key="x", max_retries=0),
                         middleware=[NascaMiddleware(nasca)])
    out = agent.invoke({"messages": [HumanMessage("hi")]}, context={"nasca_user_id": "u1"})
    warning = out["messages"][-1].response_metadata["nasca_warning"]
    assert (warning["window"], warning["fraction"], warning["limit"]) == ("daily", 0.1, "1")
    assert ThresholdWarning.model_validate(warning).resets_at.tzinfo is not None
    out = agent.invoke({"messages": [HumanMessage("hi")]},
                       context={"nasca_user_id": "u2", "nasca_tier": "plain"})
    assert "nasca_warning" not in out["messages"][-1].response_metadata


async def test_async_middleware_puts_the_warning_in_response_metadata(nasca: Nasca,
                                                                       srv: ProviderServer) -> None:
    agent = create_agent(ChatOpenAI(model=GPT, base_url=srv.base_url, api_key="x", max_retries=0),
                         middleware=[NascaMiddleware(nasca)])
    out = await agent.ainvoke({"messages": [HumanMessage("hi")]}, context={"nasca_user_id": "u1"})
    assert out["messages"][-1].response_metadata["nasca_warning"]["fraction"] == 0.1


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_callback_handler_marks_the_invoked_reply(nasca: Nasca, srv: ProviderServer) -> None:
    model = ChatOpenAI(model=GPT, base_url=srv.base_url, api_key="x", max_retries=0)
    config: Any = {"callbacks": [NascaCallbackHandler(nasca)], "metadata": {"nasca_user_id": "u1"}}
    assert model.invoke("hi", config=config).response_metadata["nasca_warning"]["fraction"] == 0.1
    assert all(r.response_metadata["nasca_warning"]["fraction"] == 0.1
               for r in model.batch(["a", "b"], config=config))
    reply = await model.ainvoke("hi", config=config)
    assert reply.response_metadata["nasca_warning"]["window"] == "daily"
    plain: Any = {"callbacks": [NascaCallbackHandler(nasca)],
                  "metadata": {"nasca_user_id": "u2", "nasca_tier": "plain"}}
    assert "nasca_warning" not in model.invoke("hi", config=plain).response_metadata


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_llamaindex_puts_the_warning_in_additional_kwargs(nasca: Nasca, srv: ProviderServer) -> None:
    llm = nasca_llamaindex.guard_llm(OpenAI(api_base=srv.base_url, api_key="x", model=GPT, max_retries=0),
                                     nasca)
    with nasca.user("u1"):
        reply = llm.chat([ChatMessage(role="user", content="hi")])
        assert reply.additional_kwargs["nasca_warning"]["fraction"] == 0.1
        done = await llm.acomplete("hi")
        assert done.additional_kwargs["nasca_warning"]["window"] == "daily"
    with nasca.user("u2", tier="plain"):
        assert "nasca_warning" not in llm.chat([ChatMessage(role="user", content="hi")]).additional_kwargs
