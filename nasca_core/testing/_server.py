"""The local provider server: a standard-library HTTP server in a daemon thread."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nasca_core._errors import ConfigurationError
from nasca_core.testing import _anthropic, _openai
from nasca_core.testing._replies import (
    DEFAULT_REPLY_TEXT,
    Failure,
    Reply,
    ToolCall,
    Turn,
    Usage,
    new_id,
)
from nasca_core.testing._sse import Event
from nasca_core.testing._tokens import TokenizerSpec, resolve_tokenizer, truncate

if TYPE_CHECKING:
    import anthropic
    import openai

Responder = Callable[[dict[str, Any]], Reply | str]

ENDPOINTS = (
    "chat.completions",
    "responses",
    "embeddings",
    "models",
    "messages",
    "messages.count_tokens",
    "unknown",
)
DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "o4-mini",
    "text-embedding-3-small",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
)
_ROUTES = {
    ("POST", "/v1/chat/completions"): "chat.completions",
    ("POST", "/v1/responses"): "responses",
    ("POST", "/v1/embeddings"): "embeddings",
    ("GET", "/v1/models"): "models",
    ("POST", "/v1/messages"): "messages",
    ("POST", "/v1/messages/count_tokens"): "messages.count_tokens",
}


@dataclass
class RecordedRequest:
    """One HTTP request the server received, with what it answered.

    ``usage`` is exactly what the response reported (None for errors, models and
    token counting); ``prompt`` is the text whose token count is ``usage.input_tokens``
    when no override was given. ``done`` turns True once the last byte was written or
    the client went away (``aborted``); ``ProviderServer.wait_idle()`` waits for that.
    """

    method: str
    path: str
    endpoint: str
    headers: dict[str, str]  # names lower-cased
    json: Any
    received_at: float
    request_id: str
    stream: bool = False
    status: int = 0
    usage: Usage | None = None
    reply: Reply | None = None
    prompt: str | None = None
    aborted: bool = False
    done: bool = False

    @property
    def model(self) -> str | None:
        body = self.json
        return body.get("model") if isinstance(body, dict) else None


@dataclass
class _State:
    replies: deque[Reply] = field(default_factory=deque)
    failures: deque[Failure] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    in_flight: int = 0


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
        self._state = _State()
        self._cond = threading.Condition()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.url if self._httpd else "stopped"
        return f"ProviderServer({where}, tokenizer={self.tokenizer!r})"

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> ProviderServer:
        """Bind and serve in a daemon thread; returns self. Raises OSError if binding fails."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self._host, self._requested_port), _Handler, self)
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
        with self._cond:
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
        with self._cond:
            self._state.failures.extend([failure] * times)

    def reset(self) -> None:
        """Forget recorded requests and errors, queued replies and pending failures."""
        with self._cond:
            self._state.replies.clear()
            self._state.failures.clear()
            self._state.requests.clear()
            self._state.errors.clear()

    # -- inspection -------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._cond:
            return list(self._state.requests)

    @property
    def request_count(self) -> int:
        with self._cond:
            return len(self._state.requests)

    @property
    def counts(self) -> Counter[str]:
        """Requests per endpoint (``"chat.completions"``, ``"messages"``, ...); 0 if none."""
        with self._cond:
            return Counter(r.endpoint for r in self._state.requests)

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request. Raises LookupError when none was received."""
        with self._cond:
            if not self._state.requests:
                raise LookupError("the provider server has received no request")
            return self._state.requests[-1]

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised inside the server (a failing responder, a server bug)."""
        with self._cond:
            return list(self._state.errors)

    @property
    def pending_replies(self) -> int:
        with self._cond:
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
        with self._cond:
            while self._state.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
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

    def _client_kwargs(self, kwargs: dict[str, Any], key: str, url: str) -> dict[str, Any]:
        kwargs.setdefault(key, url)
        kwargs.setdefault("api_key", self.api_key or "test-key")
        kwargs.setdefault("max_retries", 0)
        return kwargs

    # -- request handling (called on handler threads) ----------------------------------

    def _record(self, record: RecordedRequest) -> None:
        with self._cond:
            self._state.requests.append(record)
            self._state.in_flight += 1

    def _finish(self, record: RecordedRequest) -> None:
        with self._cond:
            record.done = True
            self._state.in_flight -= 1
            self._cond.notify_all()

    def _error(self, exc: BaseException) -> None:
        with self._cond:
            self._state.errors.append(exc)

    def _take_failure(self, endpoint: str) -> Failure | None:
        with self._cond:
            for failure in self._state.failures:
                if failure.endpoint in (None, endpoint):
                    self._state.failures.remove(failure)
                    return failure
        return None

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._cond:
            if self._state.replies:
                return self._state.replies.popleft()
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
        )


