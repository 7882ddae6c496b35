"""NascaCallbackHandler on chat models: blocking, accounting, streams, caches, bad input.

Providers are ChatOpenAI / ChatAnthropic against nasca_core.testing's local server (the
only boundary we stand in for), and LangChain's own fake chat models.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from nasca_core import (
    InvalidUserError,
    Nasca,
    NascaBlockedError,
    Tier,
    UnknownModelError,
)
from nasca_core.pricing import Pricer, TokenUsage, count_message_tokens, count_tokens
from nasca_core.testing import ProviderServer, Reply, Usage
from nasca_langchain import NascaCallbackHandler

GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
REPLY = "Paris is the capital of France, and it is lovely in spring."
QUESTION = "What is the capital of France?"


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    # One server per test: langchain-openai and langchain-anthropic cache their async HTTP
    # client per base URL, and a client bound to an earlier test's closed event loop fails.
    with ProviderServer(reply=REPLY) as server:
        yield server


def gpt(srv: ProviderServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=GPT, base_url=srv.base_url, api_key="x", max_retries=0, **kwargs)


def claude(srv: ProviderServer, **kwargs: Any) -> ChatAnthropic:
    kwargs.setdefault("max_tokens", 1024)
    return ChatAnthropic(model=CLAUDE, base_url=srv.anthropic_base_url, api_key="x",
                         max_retries=0, **kwargs)


def cfg(handler: Any, user: Any = "u1", **extra: Any) -> dict[str, Any]:
    callbacks = handler if isinstance(handler, list) else [handler]
    meta = {} if user is None else {"nasca_user_id": user}
    return {"callbacks": callbacks, "metadata": {**meta, **extra}}


def exhaust(nasca: Nasca, user: str = "u1") -> None:
    """Spend the user's whole daily allowance (the make_nasca free tier: $0.10)."""
    nasca.settle(nasca.reserve(nanos=1, user=user), cost="0.10")


def prompt_tokens(text: str, model: str = GPT) -> int:
    """What the handler counts for a one-message prompt when no usage is reported."""
    return count_message_tokens([{"role": "user", "content": text}], model)


def cost(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    return Decimal(Pricer().cost(model, TokenUsage(input_tokens, output_tokens))) / 10**9


def server_totals(srv: ProviderServer) -> tuple[int, int, Decimal]:
    """Tokens and cost the provider reported over every request it answered."""
    ins = outs = 0
    total = Decimal(0)
    for r in srv.requests:
        assert r.usage is not None, r
        ins += r.usage.input_tokens
        outs += r.usage.output_tokens
        total += cost(str(r.model), r.usage.input_tokens, r.usage.output_tokens)
    return ins, outs, total


def assert_ledger(nasca: Nasca, ins: int, outs: int, spent: Decimal, calls: int,
                  user: str = "u1") -> None:
    u = nasca.get_usage(user)
    assert (u.month_input_tokens, u.month_output_tokens) == (ins, outs)
    assert u.month_cost == spent
    assert u.month_calls == calls
    assert u.in_flight == 0


# -- every path: a blocked call never reaches the provider ---------------------------------

SYNC_PATHS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "invoke": lambda m, c: m.invoke(QUESTION, config=c),
    "stream": lambda m, c: list(m.stream(QUESTION, config=c)),
    "batch": lambda m, c: m.batch([QUESTION, "Hi", "Hello"], config=c),
    "lcel": lambda m, c: (ChatPromptTemplate.from_messages([("human", "{q}")]) | m
                          | StrOutputParser()).invoke({"q": QUESTION}, config=c),
    "lcel_stream": lambda m, c: list((ChatPromptTemplate.from_messages([("human", "{q}")]) | m
                                      | StrOutputParser()).stream({"q": QUESTION}, config=c)),
}


async def _alist(it: Any) -> list[Any]:
    return [x async for x in it]


