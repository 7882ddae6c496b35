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
from typing import Any, Literal, TypeVar

from langchain.agents.middleware.types import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage
from langgraph.config import get_config

from nasca_core import (
    ConfigurationError,
    Fallback,
    LLMCall,
    Nasca,
    NascaBlockedError,
    UsageParseError,
    astart_with_fallback,
    start_with_fallback,
)
from nasca_core.pricing import TokenUsage
from nasca_langchain._prompt import (
    MAX_TOKEN_PARAMS,
    MODEL_FIELDS,
    accounted_by_middleware,
    chat_messages,
    model_fields,
    model_of,
    output_cap,
    tool_schemas,
)
from nasca_langchain._upgrade import upgrade_reply
from nasca_langchain._usage import usage_from_langchain
from nasca_langchain._warning import warned_response

ExitBehavior = Literal["error", "end"]
FALLBACK_KEY = "nasca_fallback"
T = TypeVar("T")
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
    step's max tokens to what the user's allowance and credits can still pay for. On a tier
    with ``on_exhausted="fallback"`` a step its spent allowance blocks runs on the fallback
    model instead (the step's chat model copied with the name replaced, through
    ``request.override(model=...)``), marked ``response_metadata["nasca_fallback"]``; only
    on the chat model classes known to send it on every request (``REROUTABLE``), else it blocks.

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
            call, fell = start_with_fallback(self.nasca, spec.pop("model"), cap_output=self.cap_output,
                                             fallback=_renamable(request.model) is not None, **spec)
        except NascaBlockedError as err:
            return self._end_turn(err)
        token = accounted_by_middleware.set(True)
        try:
            response = handler(self._capped(call, _on(request, fell), spec))
        except BaseException as exc:
            if _cancelled(exc):  # the provider has billed the prompt; a provider error, nothing
                call.abort()
            else:
                call.fail()
            raise
        finally:
            accounted_by_middleware.reset(token)
        call.finish(_usage(call, response))
        return fell_back(fell, warned_response(call, response))  # response_metadata["nasca_warning"]

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage:
        spec = _call_spec(request)
        try:
            call, fell = await astart_with_fallback(self.nasca, spec.pop("model"), cap_output=self.cap_output,
                                                    fallback=_renamable(request.model) is not None, **spec)
        except NascaBlockedError as err:
            return self._end_turn(err)
        token = accounted_by_middleware.set(True)
        try:
            response = await handler(self._capped(call, _on(request, fell), spec))
        except BaseException as exc:
            if _cancelled(exc):
                await call.aabort()
            else:
                await call.afail()
            raise
        finally:
            accounted_by_middleware.reset(token)
        await call.afinish(_usage(call, response))
        return fell_back(fell, warned_response(call, response))


# Chat model classes whose every request sends the model field (their request payload reads
# it), so a copy with the fallback's name calls the fallback. Others may bind the model when
# built (model_copy runs no validators) or route by another name (AzureChatOpenAI's
# deployment), so their steps block: the provider would run one model and be charged another.
REROUTABLE = frozenset({"langchain_openai.chat_models.base.ChatOpenAI",
                        "langchain_anthropic.chat_models.ChatAnthropic"})


def _renamable(model: Any) -> str | None:
    """The field naming the model a chat model calls (ChatOpenAI's ``model_name``,
    ChatAnthropic's ``model``), or None: a step on it can't fall back (it blocks)."""
    if f"{type(model).__module__}.{type(model).__qualname__}" not in REROUTABLE:
        return None
    fields = getattr(type(model), "model_fields", {})
    return next((f for f in MODEL_FIELDS if f in fields and isinstance(getattr(model, f, None), str)), None)


def _on(request: ModelRequest[Any], fell: Fallback | None) -> ModelRequest[Any]:
    """The request on the fallback's model: a copy of the step's chat model with the name
    replaced (same client, settings and tools), through ``request.override(model=...)``."""
    field = _renamable(request.model) if fell is not None else None
    if fell is None or field is None:
        return request
    return request.override(model=request.model.model_copy(update={field: fell.model}))


def fell_back(fell: Fallback | None, response: T) -> T:
    """An agent step's response (a ModelResponse or an AIMessage), its reply marked with
    ``response_metadata["nasca_fallback"]`` when the step ran on the fallback model."""
    if fell is not None:
        messages = [response] if isinstance(response, AIMessage) else getattr(response, "result", ())
        message = next((m for m in messages if isinstance(m, AIMessage)), None)
        if message is not None:
            message.response_metadata[FALLBACK_KEY] = fell.as_dict()
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
