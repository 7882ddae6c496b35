"""Blocking: a rate limiter that reserves the budget before LlamaIndex calls the provider.

An instrumentation handler cannot stop a call (the dispatcher swallows its exceptions),
but every decorated LLM method calls ``llm.rate_limiter.acquire()`` (or
``await async_acquire()``) right after its start event and right before the provider
request, and lets whatever that raises propagate: in chat, complete, their stream and
async twins, and so in query engines, chat engines and agents built on them. The gate
sits there, in front of any rate limiter the LLM already had.
"""

from __future__ import annotations

import copy
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from llama_index.core.instrumentation.events.llm import LLMChatStartEvent
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.rate_limiter import BaseRateLimiter

from nasca_core import ConfigurationError, Nasca
from nasca_llamaindex._cap import take_reserved
from nasca_llamaindex._track import StartEvent, join, message_dicts, take_pending, track

USER_TAG = "nasca_user_id"
TIER_TAG = "nasca_tier"

# set by guarded engines and scope()
scoped_nasca: ContextVar[Nasca | None] = ContextVar("nasca_llamaindex_scope", default=None)


@dataclass(slots=True)
class Fallback:
    """The Nasca for a gate bound to none: the scope's, else instrument()'s."""

    instrumented: Nasca | None = None

    def get(self) -> Nasca | None:
        return scoped_nasca.get() or self.instrumented


fallback = Fallback()


class NascaGate(BaseRateLimiter):
    """Installed as ``llm.rate_limiter``: reserves before each provider request.

    ``inner`` is the rate limiter the LLM had before (still applied, after the budget
    check); ``nasca`` is set for an LLM guarded on its own (``guard_llm``), else the
    scope's or the global Nasca applies, and with none the gate lets the call through.
    """

    def __init__(self, inner: Any = None, nasca: Nasca | None = None, cap_output: bool = False,
                 fallback: bool = False) -> None:
        self.inner = inner
        self.nasca = nasca
        self.cap_output = cap_output  # guard_llm(cap_output=True): the LLM's calls are capped (``_cap``)
        self.fallback = fallback  # guard_llm(fallback=True): a spent tier's calls may fall back (``_cap``)

    def __repr__(self) -> str:
        return f"NascaGate(nasca={self.nasca!r}, inner={self.inner!r})"

    def __deepcopy__(self, memo: dict[int, Any]) -> NascaGate:
        # a copied LLM is guarded by the same Nasca (which holds connections: never copied)
        return NascaGate(copy.deepcopy(self.inner, memo), self.nasca, self.cap_output, self.fallback)

    def acquire(self, num_tokens: int = 0) -> None:
        """Reserve the call's estimate. Raises NascaBlockedError before the provider is called."""
        plan = self._plan(is_async=False)
        if plan is not None:
            nasca, span_id, start, kwargs = plan
            track(take_reserved() or nasca.start_call(**kwargs), span_id, start, self, is_async=False)
        if self.inner is not None:
            self.inner.acquire(num_tokens)

    async def async_acquire(self, num_tokens: int = 0) -> None:
        """Async twin of acquire()."""
        plan = self._plan(is_async=True)
        if plan is not None:
            nasca, span_id, start, kwargs = plan
            call = take_reserved() or await nasca.astart_call(**kwargs)
            track(call, span_id, start, self, is_async=True)
        if self.inner is not None:
            await self.inner.async_acquire(num_tokens)

    def _plan(self, is_async: bool) -> tuple[Nasca, str, StartEvent, dict[str, Any]] | None:
        span_id = active_span_id.get()
        start = take_pending(span_id)
        nasca = self.nasca or fallback.get()
        if nasca is None:
            return None
        if start is None or span_id is None:
            raise ConfigurationError(
                "nasca_llamaindex: this LLM call sent no start event, so it cannot be priced; "
                "call the LLM through its chat/complete methods"
            )
        if join(span_id, start, self, is_async):
            return None  # part of a call already reserved (one LLM method calling another)
        model = start.model_dict.get("model_name") or start.model_dict.get("model") or "unknown"
        kwargs: dict[str, Any] = {"model": str(model), "max_tokens": _max_tokens(start),
                                  "user": start.tags.get(USER_TAG), "tier": start.tags.get(TIER_TAG)}
        if isinstance(start, LLMChatStartEvent):
            kwargs["messages"] = message_dicts(start.messages)
        else:
            kwargs["prompt"] = start.prompt
        return nasca, span_id, start, kwargs


def _max_tokens(start: StartEvent) -> int | None:
    for value in (start.additional_kwargs.get("max_tokens"), start.model_dict.get("num_output")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
