"""Wiring: the instrumentation handlers, gate installation, and the public switches."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextlib import contextmanager
from contextvars import Token
from typing import Any, TypeVar

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.base.response.schema import AsyncStreamingResponse, StreamingResponse
from llama_index.core.chat_engine.types import BaseChatEngine
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.embedding import EmbeddingEndEvent
from llama_index.core.instrumentation.span import SimpleSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index_instrumentation import get_dispatcher

from nasca_core import ConfigurationError, Nasca
from nasca_core.remote import RemoteNasca
from nasca_llamaindex import _cap, _embed
from nasca_llamaindex._gate import NascaGate, fallback, scoped_nasca
from nasca_llamaindex._track import on_event, on_span_exit

L = TypeVar("L", bound=BaseLLM)
E = TypeVar("E", BaseQueryEngine, BaseChatEngine)
M = TypeVar("M", bound=BaseEmbedding)

_lock = threading.RLock()
_auto_gated: dict[int, weakref.ref[BaseLLM]] = {}  # gates installed on first use
_guarded_llms: dict[int, weakref.ref[BaseLLM]] = {}
_engines: dict[int, tuple[weakref.ref[Any], Nasca]] = {}
_scope_tokens: dict[str, Token[Nasca | None]] = {}
_scopes_open = 0


class _Events(BaseEventHandler):
    @classmethod
    def class_name(cls) -> str:
        return "NascaEventHandler"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, EmbeddingEndEvent):
            _embed.on_embed_end(event)
            return
        on_event(event)


class _Spans(BaseSpanHandler[SimpleSpan]):
    @classmethod
    def class_name(cls) -> str:
        return "NascaSpanHandler"

    def span_enter(self, id_: str, bound_args: Any, instance: Any = None,
                   parent_id: str | None = None, tags: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
        if instance is None:
            _embed.nested_span_enter(id_, parent_id)
            return
        if isinstance(instance, BaseLLM):
            if fallback.get() is not None:
                _install(instance)
            return
        if isinstance(instance, BaseEmbedding):
            scoped = fallback.get()
            if scoped is not None and scoped.charge_embeddings:
                _embed.install(instance)
            if isinstance(instance.rate_limiter, _embed.EmbeddingGate):
                _embed.embed_span_enter(id_, bound_args, instance, tags)
            return
        entry = _engines.get(id(instance))
        if entry is not None and entry[0]() is instance:
            _scope_tokens[id_] = scoped_nasca.set(entry[1])

    def span_exit(self, id_: str, bound_args: Any, instance: Any = None,
                  result: Any = None, **kwargs: Any) -> None:
        on_span_exit(id_, result)
        _embed.embed_span_exit(id_)
        if not _scope_tokens:  # no guarded engine's span is open (most spans): nothing to unscope
            return
        if id_ in _scope_tokens and isinstance(result, StreamingResponse | AsyncStreamingResponse):
            # A streaming engine calls its LLM only when the caller reads the stream, after
            # the engine's span closed: keep the engine's scope around each read.
            nasca = scoped_nasca.get()
            if isinstance(result, StreamingResponse):
                result.response_gen = _scoped_gen(result.response_gen, nasca)
            else:
                result.response_gen = _scoped_agen(result.response_gen, nasca)
        self._unscope(id_)

    def span_drop(self, id_: str, bound_args: Any, instance: Any = None,
                  err: BaseException | None = None, **kwargs: Any) -> None:
        on_span_exit(id_, None)
        _embed.embed_span_exit(id_)
        self._unscope(id_)

    def _unscope(self, id_: str) -> None:
        token = _scope_tokens.pop(id_, None)
        if token is not None:
            # ValueError: exited in another context (a span that returned a Future)
            with contextlib.suppress(ValueError):
                scoped_nasca.reset(token)

    # BaseSpanHandler's abstract hooks: unused, the three methods above are overridden
    def new_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None


def _scoped_gen(gen: Iterator[str], nasca: Nasca | None) -> Generator[str, None, None]:
    it = iter(gen)
    while True:
        token = scoped_nasca.set(nasca)
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            scoped_nasca.reset(token)
        yield item


async def _scoped_agen(gen: AsyncIterator[str], nasca: Nasca | None) -> AsyncGenerator[str, None]:
    it = aiter(gen)
    while True:
        token = scoped_nasca.set(nasca)
        try:
            item = await anext(it)
        except StopAsyncIteration:
            return
        finally:
            scoped_nasca.reset(token)
        yield item


_events = _Events()
_spans = _Spans()


def _attach() -> None:
    root = get_dispatcher()
    with _lock:
        if _events not in root.event_handlers:
            root.add_event_handler(_events)
        if _spans not in root.span_handlers:
            root.add_span_handler(_spans)


def _detach_if_unused() -> None:
    with _lock:
        _prune()
        in_use = fallback.instrumented is not None or _guarded_llms or _engines or _scopes_open
        if in_use or _embed.any_guarded():
            return
        root = get_dispatcher()
        root.event_handlers = [h for h in root.event_handlers if h is not _events]
        root.span_handlers = [h for h in root.span_handlers if h is not _spans]


def _prune() -> None:
    for table in (_auto_gated, _guarded_llms):
        for key in [k for k, ref in table.items() if ref() is None]:
            del table[key]
    for key in [k for k, (ref, _) in _engines.items() if ref() is None]:
        del _engines[key]


def _install(llm: BaseLLM, nasca: Nasca | None = None) -> None:
    """Put a gate in front of ``llm``'s rate limiter: bound to ``nasca`` (guard_llm), or
    deferring to the scope's or the global Nasca (installed on first use)."""
    if nasca is None and isinstance(llm.rate_limiter, NascaGate):
        return  # the per-call path: no lock
    with _lock:
        gate = llm.rate_limiter
        if not isinstance(gate, NascaGate):
            gate = llm.rate_limiter = NascaGate(inner=gate)
        gate.nasca = nasca
        table, other = (_auto_gated, _guarded_llms) if nasca is None else (_guarded_llms, _auto_gated)
        table[id(llm)] = weakref.ref(llm)
        other.pop(id(llm), None)


