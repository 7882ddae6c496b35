"""``guard_llm(llm, nasca, cap_output=True)``: near the limit, the LLM's request is sent with
its max tokens lowered to what the user's allowance and credits can still pay for.

The gate (``_gate``) can stop a call but not change it: LlamaIndex calls the rate limiter
after the request's arguments are bound. So a guarded LLM with the cap gets a subclass of
its own class (its copies keep it) whose chat/complete methods, sync, async and
streaming, reserve first and hand the reserved call to the gate, which tracks it instead
of reserving again. While the call runs, the LLM's own output field (``max_tokens``;
``max_output_tokens`` on OpenAIResponses) and any such key in its ``additional_kwargs``
(which llama-index-llms-openai lets override the field) read as the cap
(``LLMCall.output_cap``) in this context only: integrations build the request from them,
and other threads and tasks using the same LLM see their own. An LLM class with no such
field can't be capped: a warning says so, once per class. An LLM method called from inside
another (``CustomLLM``'s chat -> complete) is part of the outer call.

The same subclass serves ``guard_llm(fallback=True)`` (the default): when the tier's spent
allowance falls back (``nasca_core.start_with_fallback``), the LLM's ``model`` reads as the
fallback model in the call's context, and the response (each chunk of a stream) carries
``additional_kwargs["nasca_fallback"]``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from contextvars import ContextVar
from typing import Any

from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.base.llms.types import ChatMessage
from llama_index_instrumentation.dispatcher import active_instrument_tags

from nasca_core import Fallback, LLMCall, Nasca, astart_with_fallback, start_with_fallback
from nasca_core.remote import RemoteNasca
from nasca_llamaindex._track import message_dicts

USER_TAG, TIER_TAG = "nasca_user_id", "nasca_tier"
OUTPUT_FIELDS = ("max_tokens", "max_output_tokens")  # an LLM class's own output cap
EXTRA_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")  # in additional_kwargs: they win
_CAPPED = frozenset({*OUTPUT_FIELDS, "additional_kwargs"})
MODEL_FIELDS = ("model", "model_name")  # what an integration sends as the model: read as the fallback's
FALLBACK_KEY = "nasca_fallback"
log = logging.getLogger("nasca")
_SYNC = ("chat", "stream_chat", "complete", "stream_complete")
_ASYNC = ("achat", "astream_chat", "acomplete", "astream_complete")

# The call a capped method reserved, until the gate takes it (a one-slot list).
_reserved: ContextVar[list[LLMCall | None] | None] = ContextVar("nasca_llamaindex_capped", default=None)
_caps: ContextVar[tuple[int, int] | None] = ContextVar("nasca_llamaindex_cap", default=None)  # (id, cap)
_models: ContextVar[tuple[int, str] | None] = ContextVar("nasca_llamaindex_model", default=None)  # (id, name)
_classes: dict[type, type] = {}


def take_reserved() -> LLMCall | None:
    """The call the capped method around this LLM call reserved (once), or None."""
    slot = _reserved.get()
    if slot is None or slot[0] is None:
        return None
    call, slot[0] = slot[0], None
    return call


# LLM classes whose every request is built from the ``model`` field (checked in their code),
# so it reading as the fallback's sends the fallback. Others may bind the model when built or
# route by another name (AzureOpenAI's engine): their calls block rather than run one model
# and be charged another. The guarded subclass keeps its class's module and name.
REROUTABLE = frozenset({"llama_index.llms.openai.base.OpenAI",
                        "llama_index.llms.openai.responses.OpenAIResponses"})


def renamable(llm: BaseLLM) -> bool:
    """Whether ``llm``'s class names its model in a field a fallback can stand in for."""
    cls = type(llm)
    return f"{cls.__module__}.{cls.__name__}" in REROUTABLE and any(
        f in getattr(cls, "model_fields", ()) for f in MODEL_FIELDS)


def install(llm: BaseLLM, capped: bool = True) -> None:
    """Give ``llm`` the capped subclass of its class (once)."""
    cls = type(llm)
    if cls not in _classes.values():
        fields = getattr(cls, "model_fields", ())
        if capped and not any(f in fields for f in OUTPUT_FIELDS) and cls not in _classes:
            log.warning("nasca: guard_llm(cap_output=True) can't cap %s: it has no max_tokens or "
                        "max_output_tokens field (only additional_kwargs' are capped)", cls.__name__)
        object.__setattr__(llm, "__class__", _capped(cls))