ASYNC_PATHS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "ainvoke": lambda m, c: m.ainvoke(QUESTION, config=c),
    "astream": lambda m, c: _alist(m.astream(QUESTION, config=c)),
    "abatch": lambda m, c: m.abatch([QUESTION, "Hi", "Hello"], config=c),
    "astream_events": lambda m, c: _alist(m.astream_events(QUESTION, config=c, version="v2")),
    "alcel": lambda m, c: (ChatPromptTemplate.from_messages([("human", "{q}")]) | m
                           | StrOutputParser()).ainvoke({"q": QUESTION}, config=c),
}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("path", sorted(SYNC_PATHS))
def test_blocked_sync_paths_make_no_request(make_nasca: Any, srv: ProviderServer, path: str,
                                            provider: str) -> None:
    nasca = make_nasca()
    exhaust(nasca)
    model = gpt(srv, stream_usage=True) if provider == "openai" else claude(srv)
    with pytest.raises(NascaBlockedError) as info:
        SYNC_PATHS[path](model, cfg(NascaCallbackHandler(nasca)))
    assert info.value.user_id == "u1" and info.value.window == "daily"
    assert srv.request_count == 0
    assert nasca.get_usage("u1").in_flight == 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("path", sorted(ASYNC_PATHS))
async def test_blocked_async_paths_make_no_request(make_nasca: Any, srv: ProviderServer,
                                                   path: str, provider: str) -> None:
    nasca = make_nasca()
    exhaust(nasca)
    model = gpt(srv, stream_usage=True) if provider == "openai" else claude(srv)
    with pytest.raises(NascaBlockedError):
        await ASYNC_PATHS[path](model, cfg(NascaCallbackHandler(nasca)))
    assert srv.request_count == 0
    assert (await nasca.aget_usage("u1")).in_flight == 0


def test_runs_until_the_limit_then_blocks(make_nasca: Any, srv: ProviderServer) -> None:
    # One call costs more than the daily limit: the first is admitted (default
    # admission), settled at its real cost, and the second is refused.
    nasca = make_nasca(tiers={"free": Tier(daily="0.000001")})
    handler = NascaCallbackHandler(nasca)
    gpt(srv).invoke(QUESTION, config=cfg(handler))
    with pytest.raises(NascaBlockedError):
        gpt(srv).invoke(QUESTION, config=cfg(handler))
    assert srv.request_count == 1
    ins, outs, spent = server_totals(srv)
    assert_ledger(nasca, ins, outs, spent, calls=1)
    assert nasca.get_usage("u1").blocked


# -- accounting: the ledger holds exactly what the provider reported -----------------------

def test_sync_paths_charge_reported_usage(make_nasca: Any, srv: ProviderServer) -> None:
    nasca = make_nasca()
    c = cfg(NascaCallbackHandler(nasca))
    gpt(srv).invoke(QUESTION, config=c)
    assert "".join(str(x.content) for x in gpt(srv, stream_usage=True).stream("Hi", config=c))
    gpt(srv).batch(["one", "two words"], config=c)
    claude(srv).invoke(QUESTION, config=c)
    list(claude(srv).stream("Hello there", config=c))
    (ChatPromptTemplate.from_messages([("human", "{q}")]) | gpt(srv) | StrOutputParser()
     ).invoke({"q": "x"}, config=c)
    assert srv.request_count == 7
    ins, outs, spent = server_totals(srv)
    assert_ledger(nasca, ins, outs, spent, calls=7)


