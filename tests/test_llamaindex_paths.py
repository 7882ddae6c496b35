"""nasca_llamaindex through LlamaIndex's engines and agents, and its switches (memory store).

Provider: llama-index-llms-openai's ``OpenAI`` against the local provider server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llama_index.core.llms import ChatMessage, MockLLM
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.rate_limiter import BaseRateLimiter
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI

import nasca_llamaindex
from nasca_core import InvalidUserError, NascaBlockedError, UnknownModelError
from nasca_core.pricing import TokenUsage, count_message_tokens, count_tokens
from nasca_core.testing import ProviderServer, Reply, ToolCall, Usage
from nasca_llamaindex._hooks import _Events

MODEL = "gpt-4o-mini"
QUESTION = "Which colour is the sky?"
LONG_REPLY = " ".join(f"word{i}" for i in range(40))

# llama-index-workflows inspects agents with inspect.getmembers, touching pydantic's
# deprecated instance attributes
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")


@pytest.fixture
def backend() -> str:
    return "memory"  # the engine paths do not depend on the store; see test_llamaindex_ledger


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
async def make_llm(srv: ProviderServer) -> AsyncIterator[Callable[..., OpenAI]]:
    clients: list[tuple[httpx.Client, httpx.AsyncClient]] = []

    def make(usage: bool = True, **kwargs: Any) -> OpenAI:
        extra = {"stream_options": {"include_usage": True}} if usage else {}
        clients.append((httpx.Client(), httpx.AsyncClient()))
        return OpenAI(api_base=srv.base_url, api_key="x", model=MODEL, max_retries=0,
                      additional_kwargs=extra, http_client=clients[-1][0],
                      async_http_client=clients[-1][1], **kwargs)

    yield make
    for sync_client, async_client in clients:
        sync_client.close()
        await async_client.aclose()


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    docs = [Document(text=f"Fact {i}: the sky is colour number {i}.") for i in range(4)]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


def exhaust(nasca: Any, user: str) -> None:
    nasca.settle(nasca.reserve(nanos=1, user=user), nanos=10**9)


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def buffer() -> ChatMemoryBuffer:
    # the default Memory keeps async chat history in aiosqlite and never closes it
    return ChatMemoryBuffer.from_defaults(token_limit=3000)


async def _drain(gen: Any) -> str:
    if hasattr(gen, "__anext__"):
        return "".join([t async for t in gen])
    return "".join(gen)


# Each path runs a question through an engine or agent built on ``llm``.
async def query(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    index.as_query_engine(llm=llm).query(QUESTION)


async def aquery(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    await index.as_query_engine(llm=llm).aquery(QUESTION)


async def query_streaming(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    response: Any = index.as_query_engine(llm=llm, streaming=True).query(QUESTION)
    assert await _drain(response.response_gen)


async def aquery_streaming(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    response: Any = await index.as_query_engine(llm=llm, streaming=True).aquery(QUESTION)
    assert await _drain(response.async_response_gen())


async def retriever_query_engine(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    RetrieverQueryEngine.from_args(index.as_retriever(), llm=llm).query(QUESTION)


async def context_chat(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    index.as_chat_engine(chat_mode="context", llm=llm, memory=buffer()).chat(QUESTION)


async def condense_plus_context_achat(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    await index.as_chat_engine(chat_mode="condense_plus_context", llm=llm,
                               memory=buffer()).achat(QUESTION)


async def simple_stream_chat(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    response = SimpleChatEngine.from_defaults(llm=llm, memory=buffer()).stream_chat(QUESTION)
    assert await _drain(response.response_gen)


async def context_astream_chat(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    engine = index.as_chat_engine(chat_mode="context", llm=llm, memory=buffer())
    response = await engine.astream_chat(QUESTION)
    assert await _drain(response.async_response_gen())


async def function_agent(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    srv.queue(Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 2})]), "It is 3.")
    assert "3" in str(await FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=llm).run("1+2?"))


async def react_agent(index: VectorStoreIndex, llm: BaseLLM, srv: ProviderServer) -> None:
    srv.queue('Thought: I need a tool.\nAction: add\nAction Input: {"a": 1, "b": 2}',
              "Thought: I can answer.\nAnswer: 3")
    assert "3" in str(await ReActAgent(tools=[FunctionTool.from_defaults(add)], llm=llm).run("1+2?"))


PATHS: list[Callable[[VectorStoreIndex, BaseLLM, ProviderServer], Awaitable[None]]] = [
    query, aquery, query_streaming, aquery_streaming, retriever_query_engine, context_chat,
    condense_plus_context_achat, simple_stream_chat, context_astream_chat, function_agent,
    react_agent,
]


@pytest.mark.parametrize("mode", ["instrument", "guard_llm", "scope"])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.__name__)
async def test_engines_and_agents_block_and_account(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer,
    index: VectorStoreIndex, path: Callable[..., Awaitable[None]], mode: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nasca = make_nasca()
    counter = TokenCountingHandler()
    callbacks = CallbackManager([counter])
    monkeypatch.setattr(Settings, "callback_manager", callbacks)
    llm = make_llm(callback_manager=callbacks)
    if mode == "instrument":
        nasca_llamaindex.instrument(nasca)
    elif mode == "guard_llm":
        nasca_llamaindex.guard_llm(llm, nasca)

    def active() -> contextlib.AbstractContextManager[None]:
        return nasca_llamaindex.scope(nasca) if mode == "scope" else contextlib.nullcontext()

    with nasca.user("u_ok"), active():
        await path(index, llm, srv)
    calls = srv.counts["chat.completions"]
    assert calls >= 1 and srv.request_count == calls  # embeddings are local (MockEmbedding)
    usage = nasca.get_usage("u_ok")
    assert usage.month_calls == calls and usage.in_flight == 0
    reported = [r.usage for r in srv.requests]
    assert usage.month_input_tokens == sum(u.input_tokens for u in reported if u)
    assert usage.month_output_tokens == sum(u.output_tokens for u in reported if u)
    # LlamaIndex's own count of the same calls agrees with the ledger
    assert counter.prompt_llm_token_count == usage.month_input_tokens
    assert counter.completion_llm_token_count == usage.month_output_tokens

    srv.reset()
    exhaust(nasca, "u_over")
    with nasca.user("u_over"), active(), pytest.raises(NascaBlockedError):
        await path(index, llm, srv)
    assert srv.request_count == 0
    assert nasca.get_usage("u_over").in_flight == 0


async def test_guard_llm_leaves_other_llms_alone(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer
) -> None:
    nasca = make_nasca()
    guarded, other = nasca_llamaindex.guard_llm(make_llm(), nasca), make_llm()
    exhaust(nasca, "u1")
    messages = [ChatMessage(role="user", content=QUESTION)]
    with nasca.user("u1"):
        with pytest.raises(NascaBlockedError):
            guarded.chat(messages)
        assert srv.request_count == 0
        other.chat(messages)
        await other.achat(messages)
    assert srv.request_count == 2
    assert nasca.get_usage("u1").month_calls == 1  # only exhaust()'s charge
    assert other.rate_limiter is None


async def test_guard_engine_leaves_other_engines_on_the_same_llm_alone(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer,
    index: VectorStoreIndex,
) -> None:
    nasca = make_nasca()
    llm = make_llm()
    guarded = nasca_llamaindex.guard_engine(index.as_query_engine(llm=llm), nasca)
    other = index.as_query_engine(llm=llm)
    with nasca.user("u_ok"):
        guarded.query(QUESTION)
        await guarded.aquery(QUESTION)
        other.query(QUESTION)
        llm.complete(QUESTION)
    assert srv.request_count == 4
    assert nasca.get_usage("u_ok").month_calls == 2  # the guarded engine's two
    exhaust(nasca, "u_over")
    srv.reset()
    with nasca.user("u_over"):
        with pytest.raises(NascaBlockedError):
            guarded.query(QUESTION)
        with pytest.raises(NascaBlockedError):
            await guarded.aquery(QUESTION)
        assert srv.request_count == 0
        other.query(QUESTION)
        await other.aquery(QUESTION)
    assert srv.request_count == 2
    nasca_llamaindex.unguard(guarded)
    with nasca.user("u_over"):
        guarded.query(QUESTION)

    guarded_chat = nasca_llamaindex.guard_engine(SimpleChatEngine.from_defaults(
        llm=llm, memory=buffer()), nasca)
    other_chat = SimpleChatEngine.from_defaults(llm=llm, memory=buffer())
    srv.reset()
    with nasca.user("u_over"):
        with pytest.raises(NascaBlockedError):
            await guarded_chat.achat(QUESTION)
        with pytest.raises(NascaBlockedError):
            guarded_chat.stream_chat(QUESTION)
        assert srv.request_count == 0
        other_chat.chat(QUESTION)
    assert srv.request_count == 1


async def test_guard_engine_covers_streaming_engines_read_after_query_returns(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer,
    index: VectorStoreIndex,
) -> None:
    """A streaming engine calls its LLM when the caller reads the stream, after query()."""
    nasca = make_nasca()
    for usage in (True, False):
        llm = make_llm(usage=usage)
        guarded = nasca_llamaindex.guard_engine(index.as_query_engine(llm=llm, streaming=True), nasca)
        user = f"u_stream_{usage}"
        srv.reset()
        with nasca.user(user):
            text = "".join(guarded.query(QUESTION).response_gen)
            response = await guarded.aquery(QUESTION)
            text += "".join([t async for t in response.async_response_gen()])
        assert text and srv.request_count == 2
        u = nasca.get_usage(user)
        assert u.month_calls == 2 and u.in_flight == 0
        if usage:
            reported = [r.usage for r in srv.requests if r.usage is not None]
            assert u.month_output_tokens == sum(x.output_tokens for x in reported)
        exhaust(nasca, f"{user}_over")
        srv.reset()
        with nasca.user(f"{user}_over"):
            stream = guarded.query(QUESTION)
            with pytest.raises(NascaBlockedError):
                "".join(stream.response_gen)
        assert srv.request_count == 0


class CountingLimiter(BaseRateLimiter):
    """A user's own rate limiter: it must keep running behind the gate."""

    def __init__(self) -> None:
        self.calls = 0

    def acquire(self, num_tokens: int = 0) -> None:
        self.calls += 1

    async def async_acquire(self, num_tokens: int = 0) -> None:
        self.calls += 1


