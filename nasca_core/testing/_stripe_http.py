"""The local Stripe's HTTP side: a standard-library request handler that decodes Stripe's
form encoding and hands API calls to ``StripeServer``, and serves the test payment page."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from nasca_core.testing._stripe_api import ApiError, decode_form
from nasca_core.testing._stripe_events import clock_now

if TYPE_CHECKING:
    from nasca_core.testing._stripe_server import StripeServer


@dataclass
class StripeRequest:
    """One API request the server received: ``params`` is the form body decoded back into
    nested dicts and lists, ``form`` the raw (key, value) pairs."""

    method: str
    path: str
    params: dict[str, Any]
    form: list[tuple[str, str]]
    api_key: str | None
    headers: dict[str, str]
    status: int = 0


class Handler(BaseHTTPRequestHandler):
    stripe: StripeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def date_time_string(self, timestamp: float | None = None) -> str:
        return super().date_time_string(clock_now() if timestamp is None else timestamp)

    def _send(
        self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Request-Id", f"req_{secrets.token_hex(8)}")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _api(self, method: str) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/c/pay/"):
            self._pay(method, path.removeprefix("/c/pay/"))
            return
        raw = self._body().decode("utf-8", "replace")
        query = urlsplit(self.path).query
        pairs = parse_qsl(raw if method == "POST" else query, keep_blank_values=True)
        auth = self.headers.get("Authorization") or ""
        api_key = auth.removeprefix("Bearer ").strip() or None
        record = StripeRequest(
            method, path, decode_form(pairs), pairs, api_key, {k.lower(): v for k, v in self.headers.items()}
        )
        self.stripe.requests.append(record)
        try:
            status, obj = self.stripe.handle_api(method, path, record.params, api_key)
        except ApiError as err:
            status, obj = err.status, err.body
        record.status = status
        self._json(status, obj)

    def _pay(self, method: str, session_id: str) -> None:
        try:
            if method == "GET":
                self._send(200, self.stripe.pay_page(session_id).encode(), "text/html; charset=utf-8")
                return
            self._body()
            self.stripe.complete_session(session_id)
            s = self.stripe.session(session_id)
            target = str(s.get("success_url") or "/").replace("{CHECKOUT_SESSION_ID}", session_id)
            self._send(303, b"", "text/plain", {"Location": target})
        except (ApiError, KeyError):
            self._send(404, b"no such checkout session", "text/plain")

    def do_GET(self) -> None:
        self._api("GET")

    def do_POST(self) -> None:
        self._api("POST")
