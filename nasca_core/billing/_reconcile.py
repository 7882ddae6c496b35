"""Reconciliation as a flow (see ``_requests``): rebuild purchases and refunds from what
Stripe says, after a store restore or a webhook outage.

Stripe is asked for every completed Checkout Session (of this namespace) and every refund
since a date, and for every subscription, with stripe-python's auto-pagination. Each
session is decided exactly as its ``checkout.session.completed`` webhook would be
(``_webhook.decide``) and applied by the same steps (``_webhook_flow``); each refunded
charge is re-fetched (its running refunded total is the truth) and applied like
``charge.refunded``; each subscription is applied as an event stamped with Stripe's clock
when it answered (its ``Date`` header), so it orders with the subscription's events:
older ones stay stale, newer ones win. The lot id is the session id and revoking is
idempotent, so a second run changes nothing.

A dry run reads the store and says what a run would change, writing nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from nasca_core._errors import WebhookError
from nasca_core._money import to_usd
from nasca_core.billing._models import BillingPolicy
from nasca_core.billing._requests import CONFIG, Flow, StoreOp, StripeCall, ask
from nasca_core.billing._webhook import (
    Catalog,
    GrantPack,
    Refund,
    Review,
    SubscriptionChange,
    decide,
    refund_of,
)
from nasca_core.billing._webhook_flow import (
    apply_grant,
    apply_refund,
    apply_review,
    billing_key,
    kept_share,
    merge_refund,
)

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._live import ConfigSnapshot

Emit = Callable[..., None]


class ReconcileChange(BaseModel):
    """One thing reconciliation changed (or, in a dry run, would change)."""

    model_config = ConfigDict(frozen=True)

    action: Literal["granted", "revoked", "needs_review", "tier_set", "tier_cleared", "skipped"]
    user_id: str | None
    session_id: str | None
    lot_id: str | None
    spend: Decimal  # AI spend granted or revoked, in dollars
    detail: str | None = None


class ReconcileReport(BaseModel):
    """What ``Billing.reconcile()`` found at Stripe and what it changed."""

    model_config = ConfigDict(frozen=True)

    dry_run: bool
    since: datetime | None
    sessions: int  # completed Checkout Sessions of this namespace that Stripe listed
    refunds: int  # refunds of their payments
    changes: tuple[ReconcileChange, ...]

    def text(self) -> str:
        """What ``nasca billing reconcile`` prints."""
        verb = "would change" if self.dry_run else "changed"
        since = f" since {self.since:%Y-%m-%d %H:%M} UTC" if self.since else ""
        lines = [f"Stripe{since}: {self.sessions} completed Nasca checkout sessions, {self.refunds} refunds."]
        if not self.changes:
            lines.append("Nothing to change: the store agrees with Stripe.")
        else:
            lines.append(f"Reconciliation {verb} {len(self.changes)}:")
            for c in self.changes:
                what = f"${c.spend} of AI spend" if c.action in ("granted", "revoked") else ""
                lines.append(f"  {c.action:<12} {c.user_id or '-':<20} {c.lot_id or c.session_id or '-'}"
                             f"  {what}{'  ' + c.detail if c.detail else ''}".rstrip())
        return "\n".join(lines)


@dataclass
class _Plan:
    """The dry run's view of lots: what the store holds, plus the grants a run would make."""

    lots: dict[str, tuple[int, bool]]  # lot id -> (remaining nanos, revoked)


