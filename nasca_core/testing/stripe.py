"""A local Stripe for tests, demos, notebooks and browser tests: Checkout Sessions and
signed webhooks, with the standard library only.

    with StripeServer(webhook_url="http://127.0.0.1:8000/stripe/webhook",
                      webhook_secret="whsec_test") as srv:
        client = StripeClient("sk_test_x", base_addresses={"api": srv.url})
        url = nasca.create_checkout("u_42", "p5")        # POST /v1/checkout/sessions
        srv.requests[-1].params["metadata"]              # what stripe-python sent
        srv.complete_session(srv.last_session_id)         # signed checkout.session.completed

Objects start from Stripe's published examples (``_stripe_objects``); the server fills in
the fields it gives meaning to (ids, amounts, status, metadata, URLs). Webhooks are signed
with Stripe's scheme: ``Stripe-Signature: t=<unix>,v1=<HMAC-SHA256 of "<t>.<body>">``.
The page at a session's ``url`` has a Pay button that completes it and redirects to the
success URL, so a browser can walk the whole purchase.

``simulate_purchase(nasca, user, pack_id)`` needs no server: it signs a completed session
for the pack and hands it to ``nasca.handle_stripe_webhook``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import html
import itertools
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from nasca_core.testing._stripe_objects import CHECKOUT_SESSION_CREATE_PARAMS, OBJECTS

if TYPE_CHECKING:
    from stripe import StripeClient

    from nasca_core import Nasca, Usage

__all__ = [
    "SignedEvent",
    "StripeRequest",
    "StripeServer",
    "asimulate_purchase",
    "completed_session_event",
    "sign_payload",
    "signed_event",
    "simulate_purchase",
]

DEFAULT_WEBHOOK_SECRET = "whsec_nasca_test_secret"
_ZERO_DECIMAL = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)
_THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
_KEY = re.compile(r"[^\[\]]+")


def sign_payload(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload``: the secret (the
    whole ``whsec_...`` string, as UTF-8) signs ``"<timestamp>.<body>"`` with HMAC-SHA256."""
    body = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    t = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode("utf-8"), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


@dataclass
class SignedEvent:
    """A Stripe event as a webhook carries it: the exact body and its signature header.
    ``status`` is the HTTP status the webhook endpoint answered, when it was delivered."""

    event: dict[str, Any]
    payload: bytes
    signature: str
    status: int | None = None
    response: bytes = b""

    @property
    def id(self) -> str:
        return str(self.event["id"])

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": self.signature}


_created_lock = threading.Lock()
_last_created = 0


def _created() -> int:
    # Strictly increasing event times, like distinct events in real life: ordering tests
    # (a deletion after an update) don't depend on the wall clock's second.
    global _last_created
    with _created_lock:
        _last_created = max(int(time.time()), _last_created + 1)
        return _last_created


def signed_event(
    event_type: str,
    obj: Mapping[str, Any],
    secret: str,
    *,
    created: int | None = None,
    event_id: str | None = None,
    timestamp: int | None = None,
) -> SignedEvent:
    """Wrap ``obj`` in Stripe's event envelope (from the published example) and sign it."""
    event = copy.deepcopy(OBJECTS["event"])
    event.update(
        id=event_id or f"evt_{secrets.token_hex(12)}",
        type=event_type,
        created=_created() if created is None else created,
        pending_webhooks=1,
        data={"object": copy.deepcopy(dict(obj))},
    )
    event["request"] = {"id": None, "idempotency_key": None}
    payload = json.dumps(event, separators=(",", ":")).encode()
    return SignedEvent(event, payload, sign_payload(payload, secret, timestamp))


def _minor_exp(currency: str) -> int:
    return 0 if currency in _ZERO_DECIMAL else 3 if currency in _THREE_DECIMAL else 2


def _session_object(session_id: str, base_url: str) -> dict[str, Any]:
    s = copy.deepcopy(OBJECTS["checkout.session"])
    now = int(time.time())
    s.update(
        id=session_id,
        created=now,
        expires_at=now + 86_400,
        status="open",
        payment_status="unpaid",
        livemode=False,
        url=f"{base_url}/c/pay/{session_id}",
        payment_intent=None,
        subscription=None,
        customer=None,
        customer_details=None,
        customer_email=None,
        client_reference_id=None,
        currency_conversion=None,
        shipping_cost=None,
        shipping_address_collection=None,
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        invoice=None,
        metadata={},
        cancel_url=None,
        success_url=None,
    )
    return s


