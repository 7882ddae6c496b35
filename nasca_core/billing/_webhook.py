"""Stripe webhooks, free of I/O: verify an event, then decide what it asks of the ledger.

The decision is made (and every check done) before anything is written, so an event
that is rejected changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from nasca_core._errors import (
    NascaError,
    SignatureError,
    UnknownPackError,
    UnknownPlanError,
    WebhookError,
)
from nasca_core._identity import check_user_id
from nasca_core._money import MAX_OP_NANOS, to_nanos
from nasca_core.billing._models import BillingPolicy, CreditPack, Plan, ReviewOrder, from_minor
from nasca_core.billing._plan_checks import (
    cycle_anchor,
    id_of,
    plan_by_price,
    plan_mismatch,
    plan_of,
    unpaid_since,
)
from nasca_core.stores import Lot, SubChange

# A subscription keeps its plan's tier while it is paid for; a payment that failed
# (past_due while Stripe retries, then unpaid) keeps it for the policy's grace period after
# the paid period ended, i.e. from the start of the unpaid one (Stripe advances the period
# when it creates the renewal invoice, before the payment fails). The flow remembers when
# the first failure's grace began, so later unpaid periods don't start it again
# (``_webhook_flow.with_grace``). Incomplete, paused and canceled subscriptions keep no
# tier. One with cancel_at_period_end stays active until Stripe deletes it at the period's end.
ACTIVE_STATUSES = frozenset({"active", "trialing"})
GRACE_STATUSES = frozenset({"past_due", "unpaid"})
PAID_STATUSES = frozenset({"paid", "no_payment_required"})
SESSION_EVENTS = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
SUBSCRIPTION_EVENTS = frozenset({
    "customer.subscription.created", "customer.subscription.updated",
    "customer.subscription.deleted", "customer.subscription.paused",
    "customer.subscription.resumed",
})
REFUND_EVENTS = frozenset({"charge.refunded", "charge.refund.updated"})
# A dispute takes the money back until it is won: the credits go with it, and come back
# when it is won (or an inquiry closes without one).
DISPUTE_EVENTS = frozenset({"charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed",
                            "charge.dispute.funds_withdrawn", "charge.dispute.funds_reinstated"})
DISPUTE_WON = frozenset({"won", "warning_closed"})
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
    amount: Decimal  # what Stripe says was paid, in ``currency``
    currency: str
    payment_intent: str | None
    customer: str | None
    prompt_id: str | None
    mismatch: str | None = None  # why Stripe's figures differ from the pack's (policy "grant"/"proportional")


@dataclass(frozen=True)
class Review:
    """A paid session whose figures don't match the pack: grant nothing, record the order."""

    order: ReviewOrder
    lot_granted: int  # the pack's spend, for the refund index (a hand grant may follow)
    payment_intent: str | None
    customer: str | None
    plan_change: SubChange | None = None  # a plan's checkout: its subscription gives no tier


@dataclass(frozen=True)
class ApplyPlan:
    user_id: str
    plan: Plan
    change: SubChange
    session_id: str
    amount: Decimal | None  # what Stripe says was paid, in ``currency``
    customer: str | None
    prompt_id: str | None
    currency: str = "usd"
    mismatch: str | None = None  # why Stripe's figures differ from the plan's (policy "grant")


@dataclass(frozen=True)
class SubscriptionChange:
    user_id: str | None  # None: look the customer up
    customer: str | None
    change: SubChange
    grace_from: int | None = None  # a failed payment: when the unpaid period began (epoch s)
    paid: bool = False  # active or trialing: a grace that began before is over


@dataclass(frozen=True)
class Refund:
    """Money Stripe handed back (a refund) or took back (a dispute), in the charge's minor units."""

    payment_intent: str
    full: bool
    charge_id: str | None
    refunded: int  # cumulative: charge.amount_refunded (a dispute: the whole charge)
    amount: int  # charge.amount
    dispute: bool = False
    dispute_id: str | None = None
    state: str = "open"  # a dispute's: "open", "won" (the money came back) or "lost"

    def entry(self) -> dict[str, Any]:
        """What ``_refunds`` remembers of this event."""
        if self.dispute:
            return {"d": self.dispute_id or self.charge_id or self.payment_intent, "s": self.state}
        return {"r": self.refunded, "a": self.amount, "f": self.full}