async def test_async_paths_charge_reported_usage(make_nasca: Any, srv: ProviderServer) -> None:
    nasca = make_nasca()
    c = cfg(NascaCallbackHandler(nasca))
    await gpt(srv).ainvoke(QUESTION, config=c)
    await _alist(gpt(srv, stream_usage=True).astream("Hi", config=c))
    await gpt(srv).abatch(["one", "two words"], config=c)
    await claude(srv).ainvoke(QUESTION, config=c)
    await _alist(claude(srv).astream("Hello there", config=c))
    assert srv.request_count == 6
    ins, outs, spent = server_totals(srv)
    u = await nasca.aget_usage("u1")
    assert (u.month_input_tokens, u.month_output_tokens, u.month_cost) == (ins, outs, spent)
    assert u.month_calls == 6 and u.in_flight == 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_prompt_cache_tokens_are_priced_as_reported(srv: ProviderServer, provider: str,
                                                    stream: bool) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    writes = 300 if provider == "anthropic" else 0  # OpenAI reports no cache writes
    srv.queue(Reply(REPLY, usage=Usage(input_tokens=2000, output_tokens=12, cached_tokens=1500,
                                       cache_write_tokens=writes)))
    model = gpt(srv, stream_usage=True) if provider == "openai" else claude(srv)
    c = cfg(NascaCallbackHandler(nasca))
    if stream:
        list(model.stream(QUESTION, config=c))
    else:
        model.invoke(QUESTION, config=c)
    name = GPT if provider == "openai" else CLAUDE
    expected = Pricer().cost(name, TokenUsage(2000, 12, cache_read_tokens=1500,
                                              cache_write_tokens=writes))
    assert expected != Pricer().cost(name, TokenUsage(2000, 12))  # the cache changes the price
    assert_ledger(nasca, 2000, 12, Decimal(expected) / 10**9, calls=1)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_stream_without_usage_charges_counted_tokens(make_nasca: Any, srv: ProviderServer,
                                                           mode: str, provider: str) -> None:
    # ChatOpenAI with a base_url streams no usage unless stream_usage=True (and ChatAnthropic
    # with stream_usage=False): the handler charges the prompt and the streamed text,
    # counted with the model's tokenizer.
    nasca = make_nasca()
    if provider == "anthropic":
        model: Any = claude(srv, stream_usage=False)
        c = cfg(NascaCallbackHandler(nasca))
        chunks = list(model.stream(QUESTION, config=c)) if mode == "sync" else \
            await _alist(model.astream(QUESTION, config=c))
        assert "".join(str(x.content) for x in chunks) == REPLY
        assert all(getattr(x, "usage_metadata", None) is None for x in chunks)
        ins, outs = prompt_tokens(QUESTION, CLAUDE), count_tokens(REPLY, CLAUDE)
        assert_ledger(nasca, ins, outs, cost(CLAUDE, ins, outs), calls=1)
        return
    model, c = gpt(srv), cfg(NascaCallbackHandler(nasca))
    if mode == "sync":
        chunks = list(model.stream(QUESTION, config=c))
    else:
        chunks = await _alist(model.astream(QUESTION, config=c))
    assert "".join(str(x.content) for x in chunks) == REPLY
    assert srv.last_request.usage is not None  # the server knew, but did not say
    ins, outs = prompt_tokens(QUESTION), count_tokens(REPLY, GPT)
    assert_ledger(nasca, ins, outs, cost(GPT, ins, outs), calls=1)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_usage_metadata_handler_agrees_with_ledger(make_nasca: Any, srv: ProviderServer,
                                                         provider: str) -> None:
    nasca = make_nasca()
    lc = UsageMetadataCallbackHandler()
    c = cfg([NascaCallbackHandler(nasca), lc])
    model = gpt(srv, stream_usage=True) if provider == "openai" else claude(srv)
    model.invoke(QUESTION, config=c)
    list(model.stream("Tell me more", config=c))
    model.batch(["a", "b c"], config=c)
    await model.ainvoke("Hi", config=c)
    await _alist(model.astream("Hello", config=c))
    (ChatPromptTemplate.from_messages([("human", "{q}")]) | model).invoke({"q": "x"}, config=c)
    assert lc.usage_metadata, "LangChain's handler saw no usage"
    lc_in = sum(u["input_tokens"] for u in lc.usage_metadata.values())
    lc_out = sum(u["output_tokens"] for u in lc.usage_metadata.values())
    u = nasca.get_usage("u1")
    assert (u.month_input_tokens, u.month_output_tokens) == (lc_in, lc_out)
    assert u.month_calls == srv.request_count == 7


# -- streams the consumer abandons, and provider errors ------------------------------------

LONG = "One two three four five six seven eight nine ten eleven twelve."


def test_abandoned_stream_is_charged_prompt_plus_streamed_text(make_nasca: Any,
                                                               srv: ProviderServer) -> None:
    nasca = make_nasca()
    srv.queue(LONG)
    stream = gpt(srv, stream_usage=True).stream(QUESTION, config=cfg(NascaCallbackHandler(nasca)))
    seen = ""
    for chunk in stream:
        seen += str(chunk.content)
        if seen:
            break
    del stream
    gc.collect()
    assert seen == "One"
    ins, outs = prompt_tokens(QUESTION), count_tokens(seen, GPT)
    assert_ledger(nasca, ins, outs, cost(GPT, ins, outs), calls=1)
    # more than nothing, less than the reply and far less than the held estimate
    assert 0 < cost(GPT, ins, outs) < cost(GPT, ins, count_tokens(LONG, GPT)) < cost(GPT, ins, 256)


