"""Reconciliation as a flow (see ``_requests``): rebuild purchases and refunds from what
Stripe says, after a store restore or a webhook outage.

Stripe is asked for every completed Checkout Session (of this namespace), every refund and
every dispute since a date (of purchases made at any time), and for every subscription,
with stripe-python's auto-pagination. Each session is decided exactly as its
``checkout.session.completed`` webhook would be (``_webhook.decide``) and applied by the
same steps (``_webhook_flow``); each refunded charge is re-fetched (its running refunded
total is the truth) and applied like ``charge.refunded``, each dispute like
``charge.dispute.created``; each subscription is applied as an event stamped with
Stripe's clock when it answered (its ``Date`` header), so it orders with the
subscription's events: older ones stay stale, newer ones win. The lot id is the session
id and revoking is idempotent, so a second run changes nothing.

A dry run reads the store and says what a run would change, writing nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from nasca_core._errors import WebhookError
from nasca_core._money import to_usd
from nasca_core.billing._models import BillingPolicy
from nasca_core.billing._refunds import (
    billing_key,
    legacy_taken,
    lot_target,
    merge_entry,
    read_refunds,
    refund_share,
    store_target,
)
from nasca_core.billing._requests import CONFIG, Flow, StoreOp, StripeOp, ask
from nasca_core.billing._webhook import (
    Catalog,
    GrantPack,
    Refund,
    Review,
    SubscriptionChange,
    decide,
    dispute_of,
    refund_of,
)
from nasca_core.billing._webhook_flow import (
    apply_change,
    apply_grant,
    apply_refund,
    apply_review,
    held,
    remember_grace,
    with_grace,
)
from nasca_core.stores._billing_rules import taken_to

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._live import ConfigSnapshot

Emit = Callable[..., None]


class ReconcileChange(BaseModel):
    """One thing reconciliation changed (or, in a dry run, would change)."""

    model_config = ConfigDict(frozen=True)

    action: Literal["granted", "revoked", "restored", "needs_review", "tier_set", "tier_cleared", "skipped"]
    user_id: str | None
    session_id: str | None
    lot_id: str | None
    spend: Decimal  # AI spend granted, revoked or restored, in dollars
    detail: str | None = None


class ReconcileReport(BaseModel):
    """What ``Billing.reconcile()`` found at Stripe and what it changed."""

    model_config = ConfigDict(frozen=True)

    dry_run: bool
    since: datetime | None
    sessions: int  # completed Checkout Sessions of this namespace that Stripe listed
    refunds: int  # refunds and disputes of Nasca purchases
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

    lots: dict[str, tuple[int, bool, int, int]]  # lot id -> (remaining nanos, revoked, taken back, floor)


def reconcile_flow(*, ledger: Nasca, catalog: Callable[[ConfigSnapshot], Catalog], emit: Emit,
                   policy: BillingPolicy, since: datetime | None,
                   dry_run: bool) -> Flow[ReconcileReport]:
    """Raises ConfigurationError (no Stripe client), CheckoutError (Stripe refused or is
    unreachable), StoreError."""
    params: dict[str, Any] = {"status": "complete", "limit": 100}
    if since is not None:
        params["created"] = {"gte": int(since.timestamp())}
    listed = yield from ask(StripeOp.list_checkout_sessions(params))
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
    # Every refund and dispute listed since ``since``, whenever its payment was made: the
    # refund path finds the purchase by its payment intent (or remembers the refund for a
    # purchase not seen yet, as a webhook would).
    dated: dict[str, Any] = {"limit": 100}
    if since is not None:
        dated["created"] = {"gte": int(since.timestamp())}
    refunds = yield from ask(StripeOp.list_refunds(dict(dated)))
    disputes = yield from ask(StripeOp.list_disputes(dict(dated)))
    charges = Counter(str(_id(r.get("charge"))) for r in refunds if _id(r.get("charge"))
                      and _id(r.get("payment_intent")))
    found = 0  # refunds and disputes of Nasca purchases
    for charge_id in sorted(charges):
        charge = yield from ask(StripeOp.retrieve_charge(charge_id))
        if charge is None:  # not missing_ok: Stripe's 404 is an error
            continue
        d = refund_of(charge)
        if isinstance(d, Refund):
            hit, out = yield from _refund(d, charge, bought, now, now_ms, ledger, policy, dry_run, plan)
            found, changes = found + hit * charges[charge_id], changes + out
    for dispute in disputes:
        d = dispute_of(dispute)
        if isinstance(d, Refund):
            hit, out = yield from _refund(d, dispute, bought, now, now_ms, ledger, policy, dry_run, plan)
            found, changes = found + hit, changes + out
    # Subscriptions, whatever their age: Stripe's current state of each, as if an event
    # said it now. This restores plans after a store loss and clears a tier whose grace
    # period ended without an event (run it daily for that).
    subs, stripe_now = yield from ask(StripeOp.list_subscriptions_dated({"status": "all", "limit": 100}))
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
            changes += (yield from _subscription(d, str(s.get("status")), now, now_ms, ledger, policy,
                                                 dry_run))
    return ReconcileReport(dry_run=dry_run, since=since, sessions=len(sessions),
                           refunds=found,
                           changes=tuple(changes))


def _grant(d: GrantPack, event: Mapping[str, Any], now: float, now_ms: int, ledger: Nasca, emit: Emit,
           policy: BillingPolicy, dry_run: bool, plan: _Plan) -> Flow[list[ReconcileChange]]:
    if dry_run:
        lots = yield from ask(StoreOp.all_lots(ledger.user_keys(d.user_id, now)))
        plan.lots.update({lot.id: (lot.remaining, lot.revoked, lot.taken, lot.floor) for lot in lots})
        if d.lot.id in plan.lots:
            return []
        plan.lots[d.lot.id] = (d.lot.granted, False, 0, 0)
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


def _refund(d: Refund, obj: Mapping[str, Any], bought: Mapping[str, tuple[str, str, int]], now: float,
            now_ms: int, ledger: Nasca, policy: BillingPolicy, dry_run: bool,
            plan: _Plan) -> Flow[tuple[int, list[ReconcileChange]]]:
    """Apply one refunded charge or dispute; answer (1 when it refunds a Nasca purchase, the changes)."""
    of = bought.get(d.payment_intent)
    if of is None:  # bought before ``since``: the store's index of the payment
        raw = yield from ask(StoreOp.get_marker(billing_key(ledger, "pi", d.payment_intent), now_ms))
        index = json.loads(raw) if raw else None
        of = (str(index["u"]), str(index["l"]), int(index.get("g", 0))) if index else None
    what = f"{'dispute' if d.dispute else 'refund'} of {d.charge_id}"
    if not dry_run:
        kind = "charge.dispute.created" if d.dispute else "charge.refunded"
        result = yield from apply_refund(d, _event(kind, obj, int(now)), now, now_ms, ledger, policy)
        moved = result.revoked or result.restored
        if not moved or result.user_id is None or result.lot_id is None:
            return (0 if of is None else 1), []
        return 1, [_change("restored" if result.restored else "revoked", result.user_id, result.lot_id, None,
                           moved, what)]
    if of is None:
        return 0, []
    user, lot_id, granted = of
    if lot_id not in plan.lots:
        lots = yield from ask(StoreOp.all_lots(ledger.user_keys(user, now)))
        plan.lots.update({lot.id: (lot.remaining, lot.revoked, lot.taken, lot.floor) for lot in lots})
    remaining, revoked, taken, kept = plan.lots.get(lot_id, (0, True, 0, 0))
    memo, _ = yield from read_refunds(ledger, d.payment_intent, now_ms)
    merged = merge_entry(memo, d.entry())
    target, restore = lot_target(policy, merged, granted)
    legacy = yield from legacy_taken(ledger, lot_id, now_ms)
    floor = store_target(refund_share(policy, merged, granted), granted, legacy)
    new, marked, kept = taken_to(taken, remaining, granted, revoked, store_target(target, granted, legacy),
                                 restore, floor, kept)
    if new == taken:
        return 1, []
    plan.lots[lot_id] = (remaining - (new - taken), marked, new, kept)
    return 1, [_change("revoked" if new > taken else "restored", user, lot_id, abs(new - taken), None, what)]


def _subscription(d: SubscriptionChange, status: str, now: float, now_ms: int, ledger: Nasca,
                  policy: BillingPolicy, dry_run: bool) -> Flow[list[ReconcileChange]]:
    user = d.user_id
    if user is None and d.customer:
        user = yield from ask(StoreOp.get_marker(billing_key(ledger, "cus", d.customer), now_ms))
    if user is None:
        return []
    keys = ledger.user_keys(user, now)
    before = (yield from ask(StoreOp.snapshot(keys, now_ms))).stored_tier
    change, grace = yield from with_grace(ledger, d, policy, now_ms)
    change = yield from held(ledger, change, now_ms)
    if dry_run:  # the plan's tier when active, else none from this plan
        after = change.tier if change.active else (None if before == change.tier else before)
    else:
        applied = yield from apply_change(ledger, keys, change, now_ms)
        yield from remember_grace(ledger, d, grace, applied.status, now_ms)
        after = applied.tier
    if after == before:
        return []
    return [ReconcileChange(action="tier_set" if after else "tier_cleared", user_id=user, session_id=None,
                            lot_id=None, spend=Decimal(0),
                            detail=f"subscription {d.change.sub_id} is {status}: tier {after or 'default'}")]


def _change(action: Literal["granted", "revoked", "restored"], user: str, lot_id: str, nanos: int | None,
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