def _remove(llm: BaseLLM) -> None:
    gate = llm.rate_limiter
    if isinstance(gate, NascaGate):
        llm.rate_limiter = gate.inner


def instrument(nasca: Nasca) -> None:
    """Enforce ``nasca`` on every LlamaIndex LLM call in the process (LLMs guarded on their
    own with guard_llm keep their Nasca). A gate is put in front of each LLM's
    ``rate_limiter`` on its first call; ``uninstrument()`` takes them all away.

    Raises ConfigurationError when ``nasca`` is not a Nasca.
    """
    _check(nasca)
    with _lock:
        fallback.instrumented = nasca
        _attach()


def uninstrument() -> None:
    """Undo instrument(): stop enforcing globally and give every LLM gated on first use
    its own rate limiter back. LLMs and engines guarded explicitly stay guarded; once none
    is left the instrumentation handlers are removed too."""
    with _lock:
        fallback.instrumented = None
        for ref in list(_auto_gated.values()):
            llm = ref()
            if llm is not None:
                _remove(llm)
        _auto_gated.clear()
        _embed.remove_auto()
        _detach_if_unused()


def guard_llm(llm: L, nasca: Nasca, *, cap_output: bool | None = None, fallback: bool = True) -> L:
    """Enforce ``nasca`` on every call of this LLM (and of copies made from it), wherever it
    is used: directly, in query and chat engines, in agents. Returns ``llm`` itself.
    ``cap_output=True`` (default: ``nasca.cap_output``) lowers each call's max tokens to
    what the user's allowance and credits can still pay for (``_cap``). ``fallback=True``
    (default): on a tier with ``on_exhausted="fallback"``, a call its spent allowance blocks
    runs on the fallback model (the LLM's ``model`` reads as it for that call only), its
    response marked ``additional_kwargs["nasca_fallback"]``; only for the classes known to
    send ``model`` on every request (``_cap.REROUTABLE``), others block instead.

    Raises ConfigurationError when ``llm`` is not a LlamaIndex LLM.
    """
    _check(nasca)
    if not isinstance(llm, BaseLLM):
        raise ConfigurationError(f"guard_llm() needs a LlamaIndex LLM, got {type(llm).__name__}")
    with _lock:
        _attach()
        _install(llm, nasca)
        capped = nasca.cap_output if cap_output is None else cap_output
        falls = fallback and _cap.renamable(llm)
        if isinstance(llm.rate_limiter, NascaGate) and (capped or falls):
            llm.rate_limiter.cap_output, llm.rate_limiter.fallback = bool(capped), falls
            _cap.install(llm, capped=bool(capped))
    return llm