async def test_abandoned_async_stream_is_charged_prompt_plus_streamed_text(
        make_nasca: Any, srv: ProviderServer) -> None:
    nasca = make_nasca()
    srv.queue(LONG)
    model = gpt(srv, stream_usage=True)
    seen = ""
    async with contextlib.aclosing(model.astream(QUESTION, config=cfg(NascaCallbackHandler(nasca)))
                                   ) as stream:
        async for chunk in stream:
            seen += str(chunk.content)
            if seen:
                break
    ins, outs = prompt_tokens(QUESTION), count_tokens(seen, GPT)
    assert_ledger(nasca, ins, outs, cost(GPT, ins, outs), calls=1)


async def test_async_stream_dropped_without_aclose_is_charged(make_nasca: Any,
                                                              srv: ProviderServer) -> None:
    # `break` with no aclosing(): the loop finalizes the generator a moment later.
    nasca = make_nasca()
    srv.queue(LONG)
    async for chunk in gpt(srv).astream(QUESTION, config=cfg(NascaCallbackHandler(nasca))):
        if chunk.content:
            break
    for _ in range(100):
        if nasca.get_usage("u1").month_calls:
            break
        await asyncio.sleep(0.01)
    u = nasca.get_usage("u1")
    assert u.month_calls == 1 and u.in_flight == 0
    assert u.month_output_tokens == count_tokens("One", GPT)


def test_lcel_stream_left_early_is_charged_in_full(make_nasca: Any, srv: ProviderServer) -> None:
    # A chain's stream() drains the model's stream even after its consumer stops, so the
    # provider produces (and bills) the whole reply: the ledger charges exactly that.
    nasca = make_nasca()
    srv.queue(LONG)
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | gpt(srv, stream_usage=True) \
        | StrOutputParser()
    for piece in chain.stream({"q": QUESTION}, config=cfg(NascaCallbackHandler(nasca))):
        if piece:
            break
    ins, outs, spent = server_totals(srv)
    assert outs == count_tokens(LONG, GPT)
    assert_ledger(nasca, ins, outs, spent, calls=1)


def test_provider_error_before_output_releases_the_hold(make_nasca: Any,
                                                        srv: ProviderServer) -> None:
    nasca = make_nasca()
    c = cfg(NascaCallbackHandler(nasca))
    srv.fail_next(500, times=2)
    with pytest.raises(openai.InternalServerError):
        gpt(srv).invoke(QUESTION, config=c)
    with pytest.raises(openai.InternalServerError):
        list(gpt(srv).stream(QUESTION, config=c))
    assert srv.request_count == 2
    assert_ledger(nasca, 0, 0, Decimal(0), calls=0)
    assert nasca.stats.released == 2


def test_provider_error_mid_stream_charges_what_was_streamed(make_nasca: Any,
                                                             srv: ProviderServer) -> None:
    nasca = make_nasca()
    srv.queue(LONG)
    srv.fail_next(500, after_chunks=3)
    seen = ""
    with pytest.raises(openai.APIError):
        for chunk in gpt(srv, stream_usage=True).stream(QUESTION,
                                                        config=cfg(NascaCallbackHandler(nasca))):
            seen += str(chunk.content)
    assert seen and seen != LONG
    ins, outs = prompt_tokens(QUESTION), count_tokens(seen, GPT)
    assert_ledger(nasca, ins, outs, cost(GPT, ins, outs), calls=1)


# -- LangChain's LLM cache -----------------------------------------------------------------

@pytest.fixture
def llm_cache() -> Iterator[InMemoryCache]:
    cache = InMemoryCache()
    set_llm_cache(cache)
    try:
        yield cache
    finally:
        set_llm_cache(None)


