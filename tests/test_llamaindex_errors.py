"""Nasca's errors escape every LlamaIndex engine: none is turned into "Empty Response".

LlamaIndex's response synthesizers and chat engines catch ValueError (and agents catch
more), so a Nasca error that was a ValueError came back as an empty answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI

import nasca_llamaindex
from nasca_core import InvalidUserError, Nasca, NascaBlockedError, NascaError, Tier, UnknownTierError
from nasca_core.testing import ProviderServer, Reply

MODEL = "gpt-4o-mini"
RESPONSE_MODES = ["refine", "compact", "tree_summarize", "simple_summarize", "accumulate",
                  "compact_accumulate", "generation"]
CHAT_MODES = ["condense_plus_context", "context", "simple", "condense_question"]

pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")


@pytest.fixture(scope="module")
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    docs = [Document(text=f"Fact {i}: the sky is colour number {i}.") for i in range(3)]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


@pytest.fixture
async def llm(srv: ProviderServer) -> AsyncIterator[OpenAI]:
    sync, asynchronous = httpx.Client(), httpx.AsyncClient()
    srv.reset()
    yield OpenAI(api_base=srv.base_url, api_key="x", model=MODEL, max_retries=0,
                 http_client=sync, async_http_client=asynchronous)
    nasca_llamaindex.uninstrument()
    sync.close()
    await asynchronous.aclose()


def guarded(llm: OpenAI) -> Nasca:
    nasca = Nasca("memory://", tiers={"free": Tier(daily="0.000001")}, default_tier="free")
    nasca_llamaindex.guard_llm(llm, nasca)
    return nasca


# What goes wrong -> how the caller sets it up. Each must reach the caller as itself.
def no_user(nasca: Nasca) -> Any:
    return None


def unknown_tier(nasca: Nasca) -> Any:
    return nasca.user("u1", tier="platinum")


def blocked(nasca: Nasca) -> Any:
    nasca.settle(nasca.reserve(nanos=1, user="u1"), nanos=10**6)
    return nasca.user("u1")


FAULTS: dict[str, tuple[Callable[[Nasca], Any], type[NascaError]]] = {
    "no user": (no_user, InvalidUserError),
    "unknown tier": (unknown_tier, UnknownTierError),
    "blocked": (blocked, NascaBlockedError),
}


def run(fault: str, nasca: Nasca, action: Callable[[], Any]) -> None:
    setup, expected = FAULTS[fault]
    with pytest.raises(expected), setup(nasca) or contextlib.nullcontext():
        action()


async def arun(fault: str, nasca: Nasca, action: Callable[[], Awaitable[Any]]) -> None:
    setup, expected = FAULTS[fault]
    with pytest.raises(expected), setup(nasca) or contextlib.nullcontext():
        await action()


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("mode", RESPONSE_MODES)
def test_query_engines(index: VectorStoreIndex, llm: OpenAI, srv: ProviderServer, mode: str,
                       fault: str) -> None:
    nasca = guarded(llm)
    engine = index.as_query_engine(llm=llm, response_mode=mode)
    run(fault, nasca, lambda: engine.query("Which colour is the sky?"))
    assert srv.request_count == 0


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("mode", RESPONSE_MODES[:3])
async def test_async_query_engines(index: VectorStoreIndex, llm: OpenAI, srv: ProviderServer,
                                   mode: str, fault: str) -> None:
    nasca = guarded(llm)
    engine = index.as_query_engine(llm=llm, response_mode=mode)
    await arun(fault, nasca, lambda: engine.aquery("Which colour is the sky?"))
    assert srv.request_count == 0


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("mode", CHAT_MODES)
def test_chat_engines(index: VectorStoreIndex, llm: OpenAI, srv: ProviderServer, mode: str,
                      fault: str) -> None:
    nasca = guarded(llm)
    engine = index.as_chat_engine(chat_mode=mode, llm=llm,
                                  memory=ChatMemoryBuffer.from_defaults(token_limit=3000))
    run(fault, nasca, lambda: engine.chat("And the sea?"))
    assert srv.request_count == 0


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", ["function", "react"])
async def test_agents(llm: OpenAI, srv: ProviderServer, kind: str, fault: str) -> None:
    nasca = guarded(llm)
    tools = [FunctionTool.from_defaults(add)]
    agent = FunctionAgent(tools=tools, llm=llm) if kind == "function" else ReActAgent(tools=tools, llm=llm)
    await arun(fault, nasca, lambda: agent.run("What is 2 + 3?"))
    assert srv.request_count == 0


def test_a_working_user_still_gets_answers(index: VectorStoreIndex, llm: OpenAI, srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    nasca_llamaindex.guard_llm(llm, nasca)
    srv.queue(Reply("Blue."))
    with nasca.user("u1"):
        answer = index.as_query_engine(llm=llm, response_mode="compact").query("Which colour?")
    assert str(answer) == "Blue." and srv.request_count == 1
    assert nasca.get_usage("u1").month_calls == 1
