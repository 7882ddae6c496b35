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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nasca_core._env import user_hash_key
from nasca_core._errors import ConfigurationError, UsageParseError
from nasca_core._fallback import fallback_of, mark
from nasca_core._fallback_calls import astart_with_fallback, start_with_fallback
from nasca_core._identity import current
from nasca_core._warned import warned
from nasca_core._wrap_request import (
    Kind,
    SendUser,
    check_send_user,
    field_of,
    lower_cap,
    prompt_of,
    take_user,
)
from nasca_core._wrap_response import response_text, response_usage
from nasca_core.pricing import AnthropicStreamUsage, GeminiStreamUsage, TokenUsage

if TYPE_CHECKING:
    from nasca_core._calls import LLMCall
    from nasca_core._ledger import Nasca

log = logging.getLogger("nasca")

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


@dataclass
class _Observer:
    """Reads one stream: text deltas, the usage, and which events to hide from the caller."""

    kind: Kind
    hide_usage_chunk: bool
    usage: TokenUsage | None = None
    anthropic: AnthropicStreamUsage | None = None
    counted: bool = False  # the stream's usage was unreadable: charge counted tokens
    tools: Any = None  # the request's (Anthropic's container rule)
    model: Any = None  # the request's (Gemini's grounding unit)
    gemini: GeminiStreamUsage | None = None

    def feed(self, event: Any) -> tuple[str | None, bool]:
        if self.kind == "gemini":
            # Every chunk carries the usage so far; grounding queries may come on any chunk.
            self.gemini = self.gemini or GeminiStreamUsage(self.model)
            self.gemini.add(event)
            self.usage = response_usage("gemini", self.gemini) or self.usage
            return response_text("gemini", event), False
        if self.kind == "chat":
            choices = field_of(event, "choices") or []
            usage = field_of(event, "usage")
            if usage is not None:
                self.usage = response_usage("chat", event)
            text = "".join(str(field_of(field_of(c, "delta"), "content") or "") for c in choices)
            return text, self.hide_usage_chunk and usage is not None and not choices
        kind = field_of(event, "type")
        if self.kind == "responses":
            if kind == "response.output_text.delta":
                return str(field_of(event, "delta") or ""), False
            if kind in ("response.completed", "response.incomplete"):
                self.usage = response_usage("responses", field_of(event, "response")) or self.usage
            return None, False
        if self.anthropic is None:
            self.anthropic = AnthropicStreamUsage(self.tools)
        if not self.counted:
            try:
                self.anthropic.add(event)
                self.usage = self.anthropic.usage
            except UsageParseError:  # counted instead, like a stream that reports nothing
                self.usage, self.counted = None, True
        if kind == "content_block_delta":
            delta = field_of(event, "delta")
            return str(field_of(delta, "text") or field_of(delta, "partial_json") or ""), False
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
    return response_text(kind, snapshot) if snapshot is not None else ""


class _Managed:
    """An SDK stream helper's context manager: the call ends with the ``with`` block, charged
    from the SDK's own accumulated message (its usage, tier and tool counts)."""

    def __init__(self, manager: Any, call: LLMCall | None, kind: Kind,
                 reserve: Callable[[], Any] | None = None, tools: Any = None) -> None:
        self._manager = manager
        self._tools = tools
        self._call: Any = call  # async helpers reserve in __aenter__, then make the SDK's manager
        self._reserve = reserve
        self._kind = kind
        self._stream: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)

    def _entered(self, stream: Any) -> Any:
        self._stream = stream
        # The SDK's stream ran on its manager's model and carries its call's warning.
        return warned(mark(stream, fallback_of(self)), self._call)

    def _snapshot(self) -> tuple[Any, bool]:
        """The accumulated message and whether it is complete (messages and chat)."""
        if self._kind == "messages":
            snap = self._stream.current_message_snapshot
            return snap, field_of(snap, "stop_reason") is not None
        snap = self._stream.current_completion_snapshot
        return snap, field_of(snap, "usage") is not None

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
            self._call.finish(response_usage(self._kind, final, self._tools))

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
            if self._reserve is not None:  # made now: the reserve may have lowered the request's cap
                self._manager = self._manager()
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
                await self._call.afinish(response_usage(self._kind, final, self._tools))
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


