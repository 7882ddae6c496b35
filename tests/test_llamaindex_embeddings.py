"""LlamaIndex embeddings under ``Nasca(charge_embeddings=True)``: index building and query
embedding blocked before the provider and charged exactly what the provider reports.

Provider: llama-index-embeddings-openai's ``OpenAIEmbedding`` talking HTTP to the local
provider server, which counts tokens with cl100k_base (text-embedding-3's tokenizer) and
reports them in ``usage.prompt_tokens``. text-embedding-3-small: $0.02 per 1M tokens,
i.e. 20 nano-dollars a token (fixed here: a data update that changes it fails loudly).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.node_parser import SentenceSplitter
from llama_index.embeddings.openai import OpenAIEmbedding

import nasca_llamaindex
from nasca_core import ConfigurationError, InvalidUserError, Nasca, NascaBlockedError, Tier, UnknownModelError
from nasca_core.pricing import ModelPrice, TokenUsage, count_tokens
from nasca_core.testing import ProviderServer

MODEL = "text-embedding-3-small"
NANOS_PER_TOKEN = 20
DOCS = [
    "The sky is blue on a clear day.\nAt sunset it turns orange and red.",
    "Colours of a garden:\n- green grass\n- yellow leaves in autumn",
    "Snow is white; it reflects most of the light that reaches it.",
    "The sea looks blue as it absorbs red light.\nDeep water looks darker.",
]


@pytest.fixture(scope="module")
def srv() -> Iterator[ProviderServer]:
    with ProviderServer(tokenizer="cl100k_base") as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(srv: ProviderServer) -> Iterator[None]:
    srv.reset()
    yield
    nasca_llamaindex.uninstrument()


def _nasca(daily: str = "100", charge: bool = True) -> Nasca:
    return Nasca("memory://", tiers={"t": Tier(daily=daily)}, default_tier="t", charge_embeddings=charge)


def _embed(srv: ProviderServer, batch: int = 2) -> OpenAIEmbedding:
    return OpenAIEmbedding(model=MODEL, api_base=srv.base_url, api_key="x", embed_batch_size=batch,
                           max_retries=0)


def _nodes() -> list[Document]:
    # One node per document: each is far below the splitter's chunk size.
    return [Document(text=t) for t in DOCS]


def _reported(srv: ProviderServer) -> list[int]:
    """The prompt tokens the provider billed, per embeddings request."""
    return [r.usage.input_tokens for r in srv.requests if r.endpoint == "embeddings" and r.usage]


def _spent(nasca: Nasca, user: str) -> tuple[Decimal, int, Decimal]:
    usage = nasca.get_usage(user)
    return usage.month_cost, usage.month_input_tokens, usage.in_flight


def _build(embed: OpenAIEmbedding, use_async: bool = False) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(
        _nodes(), embed_model=embed, transformations=[SentenceSplitter()], use_async=use_async
    )


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_index_building_is_charged_what_the_provider_reports(srv: ProviderServer, use_async: bool) -> None:
    nasca = _nasca()
    nasca_llamaindex.instrument(nasca)
    with nasca.user("u"):
        _build(_embed(srv), use_async=use_async)
    billed = _reported(srv)
    assert len(billed) == 2  # 4 documents in batches of 2
    # Newlines are sent as spaces: counting the raw text would charge more than the bill.
    assert sum(billed) < sum(srv.count_tokens(d) for d in DOCS)
    assert _spent(nasca, "u") == (Decimal(sum(billed) * NANOS_PER_TOKEN) / 10**9, sum(billed), Decimal(0))


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_query_embedding_is_charged_and_blocked_before_the_provider(
    srv: ProviderServer, is_async: bool
) -> None:
    nasca = _nasca(daily="0.000002")  # 2,000 nano-dollars: 100 tokens
    embed = nasca_llamaindex.guard_embedding(_embed(srv), nasca)
    query = "Why is the sky blue?\nAnd why is the sea blue?"
    with nasca.user("u"):
        vector = (asyncio.run(embed.aget_query_embedding(query)) if is_async
                  else embed.get_query_embedding(query))
    assert len(vector) > 0
    (billed,) = _reported(srv)
    assert _spent(nasca, "u") == (Decimal(billed * NANOS_PER_TOKEN) / 10**9, billed, Decimal(0))

    nasca.settle(nasca.reserve("0.000002", user="u"), "0.000002")  # the day's allowance is spent
    before = srv.request_count
    with nasca.user("u"), pytest.raises(NascaBlockedError):
        asyncio.run(embed.aget_query_embedding(query)) if is_async else embed.get_query_embedding(query)
    assert srv.request_count == before


def test_a_retriever_blocks_a_spent_user_before_the_query_embedding(srv: ProviderServer) -> None:
    nasca = _nasca(daily="0.00001")
    nasca_llamaindex.instrument(nasca)
    with nasca.user("builder"):
        retriever = _build(_embed(srv)).as_retriever(similarity_top_k=1)
    with nasca.user("u"):
        (hit,) = retriever.retrieve("Is snow white?")
    assert hit.node.get_content().startswith("Snow")
    assert _spent(nasca, "u")[1] == _reported(srv)[-1]

    nasca.settle(nasca.reserve("0.00001", user="u"), "0.00001")
    before = srv.request_count
    with nasca.user("u"), pytest.raises(NascaBlockedError):
        retriever.retrieve("Is snow white?")
    assert srv.request_count == before


def test_index_building_stops_at_the_batch_that_finds_the_allowance_spent(srv: ProviderServer) -> None:
    # 500 nano-dollars: 25 tokens. The first batch (more than 25 tokens) starts with budget
    # left, goes over, and the second batch is blocked before its request.
    nasca = _nasca(daily="0.0000005")
    nasca_llamaindex.instrument(nasca)
    with nasca.user("u"), pytest.raises(NascaBlockedError):
        _build(_embed(srv))
    (billed,) = _reported(srv)
    assert srv.counts["embeddings"] == 1
    assert _spent(nasca, "u") == (Decimal(billed * NANOS_PER_TOKEN) / 10**9, billed, Decimal(0))


def test_a_failed_embedding_request_releases_its_hold(srv: ProviderServer) -> None:
    nasca = _nasca()
    embed = nasca_llamaindex.guard_embedding(_embed(srv), nasca)
    srv.fail_next(500, endpoint="embeddings")
    with nasca.user("u"), pytest.raises(openai.InternalServerError):
        embed.get_text_embedding("lost")
    assert _spent(nasca, "u") == (Decimal(0), 0, Decimal(0))


def test_no_user_is_an_error_before_any_request(srv: ProviderServer) -> None:
    nasca = _nasca()
    embed = nasca_llamaindex.guard_embedding(_embed(srv), nasca)
    with pytest.raises(InvalidUserError):
        embed.get_query_embedding("who pays?")
    assert srv.request_count == 0


def test_embeddings_are_free_unless_opted_in(srv: ProviderServer) -> None:
    nasca = _nasca(charge=False)
    nasca_llamaindex.instrument(nasca)
    embed = _embed(srv)
    with nasca.user("u"):
        _build(embed)
    assert srv.counts["embeddings"] == 2
    assert _spent(nasca, "u") == (Decimal(0), 0, Decimal(0))
    assert embed.rate_limiter is None  # nothing installed on the model
    with pytest.raises(ConfigurationError, match="charge_embeddings=True"):
        nasca_llamaindex.guard_embedding(embed, nasca)


def test_guard_embedding_keeps_the_models_own_limiter_and_unguard_restores_it(srv: ProviderServer) -> None:
    from llama_index.core.rate_limiter import TokenBucketRateLimiter

    own = TokenBucketRateLimiter(requests_per_minute=600)
    embed = _embed(srv)
    embed.rate_limiter = own
    nasca = _nasca()
    nasca_llamaindex.guard_embedding(embed, nasca)
    assert isinstance(embed.rate_limiter, nasca_llamaindex.EmbeddingGate) and embed.rate_limiter.inner is own
    with nasca.user("u"):
        embed.get_text_embedding("kept")
    assert _spent(nasca, "u")[1] == _reported(srv)[-1]
    copied = copy.deepcopy(embed.rate_limiter)  # a copied model keeps its guard and limiter
    assert isinstance(copied, nasca_llamaindex.EmbeddingGate) and (copied.nasca, copied.inner) == (nasca, own)
    nasca_llamaindex.unguard(embed)
    assert embed.rate_limiter is own
    with pytest.raises(ConfigurationError, match="embedding model"):
        nasca_llamaindex.guard_embedding(object(), nasca)  # type: ignore[type-var]


def test_async_batches_with_an_embeddings_cache_are_not_gated_and_say_so(
    srv: ProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    from llama_index.core.storage.kvstore import SimpleKVStore

    nasca = _nasca()
    embed = nasca_llamaindex.guard_embedding(_embed(srv), nasca)
    embed.embeddings_cache = SimpleKVStore()
    with nasca.user("u"), caplog.at_level(logging.WARNING, "nasca.llamaindex"):
        asyncio.run(embed.aget_text_embedding_batch(DOCS))
    assert srv.counts["embeddings"] == 2
    assert _spent(nasca, "u") == (Decimal(0), 0, Decimal(0))
    assert "not charged" in caplog.text


def test_a_guarded_query_engine_charges_its_query_embedding_and_blocks_before_it(
    srv: ProviderServer,
) -> None:
    from llama_index.llms.openai import OpenAI

    nasca = _nasca(daily="0.01")
    with nasca.user("builder"):
        index = _build(_embed(srv))  # not guarded yet: the owner's index is free
    assert _spent(nasca, "builder")[1] == 0
    llm = OpenAI(model="gpt-4o-mini", api_base=srv.base_url, api_key="x", max_retries=0)
    engine = nasca_llamaindex.guard_engine(index.as_query_engine(llm=llm, similarity_top_k=1), nasca)
    srv.reset()
    with nasca.user("u"):
        engine.query("Is snow white?")
    assert srv.counts["embeddings"] == 1 and srv.counts["chat.completions"] == 1
    (embedded,) = _reported(srv)
    chat = next(r for r in srv.requests if r.endpoint == "chat.completions")
    assert chat.usage is not None
    expected = nasca.cost_of("gpt-4o-mini", TokenUsage(chat.usage.input_tokens, chat.usage.output_tokens))
    assert _spent(nasca, "u")[0] == Decimal(embedded * NANOS_PER_TOKEN + expected) / 10**9

    nasca.settle(nasca.reserve("0.01", user="u"), "0.01")
    before = srv.request_count
    with nasca.user("u"), pytest.raises(NascaBlockedError):
        engine.query("Is snow white?")
    assert srv.request_count == before  # neither the query embedding nor the LLM was called


def test_async_batches_the_provider_answered_are_charged_when_one_fails(srv: ProviderServer) -> None:
    # aget_text_embedding_batch emits its end events only after gather returns: when one
    # batch fails there is none, and gather does not wait for the batches still running.
    nasca = _nasca()
    embed = nasca_llamaindex.guard_embedding(_embed(srv, batch=1), nasca)
    srv.fail_next(500, endpoint="embeddings")

    async def run() -> None:
        with nasca.user("u"), pytest.raises(openai.InternalServerError):
            await embed.aget_text_embedding_batch(DOCS)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*others, return_exceptions=True)

    asyncio.run(run())
    billed = _reported(srv)
    assert srv.counts["embeddings"] == len(DOCS) and len(billed) == len(DOCS) - 1
    assert _spent(nasca, "u") == (Decimal(sum(billed) * NANOS_PER_TOKEN) / 10**9, sum(billed), Decimal(0))


def test_async_batches_are_charged_once_when_all_succeed(srv: ProviderServer) -> None:
    nasca = _nasca()
    embed = nasca_llamaindex.guard_embedding(_embed(srv, batch=1), nasca)
    embed.num_workers = 2  # run_jobs: each batch in its own worker task

    async def run() -> None:
        with nasca.user("u"):
            await embed.aget_text_embedding_batch(DOCS)

    asyncio.run(run())
    billed = _reported(srv)
    assert len(billed) == len(DOCS)
    assert _spent(nasca, "u") == (Decimal(sum(billed) * NANOS_PER_TOKEN) / 10**9, sum(billed), Decimal(0))


class _LocalEmbedding(BaseEmbedding):
    """A local model (no provider, like a HuggingFace one): a fixed vector per text."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return [float(len(query)), 1.0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return [float(len(text)), 1.0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def test_a_local_embedding_model_needs_a_free_price_under_charge_embeddings() -> None:
    local = "BAAI/bge-small-en-v1.5"
    nasca = _nasca()
    embed = nasca_llamaindex.guard_embedding(_LocalEmbedding(model_name=local), nasca)
    with nasca.user("u"), pytest.raises(UnknownModelError):
        embed.get_query_embedding("what is blue?")
    free = Nasca("memory://", tiers={"t": Tier(daily="1")}, default_tier="t", charge_embeddings=True,
                 prices={local: ModelPrice(free=True)})
    embed = nasca_llamaindex.guard_embedding(_LocalEmbedding(model_name=local), free)
    with free.user("u"):
        assert embed.get_query_embedding("what is blue?") == [13.0, 1.0]
    assert _spent(free, "u") == (Decimal(0), count_tokens("what is blue?", local), Decimal(0))


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_shared_index_is_built_unmetered_only_when_the_owner_says_so(
    srv: ProviderServer, use_async: bool
) -> None:
    nasca = _nasca()
    nasca_llamaindex.instrument(nasca)
    embed = _embed(srv)
    with pytest.raises(InvalidUserError):  # no user: nothing let through unpriced
        _build(embed, use_async)
    assert srv.counts["embeddings"] == 0
    with nasca_llamaindex.unmetered_embeddings():
        _build(embed, use_async)
    assert srv.counts["embeddings"] == len(DOCS) // 2
    with pytest.raises(InvalidUserError):  # the block ended
        embed.get_query_embedding("what is blue?")
    with nasca.user("u"):
        embed.get_query_embedding("what is blue?")
    (*_, billed) = _reported(srv)
    assert _spent(nasca, "u") == (Decimal(billed * NANOS_PER_TOKEN) / 10**9, billed, Decimal(0))