def reconcile_flow(*, ledger: Nasca, catalog: Callable[[ConfigSnapshot], Catalog], emit: Emit,
                   policy: BillingPolicy, since: datetime | None,
                   dry_run: bool) -> Flow[ReconcileReport]:
    """Raises ConfigurationError (no Stripe client), CheckoutError (Stripe refused or is
    unreachable), StoreError."""
    params: dict[str, Any] = {"status": "complete", "limit": 100}
    if since is not None:
        params["created"] = {"gte": int(since.timestamp())}
    listed = yield from ask(StripeCall(("checkout", "sessions"), "list", params, what="checkout sessions"))
    ns = ledger.namespace
    sessions = [s for s in listed if _metadata(s).get("nasca_namespace") == ns
                and _metadata(s).get("nasca_user_id")]
    snapshot = yield from ask(CONFIG)
    cat = catalog(snapshot)
    now = ledger.now()
    now_ms = int(now * 1000)
    changes: list[ReconcileChange] = []
    plan = _Plan({})
    bought: dict[str, tuple[str, str, int]] = {}  # payment intent -> user, lot id, granted nanos
    for s in sessions:
        event = _event("checkout.session.completed", s, int(s.get("created") or 0))
        try:
            d = decide(event, ns, cat, now_ms)
        except WebhookError as exc:
            changes.append(ReconcileChange(action="skipped", user_id=_metadata(s).get("nasca_user_id"),
                                           session_id=str(s.get("id")), lot_id=None, spend=Decimal(0),
                                           detail=str(exc)))
            continue
        if isinstance(d, GrantPack):
            if d.payment_intent:
                bought[d.payment_intent] = (d.user_id, d.lot.id, d.lot.granted)
            changes += (yield from _grant(d, event, now, now_ms, ledger, emit, policy, dry_run, plan))
        elif isinstance(d, Review):
            if d.payment_intent:
                bought[d.payment_intent] = (d.order.user_id, d.order.session_id, d.lot_granted)
            changes += (yield from _review(d, event, now_ms, ledger, emit, dry_run))
        # Plans follow their subscription's events (customer.subscription.*), not the session.
    refund_params: dict[str, Any] = {"limit": 100}
    if since is not None:
        refund_params["created"] = {"gte": int(since.timestamp())}
    refunds = yield from ask(StripeCall(("refunds",), "list", refund_params, what="refunds"))
    charges = sorted({str(_id(r.get("charge"))) for r in refunds if _id(r.get("charge"))
                      and _id(r.get("payment_intent")) in bought})
    for charge_id in charges:
        charge = yield from ask(StripeCall(("charges",), "retrieve", {}, charge_id,
                                           what=f"charge {charge_id}"))
        d = refund_of(charge)
        if isinstance(d, Refund):
            changes += (yield from _refund(d, charge, bought[d.payment_intent], now, now_ms, ledger, policy,
                                           dry_run, plan))
    # Subscriptions, whatever their age: Stripe's current state of each, as if an event
    # said it now. This restores plans after a store loss and clears a tier whose grace
    # period ended without an event (run it daily for that).
    subs, stripe_now = yield from ask(StripeCall(("subscriptions",), "list_dated",
                                                 {"status": "all", "limit": 100}, what="subscriptions"))
    stamp = int(stripe_now or now)  # Stripe's clock: orders with the events it stamps
    for s in subs:
        if _metadata(s).get("nasca_namespace") not in (None, ns):
            continue
        ended = s.get("status") == "canceled"
        kind = "customer.subscription.deleted" if ended else "customer.subscription.updated"
        event = {**_event(kind, s, stamp), "id": f"reconcile_{s.get('id')}_{now_ms}"}
        try:
            d = decide(event, ns, cat, now_ms)
        except WebhookError as exc:
            changes.append(ReconcileChange(action="skipped", user_id=_metadata(s).get("nasca_user_id"),
                                           session_id=None, lot_id=None, spend=Decimal(0), detail=str(exc)))
            continue
        if isinstance(d, SubscriptionChange):
            changes += (yield from _subscription(d, str(s.get("status")), now, now_ms, ledger, dry_run))
    return ReconcileReport(dry_run=dry_run, since=since, sessions=len(sessions),
                           refunds=sum(1 for r in refunds if _id(r.get("payment_intent")) in bought),
                           changes=tuple(changes))


def _grant(d: GrantPack, event: Mapping[str, Any], now: float, now_ms: int, ledger: Nasca, emit: Emit,
           policy: BillingPolicy, dry_run: bool, plan: _Plan) -> Flow[list[ReconcileChange]]:
    if dry_run:
        lots = yield from ask(StoreOp.all_lots(ledger.user_keys(d.user_id, now)))
        plan.lots.update({lot.id: (lot.remaining, lot.revoked) for lot in lots})
        if d.lot.id in plan.lots:
            return []
        plan.lots[d.lot.id] = (d.lot.granted, False)
        return [_change("granted", d.user_id, d.lot.id, d.lot.granted)]
    result = yield from apply_grant(d, event, now, now_ms, ledger, emit, policy)
    out = [] if result.duplicate else [_change("granted", d.user_id, d.lot.id, d.lot.granted)]
    if result.revoked:  # refunded while the webhook was missing: revoked at once
        out.append(_change("revoked", d.user_id, d.lot.id, None, result.revoked, "refunded at Stripe"))
    return out


