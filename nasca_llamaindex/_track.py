"""Accounting: LlamaIndex's LLM events, translated into the core's LLMCall.

Every LLM method decorated by ``llm_chat_callback``/``llm_completion_callback`` runs in
its own instrumentation span and sends a start event, in-progress events (streams), and
an end event, an ``ExceptionEvent`` (a stream that failed or was closed early) or a
``SpanDropEvent`` (the call raised). Events carry the span id, which maps them to the
call the gate reserved.

Some LLMs call one decorated method from another: ``CustomLLM``/``MockLLM`` run
chat -> complete, acomplete -> complete, astream_chat -> stream_chat -> stream_complete;
``StructuredLLM.chat`` -> the inner LLM's chat. That is one provider request, so a call
that starts inside another call which has produced nothing yet joins it instead of
reserving again, and the innermost call's events (the ones closest to the provider,
with its usage) settle it.
"""

from __future__ import annotations

import json
import logging
import weakref
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, TextBlock, ToolCallBlock
from llama_index.core.instrumentation.events.exception import ExceptionEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatInProgressEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionInProgressEvent,
    LLMCompletionStartEvent,
)
from llama_index_instrumentation.events.span import SpanDropEvent

from nasca_core import LLMCall
from nasca_llamaindex._usage import usage_from_llamaindex

log = logging.getLogger("nasca.llamaindex")

StartEvent = LLMChatStartEvent | LLMCompletionStartEvent
_START = (LLMChatStartEvent, LLMCompletionStartEvent)
_PROGRESS = (LLMChatInProgressEvent, LLMCompletionInProgressEvent)
_END = (LLMChatEndEvent, LLMCompletionEndEvent)
_FAILED = (ExceptionEvent, SpanDropEvent)


@dataclass(eq=False, slots=True)
class Tracked:
    """One reserved provider call and the spans (nested LLM methods) that make it."""

    call: LLMCall
    owner: str  # the span whose events settle the call: the innermost one
    gate: object  # with ``start``, keeps the objects whose ids make ``key`` alive
    start: StartEvent
    key: tuple[int, ...]  # the gate's and prompt objects' identity, for async calls (else empty)
    spans: list[str] = field(default_factory=list)
    owner_open: bool = True  # the owner's method has not returned yet
    output: bool = False


_spans: dict[str, Tracked] = {}
# Async calls not yet joined, by prompt identity: CustomLLM's astream_chat/astream_complete
# call stream_chat/stream_complete lazily, from the generator, outside the outer span.
_async_waiting: dict[tuple[int, ...], Tracked] = {}
_innermost: ContextVar[Tracked | None] = ContextVar("nasca_llamaindex_call", default=None)
_pending: ContextVar[StartEvent | None] = ContextVar("nasca_llamaindex_start", default=None)


def prompt_key(gate: object, start: StartEvent) -> tuple[int, ...]:
    # the same LLM (one gate per LLM) handed the very same prompt objects
    if isinstance(start, LLMChatStartEvent):
        return (id(gate), *map(id, start.messages))  # the event copies the list, not the messages
    return (id(gate), id(start.prompt))


def join(span_id: str, start: StartEvent, gate: object, is_async: bool) -> bool:
    """Attach this call to the reserved call it is part of; False when it needs its own.

    Part of a call: made inside the method of a call that has produced nothing yet (its
    span is open in this context), or a sync call handed the same LLM's very prompt
    objects as an async call still waiting for its first output (CustomLLM's lazy
    astream_* -> stream_*)."""
    t = _innermost.get()
    if t is None or t.call.done or t.output or not t.owner_open:
        # dict.pop is atomic: two threads cannot both take the same waiting call
        t = (None if is_async or not _async_waiting
             else _async_waiting.pop(prompt_key(gate, start), None))
        if t is None:
            return False
    t.owner, t.owner_open = span_id, True
    t.spans.append(span_id)
    _spans[span_id] = t
    _innermost.set(t)
    return True