async def test_instrument_covers_every_llm_and_uninstrument_restores_everything(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer
) -> None:
    root = get_dispatcher()
    gc.collect()  # earlier tests' guarded engines and LLMs are gone...
    nasca_llamaindex.uninstrument()  # ...and forgotten: the handlers are detached
    assert _Events not in {type(h) for h in root.event_handlers}
    before = (list(root.event_handlers), list(root.span_handlers))
    limiter = CountingLimiter()
    early = make_llm(rate_limiter=limiter)
    explicit = make_llm()
    nasca, other_nasca = make_nasca(), make_nasca(namespace="other")
    nasca_llamaindex.guard_llm(explicit, other_nasca)
    nasca_llamaindex.instrument(nasca)
    late = make_llm()
    exhaust(nasca, "u1")
    messages = [ChatMessage(role="user", content=QUESTION)]
    with nasca.user("u1"):
        for llm in (early, late):
            with pytest.raises(NascaBlockedError):
                llm.chat(messages)
            with pytest.raises(NascaBlockedError):
                await llm.acomplete(QUESTION)
        explicit.chat(messages)  # its own Nasca, where u1 has budget
    assert srv.request_count == 1
    assert limiter.calls == 0  # the budget is checked first: a blocked call takes no rate slot
    with nasca.user("u2"):
        early.chat(messages)
    assert limiter.calls == 1
    assert other_nasca.get_usage("u1").month_calls == 1

    nasca_llamaindex.uninstrument()
    assert early.rate_limiter is limiter and late.rate_limiter is None
    with nasca.user("u1"):
        early.chat(messages)
        late.chat(messages)
    assert nasca.get_usage("u1").month_calls == 1  # no longer charged
    assert isinstance(explicit.rate_limiter, nasca_llamaindex.NascaGate)  # still guarded
    with nasca.user("u3"):
        explicit.chat(messages)
    assert other_nasca.get_usage("u3").month_calls == 1
    nasca_llamaindex.unguard(explicit)
    assert explicit.rate_limiter is None
    assert (root.event_handlers, root.span_handlers) == before


