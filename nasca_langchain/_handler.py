"""``NascaCallbackHandler``: LangChain's model events, translated into ``nasca.start_call``.

    on_chat_model_start / on_llm_start -> nasca.start_call(...)   (raises: the model never runs)
    on_llm_new_token                   -> call.add_text(...)      (+ usage on the last chunk)
    on_llm_end                         -> call.finish(usage)      (a cache hit: call.fail())
    on_llm_error                       -> call.abort() or call.fail()

A sync handler with ``raise_error = True``: LangChain then lets its exceptions out of
``invoke``/``stream``/``batch``, their async twins, chains and agents. An async handler's
errors are swallowed on the sync paths, so it could not block ``invoke``. One object serves
both: LangChain's async dispatcher gets coroutine functions for the model events (awaited
on the loop, on the async store), every other caller the sync methods (``_Twin``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.outputs import LLMResult

from nasca_core import InvalidUserError, LLMCall, Nasca, UsageParseError
from nasca_core.pricing import TokenUsage
from nasca_langchain._prompt import accounted_by_middleware, chat_messages, output_cap
from nasca_langchain._usage import usage_from_langchain, with_langchain_fees
from nasca_langchain._warning import mark

log = logging.getLogger("nasca.langchain")

USER_KEY = "nasca_user_id"
TIER_KEY = "nasca_tier"
_MODEL_PARAMS = ("model", "model_name", "model_id")
# langchain-core's async dispatcher (module, function), which awaits a handler's coroutine
# functions and lets raise_error through. If a release renames it, every caller gets the
# sync methods: still enforced, only no longer off the loop.
ASYNC_DISPATCH = ("langchain_core.callbacks.manager", "_ahandle_event_for_handler")


class _Twin:
    """A model event: the sync method for every caller but LangChain's async dispatcher,
    which gets the coroutine twin (``a`` + the name)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.sync, self.twin = getattr(owner, f"_{name}"), getattr(owner, f"_a{name}")

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self.sync
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        if caller is not None and caller.f_code.co_name == ASYNC_DISPATCH[1] \
                and caller.f_globals.get("__name__") == ASYNC_DISPATCH[0]:
            return self.twin.__get__(obj, owner)
        return self.sync.__get__(obj, owner)


class _Run:
    __slots__ = ("call", "streamed", "tools", "usage")

    def __init__(self, call: LLMCall, tools: Any = None) -> None:
        self.call = call
        self.tools = tools  # the request's: they price a container (with_langchain_fees)
        self.usage: UsageMetadata | None = None  # reported on streamed chunks
        self.streamed = False