def _split(kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any], send_user: SendUser,
           hash_key: str, get_user_id: object) -> tuple[Any, Any, Any, bool]:
    """Take Nasca's own arguments out of an SDK call (user, tier, ctx) and the end user the
    request names (``_wrap_request.take_user``); ask OpenAI streams for their usage."""
    if len(args) > 1:
        raise TypeError("wrapped SDK calls take keyword arguments, plus an optional trailing ctx")
    ctx = kwargs.pop("ctx", args[0] if args else None)
    tier = kwargs.pop("tier", None)
    user, fallback = take_user(kind, kwargs, send_user, hash_key)
    if user is None and fallback is not None and (ctx is None or get_user_id is None) and current() is None:
        user = fallback  # nothing else names the user: the request's own field does
    hide = False
    if kind == "chat" and kwargs.get("stream"):
        options = dict(kwargs.get("stream_options") or {})
        if not options.get("include_usage"):
            options["include_usage"] = True
            kwargs["stream_options"] = options
            hide = True  # the caller didn't ask for the usage chunk: don't show it
    return user, tier, ctx, hide


def _hash_key(given: str | None, nasca: Nasca, send_user: SendUser) -> str:
    key = given or user_hash_key()  # the namespace only when no key is set (a remote one asks its server)
    namespace = "" if key is not None else nasca.namespace
    if key is None and send_user == "hash" and namespace not in _unkeyed:
        _unkeyed.add(namespace)
        log.warning("nasca: wrap() hashes user ids keyed by the namespace %r, which is not secret: whoever "
                    "sees a hash can test guessed ids (emails, numbers) against it, and apps on one "
                    "namespace send the same hash. Set NASCA_USER_HASH_KEY (or wrap(..., user_hash_key=)) "
                    "to a secret.", namespace)
    return key or namespace


_unkeyed: set[str] = set()


