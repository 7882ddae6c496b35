"""The local provider server: what it is told to answer, what it recorded, and its
lifecycle. The HTTP side is ``_http`` (plumbing) and ``_endpoints`` (the APIs)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from nasca_core._errors import ConfigurationError
from nasca_core.testing._http import ENDPOINTS, HTTPServer
from nasca_core.testing._replies import (
    DEFAULT_REPLY_TEXT,
    Failure,
    Reply,
    ToolCall,
    Turn,
    Usage,
    new_id,
)
from nasca_core.testing._state import RecordedRequest, State
from nasca_core.testing._tokens import TokenizerSpec, resolve_tokenizer, truncate

if TYPE_CHECKING:
    import anthropic
    import openai
    from google import genai

Responder = Callable[[dict[str, Any]], Reply | str]

DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "o4-mini",
    "text-embedding-3-small",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
)


class ProviderServer:
    """A local OpenAI + Anthropic compatible HTTP server for tests, demos and notebooks.

    Speaks Chat Completions, Responses, Embeddings and Models (OpenAI) and Messages
    (Anthropic), as JSON and as SSE streams, on ``127.0.0.1`` and a free port::

        with ProviderServer(reply="Hello!") as srv:
            client = openai.OpenAI(base_url=srv.base_url, api_key="x")
            srv.queue(Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]))
            ...
            assert srv.last_request.usage.input_tokens == srv.count_tokens("...")

    Each chat request takes the next queued reply, else ``responder(request_json)``,
    else the default ``reply``. Usage is computed with the ``tokenizer`` (see
    ``count_tokens``) unless the reply overrides it, and a reply longer than the
    request's max tokens is cut to fit with finish reason "length".

    Options (keyword-only, all but ``tokenizer`` and the address settable later as
    attributes): ``responder``; ``tokenizer`` ("auto", "words", "o200k_base",
    "cl100k_base" or a ``callable(str) -> int``); ``latency`` seconds before every
    answer; ``chunk_delay`` seconds before every streamed content delta; ``api_key``
    to require (401 otherwise); ``models`` listed by ``GET /v1/models``.
    Raises ConfigurationError for an unknown or unloadable tokenizer.
    """

    def __init__(
        self,
        reply: str | Reply = DEFAULT_REPLY_TEXT,
        *,
        responder: Responder | None = None,
        tokenizer: TokenizerSpec = "auto",
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        api_key: str | None = None,
        models: Iterable[str] = DEFAULT_MODELS,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.default_reply = Reply(reply) if isinstance(reply, str) else reply
        self.responder = responder
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.api_key = api_key
        self.models = list(models)
        self._tokenizer = resolve_tokenizer(tokenizer)
        self._host = host
        self._requested_port = port
        self._state = State()
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.url if self._httpd else "stopped"
        return f"ProviderServer({where}, tokenizer={self.tokenizer!r})"

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> ProviderServer:
        """Bind and serve in a daemon thread; returns self. Raises OSError if binding fails."""
        if self._httpd is not None:
            return self
        httpd = HTTPServer((self._host, self._requested_port), self, self._state, self._turn)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"nasca-provider-server:{httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection; safe to call twice."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> ProviderServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("ProviderServer is not running; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """For OpenAI clients (``base_url``/``api_base``): ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """For Anthropic clients (the SDK appends ``/v1/messages``): the bare URL."""
        return self.url

    # -- scripting --------------------------------------------------------------------

    def queue(self, *replies: Reply | str) -> None:
        """Answer the next chat requests with these replies, in order."""
        with self._state.cond:
            self._state.replies.extend(Reply(r) if isinstance(r, str) else r for r in replies)

    def fail_next(
        self,
        status: int = 500,
        body: Any = None,
        *,
        message: str | None = None,
        times: int = 1,
        endpoint: str | None = None,
        after_chunks: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Make the next ``times`` requests (to ``endpoint``, or any) fail.

        The error body is the provider's JSON error shape for ``status`` (with
        ``message``), or ``body`` verbatim. With ``after_chunks`` a streaming request
        gets a 200, that many content deltas, then the provider's in-stream error event.
        Failed requests are recorded and counted like any other.
        Raises ConfigurationError for an unknown endpoint or a status below 400.
        """
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ConfigurationError(f"unknown endpoint {endpoint!r}; one of {ENDPOINTS}")
        if status < 400 or status > 599:
            raise ConfigurationError(f"fail_next status must be 4xx or 5xx, got {status}")
        failure = Failure(status, body, message, endpoint, after_chunks, dict(headers or {}))
        with self._state.cond:
            self._state.failures.extend([failure] * times)

    def reset(self) -> None:
        """Forget recorded requests and errors, queued replies and pending failures."""
        with self._state.cond:
            self._state.replies.clear()
            self._state.failures.clear()
            self._state.requests.clear()
            self._state.errors.clear()

    # -- inspection -------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._state.cond:
            return list(self._state.requests)

    @property
    def request_count(self) -> int:
        with self._state.cond:
            return len(self._state.requests)

    @property
    def counts(self) -> Counter[str]:
        """Requests per endpoint (``"chat.completions"``, ``"messages"``, ...); 0 if none."""
        with self._state.cond:
            return Counter(r.endpoint for r in self._state.requests)

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request. Raises LookupError when none was received."""
        with self._state.cond:
            if not self._state.requests:
                raise LookupError("the provider server has received no request")
            return self._state.requests[-1]

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised inside the server (a failing responder, a server bug)."""
        with self._state.cond:
            return list(self._state.errors)

    @property
    def pending_replies(self) -> int:
        with self._state.cond:
            return len(self._state.replies)

    @property
    def tokenizer(self) -> str:
        """The name of the token counter in use: ``"o200k_base"``, ``"words"``, ..."""
        return self._tokenizer.name

    def count_tokens(self, text: str) -> int:
        """Tokens the server counts for ``text``.

        A request's computed ``input_tokens`` is ``count_tokens`` of its message texts
        joined with newlines (system/instructions, message text parts, tool-call
        arguments, tool results; not tool definitions or images). Computed
        ``output_tokens`` is ``count_tokens(text)`` plus, per tool call,
        ``count_tokens(name) + count_tokens(call.arguments_json)``.
        """
        return self._tokenizer.count(text)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is being answered; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._state.cond:
            while self._state.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state.cond.wait(left)
        return True

    # -- SDK conveniences (the SDKs are optional extras: imported on use) ---------------

    def openai_client(self, **kwargs: Any) -> openai.OpenAI:
        """An ``openai.OpenAI`` pointed here, with ``max_retries=0`` unless given."""
        import openai

        return openai.OpenAI(**self._client_kwargs(kwargs, "base_url", self.base_url))

    def async_openai_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        import openai

        return openai.AsyncOpenAI(**self._client_kwargs(kwargs, "base_url", self.base_url))

    def anthropic_client(self, **kwargs: Any) -> anthropic.Anthropic:
        """An ``anthropic.Anthropic`` pointed here, with ``max_retries=0`` unless given."""
        import anthropic

        return anthropic.Anthropic(**self._client_kwargs(kwargs, "base_url", self.anthropic_base_url))

    def async_anthropic_client(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        import anthropic

        return anthropic.AsyncAnthropic(**self._client_kwargs(kwargs, "base_url", self.anthropic_base_url))

    def gemini_client(self, **kwargs: Any) -> genai.Client:
        """A ``google.genai.Client`` (Gemini API) pointed here; ``client.aio`` is its async twin
        (on httpx: google-genai would pick aiohttp when installed)."""
        import httpx
        from google import genai
        from google.genai import types

        kwargs.setdefault("api_key", self.api_key or "test-key")
        kwargs.setdefault(
            "http_options",
            types.HttpOptions(base_url=self.url, async_client_args={"transport": httpx.AsyncHTTPTransport()}),
        )
        return genai.Client(**kwargs)

    def _client_kwargs(self, kwargs: dict[str, Any], key: str, url: str) -> dict[str, Any]:
        kwargs.setdefault(key, url)
        kwargs.setdefault("api_key", self.api_key or "test-key")
        kwargs.setdefault("max_retries", 0)
        return kwargs

    # -- answering (called on handler threads) -----------------------------------------

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        queued = self._state.take_reply()
        if queued is not None:
            return queued
        if self.responder is not None:
            answer = self.responder(body)
            return Reply(answer) if isinstance(answer, str) else answer
        return self.default_reply

    def _turn(
        self,
        record: RecordedRequest,
        pieces: list[str],
        max_tokens: int | None,
        id_prefix: str,
    ) -> Turn:
        body = record.json
        reply = self._next_reply(body)
        prompt = "\n".join(pieces)
        count = self._tokenizer.count
        calls = [c if c.id else replace(c, id=new_id(id_prefix)) for c in reply.tool_calls]
        text, finish = reply.text, reply.finish_reason
        usage = reply.usage
        if usage is None:
            output = count(text) + _tool_tokens(calls, count)
            if max_tokens is not None and output > max_tokens:
                # a real model stops at max tokens: whatever the script says, it cannot say more
                text, calls = truncate(text, max_tokens, count), []
                output, finish = count(text), finish or "length"
            usage = Usage(input_tokens=count(prompt), output_tokens=output)
        record.reply, record.usage, record.prompt = reply, usage, prompt
        return Turn(
            model=str(body.get("model") or ""),
            text=text,
            tool_calls=calls,
            usage=usage,
            finish_reason=finish or ("tool_calls" if calls else "stop"),
            wire=reply.wire,
        )


def _tool_tokens(calls: list[ToolCall], count: Callable[[str], int]) -> int:
    return sum(count(c.name) + count(c.arguments_json) for c in calls)
