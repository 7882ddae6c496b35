"""Degrade instead of block at its edges: an anchored user's fallback month, unpriced
and cross-provider fallback models, what a fallback call's start costs the store, that a
call which fell back is no block to listeners, the classes that may fall back, and the tier
names and fallback_allowance settings refused. Real SDK clients over HTTP to the local
provider server; store-related tests on memory, a SQLite file, a real Redis and Cluster.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from decimal import Decimal
from typing import Any

import pytest
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.llms.openai import OpenAI

import nasca_core._wrap as wrap_module
import nasca_llamaindex
from nasca_core import (
    ConfigurationError,
    Nasca,
    NascaBlockedError,
    Tier,
    astart_with_fallback,
    fallback_of,
    start_with_fallback,
)
from nasca_core.billing import Plan
from nasca_core.testing import ProviderServer, Reply, Usage
from nasca_langchain._enforce import _renamable
from tests._billing import SECRET
from tests.test_anchor_stores import at, paris, subscribe

SPEND_ALL = Usage(input_tokens=2000, output_tokens=1000)


def falling(**kw: Any) -> Tier:
    return Tier(**{"monthly": "0.01", "on_exhausted": "fallback", "fallback_model": "gpt-4o-mini",
                   "fallback_allowance": Tier(daily="0.002"), **kw})


def spent(n: Any, user: str = "u") -> None:
    n.settle(n.reserve(nanos=1, user=user), "0.02")


@pytest.fixture
def srv():
    with ProviderServer() as server:
        yield server


# -- 1. an anchored subscriber's fallback month -------------------------------------------------
def test_an_anchored_users_monthly_fallback_allowance_is_enforced(make_nasca, clock):
    pro = falling(fallback_allowance=Tier(monthly="0.001"))
    n = make_nasca(tiers={"free": Tier(monthly=1), "pro": pro}, default_tier="free",
                   timezone="Europe/Paris", webhook_secret=SECRET,
                   plans=[Plan(id="pro", tier="pro", price=20, anchor="subscription")])
    clock.now = at(2026, 3, 15, 10)
    assert subscribe(n, clock, "sub_A", "pro", clock.now).tier == "pro"
    clock.now = at(2026, 3, 20, 12)
    spent(n, "u1")
    cycle = n.user_keys("u1").month  # the cycle's month id, not the calendar's
    ran = 0
    with pytest.raises(NascaBlockedError) as blocked:
        for _ in range(5):
            call, fell = start_with_fallback(n, "gpt-4o", prompt="hi", user="u1", max_tokens=10)
            assert fell is not None and call.reservation.keys.month.endswith(cycle.rsplit(":", 1)[1])
            n.settle(call.reservation, nanos=600_000)
            ran += 1
    assert ran == 2 and blocked.value.tier == "pro"  # 0.0006 + 0.0006 spends the 0.001 allowance
    usage = n.get_usage("u1")
    assert usage.fallback.monthly_spent == Decimal("0.0012")
    assert paris(usage.fallback.monthly_resets_at) == (2026, 4, 15, 10, 0)
    clock.now = at(2026, 4, 15, 10, 0, 1)  # the next cycle: a fresh fallback allowance (and tier)
    call, fell = start_with_fallback(n, "gpt-4o", prompt="hi", user="u1", max_tokens=10)
    assert fell is None  # the tier's own allowance is fresh again
    call.fail()


# -- 2. unpriced fallback models --------------------------------------------------------------------
def test_an_unpriced_fallback_model_is_refused_when_configured(make_nasca):
    typo = falling(fallback_model={"gpt-*": "gpt-4o-mini-typo"})
    for policy in ("block", "warn"):
        with pytest.raises(ConfigurationError, match="gpt-4o-mini-typo"):
            Nasca("memory://", tiers={"free": typo}, default_tier="free", unknown_model=policy)
    n = make_nasca(tiers={"free": Tier(monthly=1)}, default_tier="free")
    with pytest.raises(ConfigurationError, match="gpt-4o-mini-typo"):
        n.set_tier("free", typo)
    assert n.tiers["free"] == Tier(monthly=1)  # nothing stored
    priced = make_nasca(tiers={"free": typo}, default_tier="free",
                        prices={"gpt-4o-mini-typo": {"input": "0.1", "output": "0.4"}})
    assert priced.tiers["free"].fallback_model == (("gpt-*", "gpt-4o-mini-typo"),)


def test_a_costlier_fallback_is_warned_of(caplog):
    with caplog.at_level(logging.WARNING, logger="nasca"):
        Nasca("memory://", tiers={"free": falling(fallback_model={"gpt-4o-mini": "gpt-4o"})},
              default_tier="free")
    assert "costs more" in caplog.text


@pytest.mark.parametrize("policy", ["block", "warn"])
def test_a_stored_unpriced_fallback_blocks_as_the_tier(make_nasca, policy):
    n = make_nasca(tiers={"free": Tier(monthly="0.01")}, default_tier="free", unknown_model=policy)
    # Another process wrote it (set_tier would refuse it): the calls block, never run free.
    n.live.save("tier", "free", falling(fallback_model="gpt-4o-mini-typo").model_dump_json())
    told: list[NascaBlockedError] = []
    n.block_listeners.append(told.append)
    spent(n)
    with pytest.raises(NascaBlockedError) as blocked:
        start_with_fallback(n, "gpt-4o", prompt="hi", user="u")
    assert blocked.value.tier == "free" and told == [blocked.value]


# -- 3. classes that bind the model when built: no fallback --------------------------------------
SENT: list[str] = []


class Cached(CustomLLM):
    """An integration that binds its model name when built: a fallback name would not be sent."""

    model: str = "gpt-4o"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponse:
        SENT.append("gpt-4o")
        return CompletionResponse(text="ok")

    def stream_complete(self, prompt: str, formatted: bool = False, **kw: Any) -> Any:
        raise NotImplementedError


def test_guard_llm_falls_back_only_for_classes_that_send_the_model_per_request(make_nasca, srv):
    n = make_nasca(tiers={"free": falling()}, default_tier="free")
    spent(n)
    llm = nasca_llamaindex.guard_llm(Cached(), n)
    with n.user("u"), pytest.raises(NascaBlockedError):
        llm.complete("hello")
    assert SENT == [] and n.stats.fallbacks == 0
    assert nasca_llamaindex._cap.renamable(OpenAI(api_base=srv.base_url, api_key="x", model="gpt-4o"))


def test_langchain_falls_back_only_for_classes_that_send_the_model_per_request():
    from langchain_openai import AzureChatOpenAI, ChatOpenAI

    class Mine(ChatOpenAI):
        pass

    assert _renamable(ChatOpenAI(model="gpt-4o", api_key="x")) == "model_name"
    azure = AzureChatOpenAI(azure_deployment="d", api_version="2024-06-01", api_key="x",
                            azure_endpoint="http://localhost:1")
    assert _renamable(azure) is None and _renamable(Mine(model="gpt-4o", api_key="x")) is None


# -- 4. what a fallback call's start costs the store ----------------------------------------------
def test_a_fallback_call_start_is_two_reserves(make_nasca):
    n = make_nasca(tiers={"free": falling(fallback_allowance=Tier(daily="1"))}, default_tier="free")
    assert n.analytics is not None  # analytics on: blocks would be recorded
    spent(n)
    n.flush()
    count: collections.Counter[str] = collections.Counter()
    store = n.store.sync
    for name in ("reserve", "settle", "snapshot", "record_event", "release"):
        real = getattr(store, name)

        def counted(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            count[_name] += 1
            return _real(*a, **k)

        setattr(store, name, counted)
    for _ in range(3):
        count.clear()
        call, fell = start_with_fallback(n, "gpt-4o", prompt="hi", user="u")
        assert fell is not None and dict(count) == {"reserve": 2}
        call.finish(None)
        n.flush()


# -- 5. a call that fell back is no block ------------------------------------------------------------
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_fallback_is_not_told_as_a_block_and_a_spent_one_is_told_once(make_nasca, is_async):
    urls: list[str] = []

    def checkout(err: NascaBlockedError) -> str:
        urls.append(err.tier)
        return "https://pay.example/x"

    n = make_nasca(tiers={"free": falling()}, default_tier="free", checkout_url=checkout)
    told: list[NascaBlockedError] = []
    n.block_listeners.append(told.append)
    spent(n)
    blocks = n.stats.blocked
    def start() -> Any:
        if is_async:
            return asyncio.run(astart_with_fallback(n, "gpt-4o", prompt="hi", user="u"))
        return start_with_fallback(n, "gpt-4o", prompt="hi", user="u")

    call, fell = start()
    assert fell is not None and fell.blocked.checkout_url == "https://pay.example/x"
    n.settle(call.reservation, "0.003")  # the fallback allowance (0.002) spent
    assert told == [] and n.stats.blocked == blocks and n.stats.fallbacks == 1
    with pytest.raises(NascaBlockedError) as blocked:
        start()
    assert told == [blocked.value] and n.stats.blocked == blocks + 1
    assert blocked.value.tier == "free" and blocked.value.usage is not None
    assert isinstance(blocked.value.__cause__, NascaBlockedError)
    assert blocked.value.__cause__.tier == "free:fallback"
    # 7. the fallback account's own block never asks the owner's factory for a checkout
    assert "free:fallback" not in urls and urls.count("free") == 2


# -- 6. embeddings and other providers' models don't fall back ------------------------------------
def test_embeddings_and_another_providers_request_block(make_nasca, srv):
    n = make_nasca(tiers={"free": falling()}, default_tier="free", charge_embeddings=True)
    spent(n)
    emb = n.wrap(srv.openai_client(max_retries=0).embeddings.create)
    with pytest.raises(NascaBlockedError):
        emb(model="text-embedding-3-small", input="hello", user="u")
    messages = n.wrap(srv.anthropic_client(max_retries=0).messages.create)
    with pytest.raises(NascaBlockedError):
        messages(model="claude-sonnet-4-6", max_tokens=50, user="u",
                 messages=[{"role": "user", "content": "hi"}])
    assert srv.request_count == 0 and n.stats.fallbacks == 0


# -- 8, 9. names and settings refused ----------------------------------------------------------------
def test_tier_names_the_fallback_account_would_collide_with_are_refused(make_nasca):
    with pytest.raises(ConfigurationError, match=":fallback"):
        Nasca("memory://", tiers={"pro": falling(), "pro:fallback": Tier(daily=1)})
    with pytest.raises(ConfigurationError, match="55 chars"):
        Nasca("memory://", tiers={"p" * 60: falling()})
    Nasca("memory://", tiers={"p" * 60: Tier(daily=1), "q" * 55: falling()})  # fine
    n = make_nasca(tiers={"free": Tier(monthly=1)}, default_tier="free")
    with pytest.raises(ConfigurationError):
        n.set_tier("x:fallback", Tier(daily=1))
    with pytest.raises(ConfigurationError):
        n.set_tier("p" * 60, falling())


@pytest.mark.parametrize("setting", [{"warn_at": [0.5]}, {"default_output_tokens": 100},
                                     {"credits_cover": ["monthly"]}])
def test_fallback_allowance_settings_it_would_ignore_are_refused(setting):
    with pytest.raises(ConfigurationError, match="fallback_allowance can't set"):
        falling(fallback_allowance=Tier(daily=1, **setting))
    with pytest.raises(ConfigurationError, match="fallback_allowance: daily"):
        falling(fallback_allowance={"daily": -1})
    assert falling(fallback_allowance={"daily": 1, "max_in_flight": 3}).fallback_allowance == \
        Tier(daily=1, max_in_flight=3)
    tier = falling()
    assert Tier.model_validate_json(tier.model_dump_json()) == tier  # a stored tier still reads


# -- 10. Gemini streams read the usage of the model that ran ----------------------------------------
def test_a_gemini_stream_that_fell_back_reads_the_fallbacks_usage(make_nasca, srv, monkeypatch):
    made: list[Any] = []

    class Recorded(wrap_module.GeminiStreamUsage):
        def __init__(self, model: object = None) -> None:
            made.append(model)
            super().__init__(model)

    monkeypatch.setattr(wrap_module, "GeminiStreamUsage", Recorded)
    n = make_nasca(tiers={"free": falling(fallback_model={"gemini-*": "gemini-2.0-flash"})},
                   default_tier="free")
    spent(n, "g")
    client = srv.gemini_client()
    srv.queue(Reply("short", usage=Usage(input_tokens=300, output_tokens=40)))
    stream = n.wrap(client.models.generate_content_stream)(
        model="gemini-2.5-pro", contents="Summarise the plot of Hamlet.", user="g")
    list(stream)
    assert fallback_of(stream) is not None and made == ["gemini-2.0-flash"]
    assert "gemini-2.0-flash" in srv.last_request.path
