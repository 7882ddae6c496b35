"""A busy user (calls in flight hold the allowance) gets the retry message from the
agent middleware, not an upsell: real ChatOpenAI, a local chat-completions server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI

from nasca_core import Nasca, Tier
from nasca_core.testing import ProviderServer
from nasca_langchain import NascaCallbackHandler, UpgradePromptMiddleware


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server


def _shop(err: Any) -> str:
    return "https://shop.example/upgrade"


@pytest.mark.parametrize("cap", [1, None], ids=["cap", "holds"])
async def test_busy_user_gets_the_retry_message(srv: ProviderServer, cap: int | None) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily="0.01", max_in_flight=cap)}, default_tier="free",
                  checkout_url=_shop)
    held = nasca.reserve("0.01", user="u1")  # another call of u1's still running
    model = ChatOpenAI(model="gpt-4o-mini", base_url=srv.base_url, api_key="x", max_retries=0)
    agent = create_agent(model, tools=[], middleware=[UpgradePromptMiddleware()])
    out = await agent.ainvoke({"messages": [HumanMessage("hi")]},
                              config={"callbacks": [NascaCallbackHandler(nasca)],
                                      "metadata": {"nasca_user_id": "u1"}})
    reply = out["messages"][-1]
    assert isinstance(reply, AIMessage) and srv.request_count == 0
    assert "try again in a moment" in str(reply.content).lower()
    assert "shop.example" not in str(reply.content)
    assert reply.response_metadata["nasca_blocked"]["checkout_url"] is None
    nasca.release(held)  # once it is done, the same question goes through
    out = await agent.ainvoke({"messages": [HumanMessage("hi")]},
                              config={"callbacks": [NascaCallbackHandler(nasca)],
                                      "metadata": {"nasca_user_id": "u1"}})
    assert srv.request_count == 1 and out["messages"][-1].content == srv.default_reply.text
