"""NascaMiddleware: budget enforcement as a create_agent middleware, sync and async."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from nasca_core import ConfigurationError, InvalidUserError, Nasca, NascaBlockedError, Tier
from nasca_core.pricing import TokenUsage, count_message_tokens, estimate_cost_nanos
from nasca_core.testing import ProviderServer, Reply, ToolCall
from nasca_langchain import NascaCallbackHandler, NascaMiddleware

GPT = "gpt-4o-mini"
ASK = "What is the weather in Paris?"
ANSWER = "It is sunny in Paris."
TINY = Tier(daily="0.000001")  # one call costs more: the next model step is refused


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


@dataclass
class AppContext:
    user_id: str
    nasca_tier: str | None = None


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server


def gpt(srv: ProviderServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=GPT, base_url=srv.base_url, api_key="x", max_retries=0, **kwargs)


def tool_then_answer(srv: ProviderServer) -> None:
    srv.queue(Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]), Reply(ANSWER))


def agent(srv: ProviderServer, nasca: Nasca, **kwargs: Any) -> Any:
    return create_agent(gpt(srv, **kwargs.pop("model_kwargs", {})), tools=[get_weather],
                        middleware=[NascaMiddleware(nasca, **kwargs)], context_schema=AppContext)


def charged_as_provider(nasca: Nasca, srv: ProviderServer, user: str = "u1") -> None:
    u = nasca.get_usage(user)
    ins = sum(r.usage.input_tokens for r in srv.requests if r.usage)
    outs = sum(r.usage.output_tokens for r in srv.requests if r.usage)
    assert (u.month_input_tokens, u.month_output_tokens) == (ins, outs)
    assert u.month_calls == srv.request_count and u.in_flight == 0
    nanos = sum(nasca.pricer.cost(GPT, TokenUsage(r.usage.input_tokens, r.usage.output_tokens))
                for r in srv.requests if r.usage)
    assert u.month_cost == Decimal(nanos) / 10**9


def test_every_model_step_is_reserved_and_charged(make_nasca: Any, srv: ProviderServer) -> None:
    nasca = make_nasca()
    tool_then_answer(srv)
    lc = UsageMetadataCallbackHandler()
    out = agent(srv, nasca).invoke({"messages": [HumanMessage(ASK)]}, context=AppContext("u1"),
                                   config={"callbacks": [lc]})
    assert out["messages"][-1].content == ANSWER
    assert any(isinstance(m, ToolMessage) for m in out["messages"])
    charged_as_provider(nasca, srv)
    assert nasca.get_usage("u1").month_input_tokens == sum(
        x["input_tokens"] for x in lc.usage_metadata.values())


async def test_async_steps_use_the_async_store(make_nasca: Any, srv: ProviderServer) -> None:
    nasca = make_nasca()
    tool_then_answer(srv)
    used: list[str] = []
    start, finish = nasca.astart_call, nasca.start_call

    async def astart_call(*a: Any, **k: Any) -> Any:
        used.append("async")
        return await start(*a, **k)

    def start_call(*a: Any, **k: Any) -> Any:
        used.append("sync")
        return finish(*a, **k)

    nasca.astart_call, nasca.start_call = astart_call, start_call  # type: ignore[method-assign]
    out = await agent(srv, nasca, model_kwargs={"stream_usage": True}).ainvoke(
        {"messages": [HumanMessage(ASK)]}, context=AppContext("u1"))
    assert out["messages"][-1].content == ANSWER
    assert used == ["async", "async"]
    charged_as_provider(nasca, srv)


@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream"])
async def test_blocked_user_makes_no_request_and_logs_nothing(
        srv: ProviderServer, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    nasca = Nasca("memory://", tiers={"free": TINY}, default_tier="free")
    nasca.settle(nasca.reserve(nanos=1, user="u1"), nanos=1000)
    a = agent(srv, nasca)
    state, ctx = {"messages": [HumanMessage(ASK)]}, AppContext("u1")
    caplog.set_level(logging.WARNING)
    with pytest.raises(NascaBlockedError) as info:
        if mode == "invoke":
            a.invoke(state, context=ctx)
        elif mode == "stream":
            list(a.stream(state, context=ctx))
        elif mode == "ainvoke":
            await a.ainvoke(state, context=ctx)
        else:
            [x async for x in a.astream(state, context=ctx)]
    assert info.value.user_id == "u1" and info.value.spent is not None
    assert srv.request_count == 0
    # LangChain logs a callback handler's error before re-raising it; a middleware's, never.
    assert [r for r in caplog.records if r.name.startswith("langchain")] == []


def test_exit_behavior_end_answers_with_the_upgrade_prompt(make_nasca: Any,
                                                           srv: ProviderServer) -> None:
    nasca = make_nasca(tiers={"free": TINY})
    tool_then_answer(srv)
    out = agent(srv, nasca, exit_behavior="end").invoke({"messages": [HumanMessage(ASK)]},
                                                        context=AppContext("u1"))
    last = out["messages"][-1]
    assert isinstance(last, AIMessage) and not last.tool_calls
    assert last.response_metadata["nasca_blocked"]["window"] == "daily"
    assert "daily AI allowance" in str(last.content)
    assert any(isinstance(m, ToolMessage) for m in out["messages"])  # the first step ran
    assert srv.request_count == 1
    charged_as_provider(nasca, srv)


def test_user_from_context_metadata_or_nasca_user(make_nasca: Any, srv: ProviderServer) -> None:
    nasca = make_nasca()
    for _ in range(3):
        srv.queue(Reply(ANSWER))
    a = create_agent(gpt(srv), middleware=[NascaMiddleware(nasca)])
    a.invoke({"messages": [HumanMessage("hi")]}, context={"nasca_user_id": "ctx-user", "nasca_tier": "pro"})
    a.invoke({"messages": [HumanMessage("hi")]}, config={"metadata": {"nasca_user_id": "meta-user"}})
    with nasca.user("ctx-var-user"):
        a.invoke({"messages": [HumanMessage("hi")]})
    assert nasca.get_usage("ctx-user", tier="pro").month_calls == 1
    assert nasca.get_usage("meta-user").month_calls == 1
    assert nasca.get_usage("ctx-var-user").month_calls == 1
    with pytest.raises(InvalidUserError):
        a.invoke({"messages": [HumanMessage("hi")]})
    assert srv.request_count == 3


def test_a_handler_on_the_same_run_does_not_charge_twice(make_nasca: Any, srv: ProviderServer) -> None:
    nasca = make_nasca()
    tool_then_answer(srv)
    agent(srv, nasca).invoke({"messages": [HumanMessage(ASK)]}, context=AppContext("u1"),
                             config={"callbacks": [NascaCallbackHandler(nasca)],
                                     "metadata": {"nasca_user_id": "u1"}})
    charged_as_provider(nasca, srv)
    assert nasca.get_usage("u1").month_calls == 2


def test_estimate_counts_the_system_prompt_and_tool_schemas(make_nasca: Any,
                                                            srv: ProviderServer) -> None:
    nasca = make_nasca()
    srv.queue(Reply(ANSWER))
    seen: list[dict[str, Any]] = []
    start = nasca.start_call

    def spy(*a: Any, **k: Any) -> Any:
        seen.append(k)
        return start(*a, **k)

    nasca.start_call = spy  # type: ignore[method-assign]
    create_agent(gpt(srv, max_tokens=77), tools=[get_weather], system_prompt="Be brief.",
                 middleware=[NascaMiddleware(nasca)]).invoke(
        {"messages": [HumanMessage(ASK)]}, context={"user_id": "u1"})
    (spec,) = seen
    assert spec["model"] == GPT and spec["max_tokens"] == 77
    assert spec["messages"][0] == {"role": "system", "content": "Be brief.", "name": None,
                                   "tool_calls": None}
    assert spec["tools"][0]["function"]["name"] == "get_weather"
    assert count_message_tokens(spec["messages"], GPT) > count_message_tokens(spec["messages"][1:], GPT)


def test_unknown_exit_behavior_is_refused() -> None:
    nasca = Nasca("memory://", tiers={"free": TINY}, default_tier="free")
    with pytest.raises(ConfigurationError):
        NascaMiddleware(nasca, exit_behavior="stop")  # type: ignore[arg-type]


def test_handler_and_middleware_estimate_a_step_alike(make_nasca: Any, srv: ProviderServer) -> None:
    # Both pass the prompt and the tool schemas to the core, which counts them once, the same way.
    nasca = make_nasca()
    seen: list[dict[str, Any]] = []
    start = nasca.start_call

    estimates: list[int] = []

    def spy(*a: Any, **k: Any) -> Any:
        seen.append(k)
        call = start(*a, **k)
        estimates.append(call.reservation.estimate_nanos)
        return call

    nasca.start_call = spy  # type: ignore[method-assign]
    srv.queue(Reply(ANSWER), Reply(ANSWER))
    create_agent(gpt(srv), tools=[get_weather], middleware=[NascaMiddleware(nasca)]).invoke(
        {"messages": [HumanMessage(ASK)]}, context={"user_id": "u1"})
    create_agent(gpt(srv), tools=[get_weather]).invoke(
        {"messages": [HumanMessage(ASK)]},
        config={"callbacks": [NascaCallbackHandler(nasca)], "metadata": {"nasca_user_id": "u1"}})
    by_middleware, by_handler = seen
    assert by_middleware["tools"] == by_handler["tools"] and by_handler["tools"]
    assert [m["content"] for m in by_middleware["messages"]] == [m["content"] for m in by_handler["messages"]]
    assert estimates[0] == estimates[1]
    schemas = {"role": "system", "content": json.dumps(by_handler["tools"])}
    prompt = count_message_tokens([*by_handler["messages"], schemas], GPT)
    assert prompt > count_message_tokens(by_handler["messages"], GPT)
    assert estimates[0] == estimate_cost_nanos(nasca.pricer, GPT, prompt, None, nasca.default_output_tokens)
    u = nasca.get_usage("u1")
    assert u.month_calls == 2 and u.in_flight == 0