def track(call: LLMCall, span_id: str, start: StartEvent, gate: object, is_async: bool) -> None:
    key = prompt_key(gate, start) if is_async else ()
    t = Tracked(call, span_id, gate, start, key, [span_id])
    _spans[span_id] = t
    if is_async:
        _async_waiting[t.key] = t
    _innermost.set(t)


def _forget(t: Tracked) -> None:
    for span in t.spans:
        _spans.pop(span, None)
    if t.key:
        _async_waiting.pop(t.key, None)


def on_event(event: Any) -> None:
    """Route one instrumentation event (errors are logged: the dispatcher would hide them)."""
    if isinstance(event, _START):
        _pending.set(event)  # the gate reads it next, in this same context
        return
    t = _spans.get(event.span_id) if event.span_id else None
    if t is None or event.span_id != t.owner:
        return
    try:
        if isinstance(event, _PROGRESS):
            if not t.output:
                t.output = True
                if t.key:
                    _async_waiting.pop(t.key, None)
            t.call.add_text(event.response.delta)
        elif isinstance(event, _END):
            _forget(t)
            _finish(t, event.response)
        elif isinstance(event, _FAILED):
            _forget(t)
            closed = isinstance(event, ExceptionEvent) and isinstance(event.exception, GeneratorExit)
            if t.output or closed:
                t.call.abort()  # charge the prompt and what was streamed
            else:
                t.call.fail()
    except Exception:
        log.exception("nasca: could not account for a LlamaIndex LLM call")


def _finish(t: Tracked, response: Any) -> None:
    usage = None
    if response is not None:
        try:
            usage = usage_from_llamaindex(response)
        except Exception:
            log.warning("nasca: unreadable usage in %s; counting the text", type(response).__name__)
        if usage is None:  # count what was streamed, else the whole answer
            if not t.call.counter.text:
                t.call.add_text(_text(response))
            t.call.add_text(_tool_call_text(response))
    t.call.finish(usage)
    extra = getattr(response, "additional_kwargs", None)
    if t.call.warning is not None and isinstance(extra, dict):  # the very response llm.chat() returns
        extra["nasca_warning"] = t.call.warning.model_dump(mode="json")


def on_span_exit(span_id: str, result: Any) -> None:
    t = _spans.get(span_id)
    if t is None or span_id != t.owner:
        return
    t.owner_open = False
    if hasattr(result, "__next__") or hasattr(result, "__anext__"):
        # a stream that is dropped without ever being iterated sends no event at all
        weakref.finalize(result, _abandoned, t).atexit = False


def _abandoned(t: Tracked) -> None:
    if t.call.done:
        return
    _forget(t)
    try:
        t.call.abort() if t.output else t.call.fail()
    except Exception:
        log.exception("nasca: could not settle an abandoned LlamaIndex stream")


def take_pending(span_id: str | None) -> StartEvent | None:
    start = _pending.get()
    if start is None:
        return None
    _pending.set(None)
    return start if start.span_id == span_id else None


def _text(response: Any) -> str:
    if isinstance(response, ChatResponse):
        return response.message.content or ""
    return str(getattr(response, "text", "") or "")


def _tool_call_text(response: Any) -> str:
    if not isinstance(response, ChatResponse):
        return ""
    calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    return "".join(c.tool_name + _json(c.tool_kwargs) for c in calls)


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        blocks = m.blocks
        calls: list[dict[str, Any]] = []
        if len(blocks) == 1 and type(blocks[0]) is TextBlock:  # the common case, in one look
            content = blocks[0].text
        else:  # what ChatMessage.content joins, and the tool calls, in one pass
            texts = []
            for b in blocks:
                if isinstance(b, TextBlock):
                    texts.append(b.text)
                elif isinstance(b, ToolCallBlock):
                    calls.append({"name": b.tool_name, "arguments": _json(b.tool_kwargs)})
            content = "\n".join(texts)
        d: dict[str, Any] = {"role": str(m.role.value), "content": content}
        if calls:
            d["tool_calls"] = calls
        out.append(d)
    return out


def _json(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