def _capped(cls: type) -> type:
    sub = _classes.get(cls)
    if sub is None:
        methods: dict[str, Callable[..., Any]] = {"__getattribute__": _getattribute}
        for name in _SYNC:
            methods[name] = _sync_method(name)
        for name in _ASYNC:
            methods[name] = _async_method(name)
        sub = _classes[cls] = type(cls.__name__, (cls,), {**methods, "__module__": cls.__module__})
    return sub


def _spec(llm: BaseLLM, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    payload = llm.to_payload()
    tags = active_instrument_tags.get()
    extra = getattr(llm, "additional_kwargs", None)  # what the request is built from, first
    sources = [extra.get(k) for k in EXTRA_KEYS] if isinstance(extra, dict) else []
    sources += [kwargs.get(f, getattr(llm, f, None)) for f in OUTPUT_FIELDS]
    given = next((v for v in sources if isinstance(v, int) and not isinstance(v, bool)), None)
    spec: dict[str, Any] = {"model": str(payload.get("model_name") or payload.get("model") or "unknown"),
                            "max_tokens": given if isinstance(given, int) and given > 0 else None,
                            "user": tags.get(USER_TAG), "tier": tags.get(TIER_TAG)}
    first = args[0] if args else kwargs.get("messages", kwargs.get("prompt"))
    if "chat" in name:
        spec["messages"] = message_dicts([m for m in first or () if isinstance(m, ChatMessage)])
    else:
        spec["prompt"] = str(first or "")
    return spec


def _nasca(llm: BaseLLM) -> Nasca | RemoteNasca | None:
    """The Nasca capping this LLM's calls or letting them fall back, unless this call is part
    of one already reserved."""
    gate = getattr(llm, "rate_limiter", None)
    nasca = getattr(gate, "nasca", None)
    wanted = getattr(gate, "cap_output", False) or getattr(gate, "fallback", False)
    if _reserved.get() is not None or not wanted:
        return None
    return nasca if isinstance(nasca, Nasca | RemoteNasca) else None


def _getattribute(self: Any, name: str) -> Any:
    value = object.__getattribute__(self, name)
    if name in MODEL_FIELDS and (model := _models.get()) is not None and model[0] == id(self):
        return model[1]
    if name in _CAPPED and (cap := _caps.get()) is not None and cap[0] == id(self):
        if name != "additional_kwargs":
            return _lower(value, cap[1])
        if isinstance(value, dict) and any(k in value for k in EXTRA_KEYS):
            return {**value, **{k: _lower(value[k], cap[1]) for k in EXTRA_KEYS if k in value}}
    return value


def _lower(value: Any, cap: int) -> Any:
    return cap if not isinstance(value, int) or value > cap else value


def _cap_of(llm: BaseLLM, call: LLMCall, spec: dict[str, Any]) -> tuple[int, int] | None:
    cap = call.output_cap(spec["max_tokens"])
    return None if cap is None else (id(llm), cap)


def _start(llm: BaseLLM, nasca: Nasca | RemoteNasca, spec: dict[str, Any]) -> tuple[LLMCall, Fallback | None]:
    """The call reserved, capped (``cap_output``) or on its fallback model (``fallback``) as the
    gate says. A remote ledger's tiers live on its server: its calls block, never fall back."""
    gate = llm.rate_limiter
    capped = bool(getattr(gate, "cap_output", False))
    if not isinstance(nasca, Nasca):
        return nasca.start_call(**spec, cap_output=capped), None
    return start_with_fallback(nasca, spec.pop("model"), cap_output=capped,
                               fallback=bool(getattr(gate, "fallback", False)), **spec)


async def _astart(llm: BaseLLM, nasca: Nasca | RemoteNasca,
                  spec: dict[str, Any]) -> tuple[LLMCall, Fallback | None]:
    gate = llm.rate_limiter
    capped = bool(getattr(gate, "cap_output", False))
    if not isinstance(nasca, Nasca):
        return await nasca.astart_call(**spec, cap_output=capped), None
    return await astart_with_fallback(nasca, spec.pop("model"), cap_output=capped,
                                      fallback=bool(getattr(gate, "fallback", False)), **spec)


def _settings(llm: BaseLLM, call: LLMCall, spec: dict[str, Any],
              fell: Fallback | None) -> tuple[tuple[int, int] | None, tuple[int, str] | None]:
    """What the LLM's fields read as during the call: (its id, the output cap) when capped,
    (its id, the fallback model) when it fell back."""
    capped = getattr(llm.rate_limiter, "cap_output", False)
    return (_cap_of(llm, call, spec) if capped else None), (None if fell is None else (id(llm), fell.model))


def _marked(response: Any, fell: Fallback | None) -> Any:
    extra = getattr(response, "additional_kwargs", None)
    if fell is not None and isinstance(extra, dict):  # the response llm.chat() returns, or a chunk
        extra[FALLBACK_KEY] = fell.as_dict()
    return response


def _sync_method(name: str) -> Callable[..., Any]:
    def method(self: BaseLLM, *args: Any, **kwargs: Any) -> Any:
        inner = getattr(super(type(self), self), name)
        nasca = _nasca(self)
        if nasca is None:
            return inner(*args, **kwargs)
        spec = _spec(self, name, args, kwargs)
        call, fell = _start(self, nasca, spec)
        slot: list[LLMCall | None] = [call]
        cap, model = _settings(self, call, spec, fell)
        token, capping, naming = _reserved.set(slot), _caps.set(cap), _models.set(model)
        try:
            result = inner(*args, **kwargs)
            if isinstance(result, Generator) and (cap is not None or fell is not None):
                return _stream(result, cap, model, fell)
            return _marked(result, fell)
        finally:
            _models.reset(naming)
            _caps.reset(capping)
            _reserved.reset(token)
            if slot[0] is not None:  # the gate never took it: no request was made
                slot[0].fail()

    method.__name__ = name
    return method


def _async_method(name: str) -> Callable[..., Any]:
    async def method(self: BaseLLM, *args: Any, **kwargs: Any) -> Any:
        inner = getattr(super(type(self), self), name)
        nasca = _nasca(self)
        if nasca is None:
            return await inner(*args, **kwargs)
        spec = _spec(self, name, args, kwargs)
        call, fell = await _astart(self, nasca, spec)
        slot: list[LLMCall | None] = [call]
        cap, model = _settings(self, call, spec, fell)
        token, capping, naming = _reserved.set(slot), _caps.set(cap), _models.set(model)
        try:
            result = await inner(*args, **kwargs)
            if isinstance(result, AsyncGenerator) and (cap is not None or fell is not None):
                return _astream(result, cap, model, fell)
            return _marked(result, fell)
        finally:
            _models.reset(naming)
            _caps.reset(capping)
            _reserved.reset(token)
            if slot[0] is not None:
                await slot[0].afail()

    method.__name__ = name
    return method


# A stream makes its request when first read, after the method returned: each step of the
# stream runs with the cap and the fallback model set (and unset before the caller's code
# runs again).
def _stream(gen: Generator[Any, None, None], cap: tuple[int, int] | None, model: tuple[int, str] | None,
            fell: Fallback | None) -> Iterator[Any]:
    try:
        while True:
            token, naming = _caps.set(cap), _models.set(model)
            try:
                item = next(gen)
            except StopIteration:
                return
            finally:
                _models.reset(naming)
                _caps.reset(token)
            yield _marked(item, fell)
    finally:
        gen.close()  # a consumer that stops early: the LLM's stream sees it (charged so far)


async def _astream(gen: AsyncGenerator[Any, None], cap: tuple[int, int] | None, model: tuple[int, str] | None,
                   fell: Fallback | None) -> AsyncIterator[Any]:
    try:
        while True:
            token, naming = _caps.set(cap), _models.set(model)
            try:
                item = await gen.__anext__()
            except StopAsyncIteration:
                return
            finally:
                _models.reset(naming)
                _caps.reset(token)
            yield _marked(item, fell)
    finally:
        await gen.aclose()
