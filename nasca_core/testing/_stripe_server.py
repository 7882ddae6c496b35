"""The local Stripe API server: Checkout Sessions over HTTP, the sessions' life after
payment (subscriptions, refunds), and webhook delivery. ``nasca_core.testing.stripe``
is its public face."""

from __future__ import annotations

import copy
import itertools
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from nasca_core.testing._stripe_api import (
    ApiError,
    Price,
    SessionState,
    checked_session,
    decode_form,
    pay_page,
)
from nasca_core.testing._stripe_events import (
    OBJECTS,
    SignedEvent,
    new_id,
    session_object,
    signed_event,
)

if TYPE_CHECKING:
    from stripe import StripeClient

DEFAULT_WEBHOOK_SECRET = "whsec_nasca_test_secret"


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


class StripeServer:
    """A local Stripe API (Checkout Sessions) that records what it receives and sends
    signed webhooks. Use as a context manager, or ``start()``/``stop()``.

    ``api_key`` makes it answer 401 to any other key; ``prices`` pre-registers Price ids
    (``add_price``) for line items that name one.
    """

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.api_key = api_key
        self.requests: list[StripeRequest] = []
        self.deliveries: list[SignedEvent] = []
        self.prices: dict[str, Price] = {}
        self._sessions: dict[str, SessionState] = {}
        self._lock = threading.Lock()
        self._host, self._port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> StripeServer:
        if self._httpd is None:
            server = self

            class Handler(_Handler):
                stripe = server

            self._httpd = ThreadingHTTPServer((self._host, self._port), Handler)
            self._httpd.daemon_threads = True
            self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                            name="nasca-stripe", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> StripeServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The API base to give stripe-python: ``StripeClient(key, base_addresses={"api": url})``."""
        if self._httpd is None:
            raise RuntimeError("StripeServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def client(self, api_key: str = "sk_test_nasca") -> StripeClient:
        """A stripe-python StripeClient that talks to this server (no retries)."""
        from stripe import StripeClient

        return StripeClient(api_key, base_addresses={"api": self.url}, max_network_retries=0)

    # -- catalogue and inspection ----------------------------------------------------------
    def add_price(
        self, price_id: str, unit_amount: int, currency: str = "usd", interval: str | None = None
    ) -> None:
        """Register a Price id (``interval`` makes it recurring) that line items may name."""
        self.prices[price_id] = Price(price_id, unit_amount, currency, interval)

    def session(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._sessions[session_id].session)

    @property
    def last_session_id(self) -> str:
        with self._lock:
            return next(reversed(self._sessions))

    @property
    def checkout_requests(self) -> list[StripeRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/checkout/sessions"]

    # -- webhooks ----------------------------------------------------------------------------
    def deliver(self, signed: SignedEvent, url: str | None = None) -> SignedEvent:
        """POST a signed event to the webhook URL; records the status it answered."""
        target = url or self.webhook_url
        if target is None:
            raise ValueError("no webhook URL: pass url= or StripeServer(webhook_url=...)")
        req = urllib.request.Request(target, data=signed.payload, headers=signed.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                signed.status, signed.response = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            signed.status, signed.response = exc.code, exc.read()
        except urllib.error.URLError as exc:  # nobody listening: Stripe would retry later
            signed.status, signed.response = 0, str(exc.reason).encode()
        self.deliveries.append(signed)
        return signed

    def event(
        self,
        event_type: str,
        obj: Mapping[str, Any],
        *,
        deliver: bool = False,
        url: str | None = None,
        created: int | None = None,
    ) -> SignedEvent:
        """Sign any object as an event of ``event_type``; ``deliver=True`` also POSTs it."""
        signed = signed_event(event_type, obj, self.webhook_secret, created=created)
        return self.deliver(signed, url) if deliver or url else signed

    def complete_session(
        self,
        session_id: str,
        *,
        payment_status: str = "paid",
        amount_total: int | None = None,
        currency: str | None = None,
        deliver: bool | None = None,
        url: str | None = None,
    ) -> SignedEvent:
        """Mark a session paid (a payment intent or a subscription, and a customer) and
        return the signed ``checkout.session.completed``. It is delivered to the webhook
        URL when one is configured (or ``url`` given), unless ``deliver=False``."""
        with self._lock:
            state = self._sessions[session_id]
            s = state.session
            if s["status"] != "complete":
                s.update(
                    status="complete",
                    customer=new_id("cus"),
                    customer_details={
                        "email": s.get("customer_email") or "buyer@example.com",
                        "name": None,
                        "phone": None,
                        "tax_exempt": "none",
                        "tax_ids": [],
                        "address": None,
                    },
                )
                if s["mode"] == "payment":
                    s["payment_intent"] = new_id("pi")
                elif s["mode"] == "subscription":
                    state.subscription = self._new_subscription(state)
                    s["subscription"] = state.subscription["id"]
            s["payment_status"] = payment_status
            if amount_total is not None:
                s["amount_total"] = amount_total
            if currency is not None:
                s["currency"] = currency
            obj = copy.deepcopy(s)
        return self._maybe_deliver(
            signed_event("checkout.session.completed", obj, self.webhook_secret), deliver, url
        )

    def subscription_event(
        self,
        session_id: str,
        event_type: str = "customer.subscription.updated",
        *,
        status: str | None = None,
        created: int | None = None,
        deliver: bool | None = None,
        url: str | None = None,
    ) -> SignedEvent:
        """A signed ``customer.subscription.*`` event for a completed subscription session
        (``...deleted`` sets the status to canceled)."""
        with self._lock:
            sub = self._sessions[session_id].subscription
            if sub is None:
                raise ValueError(f"session {session_id} has no subscription: complete it first")
            now = int(time.time())
            if event_type == "customer.subscription.deleted":
                sub.update(status="canceled", canceled_at=now, ended_at=now)
            elif status is not None:
                sub["status"] = status
            obj = copy.deepcopy(sub)
        signed = signed_event(event_type, obj, self.webhook_secret, created=created)
        return self._maybe_deliver(signed, deliver, url)

    def refund(
        self,
        session_id: str,
        *,
        amount: int | None = None,
        deliver: bool | None = None,
        url: str | None = None,
    ) -> SignedEvent:
        """A signed ``charge.refunded`` for a completed payment session (``amount`` in the
        smallest currency unit; the default refunds it all)."""
        with self._lock:
            s = self._sessions[session_id].session
            if not s.get("payment_intent"):
                raise ValueError(f"session {session_id} has no payment: complete it first")
            total = int(s.get("amount_total") or 0)
            refunded = total if amount is None else amount
            charge = copy.deepcopy(OBJECTS["charge"])
            charge_id = new_id("ch")
            refund = {
                "id": new_id("re"),
                "object": "refund",
                "amount": refunded,
                "charge": charge_id,
                "currency": s["currency"],
                "payment_intent": s["payment_intent"],
                "status": "succeeded",
                "created": int(time.time()),
                "metadata": {},
            }
            charge.update(
                id=charge_id,
                amount=total,
                amount_captured=total,
                amount_refunded=refunded,
                refunded=refunded >= total,
                captured=True,
                paid=True,
                status="succeeded",
                currency=s["currency"],
                customer=s.get("customer"),
                payment_intent=s["payment_intent"],
                created=int(time.time()),
            )
            charge["refunds"] = {
                "object": "list",
                "data": [refund],
                "has_more": False,
                "url": f"/v1/charges/{charge_id}/refunds",
            }
        return self._maybe_deliver(signed_event("charge.refunded", charge, self.webhook_secret), deliver, url)

    def _maybe_deliver(self, signed: SignedEvent, deliver: bool | None, url: str | None) -> SignedEvent:
        if deliver is False or (deliver is None and not (url or self.webhook_url)):
            return signed
        return self.deliver(signed, url)

    def _new_subscription(self, state: SessionState) -> dict[str, Any]:
        sub = copy.deepcopy(OBJECTS["subscription"])
        s = state.session
        now = int(time.time())
        item = state.line_items[0]
        sub_id = new_id("sub")
        price = sub["items"]["data"][0]["price"]
        price.update(
            id=item["price_id"],
            unit_amount=item["unit_amount"],
            currency=item["currency"],
            unit_amount_decimal=str(item["unit_amount"]),
        )
        price["recurring"]["interval"] = item["interval"] or "month"
        sub["items"]["data"][0].update(id=new_id("si"), subscription=sub_id, created=now)
        sub["items"]["url"] = f"/v1/subscription_items?subscription={sub_id}"
        sub.update(
            id=sub_id,
            customer=s["customer"],
            metadata=dict(state.subscription_metadata),
            status="active",
            created=now,
            start_date=now,
            billing_cycle_anchor=now,
            currency=item["currency"],
            cancel_at=None,
            canceled_at=None,
            ended_at=None,
            cancel_at_period_end=False,
            trial_start=None,
            trial_end=None,
            latest_invoice=None,
            pending_update=None,
            pause_collection=None,
        )
        return sub

    # -- the API -----------------------------------------------------------------------------
    def _create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        state = checked_session(params, self.prices)
        with self._lock:
            session_id = f"cs_test_{secrets.token_hex(4)}{next(self._ids):04d}{secrets.token_hex(20)}"
            s = session_object(session_id, self.url)
            s.update(state.session)
            state.session = s
            self._sessions[session_id] = state
            return copy.deepcopy(s)

    def _handle_api(
        self, method: str, path: str, params: dict[str, Any], api_key: str | None
    ) -> tuple[int, dict[str, Any]]:
        if self.api_key is not None and api_key != self.api_key:
            raise ApiError(401, f"Invalid API Key provided: {(api_key or '')[:12]}***")
        if method == "POST" and path == "/v1/checkout/sessions":
            return 200, self._create_session(params)
        m = re.fullmatch(r"/v1/checkout/sessions/([^/]+)", path)
        if method == "GET" and m:
            with self._lock:
                state = self._sessions.get(m.group(1))
                if state is None:
                    raise ApiError(
                        404, f"No such checkout.session: '{m.group(1)}'", code="resource_missing", param="id"
                    )
                return 200, copy.deepcopy(state.session)
        raise ApiError(404, f"Unrecognized request URL ({method}: {path}).")

    def _pay_page(self, session_id: str) -> str:
        with self._lock:
            state = self._sessions.get(session_id)
            if state is None:
                raise ApiError(404, "No such checkout session")
            return pay_page(state.session)


class _Handler(BaseHTTPRequestHandler):
    stripe: StripeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

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
            status, obj = self.stripe._handle_api(method, path, record.params, api_key)
        except ApiError as err:
            status, obj = err.status, err.body
        record.status = status
        self._json(status, obj)

    def _pay(self, method: str, session_id: str) -> None:
        try:
            if method == "GET":
                self._send(200, self.stripe._pay_page(session_id).encode(), "text/html; charset=utf-8")
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
