"""Stripe webhooks, free of I/O: verify an event, then decide what it asks of the ledger.

The decision is made (and every check done) before anything is written, so an event
that is rejected changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from nasca_core._errors import (
    CurrencyMismatchError,
    NascaError,
    SignatureError,
    UnknownPackError,
    UnknownPlanError,
    WebhookError,
)
from nasca_core._identity import check_user_id
from nasca_core._money import MAX_OP_NANOS, to_nanos
from nasca_core.billing._models import CreditPack, Plan, from_minor
from nasca_core.stores import Lot, SubChange

# A subscription keeps its plan's tier while Stripe still expects payment (past_due is
# Stripe's retry period); incomplete, unpaid, paused and canceled subscriptions do not.
ACTIVE_STATUSES = frozenset({"active", "trialing", "past_due"})
PAID_STATUSES = frozenset({"paid", "no_payment_required"})
SESSION_EVENTS = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
SUBSCRIPTION_EVENTS = frozenset({
    "customer.subscription.created", "customer.subscription.updated",
    "customer.subscription.deleted", "customer.subscription.paused",
    "customer.subscription.resumed",
})
DAY_MS = 86_400_000


def verify_and_parse(payload: bytes | str, header: str | None, secret: str,
                     tolerance: int) -> dict[str, Any]:
    """Check the Stripe-Signature header with stripe-python, then read the event.

    Raises SignatureError for a missing, stale or wrong signature; WebhookError for a
    payload that is not a Stripe event."""
    from stripe import SignatureVerificationError, WebhookSignature

    if isinstance(payload, bytearray | memoryview):
        payload = bytes(payload)
    if not isinstance(payload, bytes | str):
        raise WebhookError(f"the webhook payload must be the raw request body, got {type(payload).__name__}")
    try:
        WebhookSignature.verify_header(payload, header, secret, tolerance)
    except SignatureVerificationError as exc:
        raise SignatureError(f"Stripe signature check failed: {exc.user_message or exc}") from exc
    except UnicodeDecodeError as exc:
        raise WebhookError("the webhook payload is not UTF-8") from exc
    try:
        event = json.loads(payload)
    except ValueError as exc:
        raise WebhookError(f"the webhook payload is not JSON: {exc}") from exc
    data = event.get("data") if isinstance(event, dict) else None
    if (not isinstance(event, dict) or event.get("object") != "event"
            or not _nonempty(event.get("id")) or not _nonempty(event.get("type"))
            or not isinstance(data, dict) or not isinstance(data.get("object"), dict)):
        raise WebhookError("the webhook payload is not a Stripe event (id, type, data.object)")
    if not _int(event.get("created")):
        raise WebhookError("the Stripe event has no integer 'created' time")
    return event


# -- decisions -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ignore:
    detail: str
    user_id: str | None = None


@dataclass(frozen=True)
class AwaitPayment:
    user_id: str
    session_id: str


@dataclass(frozen=True)
class GrantPack:
    user_id: str
    pack: CreditPack
    lot: Lot
    amount: Decimal
    payment_intent: str | None
    customer: str | None
    prompt_id: str | None


@dataclass(frozen=True)
class ApplyPlan:
    user_id: str
    plan: Plan
    change: SubChange
    session_id: str
    amount: Decimal | None
    customer: str | None
    prompt_id: str | None


@dataclass(frozen=True)
class SubscriptionChange:
    user_id: str | None  # None: look the customer up
    customer: str | None
    change: SubChange


@dataclass(frozen=True)
class Refund:
    payment_intent: str
    full: bool
    charge_id: str | None


Decision = Ignore | AwaitPayment | GrantPack | ApplyPlan | SubscriptionChange | Refund


@dataclass(frozen=True)
class Catalog:
    """Packs and plans a webhook may name: the live ones and those retired since checkout."""

    packs: Mapping[str, CreditPack]
    plans: Mapping[str, Plan]
    tiers: frozenset[str]
    allow_bonus_credits: bool


def decide(event: Mapping[str, Any], namespace: str, catalog: Catalog, now_ms: int) -> Decision:
    """What one verified event asks for. Raises WebhookError (nothing is written)."""
    kind = str(event["type"])
    obj: Mapping[str, Any] = event["data"]["object"]
    try:
        if kind in SESSION_EVENTS:
            return _session(event, obj, namespace, catalog, now_ms)
        if kind in SUBSCRIPTION_EVENTS:
            return _subscription(event, obj, namespace, catalog)
        if kind == "charge.refunded":
            return _refund(obj)
    except WebhookError:
        raise
    except NascaError as exc:  # an unknown pack, a currency mismatch, a bad user id...
        raise WebhookError(f"{kind} {event['id']}: {exc}") from exc
    return Ignore(f"Nasca does not handle {kind} events")


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    md = obj.get("metadata")
    return md if isinstance(md, dict) else {}


def _ours(md: Mapping[str, Any], namespace: str) -> str | None:
    """Why an object is not for this Nasca, or None when it is."""
    if not md.get("nasca_user_id"):
        return "no nasca_user_id in its metadata: not a Nasca checkout"
    ns = md.get("nasca_namespace")
    if ns is not None and ns != namespace:
        return f"for namespace {ns!r}, not {namespace!r}"
    return None


def _session(event: Mapping[str, Any], s: Mapping[str, Any], namespace: str, catalog: Catalog,
             now_ms: int) -> Decision:
    md = _metadata(s)
    why = _ours(md, namespace)
    if why:
        return Ignore(why)
    user = check_user_id(md["nasca_user_id"])
    session_id = s.get("id")
    if not _nonempty(session_id):
        raise WebhookError("the checkout session has no id")
    if s.get("payment_status") not in PAID_STATUSES:
        return AwaitPayment(user, str(session_id))
    prompt_id = md.get("nasca_prompt_id") or None
    customer = _id_of(s.get("customer"))
    mode = s.get("mode")
    if mode == "payment":
        if not md.get("nasca_pack"):
            raise WebhookError(f"Nasca payment session {session_id} has no nasca_pack in its metadata")
        pack = catalog.packs.get(str(md.get("nasca_pack")))
        if pack is None:
            raise UnknownPackError(str(md.get("nasca_pack")), catalog.packs)
        if pack.is_bonus and not catalog.allow_bonus_credits:
            raise WebhookError(f"credit pack {pack.id!r} grants more than it costs and "
                               "allow_bonus_credits is False")
        amount = _paid(s, pack)
        spend = _spend(md.get("nasca_spend"), pack)
        lot = Lot(id=str(session_id), pack=pack.id, paid=to_nanos(amount), currency=pack.currency,
                  granted=spend, remaining=spend, created_ms=now_ms,
                  expires_ms=now_ms + pack.expires_in_days * DAY_MS if pack.expires_in_days else 0)
        return GrantPack(user, pack, lot, amount, _id_of(s.get("payment_intent")), customer, prompt_id)
    if mode == "subscription":
        if not md.get("nasca_plan"):
            raise WebhookError(f"Nasca subscription session {session_id} has no nasca_plan in its metadata")
        plan = catalog.plans.get(str(md.get("nasca_plan")))
        if plan is None:
            raise UnknownPlanError(str(md.get("nasca_plan")), catalog.plans)
        _check_tier(plan, catalog)
        sub_id = _id_of(s.get("subscription"))
        if not sub_id:
            raise WebhookError(f"subscription checkout {session_id} has no subscription id")
        created = int(event["created"])
        change = SubChange(sub_id, created, str(event["id"]), True, plan.tier, created, False)
        total = _minor(s.get("amount_total"), str(s.get("currency") or plan.currency))
        return ApplyPlan(user, plan, change, str(session_id), total, customer, prompt_id)
    return Ignore(f"checkout mode {mode!r} grants nothing", user)


def _subscription(event: Mapping[str, Any], sub: Mapping[str, Any], namespace: str,
                  catalog: Catalog) -> Decision:
    md = _metadata(sub)
    ns = md.get("nasca_namespace")
    if ns is not None and ns != namespace:
        return Ignore(f"for namespace {ns!r}, not {namespace!r}")
    sub_id = sub.get("id")
    if not _nonempty(sub_id):
        raise WebhookError("the subscription has no id")
    plan = _plan_of(sub, md, catalog)
    if plan is None:
        return Ignore("no Nasca plan names this subscription or its prices")
    user = check_user_id(md["nasca_user_id"]) if md.get("nasca_user_id") else None
    deleted = event["type"] == "customer.subscription.deleted"
    active = not deleted and sub.get("status") in ACTIVE_STATUSES
    if active:
        _check_tier(plan, catalog)
    started = _int(sub.get("created")) or _int(sub.get("start_date")) or int(event["created"])
    change = SubChange(str(sub_id), int(event["created"]), str(event["id"]), active, plan.tier,
                       started, deleted)
    return SubscriptionChange(user, _id_of(sub.get("customer")), change)


def _plan_of(sub: Mapping[str, Any], md: Mapping[str, Any], catalog: Catalog) -> Plan | None:
    if md.get("nasca_plan"):
        plan = catalog.plans.get(str(md["nasca_plan"]))
        if plan is None:
            raise UnknownPlanError(str(md["nasca_plan"]), catalog.plans)
        return plan
    items = sub.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    prices = {_id_of(i.get("price")) for i in data or () if isinstance(i, dict)}
    for plan in catalog.plans.values():
        if plan.stripe_price and plan.stripe_price in prices:
            return plan
    if md.get("nasca_user_id"):
        raise WebhookError("a Nasca subscription without nasca_plan metadata or a known price")
    return None


def _refund(charge: Mapping[str, Any]) -> Decision:
    pi = _id_of(charge.get("payment_intent"))
    if not pi:
        return Ignore("the refunded charge has no payment intent")
    full = charge.get("refunded") is True
    return Refund(pi, full, _id_of(charge.get("id")))


def _check_tier(plan: Plan, catalog: Catalog) -> None:
    if plan.tier not in catalog.tiers:
        raise WebhookError(f"plan {plan.id!r} moves users to tier {plan.tier!r}, which no config defines")


def _paid(s: Mapping[str, Any], pack: CreditPack) -> Decimal:
    """What the user paid in the pack's currency. Since API version 2025-03-31 a session's
    currency is the integration's; older Adaptive Pricing sessions report it under
    ``currency_conversion`` instead."""
    currency = str(s.get("currency") or "").lower()
    if currency == pack.currency:
        return _minor_required(s.get("amount_total"), currency)
    conv = s.get("currency_conversion")
    if isinstance(conv, dict) and str(conv.get("source_currency") or "").lower() == pack.currency:
        return _minor_required(conv.get("amount_total"), pack.currency)
    raise CurrencyMismatchError(pack.id, pack.currency, currency or "none")


def _minor_required(value: Any, currency: str) -> Decimal:
    amount = _minor(value, currency)
    if amount is None:
        raise WebhookError("the checkout session has no integer amount_total")
    return amount


def _minor(value: Any, currency: str) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    amount = from_minor(value, currency)
    if to_nanos(amount) > MAX_OP_NANOS:
        raise WebhookError(f"amount_total {value} is above the ledger's maximum per lot")
    return amount


def _spend(value: Any, pack: CreditPack) -> int:
    if value is None:
        return to_nanos(pack.spend)
    try:
        nanos = to_nanos(Decimal(str(value)), what="nasca_spend", allow_zero=False)
    except (InvalidOperation, NascaError) as exc:
        raise WebhookError(f"bad nasca_spend {value!r} in the session metadata") from exc
    if nanos > MAX_OP_NANOS:
        raise WebhookError(f"nasca_spend {value!r} is above the ledger's maximum per lot")
    return nanos


def _id_of(value: Any) -> str | None:
    """An id field that may be expanded into its object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if _nonempty(value) else None


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0