def _review(d: Review, event: Mapping[str, Any], now_ms: int, ledger: Nasca, emit: Emit,
            dry_run: bool) -> Flow[list[ReconcileChange]]:
    o = d.order
    if dry_run:
        held = yield from ask(StoreOp.get_marker(billing_key(ledger, "review", o.session_id), now_ms))
        if held is not None:
            return []
    else:
        result = yield from apply_review(d, event, now_ms, ledger, emit)
        if result.duplicate:
            return []
    return [ReconcileChange(action="needs_review", user_id=o.user_id, session_id=o.session_id,
                            lot_id=None, spend=Decimal(0), detail=o.reason)]


def _refund(d: Refund, charge: Mapping[str, Any], bought: tuple[str, str, int], now: float, now_ms: int,
            ledger: Nasca, policy: BillingPolicy, dry_run: bool,
            plan: _Plan) -> Flow[list[ReconcileChange]]:
    user, lot_id, granted = bought
    if not dry_run:
        result = yield from apply_refund(d, _event("charge.refunded", charge, int(now)), now, now_ms, ledger,
                                         policy)
        if not result.revoked:
            return []
        return [_change("revoked", user, lot_id, None, result.revoked, f"refund of {d.charge_id}")]
    if lot_id not in plan.lots:
        lots = yield from ask(StoreOp.all_lots(ledger.user_keys(user, now)))
        plan.lots.update({lot.id: (lot.remaining, lot.revoked) for lot in lots})
    remaining, revoked = plan.lots.get(lot_id, (0, True))
    prior = yield from ask(StoreOp.get_marker(billing_key(ledger, "rf", d.payment_intent), now_ms))
    keep = kept_share(policy, merge_refund(json.loads(prior) if prior else None, d), granted)
    take = remaining if keep is None else max(0, remaining - keep)
    if take == 0 and (revoked or keep is not None):
        return []
    plan.lots[lot_id] = (remaining - take, keep is None)
    return [_change("revoked", user, lot_id, take, None, f"refund of {d.charge_id}")]


def _subscription(d: SubscriptionChange, status: str, now: float, now_ms: int, ledger: Nasca,
                  dry_run: bool) -> Flow[list[ReconcileChange]]:
    user = d.user_id
    if user is None and d.customer:
        user = yield from ask(StoreOp.get_marker(billing_key(ledger, "cus", d.customer), now_ms))
    if user is None:
        return []
    keys = ledger.user_keys(user, now)
    before = (yield from ask(StoreOp.snapshot(keys, now_ms))).stored_tier
    if dry_run:  # the plan's tier when active, else none from this plan
        after = d.change.tier if d.change.active else (None if before == d.change.tier else before)
    else:
        after = (yield from ask(StoreOp.apply_subscription(keys, d.change, now_ms))).tier
    if after == before:
        return []
    return [ReconcileChange(action="tier_set" if after else "tier_cleared", user_id=user, session_id=None,
                            lot_id=None, spend=Decimal(0),
                            detail=f"subscription {d.change.sub_id} is {status}: tier {after or 'default'}")]


def _change(action: Literal["granted", "revoked"], user: str, lot_id: str, nanos: int | None,
            dollars: Decimal | None = None, detail: str | None = None) -> ReconcileChange:
    spend = dollars if dollars is not None else to_usd(nanos or 0)
    return ReconcileChange(action=action, user_id=user, session_id=lot_id, lot_id=lot_id, spend=spend,
                           detail=detail)


def _event(kind: str, obj: Mapping[str, Any], created: int) -> dict[str, Any]:
    # The decision and the steps take an event: this one is built from the object Stripe
    # returned now, so it is fresher than any webhook's snapshot.
    return {"id": f"reconcile_{obj.get('id')}", "object": "event", "type": kind, "created": created,
            "data": {"object": dict(obj)}}


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    md = obj.get("metadata")
    return md if isinstance(md, dict) else {}


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def since_of(value: datetime | str | None) -> datetime | None:
    """``--since`` as a UTC datetime: a datetime, or ``YYYY-MM-DD[THH:MM]`` text (UTC).
    Raises InvalidInputError."""
    from nasca_core._errors import InvalidInputError

    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            raise InvalidInputError("since must be timezone-aware (e.g. datetime(2026, 11, 1, tzinfo=UTC))")
        return value
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidInputError(f"since must be a date like 2026-11-01, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
