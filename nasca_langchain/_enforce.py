"""``NascaMiddleware``: budget enforcement as an agent middleware for
``langchain.agents.create_agent``, in the manner of LangChain's ``ModelCallLimitMiddleware``.

    agent = create_agent(model, tools, middleware=[NascaMiddleware(nasca, exit_behavior="end")])
    agent.invoke({"messages": [...]}, context={"nasca_user_id": "u_42"})

Each model step is reserved before the model runs and charged from the usage the provider
reported; the async path awaits the async store. No callback handler is needed (one that
is attached anyway leaves these steps to the middleware, so nothing is charged twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from langchain.agents.middleware.types import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage
from langgraph.config import get_config

from nasca_core import ConfigurationError, LLMCall, Nasca, NascaBlockedError, UsageParseError
from nasca_core.pricing import TokenUsage
from nasca_langchain._prompt import (
    MAX_TOKEN_PARAMS,
    accounted_by_middleware,
    chat_messages,
    model_fields,
    model_of,
    output_cap,
    tool_schemas,
)
from nasca_langchain._upgrade import upgrade_reply
from nasca_langchain._usage import usage_from_langchain

ExitBehavior = Literal["error", "end"]
USER_KEYS = ("nasca_user_id", "user_id")
TIER_KEYS = ("nasca_tier",)


class NascaMiddleware(AgentMiddleware[Any, Any, Any]):
    """Reserve every model step of an agent before it runs, and charge what it cost.

    ``exit_behavior="error"`` (default) lets ``NascaBlockedError`` out of ``agent.invoke``;
    ``"end"`` ends the turn with the upgrade prompt as the assistant's reply
    (``upgrade_reply``), keeping what earlier steps did. The user is, in order: the
    runtime context's ``nasca_user_id`` (or ``user_id``) and ``nasca_tier`` (a mapping or
    an object), the run's metadata ``nasca_user_id`` / ``nasca_tier``, then
    ``with nasca.user(...)``. ``cap_output=True`` (default: ``nasca.cap_output``) lowers a
    step's max tokens to what the user's allowance and credits can still pay for.

    Raises ConfigurationError for an unknown ``exit_behavior``; from the agent:
    NascaBlockedError (under "error"), InvalidUserError, UnknownModelError, StoreError.
    """

    def __init__(self, nasca: Nasca, *, exit_behavior: ExitBehavior = "error",
                 cap_output: bool | None = None) -> None:
        super().__init__()
        if exit_behavior not in ("error", "end"):
            raise ConfigurationError("exit_behavior must be 'error' or 'end'")
        self.nasca = nasca
        self.exit_behavior = exit_behavior
        self.cap_output = bool(nasca.cap_output if cap_output is None else cap_output)

    def _capped(self, call: LLMCall, request: ModelRequest[Any], spec: dict[str, Any]) -> ModelRequest[Any]:
        """The request with its max tokens lowered to what the user can still pay for
        (``cap_output``; ``LLMCall.output_cap``), through the request's model settings."""
        cap = call.output_cap(spec["max_tokens"]) if self.cap_output else None
        if cap is None:
            return request
        settings = dict(request.model_settings)
        # the setting the step has, else the field the model's class declares (Gemini's
        # max_output_tokens): a model ignores, or refuses, a field it doesn't know
        declared = getattr(type(request.model), "model_fields", {})
        key = next((k for k in MAX_TOKEN_PARAMS if k in settings), None) or next(
            (k for k in MAX_TOKEN_PARAMS if k in declared), "max_tokens")
        return request.override(model_settings={**settings, key: cap})

    def _end_turn(self, err: NascaBlockedError) -> AIMessage:
        """The upgrade prompt that ends the turn under "end"; under "error", the block itself."""
        if self.exit_behavior == "end":
            return upgrade_reply(err)
        raise err

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage:
        spec = _call_spec(request)
        try:
            call = self.nasca.start_call(**spec, cap_output=self.cap_output)
        except NascaBlockedError as err:
            return self._end_turn(err)
        token = accounted_by_middleware.set(True)
        try:
            response = handler(self._capped(call, request, spec))
        except BaseException as exc:
            if _cancelled(exc):  # the provider has billed the prompt; a provider error, nothing
                call.abort()
            else:
                call.fail()
            raise
        finally:
            accounted_by_middleware.reset(token)
        call.finish(_usage(call, response))
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage:
        spec = _call_spec(request)
        try:
            call = await self.nasca.astart_call(**spec, cap_output=self.cap_output)
        except NascaBlockedError as err:
            return self._end_turn(err)
        token = accounted_by_middleware.set(True)
        try:
            response = await handler(self._capped(call, request, spec))
        except BaseException as exc:
            if _cancelled(exc):
                await call.aabort()
            else:
                await call.afail()
            raise
        finally:
            accounted_by_middleware.reset(token)
        await call.afinish(_usage(call, response))
        return response


def _call_spec(request: ModelRequest[Any]) -> dict[str, Any]:
    user, tier = _who(request)
    system = [request.system_message] if request.system_message is not None else []
    return {
        "model": model_of(request.model),
        "messages": chat_messages([*system, *request.messages]),
        "tools": tool_schemas(request.tools),
        "max_tokens": output_cap(request.model_settings, model_fields(request.model)),
        "user": user,
        "tier": tier,
    }


def _who(request: ModelRequest[Any]) -> tuple[str | None, str | None]:
    context = getattr(request.runtime, "context", None)
    user, tier = _lookup(context, USER_KEYS), _lookup(context, TIER_KEYS)
    if user is None or tier is None:
        try:
            metadata = get_config().get("metadata") or {}
        except RuntimeError:  # called outside a graph run
            metadata = {}
        user = user if user is not None else metadata.get("nasca_user_id")
        tier = tier if tier is not None else metadata.get("nasca_tier")
    return user, tier


def _lookup(context: Any, keys: tuple[str, ...]) -> Any:
    if context is None:
        return None
    for key in keys:
        value = context.get(key) if isinstance(context, Mapping) else getattr(context, key, None)
        if value is not None:
            return value
    return None


def _usage(call: LLMCall, response: ModelResponse[Any] | AIMessage) -> TokenUsage | None:
    messages = [response] if isinstance(response, AIMessage) else list(response.result)
    message = next((m for m in messages if isinstance(m, AIMessage)), None)
    if message is None:
        return None
    if message.usage_metadata:
        try:
            return usage_from_langchain(message.usage_metadata)
        except UsageParseError:
            pass  # counted below, like a stream without usage
    call.add_text(message.text)
    for tc in message.tool_calls:
        call.add_text(tc["name"])
        call.add_text(str(tc["args"]))
    return None


def _cancelled(exc: BaseException) -> bool:
    return isinstance(exc, GeneratorExit | asyncio.CancelledError | KeyboardInterrupt)