async def test_unguarded_llm_falls_back_to_the_global_nasca(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer
) -> None:
    nasca, own = make_nasca(), make_nasca(namespace="own")
    llm = nasca_llamaindex.guard_llm(make_llm(), own)
    nasca_llamaindex.instrument(nasca)
    with nasca.user("u1"):
        await llm.acomplete(QUESTION)
        nasca_llamaindex.unguard(llm)
        await llm.acomplete(QUESTION)
    assert (own.get_usage("u1").month_calls, nasca.get_usage("u1").month_calls) == (1, 1)
    nasca_llamaindex.uninstrument()
    assert llm.rate_limiter is None


async def test_scope_guards_only_inside_the_block(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer
) -> None:
    nasca = make_nasca()
    llm = make_llm()
    exhaust(nasca, "u1")
    with nasca.user("u1"):
        with nasca_llamaindex.scope(nasca), pytest.raises(NascaBlockedError):
            await llm.acomplete(QUESTION)
        assert srv.request_count == 0
        await llm.acomplete(QUESTION)
    assert srv.request_count == 1


async def test_identity_from_instrument_tags_and_from_concurrent_tasks(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer
) -> None:
    nasca = make_nasca()
    llm = nasca_llamaindex.guard_llm(make_llm(), nasca)
    with instrument_tags({nasca_llamaindex.USER_TAG: "tagged", nasca_llamaindex.TIER_TAG: "pro"}):
        llm.complete(QUESTION)
        with nasca.user("ctx"):  # the tag names the payer even inside nasca.user()
            await llm.acomplete(QUESTION)
    assert nasca.get_usage("tagged", tier="pro").month_calls == 2
    assert nasca.get_usage("ctx").month_calls == 0

    async def as_user(user: str) -> None:
        with nasca.user(user):
            await asyncio.sleep(0)
            await llm.acomplete(QUESTION)

    await asyncio.gather(*(as_user(f"task{i % 5}") for i in range(20)))
    assert [nasca.get_usage(f"task{i}").month_calls for i in range(5)] == [4] * 5

    with pytest.raises(InvalidUserError):
        llm.complete(QUESTION)  # no user anywhere: refused, not let through
    assert srv.request_count == 22