def completed_session_event(
    nasca: Nasca,
    user: str,
    pack_id: str,
    secret: str | None = None,
    *,
    amount_total: int | None = None,
    currency: str | None = None,
    session_id: str | None = None,
    prompt_id: str | None = None,
) -> SignedEvent:
    """A signed ``checkout.session.completed`` for one of ``nasca``'s packs, paid in full
    (``amount_total`` in the currency's smallest unit overrides the pack's price)."""
    from nasca_core.billing import UnknownPackError
    from nasca_core.billing._checkout import checkout_metadata

    packs = nasca.packs
    if pack_id not in packs:
        raise UnknownPackError(pack_id, packs)
    pack = packs[pack_id]
    sid = session_id or new_id("cs")
    s = _session_object(sid, "https://checkout.stripe.com")
    metadata = checkout_metadata(nasca.namespace, user, pack, prompt_id)
    s.update(
        mode="payment",
        status="complete",
        payment_status="paid",
        metadata=metadata,
        client_reference_id=user,
        currency=currency or pack.currency,
        amount_total=pack.unit_amount if amount_total is None else amount_total,
        amount_subtotal=pack.unit_amount if amount_total is None else amount_total,
        payment_intent=new_id("pi"),
        customer=new_id("cus"),
        url=None,
    )
    return signed_event("checkout.session.completed", s, _secret(nasca, secret))


def simulate_purchase(
    nasca: Nasca, user: str, pack_id: str, secret: str | None = None, *, tier: str | None = None
) -> Usage:
    """Buy ``pack_id`` for ``user`` through a signed test webhook and return their Usage
    after it (``credit_balance_display`` is in what they paid). ``secret`` defaults to
    the webhook secret ``nasca`` was configured with.

    Raises UnknownPackError, ConfigurationError (no secret), WebhookError."""
    signed = completed_session_event(nasca, user, pack_id, secret)
    nasca.handle_stripe_webhook(signed.payload, signed.signature)
    return nasca.get_usage(user, tier=tier)


async def asimulate_purchase(
    nasca: Nasca, user: str, pack_id: str, secret: str | None = None, *, tier: str | None = None
) -> Usage:
    """Async twin of simulate_purchase()."""
    signed = completed_session_event(nasca, user, pack_id, secret)
    await nasca.ahandle_stripe_webhook(signed.payload, signed.signature)
    return await nasca.aget_usage(user, tier=tier)


def _secret(nasca: Nasca, secret: str | None) -> str:
    if secret is not None:
        return secret
    conf = getattr(nasca, "_billing_conf", None)
    found = getattr(conf, "webhook_secret", None)
    if not isinstance(found, str):
        from nasca_core import ConfigurationError

        raise ConfigurationError("pass secret=, or configure Nasca(webhook_secret=...)")
    return found


# -- the HTTP server -------------------------------------------------------------------------
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


@dataclass
class _Price:
    id: str
    unit_amount: int
    currency: str
    interval: str | None


