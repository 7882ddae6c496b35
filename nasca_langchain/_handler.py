"""``NascaCallbackHandler``: LangChain's model events, translated into ``nasca.start_call``.

    on_chat_model_start / on_llm_start -> nasca.start_call(...)   (raises: the model never runs)
    on_llm_new_token                   -> call.add_text(...)      (+ usage on the last chunk)
    on_llm_end                         -> call.finish(usage)      (a cache hit: call.fail())
    on_llm_error                       -> call.abort() or call.fail()

A sync handler with ``raise_error = True``: LangChain then lets its exceptions out of
``invoke``/``stream``/``batch``, their async twins, chains and agents. An async handler's
errors are swallowed on the sync paths, so it could not block ``invoke``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.outputs import LLMResult

from nasca_core import InvalidUserError, LLMCall, Nasca, UsageParseError
from nasca_langchain._prompt import accounted_by_middleware, chat_messages, output_cap
from nasca_langchain._usage import usage_from_langchain

log = logging.getLogger("nasca.langchain")

USER_KEY = "nasca_user_id"
TIER_KEY = "nasca_tier"
_MODEL_PARAMS = ("model", "model_name", "model_id")


class _Run:
    __slots__ = ("call", "streamed", "usage")

    def __init__(self, call: LLMCall) -> None:
        self.call = call
        self.usage: UsageMetadata | None = None  # reported on streamed chunks
        self.streamed = False


class NascaCallbackHandler(BaseCallbackHandler):
    """Reserve each model call's budget before it runs and charge what it cost.

    ``config={"callbacks": [NascaCallbackHandler(nasca)], "metadata": {"nasca_user_id": "u_42",
    "nasca_tier": "free"}}`` on a model, chain or agent. The user is, in order: the metadata's
    ``nasca_user_id`` (and ``nasca_tier``), ``get_user_id(ctx)`` / ``get_user_tier(ctx)`` of this
    handler, then of ``nasca``, then ``with nasca.user(...)``. ``ctx`` is a config-like dict:
    ``{"metadata", "tags", "run_id", "parent_run_id", "invocation_params"}``.

    One handler serves any number of concurrent runs, sync and async. On the async paths it
    runs inline on the event loop: a store round trip at a call's start and end holds the
    loop (microseconds in memory, one Redis round trip each), a streamed token costs no
    thread hop, and contextvars (``nasca.user()``) are those of the caller.

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
    def on_chat_model_start(
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
        self._start(run_id, parent_run_id, tags, metadata, serialized,
                    kwargs.get("invocation_params") or {}, messages=chat_messages(messages[0]))

    def on_llm_start(
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
        self._start(run_id, parent_run_id, tags, metadata, serialized,
                    kwargs.get("invocation_params") or {}, prompt=prompts[0])

    def _start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        serialized: dict[str, Any] | None,
        params: Mapping[str, Any],
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
    ) -> None:
        if accounted_by_middleware.get():
            return  # NascaMiddleware reserves and charges this call
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
        max_tokens = output_cap(params)
        try:
            # providers bill tool definitions as prompt tokens: the core counts them
            call = self.nasca.start_call(model, messages=messages, prompt=prompt,
                                         tools=params.get("tools") or None,
                                         max_tokens=max_tokens, user=user, tier=tier, ctx=ctx)
        except InvalidUserError as exc:  # raised first, by resolving the user
            if user is not None:
                raise
            raise InvalidUserError(
                f"{exc} With LangChain: config={{'metadata': {{'{USER_KEY}': ...}}}}, "
                "or NascaCallbackHandler(get_user_id=...)."
            ) from None
        with self._lock:
            self._runs[run_id] = _Run(call)

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
    def on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._pop(run_id)
        if run is None:
            return
        gen = response.generations[0][0] if response.generations and response.generations[0] \
            else None
        message = getattr(gen, "message", None)
        usage = getattr(message, "usage_metadata", None) or run.usage
        if usage is not None and cast(Mapping[str, Any], usage).get("total_cost") == 0:
            # LangChain's mark on a response served from its LLM cache: no provider request.
            run.call.fail()
            return
        if usage is not None:
            try:
                run.call.finish(usage_from_langchain(usage))
                return
            except UsageParseError as exc:
                log.warning("nasca: unreadable usage_metadata, counting tokens instead: %s", exc)
        _warn_counted(run.call.model)
        if not run.streamed and gen is not None:
            run.call.add_text(gen.text)
            for tc in getattr(message, "tool_calls", None) or ():
                run.call.add_text(tc["name"])
                run.call.add_text(json.dumps(tc["args"]))
        run.call.finish(None)

    def on_llm_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._pop(run_id)
        if run is None:
            return
        if run.usage is not None:  # the stream's final usage arrived before it was cut
            try:
                run.call.finish(usage_from_langchain(run.usage))
                return
            except UsageParseError:
                pass
        if run.streamed or isinstance(error, GeneratorExit | asyncio.CancelledError):
            # Abandoned, cancelled or broken off mid-stream: the provider has billed the
            # prompt and every token it sent. Charge those, counted locally.
            run.call.abort()
        else:
            run.call.fail()

    def _pop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)


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
