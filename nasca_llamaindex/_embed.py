"""Embeddings, with ``Nasca(charge_embeddings=True)``: blocked before the provider, charged
for the tokens sent.

``BaseEmbedding`` (llama-index-core 0.14) calls ``self.rate_limiter.acquire()`` (``await
async_acquire()``) right before each provider request and lets what it raises through: in
``get_query_embedding``, ``get_text_embedding``, every batch of
``get_text_embedding_batch`` (index building, ingestion pipelines) and the async twins.
An ``EmbeddingGate`` put there reserves the texts about to be sent, so a blocked user's
query embedding or index build never reaches the provider. ``acquire()`` is given no
text: the method's span (its bound arguments, seen by the span handler) says what is
embedded, one batch per ``acquire`` in order.

Each batch's hold is settled by one of the method's ``EmbeddingEndEvent``s (one per batch)
for the counted tokens of that batch: embedding integrations drop the provider's usage,
and an embedding bills exactly its input's tokens, counted with the model's tokenizer on
the text as OpenAI's integration sends it (newlines as spaces). A method that raises
releases the holds it still has.

``aget_text_embedding_batch`` is the exception: it emits its end events only after
``asyncio.gather`` returns, so one failed batch would leave batches the provider already
answered without an event (and ``gather`` does not wait for the batches still running).
Each of its batches runs in its own task (gather's, or ``run_jobs``'), so its hold is
settled when that task ends: charged when the request returned, released when it raised
or was cancelled, whether the method's span is still open or not.

With an ``embeddings_cache``: a query or text served from the cache calls no limiter and
costs nothing; a sync batch is reserved and charged for all its texts (LlamaIndex acquires
before looking in the cache); an async batch calls no limiter at all, so it is neither
blocked nor charged (logged once).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.instrumentation.events.embedding import EmbeddingEndEvent
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.rate_limiter import BaseRateLimiter

from nasca_core import ConfigurationError, LLMCall, Nasca
from nasca_core.pricing import count_tokens
from nasca_llamaindex._gate import TIER_TAG, USER_TAG, fallback

log = logging.getLogger("nasca.llamaindex")

# The public methods that send texts, and the argument that holds them.
_METHODS = {
    "get_query_embedding": "query",
    "aget_query_embedding": "query",
    "get_text_embedding": "text",
    "aget_text_embedding": "text",
    "get_text_embedding_batch": "texts",
    "aget_text_embedding_batch": "texts",
}
# Integrations known to send each text with its newlines replaced by spaces.
_NEWLINES_AS_SPACES = {"OpenAIEmbedding", "AzureOpenAIEmbedding"}
_warned_uncached: set[str] = set()
_lock = threading.Lock()
_auto_gated: dict[int, weakref.ref[BaseEmbedding]] = {}  # gates installed on first use
guarded: dict[int, weakref.ref[BaseEmbedding]] = {}  # guard_embedding()
_unmetered: ContextVar[bool] = ContextVar("nasca_unmetered_embeddings", default=False)


@contextmanager
def unmetered_embeddings() -> Iterator[None]:
    """Let this block's embedding requests through with no user, reserved and charged to
    no one: the owner's own work, such as building a shared index at startup (the provider
    still bills the owner). LLM calls in the block stay metered; tasks started in it
    inherit it."""
    token = _unmetered.set(True)
    try:
        yield
    finally:
        _unmetered.reset(token)


@dataclass(eq=False, slots=True)
class EmbedSpan:
    """One embedding method call: what it sends, in batches, and the holds not yet settled."""

    model: str
    batches: list[list[str]]
    user: Any
    tier: Any
    async_cached: bool
    task: asyncio.Task[Any] | None  # the caller's task, for aget_text_embedding_batch
    cursor: int = 0
    holds: deque[LLMCall] = field(default_factory=deque)


_spans: dict[str, EmbedSpan] = {}
# Spans opened inside an embedding method without an instance (run_jobs and its workers,
# with num_workers > 1): their requests belong to the method's span.
_nested: dict[str, str] = {}


def nested_span_enter(id_: str, parent_id: str | None) -> None:
    """Route a function span opened inside an embedding method to that method's span."""
    if parent_id is not None:
        root = _nested.get(parent_id, parent_id)
        if root in _spans:
            _nested[id_] = root


def embed_span_enter(id_: str, bound_args: Any, instance: BaseEmbedding, tags: dict[str, Any] | None) -> None:
    """Remember what an embedding method is about to send (the span handler calls this)."""
    method = id_.split("-", 1)[0].rsplit(".", 1)[-1]
    arg = _METHODS.get(method)
    if arg is None:
        return
    given = bound_args.arguments.get(arg)
    texts = [given] if isinstance(given, str) else [t for t in given or () if isinstance(t, str)]
    if type(instance).__name__ in _NEWLINES_AS_SPACES:
        texts = [t.replace("\n", " ") for t in texts]
    size = max(int(instance.embed_batch_size), 1) if arg == "texts" else max(len(texts), 1)
    tags = tags or {}
    _spans[id_] = EmbedSpan(
        model=str(instance.model_name),
        batches=[texts[i : i + size] for i in range(0, len(texts), size)],
        user=tags.get(USER_TAG),
        tier=tags.get(TIER_TAG),
        async_cached=method == "aget_text_embedding_batch" and instance.embeddings_cache is not None,
        task=_current_task() if method == "aget_text_embedding_batch" else None,
    )


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def _settle_with_task(call: LLMCall, task: asyncio.Task[Any]) -> None:
    # A batch task that returned got its answer from the provider, which billed it.
    try:
        if not task.cancelled() and task.exception() is None:
            call.finish(None)
        else:
            call.fail()
    except Exception:
        log.exception("nasca: could not settle a LlamaIndex embedding batch")


