"""``UpgradePromptMiddleware`` for ``langchain.agents.create_agent``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware.types import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage

from nasca_core import NascaBlockedError
from nasca_langchain._upgrade import upgrade_reply


class UpgradePromptMiddleware(AgentMiddleware[Any, Any, Any]):
    """A model step the budget blocks ends the agent's turn with ``upgrade_reply(err)``.

    ``create_agent(model, tools, middleware=[UpgradePromptMiddleware()])``, with a
    ``NascaCallbackHandler`` in the run's callbacks. The reply has no tool calls, so the
    agent stops there; tool steps that already ran stay in the state.
    """

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage:
        try:
            return handler(request)
        except NascaBlockedError as err:
            return upgrade_reply(err)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage:
        try:
            return await handler(request)
        except NascaBlockedError as err:
            return upgrade_reply(err)