async def test_cache_hit_costs_nothing_and_releases_its_hold(make_nasca: Any, srv: ProviderServer,
                                                             llm_cache: InMemoryCache) -> None:
    nasca = make_nasca()
    lc = UsageMetadataCallbackHandler()
    c = cfg([NascaCallbackHandler(nasca), lc])
    first = gpt(srv).invoke(QUESTION, config=c)
    ins, outs, spent = server_totals(srv)
    assert_ledger(nasca, ins, outs, spent, calls=1)
    assert gpt(srv).invoke(QUESTION, config=c).content == first.content
    assert (await gpt(srv).ainvoke(QUESTION, config=c)).content == first.content
    assert srv.request_count == 1
    assert_ledger(nasca, ins, outs, spent, calls=1)  # unchanged: $0, no hold left
    # LangChain's own counter adds the cached tokens again; the ledger does not.
    assert sum(u["input_tokens"] for u in lc.usage_metadata.values()) == 3 * ins


def test_blocked_user_is_blocked_even_on_a_cache_hit(make_nasca: Any, srv: ProviderServer,
                                                     llm_cache: InMemoryCache) -> None:
    nasca = make_nasca()
    handler = NascaCallbackHandler(nasca)
    gpt(srv).invoke(QUESTION, config=cfg(handler, user="u2"))  # fills the cache
    exhaust(nasca)
    with pytest.raises(NascaBlockedError):  # the start event comes before the cache lookup
        gpt(srv).invoke(QUESTION, config=cfg(handler))
    assert srv.request_count == 1


# -- fake chat models ------------------------------------------------------------------------

def test_fake_models_need_a_price(srv: ProviderServer) -> None:
    # A model that names no model is priced under its LangChain type: unknown to the
    # price table, so the default policy refuses it rather than count it free.
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    with pytest.raises(UnknownModelError, match="fake-list-chat-model"):
        FakeListChatModel(responses=["x"]).invoke("hi", config=cfg(NascaCallbackHandler(nasca)))
    assert nasca.get_usage("u1").month_calls == 0


def test_fake_models_priced_by_alias_count_their_text() -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free",
                  model_aliases={"fake-list-chat-model": GPT, "generic-fake-chat-model": GPT})
    c = cfg(NascaCallbackHandler(nasca))
    FakeListChatModel(responses=[REPLY]).invoke(QUESTION, config=c)
    assert "".join(str(x.content) for x in FakeListChatModel(responses=[REPLY]).stream(
        QUESTION, config=c)) == REPLY
    ins, outs = prompt_tokens(QUESTION), count_tokens(REPLY, GPT)
    assert_ledger(nasca, 2 * ins, 2 * outs, 2 * cost(GPT, ins, outs), calls=2)
    # a fake model that reports usage is charged that usage
    msg = AIMessage(REPLY, usage_metadata={"input_tokens": 1000, "output_tokens": 2000,
                                           "total_tokens": 3000})
    GenericFakeChatModel(messages=iter([msg])).invoke(QUESTION, config=c)
    assert_ledger(nasca, 2 * ins + 1000, 2 * outs + 2000,
                  2 * cost(GPT, ins, outs) + cost(GPT, 1000, 2000), calls=3)


def test_completion_models_count_prompt_and_text() -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free",
                  model_aliases={"fake-list": GPT})
    llm, c = FakeListLLM(responses=[REPLY]), cfg(NascaCallbackHandler(nasca))
    assert llm.invoke(QUESTION, config=c) == REPLY
    assert "".join(llm.stream(QUESTION, config=c)) == REPLY
    ins, outs = count_tokens(QUESTION, GPT), count_tokens(REPLY, GPT)
    assert_ledger(nasca, 2 * ins, 2 * outs, 2 * cost(GPT, ins, outs), calls=2)


# -- who is calling, and bad input -------------------------------------------------------------