@dataclass(frozen=True)
class Renewal:
    """A paid subscription invoice after the first (the first is counted with its checkout)."""

    user_id: str | None  # None: look the customer up
    customer: str | None
    invoice_id: str
    subscription: str
    amount: Decimal  # what Stripe says was paid
    currency: str
    plan: Plan | None


Decision = Ignore | AwaitPayment | GrantPack | Review | ApplyPlan | SubscriptionChange | Refund | Renewal


@dataclass(frozen=True)
class Catalog:
    """Packs and plans a webhook may name: the live ones and those retired since checkout."""

    packs: Mapping[str, CreditPack]
    plans: Mapping[str, Plan]
    tiers: frozenset[str]
    allow_bonus_credits: bool
    policy: BillingPolicy


def decide(event: Mapping[str, Any], namespace: str, catalog: Catalog, now_ms: int) -> Decision:
    """What one verified event asks for. Raises WebhookError (nothing is written)."""
    kind = str(event["type"])
    obj: Mapping[str, Any] = event["data"]["object"]
    try:
        if kind in SESSION_EVENTS:
            return _session(event, obj, namespace, catalog, now_ms)
        if kind in SUBSCRIPTION_EVENTS:
            return _subscription(event, obj, namespace, catalog)
        if kind == "invoice.paid":
            return _invoice(obj, namespace, catalog)
        if kind in REFUND_EVENTS:
            return refund_of(obj)
        if kind in DISPUTE_EVENTS:
            return dispute_of(obj, kind)
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
    customer = id_of(s.get("customer"))
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
        return _pack_purchase(event, s, user, str(session_id), pack, catalog.policy, now_ms, customer,
                              prompt_id)
    if mode == "subscription":
        if not md.get("nasca_plan"):
            raise WebhookError(f"Nasca subscription session {session_id} has no nasca_plan in its metadata")
        plan = catalog.plans.get(str(md.get("nasca_plan")))
        if plan is None:
            raise UnknownPlanError(str(md.get("nasca_plan")), catalog.plans)
        _check_tier(plan, catalog)
        sub_id = id_of(s.get("subscription"))
        if not sub_id:
            raise WebhookError(f"subscription checkout {session_id} has no subscription id")
        created = int(event["created"])
        currency = str(s.get("currency") or "").lower()
        total = _minor(s.get("amount_total"), currency or plan.currency)
        why = plan_mismatch(s, plan, currency)
        if why is not None and catalog.policy.on_amount_mismatch != "grant":
            # Nothing the owner did not price: the tier waits for review (a 100%-off coupon,
            # a price that is not the plan's), and the subscription's events keep off it.
            change = SubChange(sub_id, created, str(event["id"]), False, plan.tier, created, False)
            order = ReviewOrder(session_id=str(session_id), user_id=user, pack=plan.id, reason=why,
                                paid=total or Decimal(0), currency=currency or plan.currency,
                                expected=plan.price, expected_currency=plan.currency,
                                at=datetime.fromtimestamp(created, UTC))
            return Review(order, 0, None, customer, change)
        change = SubChange(sub_id, created, str(event["id"]), True, plan.tier, created, False)
        return ApplyPlan(user, plan, change, str(session_id), total, customer, prompt_id,
                         currency or plan.currency, why)
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
    found = plan_of(sub, md, catalog.plans)
    if found is None:
        return Ignore("no Nasca plan names this subscription or its prices")
    plan, priced = found
    user = check_user_id(md["nasca_user_id"]) if md.get("nasca_user_id") else None
    deleted = event["type"] == "customer.subscription.deleted"
    status = _status(sub, "subscription")
    failing = priced and not deleted and status in GRACE_STATUSES
    since = unpaid_since(sub) if failing else None
    active = priced and not deleted and status in ACTIVE_STATUSES
    started = _int(sub.get("created")) or _int(sub.get("start_date")) or int(event["created"])
    change = SubChange(str(sub_id), int(event["created"]), str(event["id"]), active, plan.tier,
                       started, deleted, anchor=cycle_anchor(sub) if plan.anchor == "subscription" else 0)
    if since is not None:  # the flow may start the grace earlier (never later): active can only end
        change = in_grace(change, since, catalog.policy)
    if change.active:
        _check_tier(plan, catalog)
    return SubscriptionChange(user, id_of(sub.get("customer")), change, since, active)


