"""nasca_llamaindex against the ledger on every backend: blocking, accounting, concurrency.

Providers: llama-index-llms-openai's ``OpenAI`` pointed at the local provider server
(usage streaming on and off) and LlamaIndex's ``MockLLM``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import ChatMessage, MockLLM
from llama_index.llms.openai import OpenAI

import nasca_llamaindex
from nasca_core import NascaBlockedError, Tier
from nasca_core.pricing import TokenUsage, count_message_tokens, count_tokens, estimate_cost_nanos
from nasca_core.testing import ProviderServer

MODEL = "gpt-4o-mini"
PROMPT = "Name three colours of the sky."
METHODS = ["chat", "complete", "stream_chat", "stream_complete",
           "achat", "acomplete", "astream_chat", "astream_complete"]
PROVIDERS = ["openai-usage", "openai-no-usage", "mock"]


@pytest.fixture(scope="module")
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(srv: ProviderServer) -> Iterator[None]:
    srv.reset()
    yield
    nasca_llamaindex.uninstrument()


@pytest.fixture
async def nascas(make_nasca: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """make_nasca, plus closing each Nasca's async store on the test's event loop:
    connections left open warn when collected later, possibly in the middle of an
    unrelated import."""
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        made.append(make_nasca(**kwargs))
        return made[-1]

    yield make
    for nasca in made:
        await nasca.store.aclose()


@pytest.fixture
async def make_llm(srv: ProviderServer) -> AsyncIterator[Callable[..., BaseLLM]]:
    """LLMs for a provider; their HTTP clients are closed on the test's own event loop."""
    clients: list[tuple[httpx.Client, httpx.AsyncClient]] = []

    def make(provider: str, **kwargs: Any) -> BaseLLM:
        if provider == "mock":
            return MockLLM(max_tokens=5)
        extra = {"stream_options": {"include_usage": True}} if provider == "openai-usage" else {}
        clients.append((httpx.Client(), httpx.AsyncClient()))
        return OpenAI(api_base=srv.base_url, api_key="x", model=MODEL, max_retries=0,
                      additional_kwargs=extra, http_client=clients[-1][0],
                      async_http_client=clients[-1][1], **kwargs)

    yield make
    for sync_client, async_client in clients:
        sync_client.close()
        await async_client.aclose()


def messages() -> list[ChatMessage]:
    return [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content=PROMPT)]


async def call(llm: BaseLLM, method: str) -> str:
    """Run one LLM method to the end and return the text it produced."""
    arg: Any = messages() if "chat" in method else PROMPT
    result = getattr(llm, method)(arg)
    if method.startswith("a"):
        result = await result
    if "stream" not in method:
        return str(result.message.content if "chat" in method else result.text)
    deltas = []  # what was streamed (MockLLM's last chunk text lags its deltas)
    if method.startswith("a"):
        async for chunk in result:
            deltas.append(chunk.delta or "")
    else:
        deltas.extend(chunk.delta or "" for chunk in result)
    return "".join(deltas)


def exhaust(nasca: Any, user: str) -> None:
    """Spend more than every limit of the default tiers."""
    nasca.settle(nasca.reserve(nanos=1, user=user), nanos=10**9)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("method", METHODS)
async def test_blocked_call_never_reaches_the_provider(
    nascas: Callable[..., Any], make_llm: Callable[..., BaseLLM], srv: ProviderServer,
    method: str, provider: str,
) -> None:
    nasca = nascas(unknown_model=f"price_as:{MODEL}")
    llm = nasca_llamaindex.guard_llm(make_llm(provider), nasca)
    exhaust(nasca, "u_over")
    before = nasca.get_usage("u_over")
    with nasca.user("u_over"), pytest.raises(NascaBlockedError) as info:
        await call(llm, method)
    assert info.value.user_id == "u_over"
    assert srv.request_count == 0
    after = nasca.get_usage("u_over")
    assert (after.month_calls, after.in_flight) == (before.month_calls, 0)
    # the same LLM still serves a user with budget
    with nasca.user("u_ok"):
        await call(llm, method)
    assert srv.request_count == (0 if provider == "mock" else 1)
    assert nasca.get_usage("u_ok").month_calls == 1


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("method", METHODS)
async def test_each_call_is_charged_once_with_the_provider_usage(
    nascas: Callable[..., Any], make_llm: Callable[..., BaseLLM], srv: ProviderServer,
    method: str, provider: str,
) -> None:
    nasca = nascas(unknown_model=f"price_as:{MODEL}")
    llm = nasca_llamaindex.guard_llm(make_llm(provider), nasca)
    with nasca.user("u1"):
        text = await call(llm, method)
    usage = nasca.get_usage("u1")
    assert usage.month_calls == 1  # MockLLM's nested chat -> complete is one call
    assert usage.in_flight == 0
    model = str(llm.metadata.model_name)
    reported = provider == "openai-usage" or (provider == "openai-no-usage" and "stream" not in method)
    if reported:  # the provider's own counts
        (req,) = srv.requests
        assert req.usage is not None
        expected = (req.usage.input_tokens, req.usage.output_tokens)
    else:  # no usage: the prompt estimate plus the counted output text
        prompt = (count_message_tokens([{"role": m.role.value, "content": m.content}
                                        for m in messages()], model)
                  if "chat" in method else count_tokens(PROMPT, model))
        expected = (prompt, count_tokens(text, model))
        if provider != "mock":
            assert srv.requests[0].usage.output_tokens == expected[1]  # type: ignore[union-attr]
    assert (usage.month_input_tokens, usage.month_output_tokens) == expected
    cost = nasca.cost_of(MODEL, TokenUsage(input_tokens=expected[0], output_tokens=expected[1]))
    assert usage.month_cost == Decimal(cost) / 10**9