def wrap(nasca: Nasca, fn: Callable[..., Any], *, cap_output: bool | None = None,
         send_user: SendUser = "hash", user_hash_key: str | None = None) -> Callable[..., Any]:
    """Wrap an SDK ``create`` so every call is checked, reserved and charged by ``nasca``.

    The wrapped function takes the SDK's arguments plus ``user=``, ``tier=`` and a
    trailing ``ctx`` (or uses ``nasca.user()``), by precedence: ``user=`` (on OpenAI also the
    SDK's own ``user`` field), ``get_user_id(ctx)``, ``nasca.user()``, and last OpenAI's
    ``safety_identifier`` or Anthropic's ``metadata={"user_id": ...}`` (often a session id).
    What the provider receives of these ids is ``send_user``: "hash" (default: a stable opaque
    hash keyed by ``user_hash_key``, else ``NASCA_USER_HASH_KEY``, else the namespace, with a
    warning), "none" (the field is dropped) or "raw". ``cap_output=True`` (default: ``nasca.cap_output``)
    lowers a call's max tokens to what the user's allowance and credits can still pay for
    (``LLMCall.output_cap``). On a tier with ``on_exhausted="fallback"``, a call its spent
    allowance blocks is sent with the fallback model instead (``nasca_core.fallback_of(response)``
    says so; ``_fallback``): never an embeddings call, nor to a model of another provider
    than the one asked for (the price table's provider): those block. Raises
    ConfigurationError for a function it can't wrap or a bad option; the wrapped function
    raises NascaBlockedError before any HTTP request when the user may not spend.
    """
    kind, is_async, method = _describe(fn)
    helper = method == "helper"
    send = check_send_user(send_user)
    key = _hash_key(user_hash_key, nasca, send)
    capped = bool(getattr(nasca, "cap_output", False) if cap_output is None else cap_output)
    if kind == "embeddings" and not nasca.charge_embeddings:
        raise ConfigurationError(
            "embeddings are not charged by default: build Nasca(..., charge_embeddings=True) to "
            "price and charge client.embeddings.create against the user's allowance"
        )

    falls = kind != "embeddings"  # an embeddings model has no cheaper chat model to fall back to

    def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], _Observer | None]:
        if helper and kind == "chat":
            # The helper streams by itself; ask for the usage chunk so the snapshot has usage.
            kwargs["stream_options"] = {**dict(kwargs.get("stream_options") or {}), "include_usage": True}
        user, tier, ctx, hide = _split(kind, args, kwargs, send, key, nasca.get_user_id)
        messages, cap = prompt_of(kind, kwargs)
        spec = {"model": kwargs.get("model"), "messages": messages, "max_tokens": cap,
                "tools": kwargs.get("tools") or None, "user": user, "tier": tier, "ctx": ctx,
                "cap_output": capped and kind != "embeddings"}
        # None: not streamed (most calls), so nothing reads a stream
        streaming = method == "stream" or bool(kwargs.get("stream"))
        return spec, _Observer(kind, hide, tools=spec["tools"], model=spec["model"]) if streaming else None

    def limit(call: LLMCall, spec: dict[str, Any], kwargs: dict[str, Any]) -> None:
        """Lower the request's cap: after the reserve, so whatever raises must release it."""
        if capped and kind != "embeddings" and (cap := call.output_cap(spec["max_tokens"])) is not None:
            lower_cap(kind, kwargs, cap)

    if helper:
        @functools.wraps(fn)
        def manager(*args: Any, **kwargs: Any) -> _Managed:
            spec, _ = start(args, kwargs)
            model = spec.pop("model")
            if is_async:  # nothing is sent before __aenter__: reserve there, without blocking

                async def reserve() -> LLMCall:
                    call, fell = await astart_with_fallback(nasca, model, kwargs, fallback=falls, **spec)
                    warned(mark(managed, fell), call)  # known from the reserve, in __aenter__
                    try:
                        limit(call, spec, kwargs)
                    except BaseException:
                        await call.afail()
                        raise
                    return call

                managed = _Managed(lambda: fn(**kwargs), None, kind, reserve, spec["tools"])
                return managed
            call, fell = start_with_fallback(nasca, model, kwargs, fallback=falls, **spec)  # fell: rerouted
            try:
                limit(call, spec, kwargs)
                return warned(mark(_Managed(fn(**kwargs), call, kind, tools=spec["tools"]), fell), call)
            except BaseException:
                call.fail()
                raise

        return manager

    if is_async:
        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            spec, observer = start(args, kwargs)
            call, fell = await astart_with_fallback(nasca, spec.pop("model"), kwargs, fallback=falls, **spec)
            if observer is not None:
                observer.model = call.model  # the fallback's, when it fell back (Gemini's stream usage)
            try:
                limit(call, spec, kwargs)
                result = await fn(**kwargs)
            except BaseException:
                await call.afail()
                raise
            if observer is not None:
                return mark(warned(_AsyncStream(result, call, observer), call), fell)
            usage = response_usage(kind, result, spec["tools"], call.model)
            if usage is None:
                call.add_text(response_text(kind, result))
            await call.afinish(usage)
            return mark(warned(result, call), fell)  # warning_of(result): Tier.warn_at

        return awrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        spec, observer = start(args, kwargs)
        call, fell = start_with_fallback(nasca, spec.pop("model"), kwargs, fallback=falls, **spec)
        if observer is not None:
            observer.model = call.model  # the fallback's, when it fell back (Gemini's stream usage)
        try:
            limit(call, spec, kwargs)
            result = fn(**kwargs)
        except BaseException:
            call.fail()
            raise
        if observer is not None:
            return mark(warned(_Stream(result, call, observer), call), fell)
        usage = response_usage(kind, result, spec["tools"], call.model)
        if usage is None:
            call.add_text(response_text(kind, result))
        call.finish(usage)
        return mark(warned(result, call), fell)

    return wrapper
