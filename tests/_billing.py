"""Helpers for the billing tests: Stripe's published objects, Stripe's signature scheme,
and Nasca instances with packs and plans."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from nasca_core import Tier
from nasca_core.billing import CreditPack, Plan

SHARED = Path(__file__).resolve().parents[2] / "shared" / "stripe" / "fixtures.json"
SECRET = "whsec_nasca_tests_5f2c0d"
DAY = 86400.0


def fixtures() -> dict[str, Any]:
    """Stripe's published example objects (../shared/stripe/fixtures.json)."""
    if SHARED.exists():
        data: dict[str, Any] = json.loads(SHARED.read_text())
        return data
    from nasca_core.testing._stripe_events import CHECKOUT_SESSION_CREATE_PARAMS, OBJECTS

    return {"objects": OBJECTS, "checkout_session_create_params": sorted(CHECKOUT_SESSION_CREATE_PARAMS)}


FIXTURES = fixtures()


def obj(name: str) -> dict[str, Any]:
    """A fresh copy of one published object, to modify."""
    return copy.deepcopy(FIXTURES["objects"][name])


def stripe_signature(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """Stripe's scheme, written from its description: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(event_type: str, data_object: dict[str, Any], *, event_id: str | None = None,
          created: int | None = None) -> dict[str, Any]:
    e = obj("event")
    e.update(id=event_id or f"evt_{uuid.uuid4().hex[:24]}", type=event_type,
             created=int(time.time()) if created is None else created, data={"object": data_object})
    return e


def signed(e: dict[str, Any], secret: str = SECRET, timestamp: int | None = None) -> tuple[bytes, str]:
    payload = json.dumps(e).encode()
    return payload, stripe_signature(payload, secret, timestamp)


def session(user: str, *, namespace: str, pack: str | None = "p5", plan: str | None = None,
            amount_total: int = 500, currency: str = "usd", session_id: str | None = None,
            payment_status: str = "paid", payment_intent: str | None = None, spend: str | None = None,
            customer: str | None = None, subscription: str | None = None,
            prompt_id: str | None = None) -> dict[str, Any]:
    """The published checkout.session, completed for a Nasca pack (or plan)."""
    s = obj("checkout.session")
    md = {"nasca_user_id": user, "nasca_namespace": namespace}
    if plan is not None:
        md["nasca_plan"] = plan
        s.update(mode="subscription", subscription=subscription or f"sub_{uuid.uuid4().hex[:20]}",
                 payment_intent=None)
    elif pack is not None:
        md["nasca_pack"] = pack
        s["payment_intent"] = payment_intent or f"pi_{uuid.uuid4().hex[:20]}"
    if spend is not None:
        md["nasca_spend"] = spend
    if prompt_id is not None:
        md["nasca_prompt_id"] = prompt_id
    s.update(id=session_id or f"cs_test_{uuid.uuid4().hex}", metadata=md, status="complete",
             payment_status=payment_status, amount_total=amount_total, amount_subtotal=amount_total,
             currency=currency, currency_conversion=None, client_reference_id=user,
             customer=customer or f"cus_{uuid.uuid4().hex[:14]}")
    return s


def subscription(user: str | None, *, namespace: str, plan: str | None = "pro", sub_id: str,
                 status: str = "active", created: int = 1_700_000_000,
                 customer: str = "cus_QXg1o8vcGmoR32", price: str | None = None) -> dict[str, Any]:
    sub = obj("subscription")
    md: dict[str, str] = {"nasca_namespace": namespace}
    if user is not None:
        md["nasca_user_id"] = user
    if plan is not None:
        md["nasca_plan"] = plan
    sub.update(id=sub_id, status=status, metadata=md, created=created, customer=customer)
    if price is not None:
        sub["items"]["data"][0]["price"]["id"] = price
    return sub


def charge(payment_intent: str, *, amount: int = 500, refunded: int | None = None) -> dict[str, Any]:
    c = obj("charge")
    done = amount if refunded is None else refunded
    c.update(payment_intent=payment_intent, amount=amount, amount_captured=amount,
             amount_refunded=done, refunded=done >= amount, captured=True)
    return c


PACKS = [
    CreditPack(id="p5", price=5, spend=3),
    CreditPack(id="p10", price=10, spend=10),
    CreditPack(id="p20", price="20", spend="12.5", stripe_price="price_p20"),
    CreditPack(id="e5", price="5", spend="4", currency="eur"),
]
PLANS = [
    Plan(id="pro", tier="pro", price=20, interval="month"),
    Plan(id="team", tier="team", price=99, interval="year", stripe_price="price_team"),
]
TIERS = {
    "free": Tier(monthly="0.50", daily="0.10"),
    "pro": Tier(monthly=10, weekly=5, daily=2),
    "team": Tier(monthly=100),
}


def billed(make_nasca: Any, *, billing: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A Nasca from the backend fixture, with packs, plans and the test webhook secret."""
    kwargs.setdefault("tiers", TIERS)
    conf: dict[str, Any] = {"packs": PACKS, "plans": PLANS, "webhook_secret": SECRET}
    conf.update(billing or {})
    return make_nasca(**conf, **kwargs)


def usd(value: str | int) -> Decimal:
    return Decimal(value)