def test_no_user_is_a_clear_error_before_any_request(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    with pytest.raises(InvalidUserError, match="nasca_user_id"):
        gpt(srv).invoke(QUESTION, config=cfg(NascaCallbackHandler(nasca), user=None,
                                             nasca_tier="free"))
    with pytest.raises(InvalidUserError):
        gpt(srv).invoke(QUESTION, config={"callbacks": [NascaCallbackHandler(nasca)]})
    assert srv.request_count == 0


@pytest.mark.parametrize("bad", [42, "", "  ", None])
def test_bad_user_id_is_rejected_before_any_request(srv: ProviderServer, bad: Any) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    handler = NascaCallbackHandler(nasca, get_user_id=lambda ctx: bad)
    with pytest.raises(InvalidUserError):
        gpt(srv).invoke(QUESTION, config=cfg(handler, user=bad))
    assert srv.request_count == 0


def test_unknown_model_is_refused_before_any_request(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    model = ChatOpenAI(model="gpt-nobody-knows", base_url=srv.base_url, api_key="x")
    with pytest.raises(UnknownModelError, match="gpt-nobody-knows"):
        model.invoke(QUESTION, config=cfg(NascaCallbackHandler(nasca)))
    assert srv.request_count == 0


def test_unknown_model_under_warn_is_an_explicit_free_call(srv: ProviderServer,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free",
                  unknown_model="warn")
    model = ChatOpenAI(model="gpt-nobody-knows", base_url=srv.base_url, api_key="x")
    with caplog.at_level(logging.WARNING, logger="nasca.pricing"):
        model.invoke(QUESTION, config=cfg(NascaCallbackHandler(nasca)))
    assert "gpt-nobody-knows" in caplog.text
    u = nasca.get_usage("u1")
    assert u.month_calls == 1 and u.month_cost == 0 and u.month_input_tokens > 0


def test_user_sources_in_order(srv: ProviderServer) -> None:
    seen: list[Any] = []

    def from_config(ctx: Any) -> str:
        seen.append(ctx)
        return str(ctx["metadata"]["account"])

    # one call spends more than the free tier's day: a second call passes only on "pro"
    nasca = Nasca("memory://", tiers={"free": Tier(daily="0.000001"), "pro": Tier(daily=5)},
                  default_tier="free", get_user_id=lambda ctx: "from-nasca")
    model = gpt(srv)
    # 1. metadata, with its tier
    for _ in range(2):
        model.invoke("a", config=cfg(NascaCallbackHandler(nasca), user="meta", nasca_tier="pro"))
    with pytest.raises(NascaBlockedError) as info:
        model.invoke("a", config=cfg(NascaCallbackHandler(nasca), user="meta"))
    assert info.value.tier == "free" and nasca.get_usage("meta").month_calls == 2
    # 2. the handler's get_user_id / get_user_tier, given a config-like ctx
    handler = NascaCallbackHandler(nasca, get_user_id=from_config, get_user_tier=lambda c: "pro")
    for _ in range(2):
        model.invoke("b", config=cfg(handler, user=None, account="acct-7"))
    assert nasca.get_usage("acct-7").month_calls == 2
    assert seen[0]["metadata"]["account"] == "acct-7" and "run_id" in seen[0]
    # 3. Nasca(get_user_id=...)
    model.invoke("c", config=cfg(NascaCallbackHandler(nasca), user=None))
    assert nasca.get_usage("from-nasca").month_calls == 1
    # 4. with nasca.user(...): seen on the sync path and, through the context, async
    plain = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    with plain.user("ctx-user"):
        model.invoke("d", config={"callbacks": [NascaCallbackHandler(plain)]})
        model.batch(["e", "f"], config={"callbacks": [NascaCallbackHandler(plain)]})
        asyncio.run(model.ainvoke("g", config={"callbacks": [NascaCallbackHandler(plain)]}))
    assert plain.get_usage("ctx-user").month_calls == 4


class _InlineTracer(BaseCallbackHandler):
    run_inline = True  # like LangSmith's LangChainTracer


async def test_async_completion_model_is_checked_beside_an_inline_tracer() -> None:
    # langchain-core skips non-inline handlers in async on_llm_start when an inline one is
    # attached (langchain-ai/langchain#39633); the handler runs inline, so it still blocks.
    nasca = Nasca("memory://", tiers={"free": Tier(daily="0.10")}, default_tier="free",
                  model_aliases={"fake-list": GPT})
    exhaust(nasca)
    with pytest.raises(NascaBlockedError):
        await FakeListLLM(responses=[REPLY]).ainvoke(
            QUESTION, config=cfg([_InlineTracer(), NascaCallbackHandler(nasca)]))
    other = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free",
                  model_aliases={"fake-list": GPT})
    await FakeListLLM(responses=[REPLY]).ainvoke(
        QUESTION, config=cfg([_InlineTracer(), NascaCallbackHandler(other)]))
    assert other.get_usage("u1").month_calls == 1