def in_grace(change: SubChange, since: int, policy: BillingPolicy) -> SubChange:
    """A failing subscription's change: active while its grace, begun at ``since``, lasts."""
    active = change.event_created < since + policy.past_due_grace_days * 86_400
    return SubChange(change.sub_id, change.event_created, change.event_id, active, change.tier,
                     change.sub_created, change.final, anchor=change.anchor)


def _invoice(inv: Mapping[str, Any], namespace: str, catalog: Catalog) -> Decision:
    # API 2025-03-31 on: parent.subscription_details; before: subscription_details, subscription
    parent = inv.get("parent")
    details = _mapping(parent.get("subscription_details") if isinstance(parent, dict) else None) \
        or _mapping(inv.get("subscription_details"))
    sub_id = id_of(details.get("subscription")) or id_of(inv.get("subscription"))
    if not sub_id:
        return Ignore("not a subscription invoice")
    md = _mapping(details.get("metadata"))
    ns = md.get("nasca_namespace")
    if ns is not None and ns != namespace:
        return Ignore(f"for namespace {ns!r}, not {namespace!r}")
    if inv.get("billing_reason") == "subscription_create":
        return Ignore("the first invoice of a subscription is counted with its checkout")
    lines = inv.get("lines")
    prices = {_line_price(li) for li in (lines.get("data") if isinstance(lines, dict) else None) or ()}
    plan = catalog.plans.get(str(md.get("nasca_plan"))) if md.get("nasca_plan") else None
    if plan is None or (plan.stripe_price and plan.stripe_price not in prices):
        plan = plan_by_price(catalog.plans, prices)  # the price charged, over metadata a price change kept
    user = check_user_id(md["nasca_user_id"]) if md.get("nasca_user_id") else None
    if user is None and plan is None:
        return Ignore("not a Nasca subscription (no metadata, no plan's price)")
    currency = str(inv.get("currency") or "").lower()
    amount = _minor(inv.get("amount_paid"), currency or "usd")
    if amount is None or not _nonempty(inv.get("id")):
        raise WebhookError("the paid invoice has no id or no integer amount_paid")
    return Renewal(user, id_of(inv.get("customer")), str(inv["id"]), sub_id, amount, currency, plan)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _line_price(line: Any) -> str | None:
    if not isinstance(line, dict):
        return None
    pricing = line.get("pricing")
    details = pricing.get("price_details") if isinstance(pricing, dict) else None
    return id_of(details.get("price")) if isinstance(details, dict) else id_of(line.get("price"))


