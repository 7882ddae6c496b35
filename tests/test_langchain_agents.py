"""NascaCallbackHandler in agents and tool loops, and the opt-in upgrade prompts."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any, TypedDict

import openai
import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core.pricing import Pricer, TokenUsage
from nasca_core.testing import ProviderServer, Reply, ToolCall
from nasca_langchain import (
    NascaCallbackHandler,
    UpgradePromptMiddleware,
    upgrade_reply,
    with_upgrade_prompt,
)

GPT = "gpt-4o-mini"
ASK = "What is the weather in Paris?"
ANSWER = "It is sunny in Paris."
TINY = Tier(daily="0.000001")  # one call costs more: the next model step is refused


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    # per test: the provider SDKs cache async HTTP clients per base URL and event loop
    with ProviderServer() as server:
        yield server


def script_tool_then_answer(srv: ProviderServer) -> None:
    srv.queue(Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]), Reply(ANSWER))


def gpt(srv: ProviderServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=GPT, base_url=srv.base_url, api_key="x", max_retries=0, **kwargs)


def cfg(*handlers: Any, user: str = "u1") -> dict[str, Any]:
    return {"callbacks": list(handlers), "metadata": {"nasca_user_id": user}}


def provider_totals(srv: ProviderServer) -> tuple[int, int, Decimal]:
    ins = outs = 0
    spent = Decimal(0)
    for r in srv.requests:
        assert r.usage is not None
        ins, outs = ins + r.usage.input_tokens, outs + r.usage.output_tokens
        nanos = Pricer().cost(GPT, TokenUsage(r.usage.input_tokens, r.usage.output_tokens))
        spent += Decimal(nanos) / 10**9
    return ins, outs, spent


def assert_matches_provider(nasca: Nasca, srv: ProviderServer, calls: int) -> None:
    ins, outs, spent = provider_totals(srv)
    u = nasca.get_usage("u1")
    assert (u.month_input_tokens, u.month_output_tokens, u.month_cost) == (ins, outs, spent)
    assert u.month_calls == calls == srv.request_count
    assert u.in_flight == 0


def messages(state: dict[str, Any]) -> list[AnyMessage]:
    return list(state["messages"])


# -- langchain.agents.create_agent ----------------------------------------------------------

def test_agent_reserves_and_settles_every_model_step(make_nasca: Any,
                                                      srv: ProviderServer) -> None:
    nasca = make_nasca()
    lc = UsageMetadataCallbackHandler()
    script_tool_then_answer(srv)
    agent = create_agent(gpt(srv), tools=[get_weather])
    out = agent.invoke({"messages": [HumanMessage(ASK)]},
                       config=cfg(NascaCallbackHandler(nasca), lc))
    assert messages(out)[-1].content == ANSWER
    assert any(isinstance(m, ToolMessage) for m in messages(out))
    assert_matches_provider(nasca, srv, calls=2)
    u = nasca.get_usage("u1")
    assert u.month_input_tokens == sum(x["input_tokens"] for x in lc.usage_metadata.values())
    assert u.month_output_tokens == sum(x["output_tokens"] for x in lc.usage_metadata.values())


async def test_async_agent_reserves_and_settles_every_model_step(make_nasca: Any,
                                                                  srv: ProviderServer) -> None:
    nasca = make_nasca()
    script_tool_then_answer(srv)
    agent = create_agent(gpt(srv, stream_usage=True), tools=[get_weather])
    chunks = [c async for c in agent.astream({"messages": [HumanMessage(ASK)]},
                                             config=cfg(NascaCallbackHandler(nasca)),
                                             stream_mode="messages")]
    assert chunks
    assert_matches_provider(nasca, srv, calls=2)


def test_block_mid_run_surfaces_from_agent_invoke(make_nasca: Any, srv: ProviderServer) -> None:
    nasca = make_nasca(tiers={"free": TINY})
    script_tool_then_answer(srv)
    agent = create_agent(gpt(srv), tools=[get_weather])
    with pytest.raises(NascaBlockedError) as info:
        agent.invoke({"messages": [HumanMessage(ASK)]}, config=cfg(NascaCallbackHandler(nasca)))
    assert info.value.user_id == "u1"
    assert srv.request_count == 1  # the tool step ran; the second model step never went out
    assert_matches_provider(nasca, srv, calls=1)


async def test_block_mid_run_surfaces_from_agent_ainvoke(make_nasca: Any,
                                                         srv: ProviderServer) -> None:
    nasca = make_nasca(tiers={"free": TINY})
    script_tool_then_answer(srv)
    agent = create_agent(gpt(srv), tools=[get_weather])
    with pytest.raises(NascaBlockedError):
        await agent.ainvoke({"messages": [HumanMessage(ASK)]},
                            config=cfg(NascaCallbackHandler(nasca)))
    assert_matches_provider(nasca, srv, calls=1)


@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream"])
async def test_blocked_agent_makes_no_request(srv: ProviderServer, mode: str) -> None:
    nasca = Nasca("memory://", tiers={"free": TINY}, default_tier="free")
    nasca.settle(nasca.reserve(nanos=1, user="u1"), nanos=1000)
    agent = create_agent(gpt(srv), tools=[get_weather])
    state, c = {"messages": [HumanMessage(ASK)]}, cfg(NascaCallbackHandler(nasca))
    with pytest.raises(NascaBlockedError):
        if mode == "invoke":
            agent.invoke(state, config=c)
        elif mode == "stream":
            list(agent.stream(state, config=c))
        elif mode == "ainvoke":
            await agent.ainvoke(state, config=c)
        else:
            [x async for x in agent.astream(state, config=c)]
    assert srv.request_count == 0


# -- a LangGraph graph of our own, and a hand-written tool loop ------------------------------

class GraphState(TypedDict):
    messages: Annotated[list[AnyMessage], operator.add]


def build_graph(model: ChatOpenAI) -> Any:
    bound = model.bind_tools([get_weather])
    graph = StateGraph(GraphState)
    graph.add_node("model", lambda s: {"messages": [bound.invoke(s["messages"])]})
    graph.add_node("tools", ToolNode([get_weather]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "model")
    return graph.compile()


def test_langgraph_graph_agent(make_nasca: Any, srv: ProviderServer) -> None:
    nasca = make_nasca()
    script_tool_then_answer(srv)
    out = build_graph(gpt(srv)).invoke({"messages": [HumanMessage(ASK)]},
                                       config=cfg(NascaCallbackHandler(nasca)))
    assert out["messages"][-1].content == ANSWER
    assert_matches_provider(nasca, srv, calls=2)

    # the same namespace and user on a tier one call overspends: the second step is refused
    tiny = make_nasca(tiers={"free": TINY})
    srv.reset()
    script_tool_then_answer(srv)
    with pytest.raises(NascaBlockedError):
        build_graph(gpt(srv)).invoke({"messages": [HumanMessage(ASK)]},
                                     config=cfg(NascaCallbackHandler(tiny), user="u2"))
    assert srv.request_count == 1


def test_tool_calling_loop_by_hand(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    c = cfg(NascaCallbackHandler(nasca))
    model = gpt(srv, stream_usage=True).bind_tools([get_weather])
    script_tool_then_answer(srv)
    history: list[AnyMessage] = [HumanMessage(ASK)]
    while True:
        reply = model.invoke(history, config=c)
        history.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            history.append(get_weather.invoke(call))
    assert history[-1].content == ANSWER
    assert_matches_provider(nasca, srv, calls=2)


def test_streamed_tool_call_without_usage_counts_its_arguments(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    srv.queue(Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris, France"})]))
    chunks = list(gpt(srv).bind_tools([get_weather]).stream(ASK,
                                                            config=cfg(NascaCallbackHandler(nasca))))
    assert chunks
    reported = srv.last_request.usage
    assert reported is not None
    counted = nasca.get_usage("u1").month_output_tokens
    assert counted > 0 and abs(counted - reported.output_tokens) <= 1


# -- upgrade prompts -------------------------------------------------------------------------

def _shop(err: NascaBlockedError) -> str:
    return f"https://shop.example/upgrade?user={err.user_id}"


def assert_upgrade_reply(msg: AnyMessage, nasca: Nasca) -> None:
    assert isinstance(msg, AIMessage) and not msg.tool_calls
    fields = msg.response_metadata["nasca_blocked"]
    assert fields["user_id"] == "u1" and fields["window"] == "daily" and fields["tier"] == "free"
    assert fields["checkout_url"] == "https://shop.example/upgrade?user=u1"
    assert fields["resets_at"].startswith("20")
    assert str(msg.content).startswith(fields["upgrade_message"])
    assert str(msg.content).endswith(fields["checkout_url"])
    assert "daily" in fields["upgrade_message"]


def test_upgrade_middleware_turns_a_mid_run_block_into_the_reply(make_nasca: Any,
                                                                  srv: ProviderServer) -> None:
    nasca = make_nasca(tiers={"free": TINY}, checkout_url=_shop)
    script_tool_then_answer(srv)
    agent = create_agent(gpt(srv), tools=[get_weather], middleware=[UpgradePromptMiddleware()])
    out = agent.invoke({"messages": [HumanMessage(ASK)]}, config=cfg(NascaCallbackHandler(nasca)))
    history = messages(out)
    assert isinstance(history[-2], ToolMessage)  # the tool step before the block stays
    assert_upgrade_reply(history[-1], nasca)
    assert srv.request_count == 1
    assert_matches_provider(nasca, srv, calls=1)


async def test_upgrade_middleware_async(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": TINY}, default_tier="free", checkout_url=_shop)
    nasca.settle(nasca.reserve(nanos=1, user="u1"), nanos=1000)
    agent = create_agent(gpt(srv), tools=[get_weather], middleware=[UpgradePromptMiddleware()])
    out = await agent.ainvoke({"messages": [HumanMessage(ASK)]},
                              config=cfg(NascaCallbackHandler(nasca)))
    assert_upgrade_reply(messages(out)[-1], nasca)
    assert srv.request_count == 0


async def test_with_upgrade_prompt_on_every_path(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": TINY}, default_tier="free", checkout_url=_shop)
    model = with_upgrade_prompt(gpt(srv))
    c = cfg(NascaCallbackHandler(nasca))
    assert model.invoke(ASK, config=c).content == srv.default_reply.text  # passes through
    assert_upgrade_reply(model.invoke(ASK, config=c), nasca)  # now over budget
    assert_upgrade_reply(await model.ainvoke(ASK, config=c), nasca)
    for reply in model.batch([ASK, ASK], config=c) + await model.abatch([ASK], config=c):
        assert_upgrade_reply(reply, nasca)
    streamed = list(model.stream(ASK, config=c))
    astreamed = [x async for x in model.astream(ASK, config=c)]
    for chunks in (streamed, astreamed):
        assert len(chunks) == 1
        assert_upgrade_reply(AIMessage(**chunks[0].model_dump(exclude={"type"})), nasca)
    assert srv.request_count == 1


def test_with_upgrade_prompt_lets_other_errors_through(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    srv.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        with_upgrade_prompt(gpt(srv)).invoke(ASK, config=cfg(NascaCallbackHandler(nasca)))


def test_upgrade_reply_without_checkout_url() -> None:
    nasca = Nasca("memory://", tiers={"free": TINY}, default_tier="free")
    nasca.settle(nasca.reserve(nanos=1, user="u1"), nanos=1000)
    with pytest.raises(NascaBlockedError) as info:
        nasca.reserve(nanos=1, user="u1")
    msg = upgrade_reply(info.value)
    assert msg.content == info.value.upgrade_message
    assert msg.response_metadata["nasca_blocked"]["checkout_url"] is None
    assert msg.id == f"nasca-blocked-{info.value.prompt_id}"


def test_public_names() -> None:
    import nasca_langchain

    assert nasca_langchain.__all__ == sorted(nasca_langchain.__all__)
    assert set(nasca_langchain.__all__) == {
        "NascaCallbackHandler", "NascaMiddleware", "UpgradePromptMiddleware", "astarted", "started",
        "upgrade_fields", "upgrade_reply",
        "usage_from_langchain", "with_upgrade_prompt",
    }
    for name in nasca_langchain.__all__:
        assert getattr(nasca_langchain, name) is not None
    with pytest.raises(AttributeError):
        nasca_langchain.NoSuchThing  # noqa: B018
