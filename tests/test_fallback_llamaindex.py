"""Degrade instead of block in LlamaIndex: ``guard_llm`` lets a call the tier's spent
allowance blocks run on the fallback model (the LLM's ``model`` reads as it for that call
only). llama-index-llms-openai talks HTTP to the local provider server; every store.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI

import nasca_llamaindex
from nasca_core import NascaBlockedError, Tier
from nasca_core.pricing import TokenUsage
from nasca_core.testing import ProviderServer, Reply, Usage

ASK = [ChatMessage(role="user", content="Summarise the plot of Hamlet.")]
SPEND_ALL = Usage(input_tokens=2000, output_tokens=1000)
SMALL = Usage(input_tokens=300, output_tokens=40)
HUGE = Usage(input_tokens=20_000, output_tokens=5_000)


def tier() -> Tier:
    return Tier(monthly="0.01", on_exhausted="fallback", fallback_model={"gpt-*": "gpt-4o-mini"},
                fallback_allowance=Tier(daily="0.002"))


@pytest.fixture
def srv():
    with ProviderServer() as server:
        yield server


def _llm(srv, nasca, **kw):
    llm = OpenAI(api_base=srv.base_url, api_key="x", model="gpt-4o", max_retries=0)
    return nasca_llamaindex.guard_llm(llm, nasca, **kw)


def _chat(llm, nasca, user, mode):
    with nasca.user(user):
        if mode == "chat":
            return llm.chat(ASK)
        if mode == "stream":
            return list(llm.stream_chat(ASK))[-1]

        async def go():
            return await llm.achat(ASK)

        return asyncio.run(go())


@pytest.mark.parametrize("mode", ["chat", "stream", "achat"])
def test_a_spent_tier_runs_on_the_fallback_model(srv, make_nasca, mode):
    nasca = make_nasca(tiers={"free": tier()}, default_tier="free")
    llm = _llm(srv, nasca)
    srv.queue(Reply("long", usage=SPEND_ALL))
    first = _chat(llm, nasca, "u1", "chat")  # a stream without usage options reports none: counted
    assert srv.last_request.json["model"] == "gpt-4o" and "nasca_fallback" not in first.additional_kwargs
    nasca.flush()
    spent = nasca.get_usage("u1").monthly_spent

    srv.queue(Reply("short", usage=SMALL))
    reply = _chat(llm, nasca, "u1", mode)
    assert srv.last_request.json["model"] == "gpt-4o-mini"  # what the provider received
    assert llm.model == "gpt-4o"  # only that call's request read the fallback's name
    assert reply.additional_kwargs["nasca_fallback"]["requested"] == "gpt-4o"
    nasca.flush()
    usage = nasca.get_usage("u1")
    assert usage.monthly_spent == spent
    if mode == "stream":  # no usage on this stream: the prompt and text, counted, at the fallback's price
        assert Decimal(0) < usage.fallback.daily_spent < Decimal("0.0002")
    else:
        lite = nasca.cost_of("gpt-4o-mini", TokenUsage(300, 40))
        assert usage.fallback.daily_spent == Decimal(lite) / 10**9

    srv.queue(Reply("lite", usage=HUGE))
    _chat(llm, nasca, "u1", "chat")
    before = srv.request_count
    with pytest.raises(NascaBlockedError) as blocked:
        _chat(llm, nasca, "u1", mode)
    assert blocked.value.window == "monthly" and srv.request_count == before


def test_fallback_false_blocks(srv, make_nasca):
    nasca = make_nasca(tiers={"free": tier()}, default_tier="free")
    llm = _llm(srv, nasca, fallback=False)
    srv.queue(Reply("long", usage=SPEND_ALL))
    _chat(llm, nasca, "u1", "chat")
    before = srv.request_count
    with pytest.raises(NascaBlockedError):
        _chat(llm, nasca, "u1", "chat")
    assert srv.request_count == before