@pytest.mark.parametrize("is_async", [False, True])
async def test_abandoned_stream_is_charged_prompt_plus_streamed_text(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer,
    is_async: bool,
) -> None:
    nasca = make_nasca()
    llm = nasca_llamaindex.guard_llm(make_llm(usage=False), nasca)
    srv.queue(LONG_REPLY)
    messages = [ChatMessage(role="user", content=QUESTION)]
    streamed = ""
    with nasca.user("u1"):
        if is_async:
            agen = await llm.astream_chat(messages)
            for _ in range(3):
                streamed += (await agen.__anext__()).delta or ""
            await agen.aclose()
        else:
            gen = llm.stream_chat(messages)
            for _ in range(3):
                streamed += next(gen).delta or ""
            gen.close()
    assert streamed and streamed != LONG_REPLY
    usage = nasca.get_usage("u1")
    prompt = count_message_tokens([{"role": "user", "content": QUESTION}], MODEL)
    assert (usage.month_calls, usage.in_flight) == (1, 0)
    assert (usage.month_input_tokens, usage.month_output_tokens) == (
        prompt, count_tokens(streamed, MODEL))


async def test_stream_never_iterated_releases_its_hold(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer
) -> None:
    nasca = make_nasca()
    llm = nasca_llamaindex.guard_llm(make_llm(), nasca)
    with nasca.user("u1"):
        gen = llm.stream_complete(QUESTION)
        agen = await llm.astream_chat([ChatMessage(role="user", content=QUESTION)])
        assert nasca.get_usage("u1").in_flight > 0
        del gen, agen
        gc.collect()
    usage = nasca.get_usage("u1")
    assert (usage.month_calls, usage.in_flight, srv.request_count) == (0, 0, 0)


