"""100 concurrent calls for one user (asyncio and threads): overspend within the core's bound.

``nasca_core._policy.admit``: by default a call starts while every window has budget left
counting in-flight holds (spent + held < limit); ``strict`` starts it only if its estimate
fits (spent + held + estimate <= limit). So for the last call admitted, with spent, held
and the in-flight calls as they stood then:

    final spent = spent + sum(in-flight actual) + its own cost
                < limit + its own cost + sum(max(0, actual - estimate) over in-flight calls)

which bounds the default overspend by ``max(cost) + sum(max(0, cost - estimate))``; and
in strict mode, with every call costing at most its estimate, spend never passes the limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from langchain_openai import ChatOpenAI

from nasca_core import NascaBlockedError, Tier
from nasca_core.pricing import Pricer, TokenUsage, count_message_tokens
from nasca_core.testing import ProviderServer
from nasca_langchain import NascaCallbackHandler

GPT = "gpt-4o-mini"
QUESTION = "Write a long story about a lighthouse keeper."
MAX_TOKENS = 64
STORY = " ".join(["The lighthouse keeper climbed the stairs again that night."] * 20)
CALLS = 100


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    with ProviderServer(reply=STORY) as server:
        yield server


def nanos(input_tokens: int, output_tokens: int) -> int:
    return Pricer().cost(GPT, TokenUsage(input_tokens, output_tokens))


@pytest.mark.parametrize("mode", ["ainvoke", "batch"], ids=["asyncio", "threads"])
@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
async def test_concurrent_calls_overspend_is_bounded(make_nasca: Any, srv: ProviderServer,
                                                     strict: bool, mode: str) -> None:
    # The handler holds the prompt plus max_tokens; the server stops every reply at
    # max_tokens, so each call costs close to (and no more than) what it holds.
    estimate = nanos(count_message_tokens([{"role": "user", "content": QUESTION}], GPT),
                     MAX_TOKENS)
    limit = 10 * estimate + estimate // 2
    nasca = make_nasca(tiers={"free": Tier(daily=Decimal(limit) / 10**9)}, strict=strict)
    handler = NascaCallbackHandler(nasca)
    model = ChatOpenAI(model=GPT, base_url=srv.base_url, api_key="x", max_retries=0,
                       max_tokens=MAX_TOKENS)
    config: Any = {"callbacks": [handler], "metadata": {"nasca_user_id": "hot"}}

    if mode == "ainvoke":  # 100 tasks on one loop
        results = await asyncio.gather(*(model.ainvoke(QUESTION, config=config)
                                          for _ in range(CALLS)), return_exceptions=True)
    else:  # one handler shared by 16 threads
        results = await asyncio.to_thread(
            model.batch, [QUESTION] * CALLS, {**config, "max_concurrency": 16},
            return_exceptions=True)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, NascaBlockedError) for e in errors), errors[:1]
    admitted = CALLS - len(errors)
    assert 0 < admitted < CALLS
    assert srv.request_count == admitted  # no blocked call reached the provider
    costs = []
    for r in srv.requests:
        assert r.usage is not None and r.usage.output_tokens == MAX_TOKENS
        costs.append(nanos(r.usage.input_tokens, r.usage.output_tokens))
    usage = await nasca.aget_usage("hot")
    assert usage.month_calls == admitted and usage.in_flight == 0
    spent = int((usage.daily_spent or 0) * 10**9)
    assert spent == sum(costs)
    over_estimate = sum(max(0, c - estimate) for c in costs)
    if strict:
        assert over_estimate == 0
        assert spent <= limit
    else:
        assert spent - limit < max(costs) + over_estimate
        assert admitted <= limit // min(costs) + 1
