"""The provider server's HTTP plumbing: routing, reading requests, recording them, and
writing JSON answers and chunked SSE streams on a threading standard-library server.
The per-API answers are in ``_endpoints``."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

import nasca_core.testing._anthropic as anthropic_wire
import nasca_core.testing._openai as openai_wire
from nasca_core.testing._endpoints import serve
from nasca_core.testing._replies import Failure, Turn, new_id
from nasca_core.testing._sse import Event
from nasca_core.testing._state import RecordedRequest, State

ENDPOINTS = (
    "chat.completions",
    "responses",
    "embeddings",
    "models",
    "messages",
    "messages.count_tokens",
    "gemini.generate",
    "gemini.stream",
    "unknown",
)
_ROUTES = {
    ("POST", "/v1/chat/completions"): "chat.completions",
    ("POST", "/v1/responses"): "responses",
    ("POST", "/v1/embeddings"): "embeddings",
    ("GET", "/v1/models"): "models",
    ("POST", "/v1/messages"): "messages",
    ("POST", "/v1/messages/count_tokens"): "messages.count_tokens",
}

TurnMaker = Callable[[RecordedRequest, list[str], int | None, str], Turn]


class Settings(Protocol):
    """What the handlers read from the ProviderServer on every request (settable live)."""

    latency: float
    chunk_delay: float
    api_key: str | None
    models: list[str]

    def count_tokens(self, text: str) -> int: ...


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(
        self, address: tuple[str, int], settings: Settings, state: State, turn: TurnMaker
    ) -> None:
        self.settings = settings
        self.state = state
        self.turn = turn
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # the client went away: routine for aborted streams and pooled sockets
        if exc is not None:
            self.state.error(exc)
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        # keep-alive handler threads block reading the next request; wake them up
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as the SDKs expect
    server_version = "nasca-testing"
    server: HTTPServer
    record: RecordedRequest
    anthropic_shape: bool  # answer errors and ids the way Anthropic does

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
        server = self.server
        path = urlsplit(self.path).path
        endpoint = _ROUTES.get((self.command, path), "unknown")
        if endpoint == "unknown" and self.command == "GET" and path.startswith("/v1/models/"):
            endpoint = "models"
        gemini = path.startswith(("/v1beta/models/", "/v1/models/"))
        if endpoint == "unknown" and self.command == "POST" and gemini:
            # Gemini: /v1beta/models/{model}:generateContent or :streamGenerateContent?alt=sse
            method = path.rsplit(":", 1)[-1]
            endpoint = {"generateContent": "gemini.generate", "streamGenerateContent": "gemini.stream"}.get(
                method, "unknown"
            )
        headers = {k.lower(): v for k, v in self.headers.items()}
        anthropic_shape = endpoint.startswith("messages") or (
            endpoint in ("models", "unknown") and "anthropic-version" in headers
        )
        self.anthropic_shape = anthropic_shape
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
            stream=endpoint == "gemini.stream" or (isinstance(body, dict) and body.get("stream") is True),
        )
        server.state.record(record)
        self.record = record
        try:
            if server.settings.latency:
                time.sleep(server.settings.latency)
            if bad_json:
                self.fail(400, "We could not parse the JSON body of your request.")
            elif not self._authorized(headers):
                self.fail(401)
            else:
                failure = server.state.take_failure(endpoint)
                if failure is not None and not (failure.after_chunks is not None and record.stream):
                    self._send_failure(failure)
                else:
                    serve(self, endpoint, failure)
        except (ConnectionError, TimeoutError):
            record.aborted = True
            self.close_connection = True
        except Exception as exc:  # a responder or server bug: answer 500, keep serving
            server.state.error(exc)
            if record.status == 0:
                try:
                    self.fail(500, f"nasca testing server: {type(exc).__name__}: {exc}")
                except OSError:
                    self.close_connection = True
            else:
                self.close_connection = True
        finally:
            server.state.finish(record)

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
        key = self.server.settings.api_key
        if key is None:
            return True
        return (
            headers.get("authorization") == f"Bearer {key}"
            or headers.get("x-api-key") == key
            or headers.get("x-goog-api-key") == key
        )

    # -- the Exchange the endpoints answer through ------------------------------------

    @property
    def models(self) -> list[str]:
        return self.server.settings.models

    def count_tokens(self, text: str) -> int:
        return self.server.settings.count_tokens(text)

    def turn(self, pieces: list[str], max_tokens: int | None, id_prefix: str) -> Turn:
        return self.server.turn(self.record, pieces, max_tokens, id_prefix)

    # -- writing ----------------------------------------------------------------------

    def _id_headers(self) -> dict[str, str]:
        if self.anthropic_shape:
            return {"request-id": self._request_id}
        return {
            "x-request-id": self._request_id,
            "openai-processing-ms": "1",
            "openai-version": "2020-10-01",
        }

    def send_json(self, status: int, payload: Any, extra: Mapping[str, str] | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else openai_wire.dumps(payload)
        self.record.status = status
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in {**self._id_headers(), **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def fail(self, status: int, message: str | None = None, param: str | None = None) -> None:
        self.record.usage = None
        if self.anthropic_shape:
            self.send_json(status, anthropic_wire.error_body(status, message, self._request_id))
        else:
            self.send_json(status, openai_wire.error_body(status, message, param))

    def _send_failure(self, failure: Failure) -> None:
        if failure.body is None:
            payload: Any = (
                anthropic_wire.error_body(failure.status, failure.message, self._request_id)
                if self.anthropic_shape
                else openai_wire.error_body(failure.status, failure.message)
            )
        else:
            payload = failure.body
        self.send_json(failure.status, payload, failure.headers)

    def send_stream(
        self,
        events: Iterator[Event],
        failure: Failure | None,
        error_event: Callable[[Failure], bytes],
    ) -> None:
        settings = self.server.settings
        self.record.status = 200
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
                    self.record.usage = None
                    self._write_chunk(error_event(failure))
                    break
                if settings.chunk_delay:
                    time.sleep(settings.chunk_delay)
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