# llama-index-workflows inspects agents with inspect.getmembers, touching pydantic's
# deprecated __fields__
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")
async def test_agent_blocked_mid_run_surfaces_to_the_caller(
    nascas: Callable[..., Any], make_llm: Callable[..., BaseLLM], srv: ProviderServer
) -> None:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool

    from nasca_core.testing import Reply, ToolCall

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    # the first LLM call is admitted and costs more than the whole daily limit
    nasca = nascas(tiers={"tiny": Tier(daily=Decimal("0.000001"))}, default_tier="tiny")
    llm = nasca_llamaindex.guard_llm(make_llm("openai-usage"), nasca)
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=llm)
    srv.queue(Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 2})]), "It is 3.")
    with nasca.user("u_agent"), pytest.raises(NascaBlockedError):
        await agent.run("What is 1 + 2?")
    assert srv.request_count == 1  # the tool call; the follow-up was stopped
    usage = nasca.get_usage("u_agent")
    assert usage.month_calls == 1 and usage.in_flight == 0


@pytest.mark.parametrize("strict", [False, True])
async def test_concurrent_aquery_overspend_stays_within_the_core_bound(
    nascas: Callable[..., Any], make_llm: Callable[..., BaseLLM], srv: ProviderServer, strict: bool
) -> None:
    """100 concurrent aquery for one user.

    ``_policy.admit`` admits a call while spent + held < limit (strict: spent + held +
    estimate <= limit). When no call costs more than its estimate, every admitted call
    saw spent + held <= limit - 1 nano, and what was held then is settled at no more than
    it held, so the final spend is at most limit - 1 + the cost of the last admitted call
    (strict: at most the limit).
    """
    nasca = nascas(strict=strict)
    # replies long enough to be cut at max_tokens: the cost comes close to the estimate
    srv.default_reply = type(srv.default_reply)("word " * 200)
    llm = nasca_llamaindex.guard_llm(make_llm("openai-usage", max_tokens=40), nasca)
    docs = [Document(text=f"Fact {i}: the sky is colour number {i}.") for i in range(4)]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=llm)

    with nasca.user("u_probe", tier="pro"):  # one call's cost, to size the limit
        await engine.aquery("Which colour?")
    one_call = nasca.get_usage("u_probe", tier="pro").month_cost
    limit = (one_call * Decimal("2.5")).quantize(Decimal("0.000000001"))
    nasca.set_tier("tight", Tier(daily=limit))
    srv.reset()

    async def ask() -> Any:
        with nasca.user("u_many", tier="tight"):
            return await engine.aquery("Which colour?")

    results = await asyncio.gather(*(ask() for _ in range(100)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, NascaBlockedError) for e in errors), errors[:1]
    admitted = 100 - len(errors)
    assert admitted >= 1 and srv.request_count == admitted  # blocked ones never hit the server

    costs, estimates = [], []
    for req in srv.requests:
        assert req.usage is not None
        costs.append(nasca.cost_of(MODEL, TokenUsage(input_tokens=req.usage.input_tokens,
                                                     output_tokens=req.usage.output_tokens)))
        prompt = count_message_tokens(req.json["messages"], MODEL)
        estimates.append(estimate_cost_nanos(nasca.pricer, MODEL, prompt, 40))
    assert all(c <= e for c, e in zip(costs, estimates, strict=True))

    usage = nasca.get_usage("u_many", tier="tight")
    spent = int(usage.daily_spent * 10**9)
    limit_nanos = int(limit * 10**9)
    assert usage.month_calls == admitted and usage.in_flight == 0
    assert spent == sum(costs)  # every admitted call charged exactly once
    if strict:
        assert spent <= limit_nanos
    else:
        assert spent <= limit_nanos - 1 + max(costs)