def _tool_tokens(calls: list[ToolCall], count: Callable[[str], int]) -> int:
    return sum(count(c.name) + count(c.arguments_json) for c in calls)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: ProviderServer
    ) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # the client went away: routine for aborted streams and pooled sockets
        if exc is not None:
            self.owner._error(exc)
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        # keep-alive handler threads block reading the next request; wake them up
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as the SDKs expect
    server_version = "nasca-testing"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; with Nagle on, the second waits for the
        # client's delayed ACK and every JSON answer takes ~40 ms instead of ~1 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):  # flushing to a client that already left
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log on stderr: tests and notebooks stay quiet

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- dispatch ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path
        endpoint = _ROUTES.get((self.command, path), "unknown")
        if endpoint == "unknown" and self.command == "GET" and path.startswith("/v1/models/"):
            endpoint = "models"
        headers = {k.lower(): v for k, v in self.headers.items()}
        anthropic_shape = endpoint.startswith("messages") or (
            endpoint in ("models", "unknown") and "anthropic-version" in headers
        )
        self._anthropic = anthropic_shape
        self._request_id = (
            new_id("req_011", 21) if anthropic_shape else new_id("req_", 32, alphabet="0123456789abcdef")
        )
        raw = self._read_body()
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        record = RecordedRequest(
            method=self.command,
            path=path,
            endpoint=endpoint,
            headers=headers,
            json=body,
            received_at=time.time(),
            request_id=self._request_id,
            stream=isinstance(body, dict) and body.get("stream") is True,
        )
        owner._record(record)
        self._record = record
        try:
            if owner.latency:
                time.sleep(owner.latency)
            if bad_json:
                self._fail(400, "We could not parse the JSON body of your request.")
            elif not self._authorized(headers):
                self._fail(401)
            else:
                failure = owner._take_failure(endpoint)
                if failure is not None and not (failure.after_chunks is not None and record.stream):
                    self._send_failure(failure)
                else:
                    self._serve(endpoint, failure)
        except (ConnectionError, TimeoutError):
            record.aborted = True
            self.close_connection = True
        except Exception as exc:  # a responder or server bug: answer 500, keep serving
            owner._error(exc)
            if record.status == 0:
                try:
                    self._fail(500, f"nasca testing server: {type(exc).__name__}: {exc}")
                except OSError:
                    self.close_connection = True
            else:
                self.close_connection = True
        finally:
            owner._finish(record)

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        key = self.server.owner.api_key
        if key is None:
            return True
        return headers.get("authorization") == f"Bearer {key}" or headers.get("x-api-key") == key

    def _serve(self, endpoint: str, failure: Failure | None) -> None:
        body = self._record.json
        if endpoint == "models":
            self._models()
            return
        if endpoint == "unknown":
            self._fail(404, f"Invalid URL ({self.command} {self._record.path})")
            return
        if not isinstance(body, dict):
            self._fail(400, "The request body must be a JSON object.")
            return
        handler = {
            "chat.completions": self._chat,
            "responses": self._responses,
            "embeddings": self._embeddings,
            "messages": self._messages,
            "messages.count_tokens": self._count_tokens,
        }[endpoint]
        handler(body, failure)

    # -- endpoints --------------------------------------------------------------------

    def _chat(self, body: dict[str, Any], failure: Failure | None) -> None:
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            self._fail(400, "Missing required parameter: 'messages'.", "messages")
            return
        if not body.get("model"):
            self._fail(400, "you must provide a model parameter", "model")
            return
        if body.get("stream_options") is not None and body.get("stream") is not True:
            # OpenAI rejects this; a wrapper that always adds include_usage must not
            message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            self._fail(400, message, "stream_options")
            return
        owner = self.server.owner
        turn = owner._turn(
            self._record,
            _openai.chat_prompt(body),
            _openai.max_output(body, "max_completion_tokens", "max_tokens"),
            "call_",
        )
        completion_id = new_id("chatcmpl-", 29)
        if not self._record.stream:
            self._send_json(200, _openai.chat_completion(turn, completion_id))
            return
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = _openai.chat_stream(turn, completion_id, include_usage=include_usage)
        self._send_stream(
            events,
            failure,
            lambda f: _openai.chat_stream_error(f.status, f.message),
        )

    def _responses(self, body: dict[str, Any], failure: Failure | None) -> None:
        if not body.get("model"):
            self._fail(400, "Missing required parameter: 'model'.", "model")
            return
        turn = self.server.owner._turn(
            self._record,
            _openai.responses_prompt(body),
            _openai.max_output(body, "max_output_tokens"),
            "call_",
        )
        builder = _openai.ResponseBuilder(turn, body)
        if not self._record.stream:
            self._send_json(200, builder.response(final=True))
            return
        self._send_stream(
            builder.events(),
            failure,
            lambda f: builder.failure(f.status, f.message),
        )

    def _messages(self, body: dict[str, Any], failure: Failure | None) -> None:
        for required in ("model", "messages", "max_tokens"):
            if required not in body:
                self._fail(400, f"{required}: Field required")
                return
        turn = self.server.owner._turn(
            self._record,
            _anthropic.prompt(body),
            _openai.max_output(body, "max_tokens"),
            "toolu_01",
        )
        message_id = new_id("msg_01", 22)
        if not self._record.stream:
            self._send_json(200, _anthropic.message(turn, message_id))
            return
        self._send_stream(
            _anthropic.stream(turn, message_id),
            failure,
            lambda f: _anthropic.stream_error(f.status, f.message),
        )

    def _count_tokens(self, body: dict[str, Any], failure: Failure | None) -> None:
        prompt = "\n".join(_anthropic.prompt(body))
        self._record.prompt = prompt
        self._send_json(200, {"input_tokens": self.server.owner.count_tokens(prompt)})

    def _embeddings(self, body: dict[str, Any], failure: Failure | None) -> None:
        try:
            payload, tokens = _openai.embeddings_response(body, self.server.owner.count_tokens)
        except ValueError as exc:
            self._fail(400, str(exc))
            return
        self._record.usage = Usage(input_tokens=tokens, output_tokens=0)
        self._send_json(200, payload)

    def _models(self) -> None:
        owner = self.server.owner
        path = self._record.path
        one = path[len("/v1/models/") :] if path.startswith("/v1/models/") else None
        if self._anthropic:
            created_at = datetime(2025, 1, 1, tzinfo=UTC).isoformat().replace("+00:00", "Z")
            payload = (
                _anthropic.model_object(one, created_at)
                if one
                else _anthropic.models_list(owner.models, created_at)
            )
        else:
            created = 1_735_689_600  # 2025-01-01: fixed, so listings compare equal
            payload = (
                _openai.model_object(one, created) if one else _openai.models_list(owner.models, created)
            )
        self._send_json(200, payload)

    # -- writing ----------------------------------------------------------------------

    def _id_headers(self) -> dict[str, str]:
        if self._anthropic:
            return {"request-id": self._request_id}
        return {
            "x-request-id": self._request_id,
            "openai-processing-ms": "1",
            "openai-version": "2020-10-01",
        }

    def _send_json(self, status: int, payload: Any, extra: Mapping[str, str] | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else _openai.dumps(payload)
        self._record.status = status
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in {**self._id_headers(), **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, status: int, message: str | None = None, param: str | None = None) -> None:
        self._record.usage = None
        if self._anthropic:
            self._send_json(status, _anthropic.error_body(status, message, self._request_id))
        else:
            self._send_json(status, _openai.error_body(status, message, param))

    def _send_failure(self, failure: Failure) -> None:
        if failure.body is None:
            payload: Any = (
                _anthropic.error_body(failure.status, failure.message, self._request_id)
                if self._anthropic
                else _openai.error_body(failure.status, failure.message)
            )
        else:
            payload = failure.body
        self._send_json(failure.status, payload, failure.headers)

    def _send_stream(
        self,
        events: Iterator[Event],
        failure: Failure | None,
        error_event: Callable[[Failure], bytes],
    ) -> None:
        owner = self.server.owner
        self._record.status = 200
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for name, value in self._id_headers().items():
            self.send_header(name, value)
        self.end_headers()
        deltas = 0
        for event in events:
            if event.is_delta:
                if failure is not None and deltas >= (failure.after_chunks or 0):
                    # the provider reports no usage for a stream it broke off
                    self._record.usage = None
                    self._write_chunk(error_event(failure))
                    break
                if owner.chunk_delay:
                    time.sleep(owner.chunk_delay)
                deltas += 1
            if self._client_gone():
                raise ConnectionAbortedError("client closed the stream")
            self._write_chunk(event.data)
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        # A write to a closed socket often still succeeds (the kernel buffers it), so
        # look for the client's FIN instead: readable with nothing to read means gone.
        # poll, not select: select fails on descriptors above 1024 (long notebook sessions).
        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(self.connection, select.POLLIN)
                readable = bool(poller.poll(0))
            else:
                readable = bool(select.select([self.connection], [], [], 0)[0])
            return readable and self.connection.recv(1, socket.MSG_PEEK) == b""
        except ValueError:
            return False  # cannot tell; a failing write will say
        except OSError:
            return True
