"""``nasca.wrap(fn)``: limits for raw OpenAI and Anthropic SDK calls.

    create = nasca.wrap(client.chat.completions.create)
    reply = create(model="gpt-4o-mini", messages=[...], user="u_42")   # or ctx, or nasca.user()

Works for ``chat.completions.create`` and ``responses.create`` (openai) and
``messages.create`` (anthropic), sync and async, ``stream=True`` included; and for the SDKs'
stream helpers ``messages.stream()``, ``chat.completions.stream()`` and ``responses.stream()``
(``with wrapped(...) as stream:``), charged from the SDK's accumulated final message when the
``with`` block ends; and for google-genai's ``client.models.generate_content`` and
``generate_content_stream`` (and ``client.aio.models``), priced from ``usage_metadata``; and,
with ``Nasca(charge_embeddings=True)``, ``client.embeddings.create`` (RAG apps pay for
embeddings too; off by default). The
budget is reserved before the SDK is called, so a blocked user costs no HTTP request.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from nasca_core._errors import ConfigurationError, UsageParseError
from nasca_core.pricing import (
    AnthropicStreamUsage,
    TokenUsage,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_openai_response,
)

if TYPE_CHECKING:
    from nasca_core._calls import LLMCall
    from nasca_core._ledger import Nasca

log = logging.getLogger("nasca")

Kind = Literal["chat", "responses", "messages", "gemini", "embeddings"]

_KINDS: dict[str, Kind] = {
    "Completions": "chat",
    "AsyncCompletions": "chat",
    "Responses": "responses",
    "AsyncResponses": "responses",
    "Messages": "messages",
    "AsyncMessages": "messages",
    "Embeddings": "embeddings",  # only with Nasca(charge_embeddings=True)
    "AsyncEmbeddings": "embeddings",
    "Models": "gemini",  # google-genai: client.models / client.aio.models
    "AsyncModels": "gemini",
}
_METHODS = {"create": "call", "stream": "helper", "generate_content": "call",
            "generate_content_stream": "stream"}


def _describe(fn: Callable[..., Any]) -> tuple[Kind, bool, str]:
    """The API, whether it is async, and how it answers: "call" (stream=True streams),
    "helper" (an SDK stream manager) or "stream" (Gemini's generate_content_stream)."""
    owner = getattr(fn, "__self__", None)
    name = type(owner).__name__
    kind = _KINDS.get(name)
    method = _METHODS.get(getattr(fn, "__name__", ""))
    gemini_method = getattr(fn, "__name__", "").startswith("generate")
    if kind is None or method is None or (kind == "gemini") != gemini_method or (
        kind == "embeddings" and method != "call"
    ):
        raise ConfigurationError(
            "wrap() takes client.chat.completions.create, client.responses.create (openai), "
            "client.messages.create (anthropic), their .stream helpers, or google-genai's "
            f"client.models.generate_content(_stream), sync or async; got {fn!r}"
        )
    return kind, name.startswith("Async"), method


# -- what each API's request and response look like (pure) -----------------------------
def _prompt(kind: Kind, kwargs: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
    """The request as OpenAI-style messages for the estimate, and its output-token cap."""
    messages: list[dict[str, Any]] = []
    if kind == "embeddings":
        given = kwargs.get("input") or ""
        items = [given] if isinstance(given, str) else list(given)
        # Token-id inputs are counted as their length: each id is one token.
        messages = [{"content": i} if isinstance(i, str) else {"content": " x" * len(i)} for i in items]
        return messages, 0
    if kind == "chat":
        messages = [dict(m) if isinstance(m, Mapping) else {"content": str(m)}
                    for m in kwargs.get("messages") or []]
        cap = kwargs.get("max_completion_tokens") or kwargs.get("max_tokens")
    elif kind == "responses":
        if kwargs.get("instructions"):
            messages.append({"role": "system", "content": kwargs["instructions"]})
        given = kwargs.get("input") or ""
        items = [{"role": "user", "content": given}] if isinstance(given, str) else list(given)
        messages += [dict(m) if isinstance(m, Mapping) else {"content": str(m)} for m in items]
        cap = kwargs.get("max_output_tokens")
    elif kind == "messages":
        if kwargs.get("system"):
            messages.append({"role": "system", "content": kwargs["system"]})
        messages += [dict(m) for m in kwargs.get("messages") or []]
        cap = kwargs.get("max_tokens")
    else:
        config = kwargs.get("config")
        system = _field(config, "system_instruction") if config is not None else None
        if system:
            messages.append({"role": "system", "content": _gemini_text(system)})
        messages.append({"role": "user", "content": _gemini_text(kwargs.get("contents"))})
        cap = _field(config, "max_output_tokens") if config is not None else None
    return messages, cap if isinstance(cap, int) and not isinstance(cap, bool) else None


def _gemini_text(contents: Any) -> str:
    """The text of google-genai ``contents``: a str, Content/Part objects or dicts, or a list."""
    if contents is None:
        return ""
    if isinstance(contents, str):
        return contents
    if isinstance(contents, list | tuple):
        return "\n".join(_gemini_text(c) for c in contents)
    text = _field(contents, "text")
    if isinstance(text, str):
        return text
    parts = _field(contents, "parts")
    return _gemini_text(list(parts)) if parts else ""


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _response_usage(kind: Kind, response: Any) -> TokenUsage | None:
    """The usage the provider reported, or None when it reported none or none we can read:
    then the call is charged for its counted tokens (the provider has answered, so the hold
    must close with a charge, never $0 and never left dangling)."""
    try:
        return _parse_usage(kind, response)
    except UsageParseError as exc:
        if kind not in _unreadable:
            _unreadable.add(kind)
            log.warning("nasca: unreadable %s usage, charging counted tokens instead: %s", kind, exc)
        return None


_unreadable: set[str] = set()


def _parse_usage(kind: Kind, response: Any) -> TokenUsage | None:
    if kind == "embeddings":
        usage = _field(response, "usage")
        tokens = _field(usage, "prompt_tokens") if usage is not None else None
        return TokenUsage(input_tokens=tokens) if isinstance(tokens, int) else None
    if kind == "gemini":
        metadata = _field(response, "usage_metadata")
        return None if metadata is None else usage_from_gemini(metadata)
    # OpenAI's service_tier and web_search_call items live beside the usage, not in it.
    if kind != "messages":
        return usage_from_openai_response(response)
    usage = _field(response, "usage")
    return None if usage is None else usage_from_anthropic(usage)


def _response_text(kind: Kind, response: Any) -> str:
    if kind == "chat":
        return "".join(str(_field(_field(c, "message"), "content") or "")
                       for c in _field(response, "choices") or [])
    if kind == "responses":
        return str(_field(response, "output_text") or "")
    if kind == "gemini":
        return "".join(_gemini_text(_field(c, "content")) for c in _field(response, "candidates") or [])
    return "".join(str(_field(b, "text") or "") for b in _field(response, "content") or [])


@dataclass
class _Observer:
    """Reads one stream: text deltas, the usage, and which events to hide from the caller."""

    kind: Kind
    hide_usage_chunk: bool
    usage: TokenUsage | None = None
    anthropic: AnthropicStreamUsage | None = None
    counted: bool = False  # the stream's usage was unreadable: charge counted tokens

    def feed(self, event: Any) -> tuple[str | None, bool]:
        if self.kind == "gemini":
            # Every chunk carries the usage so far; the last one has the whole call's.
            self.usage = _response_usage("gemini", event) or self.usage
            return _response_text("gemini", event), False
        if self.kind == "chat":
            choices = _field(event, "choices") or []
            usage = _field(event, "usage")
            if usage is not None:
                self.usage = _response_usage("chat", event)
            text = "".join(str(_field(_field(c, "delta"), "content") or "") for c in choices)
            return text, self.hide_usage_chunk and usage is not None and not choices
        kind = _field(event, "type")
        if self.kind == "responses":
            if kind == "response.output_text.delta":
                return str(_field(event, "delta") or ""), False
            if kind in ("response.completed", "response.incomplete"):
                self.usage = _response_usage("responses", _field(event, "response")) or self.usage
            return None, False
        if self.anthropic is None:
            self.anthropic = AnthropicStreamUsage()
        if not self.counted:
            try:
                self.anthropic.add(event)
                self.usage = self.anthropic.usage
            except UsageParseError:  # counted instead, like a stream that reports nothing
                self.usage, self.counted = None, True
        if kind == "content_block_delta":
            delta = _field(event, "delta")
            return str(_field(delta, "text") or _field(delta, "partial_json") or ""), False
        return None, False


class _Stream:
    """The SDK's stream, passed through; the call is charged when it ends or is dropped."""

    def __init__(self, inner: Any, call: LLMCall, observer: _Observer) -> None:
        self._inner = inner
        self._call = call
        self._observer = observer
        self._finished = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __iter__(self) -> Iterator[Any]:
        try:
            for event in self._inner:
                text, hide = self._observer.feed(event)
                self._call.add_text(text)
                if not hide:
                    yield event
        except BaseException:
            self._call.abort()  # stopped early or broke: charge the prompt and what streamed
            raise
        self._call.finish(self._observer.usage)

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._inner.close()
        self._call.abort()  # a no-op when the stream already finished


class _AsyncStream(_Stream):
    async def __aiter__(self) -> AsyncIterator[Any]:  # type: ignore[override]
        try:
            async for event in self._inner:
                text, hide = self._observer.feed(event)
                self._call.add_text(text)
                if not hide:
                    yield event
        except BaseException:
            await self._call.aabort()
            raise
        await self._call.afinish(self._observer.usage)

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        closer = getattr(self._inner, "close", None) or self._inner.aclose  # SDK stream / generator
        await closer()
        await self._call.aabort()


def _snapshot_text(kind: Kind, snapshot: Any) -> str:
    return _response_text(kind, snapshot) if snapshot is not None else ""


class _Managed:
    """An SDK stream helper's context manager: the call ends with the ``with`` block, charged
    from the SDK's own accumulated message (its usage, tier and tool counts)."""

    def __init__(self, manager: Any, call: LLMCall | None, kind: Kind,
                 reserve: Callable[[], Any] | None = None) -> None:
        self._manager = manager
        self._call: Any = call  # async helpers reserve in __aenter__, before the request
        self._reserve = reserve
        self._kind = kind
        self._stream: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)

    def _entered(self, stream: Any) -> Any:
        self._stream = stream
        return stream

    def _snapshot(self) -> tuple[Any, bool]:
        """The accumulated message and whether it is complete (messages and chat)."""
        if self._kind == "messages":
            snap = self._stream.current_message_snapshot
            return snap, _field(snap, "stop_reason") is not None
        snap = self._stream.current_completion_snapshot
        return snap, _field(snap, "usage") is not None

    def _settle_sync(self, failed: bool) -> None:
        if self._kind == "responses":
            final = None if failed else _final_response(self._stream.get_final_response)
            self._end(final)
            return
        snap, complete = self._snapshot()
        self._end(snap if complete and not failed else None, snap)

    def _end(self, final: Any, partial: Any = None) -> None:
        if final is None:
            self._call.add_text(_snapshot_text(self._kind, partial))
            self._call.abort()
        else:
            self._call.finish(_response_usage(self._kind, final))

    def __enter__(self) -> Any:
        try:
            return self._entered(self._manager.__enter__())
        except BaseException:
            self._call.fail()
            raise

    def __exit__(self, *exc: Any) -> Any:
        try:
            self._settle_sync(exc[0] is not None)
        finally:
            result = self._manager.__exit__(*exc)
        return result

    async def __aenter__(self) -> Any:
        if self._reserve is not None:
            self._call = await self._reserve()
        try:
            return self._entered(await self._manager.__aenter__())
        except BaseException:
            await self._call.afail()
            raise

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            failed = exc[0] is not None
            if self._kind == "responses":
                final = None if failed else await _afinal_response(self._stream.get_final_response)
                partial = None
            else:
                snap, complete = self._snapshot()
                final, partial = (snap if complete and not failed else None), snap
            if final is None:
                self._call.add_text(_snapshot_text(self._kind, partial))
                await self._call.aabort()
            else:
                await self._call.afinish(_response_usage(self._kind, final))
        finally:
            result = await self._manager.__aexit__(*exc)
        return result


def _final_response(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except RuntimeError:  # no response.completed event: the stream broke off
        return None


async def _afinal_response(get: Callable[[], Any]) -> Any:
    try:
        return await get()
    except RuntimeError:
        return None


def _split(kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any, bool]:
    """Take Nasca's own arguments out of an SDK call: user, tier, ctx; ask OpenAI streams for usage."""
    if len(args) > 1:
        raise TypeError("wrapped SDK calls take keyword arguments, plus an optional trailing ctx")
    ctx = kwargs.pop("ctx", args[0] if args else None)
    tier = kwargs.pop("tier", None)
    # OpenAI's own `user` parameter means the same thing (the end user): keep sending it.
    user = kwargs.get("user") if kind in ("chat", "responses", "embeddings") else kwargs.pop("user", None)
    hide = False
    if kind == "chat" and kwargs.get("stream"):
        options = dict(kwargs.get("stream_options") or {})
        if not options.get("include_usage"):
            options["include_usage"] = True
            kwargs["stream_options"] = options
            hide = True  # the caller didn't ask for the usage chunk: don't show it
    return user, tier, ctx, hide


def wrap(nasca: Nasca, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an SDK ``create`` so every call is checked, reserved and charged by ``nasca``.

    The wrapped function takes the SDK's arguments plus ``user=``, ``tier=`` and a
    trailing ``ctx`` (or uses ``nasca.user()``). Raises ConfigurationError for a
    function it can't wrap; the wrapped function raises NascaBlockedError before any
    HTTP request when the user may not spend.
    """
    kind, is_async, method = _describe(fn)
    helper = method == "helper"
    if kind == "embeddings" and not nasca.charge_embeddings:
        raise ConfigurationError(
            "embeddings are not charged by default: build Nasca(..., charge_embeddings=True) to "
            "price and charge client.embeddings.create against the user's allowance"
        )

    def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any, _Observer]:
        if helper and kind == "chat":
            # The helper streams by itself; ask for the usage chunk so the snapshot has usage.
            kwargs["stream_options"] = {**dict(kwargs.get("stream_options") or {}), "include_usage": True}
        user, tier, ctx, hide = _split(kind, args, kwargs)
        messages, cap = _prompt(kind, kwargs)
        spec = {"model": kwargs.get("model"), "messages": messages, "max_tokens": cap,
                "tools": kwargs.get("tools") or None, "user": user, "tier": tier, "ctx": ctx}
        return spec, method == "stream" or bool(kwargs.get("stream")), _Observer(kind, hide)

    if helper:
        @functools.wraps(fn)
        def manager(*args: Any, **kwargs: Any) -> _Managed:
            spec, _, _ = start(args, kwargs)
            model = spec.pop("model")
            if is_async:  # nothing is sent before __aenter__: reserve there, without blocking
                return _Managed(fn(**kwargs), None, kind, lambda: nasca.astart_call(model, **spec))
            call = nasca.start_call(model, **spec)
            try:
                return _Managed(fn(**kwargs), call, kind)
            except BaseException:
                call.fail()
                raise

        return manager

    if is_async:
        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            spec, streaming, observer = start(args, kwargs)
            call = await nasca.astart_call(spec.pop("model"), **spec)
            try:
                result = await fn(**kwargs)
            except BaseException:
                await call.afail()
                raise
            if streaming:
                return _AsyncStream(result, call, observer)
            usage = _response_usage(kind, result)
            if usage is None:
                call.add_text(_response_text(kind, result))
            await call.afinish(usage)
            return result

        return awrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        spec, streaming, observer = start(args, kwargs)
        call = nasca.start_call(spec.pop("model"), **spec)
        try:
            result = fn(**kwargs)
        except BaseException:
            call.fail()
            raise
        if streaming:
            return _Stream(result, call, observer)
        usage = _response_usage(kind, result)
        if usage is None:
            call.add_text(_response_text(kind, result))
        call.finish(usage)
        return result

    return wrapper
