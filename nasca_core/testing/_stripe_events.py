"""Signed Stripe test events, built from Stripe's published example objects.

The objects (``stripe_objects.json`` beside this module) are copied unchanged from
stripe/openapi ``openapi/fixtures3.json`` -> ``resources``, with the top-level body
parameters of ``POST /v1/checkout/sessions`` from ``openapi/spec3.json``; its ``source``
names the commit. The values are documentation placeholders: callers overwrite the
fields they give meaning to.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from nasca_core._errors import ConfigurationError, UnknownPackError
from nasca_core.billing._checkout import checkout_metadata

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._usage import Usage

_DATA: dict[str, Any] = json.loads(
    (files("nasca_core.testing") / "stripe_objects.json").read_text(encoding="utf-8")
)
SOURCE_COMMIT: str = _DATA["source"]["commit"]
OBJECTS: Mapping[str, dict[str, Any]] = _DATA["objects"]
CHECKOUT_SESSION_CREATE_PARAMS: frozenset[str] = frozenset(_DATA["checkout_session_create_params"])


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


def clock_now() -> int:
    """The stand-in's "now" (epoch s): never behind the events it has stamped, so its
    responses' ``Date`` header orders with its events as Stripe's does."""
    with _created_lock:
        return max(int(time.time()), _last_created)


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


def session_object(session_id: str, base_url: str) -> dict[str, Any]:
    """A fresh open, unpaid Checkout Session from the published example."""
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
    (``amount_total`` in the currency's smallest unit overrides the pack's price).

    Raises UnknownPackError, ConfigurationError (no secret), InvalidInputError (prompt_id)."""
    packs = nasca.billing.packs
    if pack_id not in packs:
        raise UnknownPackError(pack_id, packs)
    pack = packs[pack_id]
    sid = session_id or new_id("cs")
    s = session_object(sid, "https://checkout.stripe.com")
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
    nasca.billing.handle_stripe_webhook(signed.payload, signed.signature)
    return nasca.get_usage(user, tier=tier)


async def asimulate_purchase(
    nasca: Nasca, user: str, pack_id: str, secret: str | None = None, *, tier: str | None = None
) -> Usage:
    """Async twin of simulate_purchase()."""
    signed = completed_session_event(nasca, user, pack_id, secret)
    await nasca.billing.ahandle_stripe_webhook(signed.payload, signed.signature)
    return await nasca.aget_usage(user, tier=tier)


def _secret(nasca: Nasca, secret: str | None) -> str:
    if secret is not None:
        return secret
    found = nasca.billing.webhook_secret
    if found is None:
        raise ConfigurationError("pass secret=, or configure Nasca(webhook_secret=...)")
    return found