async def test_provider_failures_release_or_charge_what_was_streamed(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer
) -> None:
    import openai

    nasca = make_nasca()
    llm = nasca_llamaindex.guard_llm(make_llm(usage=False), nasca)
    messages = [ChatMessage(role="user", content=QUESTION)]
    with nasca.user("u1"):
        srv.fail_next(500)
        with pytest.raises(openai.InternalServerError):
            await llm.achat(messages)
        usage = nasca.get_usage("u1")
        assert (usage.month_calls, usage.in_flight) == (0, 0)  # released, not charged

        srv.queue(LONG_REPLY)
        srv.fail_next(500, after_chunks=2)
        streamed = ""
        with pytest.raises(openai.APIError):
            for chunk in llm.stream_chat(messages):
                streamed += chunk.delta or ""
    usage = nasca.get_usage("u1")
    assert (usage.month_calls, usage.in_flight) == (1, 0)
    assert usage.month_output_tokens == count_tokens(streamed, MODEL) > 0


async def test_cached_and_reasoning_tokens_are_priced_from_raw_usage(
    make_nasca: Callable[..., Any], make_llm: Callable[..., OpenAI], srv: ProviderServer
) -> None:
    nasca = make_nasca()
    llm = nasca_llamaindex.guard_llm(make_llm(), nasca)
    reported = Usage(input_tokens=2000, output_tokens=300, cached_tokens=1500, reasoning_tokens=120)
    srv.queue(Reply("Short.", usage=reported), Reply("Short.", usage=reported))
    with nasca.user("u1"):
        llm.chat([ChatMessage(role="user", content=QUESTION)])
        response = llm.stream_chat([ChatMessage(role="user", content=QUESTION)])
        await _drain(chunk.delta or "" for chunk in response)
    expected = nasca.cost_of(MODEL, TokenUsage(input_tokens=2000, output_tokens=300,
                                               cache_read_tokens=1500, reasoning_tokens=120))
    uncached = nasca.cost_of(MODEL, TokenUsage(input_tokens=2000, output_tokens=300))
    assert expected < uncached
    usage = nasca.get_usage("u1")
    assert usage.month_cost * 10**9 == 2 * expected
    assert (usage.month_input_tokens, usage.month_output_tokens) == (4000, 600)


async def test_index_building_and_retrieval_are_not_charged(
    make_nasca: Callable[..., Any], srv: ProviderServer
) -> None:
    nasca = make_nasca()
    nasca_llamaindex.instrument(nasca)
    with nasca.user("u1"):
        index = VectorStoreIndex.from_documents(
            [Document(text=f"Note {i}.") for i in range(5)], embed_model=MockEmbedding(embed_dim=8))
        nodes = await index.as_retriever().aretrieve(QUESTION)
    assert nodes
    usage = nasca.get_usage("u1")
    assert (usage.month_calls, usage.in_flight) == (0, 0)


async def test_unpriced_model_is_refused_before_the_call(make_nasca: Callable[..., Any]) -> None:
    nasca = make_nasca()  # unknown_model="block": MockLLM's model name is "unknown"
    llm = nasca_llamaindex.guard_llm(MockLLM(max_tokens=3), nasca)
    with nasca.user("u1"), pytest.raises(UnknownModelError):
        await llm.acomplete(QUESTION)
    assert nasca.get_usage("u1").in_flight == 0


def test_public_api_is_pinned_and_sorted() -> None:
    assert nasca_llamaindex.__all__ == sorted(nasca_llamaindex.__all__, key=lambda n: (not n.isupper(), n))
    assert set(nasca_llamaindex.__all__) == {
        "EmbeddingGate", "NascaGate", "TIER_TAG", "USER_TAG", "guard_embedding", "guard_engine",
        "guard_llm", "instrument", "scope", "unguard", "uninstrument", "unmetered_embeddings",
        "usage_from_llamaindex",
    }
    for name in nasca_llamaindex.__all__:
        assert getattr(nasca_llamaindex, name) is not None