def guard_engine(engine: E, nasca: Nasca) -> E:
    """Enforce ``nasca`` on the LLM calls made by this query or chat engine only; other
    engines sharing the same LLM are not affected. Returns ``engine`` itself.

    Raises ConfigurationError for anything but a query engine or chat engine.
    """
    _check(nasca)
    if not isinstance(engine, BaseQueryEngine | BaseChatEngine):
        raise ConfigurationError(
            f"guard_engine() needs a query or chat engine, got {type(engine).__name__}; "
            "for agents use guard_llm(agent.llm, nasca) or `with scope(nasca):`"
        )
    with _lock:
        _attach()
        _engines[id(engine)] = (weakref.ref(engine), nasca)
    return engine


def guard_embedding(embed_model: M, nasca: Nasca) -> M:
    """Charge ``nasca`` for every request of this embedding model (index building, query
    embedding), wherever it is used; a blocked user's request never reaches the provider.
    Returns ``embed_model`` itself.

    Raises ConfigurationError when ``embed_model`` is not a LlamaIndex embedding model, or
    ``nasca`` was not built with ``charge_embeddings=True``.
    """
    _check(nasca)
    if not isinstance(embed_model, BaseEmbedding):
        raise ConfigurationError(
            f"guard_embedding() needs a LlamaIndex embedding model, got {type(embed_model).__name__}")
    if not nasca.charge_embeddings:
        raise ConfigurationError(
            "embeddings are not charged by default: build Nasca(..., charge_embeddings=True) to "
            "charge LlamaIndex embedding requests against the user's allowance")
    with _lock:
        _attach()
        _embed.install(embed_model, nasca)
    return embed_model


def unguard(target: BaseLLM | BaseEmbedding | BaseQueryEngine | BaseChatEngine) -> None:
    """Undo guard_llm(), guard_embedding() or guard_engine() for ``target``."""
    with _lock:
        if isinstance(target, BaseEmbedding):
            _embed.remove(target)
        if _guarded_llms.pop(id(target), None) is not None and isinstance(target, BaseLLM):
            _remove(target)
        _engines.pop(id(target), None)
        _detach_if_unused()


@contextmanager
def scope(nasca: Nasca) -> Iterator[None]:
    """Enforce ``nasca`` on every LLM call made inside the block, including in tasks it
    starts (agents' workflow steps)::

        with nasca_llamaindex.scope(nasca), nasca.user("u_42"):
            await agent.run("...")
    """
    global _scopes_open
    _check(nasca)
    with _lock:
        _attach()
        _scopes_open += 1
    token = scoped_nasca.set(nasca)
    try:
        yield
    finally:
        scoped_nasca.reset(token)
        with _lock:
            _scopes_open -= 1
        _detach_if_unused()


def _check(nasca: object) -> None:
    if not isinstance(nasca, Nasca | RemoteNasca):  # RemoteNasca: Nasca("https://...")
        raise ConfigurationError(f"expected a Nasca instance, got {type(nasca).__name__}")
