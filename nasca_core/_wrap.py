"""``nasca.wrap(fn)``: limits for raw OpenAI and Anthropic SDK calls.

    create = nasca.wrap(client.chat.completions.create)
    reply = create(model="gpt-4o-mini", messages=[...], user="u_42")   # or ctx, or nasca.user()

Works for ``chat.completions.create`` and ``responses.create`` (openai) and
``messages.create`` (anthropic), sync and async, ``stream=True`` included. The budget is
reserved before the SDK is called, so a blocked user costs no HTTP request.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from nasca_core._errors import ConfigurationError
from nasca_core.pricing import (
    AnthropicStreamUsage,
    TokenUsage,
    usage_from_anthropic,
    usage_from_openai,
)

if TYPE_CHECKING:
    from nasca_core._calls import LLMCall
    from nasca_core._ledger import Nasca

Kind = Literal["chat", "responses", "messages"]

_KINDS: dict[str, Kind] = {
    "Completions": "chat",
    "AsyncCompletions": "chat",
    "Responses": "responses",
    "AsyncResponses": "responses",
    "Messages": "messages",
    "AsyncMessages": "messages",
}


def _describe(fn: Callable[..., Any]) -> tuple[Kind, bool]:
    owner = getattr(fn, "__self__", None)
    name = type(owner).__name__
    kind = _KINDS.get(name)
    if kind is None or getattr(fn, "__name__", "") != "create":
        raise ConfigurationError(
            "wrap() takes client.chat.completions.create, client.responses.create (openai) or "
            f"client.messages.create (anthropic), sync or async; got {fn!r}"
        )
    return kind, name.startswith("Async")


# -- what each API's request and response look like (pure) -----------------------------
def _prompt(kind: Kind, kwargs: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
    """The request as OpenAI-style messages for the estimate, and its output-token cap."""
    messages: list[dict[str, Any]] = []
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
    else:
        if kwargs.get("system"):
            messages.append({"role": "system", "content": kwargs["system"]})
        messages += [dict(m) for m in kwargs.get("messages") or []]
        cap = kwargs.get("max_tokens")
    return messages, cap if isinstance(cap, int) and not isinstance(cap, bool) else None


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _response_usage(kind: Kind, response: Any) -> TokenUsage | None:
    usage = _field(response, "usage")
    if usage is None:
        return None
    return usage_from_anthropic(usage) if kind == "messages" else usage_from_openai(usage)


def _response_text(kind: Kind, response: Any) -> str:
    if kind == "chat":
        return "".join(str(_field(_field(c, "message"), "content") or "")
                       for c in _field(response, "choices") or [])
    if kind == "responses":
        return str(_field(response, "output_text") or "")
    return "".join(str(_field(b, "text") or "") for b in _field(response, "content") or [])


@dataclass
class _Observer:
    """Reads one stream: text deltas, the usage, and which events to hide from the caller."""

    kind: Kind
    hide_usage_chunk: bool
    usage: TokenUsage | None = None
    anthropic: AnthropicStreamUsage | None = None

    def feed(self, event: Any) -> tuple[str | None, bool]:
        if self.kind == "chat":
            choices = _field(event, "choices") or []
            usage = _field(event, "usage")
            if usage is not None:
                self.usage = usage_from_openai(usage)
            text = "".join(str(_field(_field(c, "delta"), "content") or "") for c in choices)
            return text, self.hide_usage_chunk and usage is not None and not choices
        kind = _field(event, "type")
        if self.kind == "responses":
            if kind == "response.output_text.delta":
                return str(_field(event, "delta") or ""), False
            if kind in ("response.completed", "response.incomplete"):
                usage = _field(_field(event, "response"), "usage")
                if usage is not None:
                    self.usage = usage_from_openai(usage)
            return None, False
        if self.anthropic is None:
            self.anthropic = AnthropicStreamUsage()
        self.anthropic.add(event)
        self.usage = self.anthropic.usage
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
        await self._inner.close()
        await self._call.aabort()


def _split(kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any, bool]:
    """Take Nasca's own arguments out of an SDK call: user, tier, ctx; ask OpenAI streams for usage."""
    if len(args) > 1:
        raise TypeError("wrapped SDK calls take keyword arguments, plus an optional trailing ctx")
    ctx = kwargs.pop("ctx", args[0] if args else None)
    tier = kwargs.pop("tier", None)
    # OpenAI's own `user` parameter means the same thing (the end user): keep sending it.
    user = kwargs.get("user") if kind != "messages" else kwargs.pop("user", None)
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
    kind, is_async = _describe(fn)

    def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any, _Observer]:
        user, tier, ctx, hide = _split(kind, args, kwargs)
        messages, cap = _prompt(kind, kwargs)
        spec = {"model": kwargs.get("model"), "messages": messages, "max_tokens": cap,
                "tools": kwargs.get("tools") or None, "user": user, "tier": tier, "ctx": ctx}
        return spec, bool(kwargs.get("stream")), _Observer(kind, hide)

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
