"""The local Stripe API server: Checkout Sessions over HTTP, the sessions' life after
payment (subscriptions, refunds), and webhook delivery. ``nasca_core.testing.stripe``
is its public face."""

from __future__ import annotations

import copy
import itertools
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any

from nasca_core.testing._stripe_api import (
    ApiError,
    Price,
    SessionState,
    checked_session,
    pay_page,
)
from nasca_core.testing._stripe_events import (
    OBJECTS,
    SignedEvent,
    new_id,
    session_object,
    signed_event,
)
from nasca_core.testing._stripe_http import Handler, StripeRequest
from nasca_core.testing._stripe_lists import (
    dispute_object,
    line_items,
    list_page,
    paid_invoice,
    portal_session,
    wants,
)

if TYPE_CHECKING:
    from stripe import StripeClient

DEFAULT_WEBHOOK_SECRET = "whsec_nasca_test_secret"
_INTERVAL_S = {"day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400, "year": 365 * 86_400}


class StripeServer:
    """A local Stripe API that records what it receives and sends signed webhooks. Use as
    a context manager, or ``start()``/``stop()``.

    It serves ``POST/GET /v1/checkout/sessions`` (create, list, retrieve with
    ``expand[]=line_items``, ``/line_items``), ``GET /v1/refunds``, ``/v1/disputes``, ``/v1/charges/<id>``,
    ``/v1/subscriptions/<id>``, ``/v1/invoices`` and ``POST /v1/billing_portal/sessions``;
    lists paginate as Stripe's do (newest first, ``starting_after``), at most ``max_page``
    objects a page. ``api_key`` makes it answer 401 to any other key; ``add_price``
    registers Price ids for line items that name one.
    """

    def __init__(self, *, webhook_url: str | None = None, webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
                 api_key: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 max_page: int = 100) -> None:
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.api_key = api_key
        self.max_page = max_page
        self.requests: list[StripeRequest] = []
        self.deliveries: list[SignedEvent] = []
        self.prices: dict[str, Price] = {}
        self._sessions: dict[str, SessionState] = {}
        self._charges: dict[str, dict[str, Any]] = {}  # by payment intent
        self._refunds: list[dict[str, Any]] = []
        self._disputes: list[dict[str, Any]] = []
        self._invoices: list[dict[str, Any]] = []
        self.portal_sessions: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._host, self._port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> StripeServer:
        if self._httpd is None:
            server = self

            class Bound(Handler):
                stripe = server

            self._httpd = ThreadingHTTPServer((self._host, self._port), Bound)
            self._httpd.daemon_threads = True
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, args=(0.05,), name="nasca-stripe", daemon=True
            )
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
        cancel_at_period_end: bool | None = None,
        period: tuple[int, int] | None = None,
        created: int | None = None,
        deliver: bool | None = None,
        url: str | None = None,
    ) -> SignedEvent:
        """A signed ``customer.subscription.*`` event for a completed subscription session
        (``...deleted`` sets the status to canceled; ``cancel_at_period_end`` schedules the
        end at the current period's end, as the customer portal does; ``period`` sets the
        current period's start and end, epoch s)."""
        with self._lock:
            sub = self._sessions[session_id].subscription
            if sub is None:
                raise ValueError(f"session {session_id} has no subscription: complete it first")
            now = int(time.time())
            if event_type == "customer.subscription.deleted":
                sub.update(status="canceled", canceled_at=now, ended_at=now)
            elif status is not None:
                sub["status"] = status
            if period is not None:
                sub["items"]["data"][0].update(current_period_start=period[0], current_period_end=period[1])
            if cancel_at_period_end is not None:
                end = sub["items"]["data"][0].get("current_period_end")
                sub.update(
                    cancel_at_period_end=cancel_at_period_end, cancel_at=end if cancel_at_period_end else None
                )
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
        """Refund a completed payment session (``amount`` in the smallest currency unit; the
        default refunds what is left) and return the signed ``charge.refunded``: its charge
        carries the running total refunded, like Stripe's. The refund is listed by
        ``GET /v1/refunds`` and the charge by ``GET /v1/charges/<id>``."""
        with self._lock:
            s = self._sessions[session_id].session
            pi = s.get("payment_intent")
            if not pi:
                raise ValueError(f"session {session_id} has no payment: complete it first")
            charge = self._charge(s)
            total = int(charge["amount"])
            refunded = total - int(charge["amount_refunded"]) if amount is None else amount
            refund = copy.deepcopy(OBJECTS["refund"])
            refund.update(
                id=new_id("re"),
                amount=refunded,
                charge=charge["id"],
                currency=s["currency"],
                payment_intent=pi,
                status="succeeded",
                created=int(time.time()),
                metadata={},
                customer=s.get("customer"),
                balance_transaction=None,
                reason="requested_by_customer",
            )
            self._refunds.append(refund)
            done = min(total, int(charge["amount_refunded"]) + refunded)
            charge.update(amount_refunded=done, refunded=done >= total)
            charge["refunds"] = {
                "object": "list",
                "data": [r for r in self._refunds if r["charge"] == charge["id"]],
                "has_more": False,
                "url": f"/v1/charges/{charge['id']}/refunds",
            }
            obj = copy.deepcopy(charge)
        return self._maybe_deliver(signed_event("charge.refunded", obj, self.webhook_secret), deliver, url)

    def dispute(self, session_id: str, *, status: str = "needs_response", deliver: bool | None = None,
                url: str | None = None) -> SignedEvent:
        """A bank disputes a paid session's charge: a signed ``charge.dispute.created``. With
        ``status="won"`` or ``"lost"`` the charge's dispute closes: ``charge.dispute.closed``."""
        with self._lock:
            charge = self._charge(self._sessions[session_id].session)
            open_ = [d for d in self._disputes if d["charge"] == charge["id"]]
            if open_ and status in ("won", "lost"):
                dispute, kind = open_[-1], "charge.dispute.closed"
                dispute["status"] = status
            else:
                dispute, kind = dispute_object(charge, "fraudulent", status), "charge.dispute.created"
                self._disputes.append(dispute)
            charge["disputed"] = True
            signed = signed_event(kind, copy.deepcopy(dispute), self.webhook_secret)
        return self._maybe_deliver(signed, deliver, url)

    def _charge(self, s: dict[str, Any]) -> dict[str, Any]:
        pi = str(s["payment_intent"])
        charge = self._charges.get(pi)
        if charge is None:
            total = int(s.get("amount_total") or 0)
            charge = self._charges[pi] = copy.deepcopy(OBJECTS["charge"])
            charge.update(
                id=new_id("ch"),
                amount=total,
                amount_captured=total,
                amount_refunded=0,
                refunded=False,
                captured=True,
                paid=True,
                status="succeeded",
                currency=s["currency"],
                customer=s.get("customer"),
                payment_intent=pi,
                created=int(time.time()),
            )
        return charge

    def invoice_paid(
        self,
        session_id: str,
        *,
        amount: int | None = None,
        billing_reason: str = "subscription_cycle",
        deliver: bool | None = None,
        url: str | None = None,
    ) -> SignedEvent:
        """A renewal: a paid invoice for a completed subscription session (``amount``
        defaults to the plan's price) and its signed ``invoice.paid``; the subscription's
        period moves on by one interval."""
        with self._lock:
            state = self._sessions[session_id]
            sub = state.subscription
            if sub is None:
                raise ValueError(f"session {session_id} has no subscription: complete it first")
            item = sub["items"]["data"][0]
            start = int(item.get("current_period_end") or sub["created"])
            end = start + _INTERVAL_S.get(str(item["price"]["recurring"]["interval"]), 30 * 86_400)
            item.update(current_period_start=start, current_period_end=end)
            paid = int(item["price"]["unit_amount"]) if amount is None else amount
            invoice = paid_invoice(sub, paid, billing_reason, (start, end), state.subscription_metadata)
            self._invoices.append(invoice)
            sub["latest_invoice"] = invoice["id"]
            obj = copy.deepcopy(invoice)
        return self._maybe_deliver(signed_event("invoice.paid", obj, self.webhook_secret), deliver, url)

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
        period = _INTERVAL_S.get(str(price["recurring"]["interval"]), 30 * 86_400)
        sub["items"]["data"][0].update(id=new_id("si"), subscription=sub_id, created=now,
                                       current_period_start=now, current_period_end=now + period)
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

    def handle_api(
        self, method: str, path: str, params: dict[str, Any], api_key: str | None
    ) -> tuple[int, dict[str, Any]]:
        if self.api_key is not None and api_key != self.api_key:
            raise ApiError(401, f"Invalid API Key provided: {(api_key or '')[:12]}***")
        if method == "POST" and path == "/v1/checkout/sessions":
            return 200, self._create_session(params)
        if method == "POST" and path == "/v1/billing_portal/sessions":
            portal = portal_session(params, self.url)
            self.portal_sessions.append(portal)
            return 200, portal
        with self._lock:
            return 200, self._read(method, path, params)

    def _read(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        if method != "GET":
            raise ApiError(404, f"Unrecognized request URL ({method}: {path}).")
        if path == "/v1/checkout/sessions":
            sessions = [s.session for s in self._sessions.values()]
            filters = ("status", "payment_intent", "customer", "subscription")
            return list_page(sessions, params, path, filters, self.max_page)
        if path == "/v1/refunds":
            return list_page(self._refunds, params, path, ("charge", "payment_intent"), self.max_page)
        if path == "/v1/disputes":
            return list_page(self._disputes, params, path, ("charge", "payment_intent"), self.max_page)
        if path == "/v1/invoices":
            return list_page(self._invoices, params, path, ("customer", "status"), self.max_page)
        if path == "/v1/subscriptions":  # like Stripe: canceled ones only with status=all
            subs = [s.subscription for s in self._sessions.values() if s.subscription]
            status = params.get("status")
            subs = [
                s
                for s in subs
                if (s["status"] != "canceled" if not status else status in ("all", s["status"]))
            ]
            return list_page(
                subs, {k: v for k, v in params.items() if k != "status"}, path, ("customer",), self.max_page
            )
        m = re.fullmatch(r"/v1/checkout/sessions/([^/]+?)(/line_items)?", path)
        if m:
            state = self._sessions.get(m.group(1))
            if state is None:
                raise ApiError(
                    404, f"No such checkout.session: '{m.group(1)}'", code="resource_missing", param="id"
                )
            items = line_items(state.line_items, m.group(1))
            if m.group(2):
                return items
            s = copy.deepcopy(state.session)
            if wants(params, "line_items"):
                s["line_items"] = items
            return s
        m = re.fullmatch(r"/v1/(charges|subscriptions)/([^/]+)", path)
        if m:
            pool = (
                self._charges.values()
                if m.group(1) == "charges"
                else (s.subscription for s in self._sessions.values() if s.subscription)
            )
            found = next((o for o in pool if o["id"] == m.group(2)), None)
            if found is None:
                raise ApiError(
                    404, f"No such {m.group(1)[:-1]}: '{m.group(2)}'", code="resource_missing", param="id"
                )
            return copy.deepcopy(found)
        raise ApiError(404, f"Unrecognized request URL ({method}: {path}).")

    def pay_page(self, session_id: str) -> str:
        with self._lock:
            state = self._sessions.get(session_id)
            if state is None:
                raise ApiError(404, "No such checkout session")
            return pay_page(state.session)