def embed_span_exit(id_: str) -> None:
    """The method returned or raised: release what its batches still hold."""
    if _nested.pop(id_, None) is not None:
        return
    span = _spans.pop(id_, None)
    if span is None:
        return
    if span.async_cached and span.model not in _warned_uncached and len(_warned_uncached) < 1024:
        _warned_uncached.add(span.model)
        log.warning("nasca: %r embeds async batches with an embeddings_cache, which calls no rate "
                    "limiter: those batches are not charged", span.model)
    while span.holds:
        try:
            span.holds.popleft().fail()
        except Exception:
            log.exception("nasca: could not release a LlamaIndex embedding hold")


def on_embed_end(event: EmbeddingEndEvent) -> None:
    """Settle one hold of the event's span. Each hold is for its batch's counted tokens and
    every batch ends with one event, so the span is charged exactly what it sent even when
    concurrent async batches reserved in another order."""
    span = _spans.get(event.span_id) if event.span_id else None
    if span is None or not span.holds:
        return  # served from the cache, or not gated
    call = span.holds.popleft()
    try:
        call.finish(None)
    except Exception:
        log.exception("nasca: could not charge a LlamaIndex embedding call")


class EmbeddingGate(BaseRateLimiter):
    """Installed as ``embed_model.rate_limiter``: reserves each request's texts first.

    ``inner`` is the limiter the model had (still applied, after the budget check);
    ``nasca`` is set by ``guard_embedding``, else the scope's or ``instrument()``'s Nasca
    applies. With none, or one built without ``charge_embeddings=True``, the gate lets the
    call through.
    """

    def __init__(self, inner: Any = None, nasca: Nasca | None = None) -> None:
        self.inner = inner
        self.nasca = nasca

    def __repr__(self) -> str:
        return f"EmbeddingGate(nasca={self.nasca!r}, inner={self.inner!r})"

    def __deepcopy__(self, memo: dict[int, Any]) -> EmbeddingGate:
        # a copied model is guarded by the same Nasca and limited by the same limiter (both
        # hold connections or locks: never copied)
        return EmbeddingGate(self.inner, self.nasca)

    def acquire(self, num_tokens: int = 0) -> None:
        """Reserve the next batch. Raises NascaBlockedError before the provider is called."""
        plan = self._plan()
        if plan is not None:
            nasca, span, kwargs = plan
            span.holds.append(nasca.start_call(**kwargs))
        if self.inner is not None:
            self.inner.acquire(num_tokens)

    async def async_acquire(self, num_tokens: int = 0) -> None:
        """Async twin of acquire()."""
        plan = self._plan()  # before any await: concurrent batches take the cursor in order
        if plan is not None:
            nasca, span, kwargs = plan
            call = await nasca.astart_call(**kwargs)
            task = _current_task()
            if span.task is not None and task is not None and task is not span.task:
                task.add_done_callback(lambda t: _settle_with_task(call, t))
            else:
                span.holds.append(call)
        if self.inner is not None:
            await self.inner.async_acquire(num_tokens)

    def _plan(self) -> tuple[Nasca, EmbedSpan, dict[str, Any]] | None:
        nasca = self.nasca or fallback.get()
        if nasca is None or not nasca.charge_embeddings or _unmetered.get():
            return None
        span_id = active_span_id.get()
        span = _spans.get(_nested.get(span_id, span_id)) if span_id else None
        if span is None:
            raise ConfigurationError(
                "nasca_llamaindex: this embedding request came from no embedding method Nasca "
                "knows, so it cannot be priced; call get_query_embedding / get_text_embedding(_batch)"
            )
        batch = span.batches[span.cursor] if span.cursor < len(span.batches) else []
        span.cursor += 1
        model = span.model
        tokens = sum(count_tokens(t, model) for t in batch)
        return nasca, span, {"model": model, "prompt_tokens": tokens, "max_tokens": 0,
                             "user": span.user, "tier": span.tier}


def install(model: BaseEmbedding, nasca: Nasca | None = None) -> None:
    """Put a gate in front of ``model``'s rate limiter: bound to ``nasca``
    (guard_embedding), or deferring to the scope's or the global Nasca (first use)."""
    if nasca is None and isinstance(model.rate_limiter, EmbeddingGate):
        return  # the per-call path: no lock
    with _lock:
        gate = model.rate_limiter
        if not isinstance(gate, EmbeddingGate):
            gate = model.rate_limiter = EmbeddingGate(inner=gate)
        gate.nasca = nasca
        table, other = (_auto_gated, guarded) if nasca is None else (guarded, _auto_gated)
        table[id(model)] = weakref.ref(model)
        other.pop(id(model), None)
        for t in (_auto_gated, guarded):
            for key in [k for k, ref in t.items() if ref() is None]:
                del t[key]


def any_guarded() -> bool:
    """Whether a model guarded with guard_embedding() is still alive."""
    with _lock:
        for key in [k for k, ref in guarded.items() if ref() is None]:
            del guarded[key]
        return bool(guarded)


def remove(model: BaseEmbedding) -> None:
    """Give ``model`` its own rate limiter back."""
    with _lock:
        guarded.pop(id(model), None)
        _auto_gated.pop(id(model), None)
        gate = model.rate_limiter
        if isinstance(gate, EmbeddingGate):
            model.rate_limiter = gate.inner


def remove_auto() -> None:
    """Take away every gate installed on first use (uninstrument)."""
    for ref in list(_auto_gated.values()):
        model = ref()
        if model is not None:
            remove(model)
    _auto_gated.clear()