def _pack_purchase(event: Mapping[str, Any], s: Mapping[str, Any], user: str, session_id: str,
                   pack: CreditPack, policy: BillingPolicy, now_ms: int, customer: str | None,
                   prompt_id: str | None) -> Decision:
    """What a paid pack session grants: the pack's spend (never an amount from the event),
    when Stripe's currency, total and price are the pack's; else what the policy says."""
    total, currency = _paid(s, pack)
    why = _mismatch(s, pack, total, currency)
    spend = to_nanos(pack.spend)
    pi = id_of(s.get("payment_intent"))
    if why is not None:
        mode = policy.on_amount_mismatch
        if mode == "proportional" and currency == pack.currency and total > 0:
            # Integer arithmetic: the share paid, rounded down, never more than the pack.
            spend = min(spend, spend * total // pack.unit_amount)
        elif mode != "grant":
            spend = 0
        if spend == 0:
            order = ReviewOrder(session_id=session_id, user_id=user, pack=pack.id, reason=why,
                                paid=from_minor(total, currency), currency=currency, expected=pack.price,
                                expected_currency=pack.currency,
                                at=datetime.fromtimestamp(int(event["created"]), UTC))
            return Review(order, to_nanos(pack.spend), pi, customer)
    amount = from_minor(total, currency)
    lot = Lot(id=session_id, pack=pack.id, paid=to_nanos(amount), currency=currency,
              granted=spend, remaining=spend, created_ms=now_ms,
              expires_ms=now_ms + pack.expires_in_days * DAY_MS if pack.expires_in_days else 0)
    return GrantPack(user, pack, lot, amount, currency, pi, customer, prompt_id, why)


def _mismatch(s: Mapping[str, Any], pack: CreditPack, total: int, currency: str) -> str | None:
    """Why what Stripe charged is not the pack's price, or None."""
    if currency != pack.currency:
        return f"paid in {currency.upper() or 'no currency'}, the pack is priced in {pack.currency.upper()}"
    if total != pack.unit_amount:
        return (f"amount_total {total} {currency.upper()} is not the pack's price "
                f"{pack.unit_amount} {pack.currency.upper()}")
    items = s.get("line_items")
    data = items.get("data") if isinstance(items, dict) else None
    if pack.stripe_price and isinstance(data, list) and data:  # only when Stripe expanded them
        prices = {id_of(i.get("price")) for i in data if isinstance(i, dict)}
        if prices != {pack.stripe_price}:
            return f"line items {sorted(p or '?' for p in prices)} are not the pack's {pack.stripe_price}"
    return None


def refund_of(charge: Mapping[str, Any]) -> Decision:
    """What a refunded charge (or a refund object) asks for."""
    if charge.get("object") == "refund":  # charge.refund.updated carries the refund
        return Ignore("refund updates change nothing: charge.refunded carries the refunded total")
    pi = id_of(charge.get("payment_intent"))
    if not pi:
        return Ignore("the refunded charge has no payment intent")
    amount, refunded = _int(charge.get("amount")), _int(charge.get("amount_refunded"))
    full = charge.get("refunded") is True or (amount > 0 and refunded >= amount)
    return Refund(pi, full, id_of(charge.get("id")), refunded, amount)


def dispute_of(dispute: Mapping[str, Any], kind: str | None = None) -> Decision:
    """What a dispute asks for: the whole charge back while it is open or once lost; nothing
    once won (its ``status``, or ``charge.dispute.funds_reinstated``)."""
    pi = id_of(dispute.get("payment_intent"))
    if not pi:
        return Ignore("the disputed charge has no payment intent")
    amount = _int(dispute.get("amount"))
    status = _status(dispute, "dispute")
    # lost is final whatever the event: a funds_reinstated of a lost dispute gives nothing back
    state = ("lost" if status == "lost" else "won" if status in DISPUTE_WON
             or kind == "charge.dispute.funds_reinstated" else "open")
    return Refund(pi, True, id_of(dispute.get("charge")), amount, amount, dispute=True,
                  dispute_id=id_of(dispute.get("id")), state=state)


def _status(obj: Mapping[str, Any], what: str) -> str | None:
    """An object's ``status``, checked: a signed event of a foreign shape is a WebhookError,
    not a TypeError from a set lookup."""
    status = obj.get("status")
    if status is not None and not isinstance(status, str):
        raise WebhookError(f"the {what}'s status is not a string")
    return status


def _check_tier(plan: Plan, catalog: Catalog) -> None:
    if plan.tier not in catalog.tiers:
        raise WebhookError(f"plan {plan.id!r} moves users to tier {plan.tier!r}, which no config defines")


def _paid(s: Mapping[str, Any], pack: CreditPack) -> tuple[int, str]:
    """What the user paid, as Stripe's integer amount and its currency: in the pack's currency
    when Stripe reports it. Since API version 2025-03-31 a session's currency is the
    integration's; older Adaptive Pricing sessions report it under ``currency_conversion``."""
    currency = str(s.get("currency") or "").lower()
    total = s.get("amount_total")
    conv = s.get("currency_conversion")
    if (currency != pack.currency and isinstance(conv, dict)
            and str(conv.get("source_currency") or "").lower() == pack.currency):
        currency, total = pack.currency, conv.get("amount_total")
    if _minor(total, currency or pack.currency) is None:
        raise WebhookError("the checkout session has no integer amount_total")
    return int(total), currency  # type: ignore[arg-type]  # _minor checked it is an int


def _minor(value: Any, currency: str) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    amount = from_minor(value, currency)
    if to_nanos(amount) > MAX_OP_NANOS:
        raise WebhookError(f"amount_total {value} is above the ledger's maximum per lot")
    return amount


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0