@dataclass
class _SessionState:
    session: dict[str, Any]
    line_items: list[dict[str, Any]]
    subscription_metadata: dict[str, str] = field(default_factory=dict)
    payment_metadata: dict[str, str] = field(default_factory=dict)
    subscription: dict[str, Any] | None = None


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {
            "error": {
                k: v
                for k, v in {"type": kind, "code": code, "param": param, "message": message}.items()
                if v is not None
            }
        }


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
        self.prices: dict[str, _Price] = {}
        self._sessions: dict[str, _SessionState] = {}
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
        self.prices[price_id] = _Price(price_id, unit_amount, currency, interval)

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

    def _new_subscription(self, state: _SessionState) -> dict[str, Any]:
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
        for key in params:
            if key not in CHECKOUT_SESSION_CREATE_PARAMS:
                raise _ApiError(
                    400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key
                )
        mode = params.get("mode")
        if mode not in ("payment", "subscription", "setup"):
            raise _ApiError(400, "Missing required param: mode.", code="parameter_missing", param="mode")
        ui_mode = params.get("ui_mode", "hosted")
        if ui_mode == "hosted" and not params.get("success_url"):
            raise _ApiError(
                400, "Missing required param: success_url.", code="parameter_missing", param="success_url"
            )
        items = params.get("line_items")
        if mode != "setup" and (not isinstance(items, list) or not items):
            raise _ApiError(
                400, "Missing required param: line_items.", code="parameter_missing", param="line_items"
            )
        line_items = [self._line_item(i, item, mode) for i, item in enumerate(items or [])]
        metadata = _metadata(params.get("metadata"), "metadata")
        with self._lock:
            session_id = f"cs_test_{secrets.token_hex(4)}{next(self._ids):04d}{secrets.token_hex(20)}"
            s = _session_object(session_id, self.url)
            total = sum(li["unit_amount"] * li["quantity"] for li in line_items)
            s.update(
                mode=mode,
                metadata=metadata,
                success_url=params.get("success_url"),
                cancel_url=params.get("cancel_url"),
                client_reference_id=params.get("client_reference_id"),
                customer_email=params.get("customer_email"),
                currency=line_items[0]["currency"] if line_items else None,
                amount_subtotal=total,
                amount_total=total,
            )
            state = _SessionState(s, line_items)
            state.subscription_metadata = _metadata(
                _dig(params, "subscription_data", "metadata"), "subscription_data[metadata]"
            )
            state.payment_metadata = _metadata(
                _dig(params, "payment_intent_data", "metadata"), "payment_intent_data[metadata]"
            )
            self._sessions[session_id] = state
            return copy.deepcopy(s)

    def _line_item(self, i: int, item: Any, mode: str) -> dict[str, Any]:
        where = f"line_items[{i}]"
        if not isinstance(item, dict):
            raise _ApiError(400, f"Invalid object: {where}", param=where)
        quantity = _int(item.get("quantity", "1"), f"{where}[quantity]")
        if ("price" in item) == ("price_data" in item):
            raise _ApiError(400, f"You must specify either `price` or `price_data` in {where}.", param=where)
        if "price" in item:
            price = self.prices.get(str(item["price"]))
            if price is None:
                raise _ApiError(
                    400, f"No such price: '{item['price']}'", code="resource_missing", param=f"{where}[price]"
                )
            currency, unit, interval, price_id = price.currency, price.unit_amount, price.interval, price.id
        else:
            data = item["price_data"]
            if not isinstance(data, dict) or not data.get("currency"):
                raise _ApiError(
                    400,
                    "Missing required param: currency.",
                    code="parameter_missing",
                    param=f"{where}[price_data][currency]",
                )
            if not (data.get("product") or _dig(data, "product_data", "name")):
                raise _ApiError(
                    400,
                    "Missing required param: product_data[name].",
                    code="parameter_missing",
                    param=f"{where}[price_data][product_data]",
                )
            currency = str(data["currency"]).lower()
            unit = _int(data.get("unit_amount"), f"{where}[price_data][unit_amount]")
            interval = _dig(data, "recurring", "interval")
            price_id = f"price_{secrets.token_hex(12)}"
        if mode == "subscription" and not interval:
            raise _ApiError(
                400,
                "You must specify at least one recurring price in `subscription` mode when using prices.",
                param=where,
            )
        if mode == "payment" and interval:
            raise _ApiError(400, "You specified `payment` mode but passed a recurring price.", param=where)
        return {
            "price_id": price_id,
            "currency": currency,
            "unit_amount": unit,
            "quantity": quantity,
            "interval": interval,
        }

    def _handle_api(
        self, method: str, path: str, params: dict[str, Any], api_key: str | None
    ) -> tuple[int, dict[str, Any]]:
        if self.api_key is not None and api_key != self.api_key:
            raise _ApiError(401, f"Invalid API Key provided: {(api_key or '')[:12]}***")
        if method == "POST" and path == "/v1/checkout/sessions":
            return 200, self._create_session(params)
        m = re.fullmatch(r"/v1/checkout/sessions/([^/]+)", path)
        if method == "GET" and m:
            with self._lock:
                state = self._sessions.get(m.group(1))
                if state is None:
                    raise _ApiError(
                        404, f"No such checkout.session: '{m.group(1)}'", code="resource_missing", param="id"
                    )
                return 200, copy.deepcopy(state.session)
        raise _ApiError(404, f"Unrecognized request URL ({method}: {path}).")

    def _pay_page(self, session_id: str) -> str:
        with self._lock:
            state = self._sessions.get(session_id)
            if state is None:
                raise _ApiError(404, "No such checkout session")
            s = state.session
        exp = _minor_exp(str(s["currency"]))
        amount = f"{int(s['amount_total']) / 10**exp:.{exp}f} {str(s['currency']).upper()}"
        cancel = s.get("cancel_url")
        cancel_link = f'<a id="cancel" href="{html.escape(cancel)}">Cancel</a>' if cancel else ""
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>Test checkout</title></head>"
            f"<body><h1>Test checkout</h1><p id='amount'>{html.escape(amount)}</p>"
            f"<form method='post'><button id='pay' type='submit'>Pay {html.escape(amount)}</button>"
            f"</form>{cancel_link}</body></html>"
        )


def _dig(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _int(value: Any, param: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise _ApiError(400, f"Invalid integer: {value}", param=param) from None


def _metadata(value: Any, param: str) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise _ApiError(400, f"Invalid object: {param}", param=param)
    for k, v in value.items():
        if len(k) > 40 or not isinstance(v, str) or len(v) > 500:
            raise _ApiError(
                400,
                f"Invalid metadata {param}[{k}]: keys up to 40 characters, string values up to 500",
                param=f"{param}[{k}]",
            )
    return dict(value)


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding back into nested values: ``a[b][0][c]=v`` -> {"a": {"b": [{"c": v}]}}."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = _KEY.findall(key)
        if not parts:
            continue
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    result: dict[str, Any] = _listify(root)
    return result


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: _listify(v) for k, v in node.items()}
    if out and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out


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
        except _ApiError as err:
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
        except (_ApiError, KeyError):
            self._send(404, b"no such checkout session", "text/plain")

    def do_GET(self) -> None:
        self._api("GET")

    def do_POST(self) -> None:
        self._api("POST")
