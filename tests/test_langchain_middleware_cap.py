"""NascaMiddleware(cap_output=True): near the limit an agent's model step is sent with its
max tokens lowered to what the user can still pay for (through the request's model
settings), so the step can't overshoot on output. Real ChatOpenAI and ChatAnthropic against the local
provider server, sync and async."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from nasca_core import Nasca, Tier
from nasca_core.pricing import TokenUsage
from nasca_core.testing import ProviderServer, Reply
from nasca_langchain import NascaMiddleware

GPT, CLAUDE = "gpt-4o-mini", "claude-haiku-4-5-20251001"
LONG = "word " * 3000
LIMIT, PRE_SPENT = 2_000_000, 1_500_000  # nanos


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server


def _agent(srv: ProviderServer, nasca: Nasca, provider: str = "openai", **model_kwargs: Any) -> Any:
    if provider == "anthropic":
        model: Any = ChatAnthropic(model=CLAUDE, base_url=srv.anthropic_base_url, api_key="x", max_retries=0,
                                   **model_kwargs)
    else:
        model = ChatOpenAI(model=GPT, base_url=srv.base_url, api_key="x", max_retries=0, **model_kwargs)
    return create_agent(model, tools=[], middleware=[NascaMiddleware(nasca, cap_output=True)])


def _sent_cap(srv: ProviderServer) -> int | None:
    body = srv.last_request.json
    return body.get("max_completion_tokens", body.get("max_tokens"))


def _spent(n: Nasca, user: str) -> int:
    n.flush()
    return int(n.get_usage(user).daily_spent * 10**9)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("is_async", [False, True], ids=["invoke", "ainvoke"])
def test_a_step_near_the_limit_is_capped_and_spend_stays_within(srv, is_async, provider):
    n = Nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t")
    n.settle(n.reserve(nanos=PRE_SPENT, user="u1"), nanos=PRE_SPENT)
    agent = _agent(srv, n, provider, max_tokens=4000)
    model = CLAUDE if provider == "anthropic" else GPT
    srv.queue(Reply(LONG))
    state = {"messages": [HumanMessage("Tell me a long story.")]}
    config = {"metadata": {"nasca_user_id": "u1"}}
    if is_async:
        asyncio.run(agent.ainvoke(state, config=config))
    else:
        agent.invoke(state, config=config)
    sent = _sent_cap(srv)
    per_token = n.cost_of(model, TokenUsage(output_tokens=1_000_000)) / 1_000_000
    assert sent is not None and 1 <= sent < 4000 and abs(sent - (LIMIT - PRE_SPENT) / per_token) < 50
    assert srv.last_request.usage.output_tokens <= sent
    assert _spent(n, "u1") <= LIMIT


def test_far_from_the_limit_the_step_is_sent_as_it_was(srv):
    n = Nasca(tiers={"t": Tier(daily=10)}, default_tier="t")
    _agent(srv, n, max_tokens=40).invoke({"messages": [HumanMessage("Hi")]},
                                         config={"metadata": {"nasca_user_id": "u2"}})
    assert _sent_cap(srv) == 40
    _agent(srv, n).invoke({"messages": [HumanMessage("Hi")]}, config={"metadata": {"nasca_user_id": "u2"}})
    assert _sent_cap(srv) is None  # nothing added


def test_a_model_whose_field_is_max_output_tokens_gets_the_cap_there():
    """Gemini-style chat models (langchain-google-genai) take ``max_output_tokens``, and ignore
    a ``max_tokens`` they don't know: the cap goes to the field the model declares. A chat
    model class of that shape, speaking LangChain's own interface, records what it is sent."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    sent: list[dict[str, Any]] = []

    class GeminiLike(BaseChatModel):
        model: str = GPT
        max_output_tokens: int | None = None

        @property
        def _llm_type(self) -> str:
            return "gemini-like"

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
            sent.append(kwargs)
            usage = {"input_tokens": 10, "output_tokens": 1, "total_tokens": 11}
            message = AIMessage("ok", usage_metadata=usage)
            return ChatResult(generations=[ChatGeneration(message=message)])

    n = Nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t")
    n.settle(n.reserve(nanos=PRE_SPENT, user="g1"), nanos=PRE_SPENT)
    agent = create_agent(GeminiLike(), tools=[], middleware=[NascaMiddleware(n, cap_output=True)])
    agent.invoke({"messages": [HumanMessage("Tell me a long story.")]},
                 config={"metadata": {"nasca_user_id": "g1"}})
    assert "max_tokens" not in sent[-1] and 1 <= sent[-1]["max_output_tokens"] < 16_384
