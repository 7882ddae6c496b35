"""guard_llm(llm, nasca, cap_output=True): near the limit the LLM's request is sent with its
max tokens lowered to what the user can still pay for, so the call can't overshoot on
output. The real llama-index OpenAI LLM against the local provider server: chat,
complete, streaming, sync and async, and a query engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI

import nasca_llamaindex
from nasca_core import Nasca, Tier
from nasca_core.pricing import TokenUsage
from nasca_core.testing import ProviderServer, Reply

MODEL = "gpt-4o-mini"
LONG = "word " * 3000
LIMIT, PRE_SPENT = 2_000_000, 1_500_000  # nanos


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server


def _llm(srv: ProviderServer, **kw) -> OpenAI:
    return OpenAI(api_base=srv.base_url, api_key="x", model=MODEL, max_retries=0, **kw)


def _near(n: Nasca, user: str) -> None:
    n.settle(n.reserve(nanos=PRE_SPENT, user=user), nanos=PRE_SPENT)


def _spent(n: Nasca, user: str) -> int:
    n.flush()
    return int(n.get_usage(user).daily_spent * 10**9)


def _expected(n: Nasca) -> float:
    return (LIMIT - PRE_SPENT) / (n.cost_of(MODEL, TokenUsage(output_tokens=1_000_000)) / 1_000_000)


ASK = [ChatMessage(role="user", content="Tell me a long story.")]
CALLS = {
    "chat": lambda llm: llm.chat(ASK),
    "complete": lambda llm: llm.complete("Tell me a long story."),
    "stream_chat": lambda llm: list(llm.stream_chat(ASK)),
    "achat": lambda llm: asyncio.run(llm.achat(ASK)),
    "astream_complete": lambda llm: asyncio.run(_drain(llm.astream_complete("Tell me a long story."))),
}


async def _drain(stream):
    return [x async for x in await stream]


@pytest.mark.parametrize("how", list(CALLS))
def test_near_the_limit_the_request_is_capped_and_spend_stays_within(srv, how):
    n = Nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t")
    llm = nasca_llamaindex.guard_llm(_llm(srv, max_tokens=4000), n, cap_output=True)
    try:
        _near(n, "u1")
        srv.queue(Reply(LONG))
        with n.user("u1"):
            CALLS[how](llm)
        sent = srv.last_request.json["max_tokens"]
        assert 1 <= sent < 4000 and abs(sent - _expected(n)) < 50
        assert srv.last_request.usage.output_tokens <= sent and srv.request_count == 1
        u = n.get_usage("u1")
        assert _spent(n, "u1") <= LIMIT and u.in_flight == 0 and u.month_calls == 2  # charged once
    finally:
        nasca_llamaindex.unguard(llm)


def test_far_from_the_limit_and_without_the_cap_nothing_is_changed(srv):
    n = Nasca(tiers={"t": Tier(daily=10)}, default_tier="t")
    llm = nasca_llamaindex.guard_llm(_llm(srv, max_tokens=40), n, cap_output=True)
    plain = nasca_llamaindex.guard_llm(_llm(srv, max_tokens=4000), n)
    try:
        with n.user("u2"):
            llm.chat(ASK)
            assert srv.last_request.json["max_tokens"] == 40
            _near(n, "u3")
        with n.user("u3"):
            plain.chat(ASK)  # near, but this LLM has no cap
            assert srv.last_request.json["max_tokens"] == 4000
    finally:
        nasca_llamaindex.unguard(llm)
        nasca_llamaindex.unguard(plain)


def test_a_copied_llm_keeps_the_cap(srv):
    n = Nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    llm = nasca_llamaindex.guard_llm(_llm(srv, max_tokens=4000), n)  # the Nasca's default
    try:
        copy = llm.model_copy()
        assert isinstance(copy, OpenAI)
        _near(n, "u4")
        srv.queue(Reply(LONG))
        with n.user("u4"):
            copy.chat(ASK)
        assert srv.last_request.json["max_tokens"] < 4000 and _spent(n, "u4") <= LIMIT
    finally:
        nasca_llamaindex.unguard(llm)


def test_the_classes_own_output_field_and_additional_kwargs_are_capped(srv):
    """OpenAIResponses builds its request from ``max_output_tokens``; OpenAI lets
    ``additional_kwargs`` override the field (``{**base_kwargs, **self.additional_kwargs}``)."""
    from llama_index.llms.openai import OpenAIResponses

    n = Nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    llms = {
        "max_output_tokens": OpenAIResponses(api_base=srv.base_url, api_key="x", model=MODEL, max_retries=0,
                                             max_output_tokens=4000),
        "max_completion_tokens": _llm(srv, additional_kwargs={"max_completion_tokens": 4000}),
        "max_tokens": _llm(srv, max_tokens=3000, additional_kwargs={"max_tokens": 4000}),
    }
    try:
        for k, (field, raw) in enumerate(llms.items()):
            llm = nasca_llamaindex.guard_llm(raw, n)
            _near(n, f"f{k}")
            srv.queue(Reply(LONG))
            with n.user(f"f{k}"):
                llm.chat(ASK)
            sent = srv.last_request.json[field]
            assert 1 <= sent < 3000 and abs(sent - _expected(n)) < 50, field
            assert _spent(n, f"f{k}") <= LIMIT
            assert raw.additional_kwargs.get(field, 4000) == 4000  # the LLM itself is unchanged
    finally:
        for llm in llms.values():
            nasca_llamaindex.unguard(llm)