class NascaCallbackHandler(BaseCallbackHandler):
    """Reserve each model call's budget before it runs and charge what it cost.

    ``config={"callbacks": [NascaCallbackHandler(nasca)], "metadata": {"nasca_user_id": "u_42",
    "nasca_tier": "free"}}`` on a model, chain or agent. The user is, in order: the metadata's
    ``nasca_user_id`` (and ``nasca_tier``), ``get_user_id(ctx)`` / ``get_user_tier(ctx)`` of this
    handler, then of ``nasca``, then ``with nasca.user(...)``. ``ctx`` is a config-like dict:
    ``{"metadata", "tags", "run_id", "parent_run_id", "invocation_params"}``.

    One handler serves any number of concurrent runs, sync and async: pass the same object
    to ``invoke`` and ``ainvoke``. On the async paths its model events are coroutines run
    inline on the loop: the reserve is awaited on the async store (nothing blocks the loop),
    the settle is queued for the background sender, a streamed token costs no thread hop,
    and contextvars (``nasca.user()``) are those of the caller.

    Raised from the model call, before any provider request: NascaBlockedError (over
    budget), InvalidUserError (no user, or a user id that is not a non-empty str),
    UnknownModelError (a model missing from the price table under ``unknown_model="block"``),
    UnknownTierError, StoreError (store down under ``on_store_error="block"``).
    """

    raise_error = True
    # Inline, not in LangChain's thread pool: besides the cost of a thread hop per event,
    # langchain-core's AsyncCallbackManager.on_llm_start skips every non-inline handler when
    # an inline one (LangSmith's tracer) is attached (langchain-ai/langchain#39633): a
    # completion model's async call would then go ahead unchecked and unbilled.
    run_inline = True

    def __init__(
        self,
        nasca: Nasca,
        *,
        get_user_id: Callable[[Mapping[str, Any]], str | None] | None = None,
        get_user_tier: Callable[[Mapping[str, Any]], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.nasca = nasca
        self.get_user_id = get_user_id
        self.get_user_tier = get_user_tier
        self._lock = threading.Lock()
        self._runs: dict[UUID, _Run] = {}

    # Only model events matter: skip the rest (each is a call, or a thread hop when async).
    @property
    def ignore_chain(self) -> bool:
        return True

    @property
    def ignore_agent(self) -> bool:
        return True

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_retry(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"NascaCallbackHandler({self.nasca!r}, in_flight={len(self._runs)})"

    # -- start -------------------------------------------------------------------------
    def _on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if (spec := self._spec(run_id, parent_run_id, tags, metadata, serialized, kwargs,
                               messages=chat_messages(messages[0]))) is not None:
            self._started(run_id, spec)

    async def _aon_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if (spec := self._spec(run_id, parent_run_id, tags, metadata, serialized, kwargs,
                               messages=chat_messages(messages[0]))) is not None:
            await self._astarted(run_id, spec)

    def _on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # LangChain sends one prompt per run
        if (spec := self._spec(run_id, parent_run_id, tags, metadata, serialized, kwargs,
                               prompt=prompts[0])) is not None:
            self._started(run_id, spec)

    async def _aon_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if (spec := self._spec(run_id, parent_run_id, tags, metadata, serialized, kwargs,
                               prompt=prompts[0])) is not None:
            await self._astarted(run_id, spec)

    on_chat_model_start = _Twin()
    on_llm_start = _Twin()

    def _spec(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        serialized: dict[str, Any] | None,
        kwargs: Mapping[str, Any],
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
    ) -> dict[str, Any] | None:
        """``start_call``'s arguments, None when NascaMiddleware accounts for this call."""
        if accounted_by_middleware.get():
            return None
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        meta = metadata or {}
        model = _model_name(serialized, meta, params)
        user, tier = meta.get(USER_KEY), meta.get(TIER_KEY)
        ctx: dict[str, Any] | None = None
        if (user is None and (self.get_user_id or self.nasca.get_user_id)) or (
            tier is None and self.get_user_tier
        ):
            ctx = {"metadata": meta, "tags": tags or [], "run_id": run_id,
                   "parent_run_id": parent_run_id, "invocation_params": params}
            if user is None and self.get_user_id is not None:
                user = self.get_user_id(ctx)
            if tier is None and self.get_user_tier is not None:
                tier = self.get_user_tier(ctx)
        # providers bill tool definitions as prompt tokens: the core counts them
        return {"model": model, "messages": messages, "prompt": prompt, "tools": params.get("tools") or None,
                "max_tokens": output_cap(params), "user": user, "tier": tier, "ctx": ctx}

    def _started(self, run_id: UUID, spec: dict[str, Any]) -> None:
        try:
            call = self.nasca.start_call(**spec)
        except InvalidUserError as exc:  # raised first, by resolving the user
            raise _no_user(exc, spec) from None
        with self._lock:
            self._runs[run_id] = _Run(call, spec["tools"])

    async def _astarted(self, run_id: UUID, spec: dict[str, Any]) -> None:
        try:
            call = await self.nasca.astart_call(**spec)
        except InvalidUserError as exc:
            raise _no_user(exc, spec) from None
        with self._lock:
            self._runs[run_id] = _Run(call, spec["tools"])

    # -- stream ------------------------------------------------------------------------
    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: Any = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            return
        text = token if isinstance(token, str) else _text(token)
        if text:
            run.call.add_text(text)
            run.streamed = True
        message = getattr(chunk, "message", None)
        if message is None:
            return
        for tc in getattr(message, "tool_call_chunks", None) or ():
            run.call.add_text(tc.get("name"))
            run.call.add_text(tc.get("args"))
            run.streamed = True
        usage = getattr(message, "usage_metadata", None)
        if usage:  # Anthropic and OpenAI send it once, after the last delta
            run.usage = usage if run.usage is None else add_usage(run.usage, usage)

    # -- end ---------------------------------------------------------------------------
    def _on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if (run := self._pop(run_id)) is not None:
            if (usage := _ended(run, response)) is False:
                run.call.fail()
            else:
                run.call.finish(usage)
                if run.call.warning is not None:
                    mark(run.call, _messages(response))

    async def _aon_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if (run := self._pop(run_id)) is not None:
            if (usage := _ended(run, response)) is False:
                await run.call.afail()
            else:
                await run.call.afinish(usage)
                if run.call.warning is not None:
                    mark(run.call, _messages(response))

    def _on_llm_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if (run := self._pop(run_id)) is not None:
            if (usage := _broken(run, error)) is False:
                run.call.fail()
            else:
                run.call.finish(usage)

    async def _aon_llm_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if (run := self._pop(run_id)) is not None:
            if (usage := _broken(run, error)) is False:
                await run.call.afail()
            else:
                await run.call.afinish(usage)

    on_llm_end = _Twin()
    on_llm_error = _Twin()

    def _pop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)


def _no_user(exc: InvalidUserError, spec: Mapping[str, Any]) -> InvalidUserError:
    if spec["user"] is not None:
        return exc
    return InvalidUserError(f"{exc} With LangChain: config={{'metadata': {{'{USER_KEY}': ...}}}}, "
                            "or NascaCallbackHandler(get_user_id=...).")


def _messages(response: LLMResult) -> list[Any]:
    """The reply ``invoke`` returns is this very message: a warning put on it reaches the app
    (a stream's chunks have been sent already)."""
    return [getattr(g, "message", None) for g in response.generations[0]] if response.generations else []


def _ended(run: _Run, response: LLMResult) -> TokenUsage | Literal[False] | None:
    """What an ended run is charged: the provider's usage, None (prompt + counted text), or
    False for a cache hit (no provider request: release the hold)."""
    gen = response.generations[0][0] if response.generations and response.generations[0] else None
    message = getattr(gen, "message", None)
    usage = getattr(message, "usage_metadata", None) or run.usage
    if usage is not None and cast(Mapping[str, Any], usage).get("total_cost") == 0:
        return False  # LangChain's mark on a response served from its LLM cache
    if usage is not None:
        try:
            return with_langchain_fees(usage_from_langchain(usage), message, response.llm_output, run.tools)
        except UsageParseError as exc:
            log.warning("nasca: unreadable usage_metadata, counting tokens instead: %s", exc)
    _warn_counted(run.call.model)
    if not run.streamed and gen is not None:
        run.call.add_text(gen.text)
        for tc in getattr(message, "tool_calls", None) or ():
            run.call.add_text(tc["name"])
            run.call.add_text(json.dumps(tc["args"]))
    return None


def _broken(run: _Run, error: BaseException) -> TokenUsage | Literal[False] | None:
    """What a run that failed is charged, as ``_ended`` (False: nothing, release the hold)."""
    if run.usage is not None:  # the stream's final usage arrived before it was cut
        try:
            return usage_from_langchain(run.usage)
        except UsageParseError:
            pass
    # Abandoned, cancelled or broken off mid-stream: the provider has billed the prompt and
    # every token it sent. Charge those, counted locally (None).
    return None if run.streamed or isinstance(error, GeneratorExit | asyncio.CancelledError) else False


_counted_models: set[str] = set()


def _warn_counted(model: str) -> None:
    # Once per model: a counted charge is close to the bill, not the bill itself.
    if model not in _counted_models:
        _counted_models.add(model)
        log.warning("nasca: %s reported no token usage; charging locally counted tokens (pass "
                    "stream_usage=True, or check the provider returns usage)", model)


def _model_name(serialized: Mapping[str, Any] | None, metadata: Mapping[str, Any],
                params: Mapping[str, Any]) -> str:
    # The request's model first; a model that names none is priced under its LangChain type
    # (e.g. "generic-fake-chat-model"), so the unknown_model policy decides, never a silent $0.
    for key in _MODEL_PARAMS:
        if isinstance(name := params.get(key), str) and name:
            return name
    for name in (metadata.get("ls_model_name"), params.get("_type"),
                 (serialized or {}).get("name")):
        if isinstance(name, str) and name:
            return name
    return "unknown-langchain-model"


def _text(content: Sequence[str | dict[str, Any]]) -> str:
    return "".join(p if isinstance(p, str) else str(p.get("text") or "") for p in content
                   if isinstance(p, str | dict))
