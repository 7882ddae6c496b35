"""A Stripe webhook as a flow (see ``_requests``): verify it, skip a replay, decide
(``_webhook``), then do what the decision asks and remember the result for replays.

What billing keeps beside the ledger, as store markers under ``<namespace>:billing:``:
``evt:<event id>`` the result of each handled event, ``pi:<payment intent>`` the lot it
bought (for refunds), ``rf:<payment intent>:<n>`` what was refunded or disputed
(``_refunds``: a refund that arrives before its purchase is applied when the purchase
arrives; what that took back is kept in the lot itself), ``cus:<customer>`` the user,
``portal:<user>`` the customer whose subscription the Billing Portal manages,
``once:<session id>`` that a plan's purchase was reported, ``inv:<invoice id>`` that a
renewal was counted, ``grace:<subscription id>`` when a failing subscription's grace
began (epoch s; 0 once paid again), ``review:<session id>`` that an order is held for
review, and the keyed set ``reviews:set`` (one entry per order: the dashboard's list,
each written in one atomic step).

Order independence: a purchase writes its ``pi:`` index, grants, then reads ``rf:``; a
refund appends to ``rf:``, then reads ``pi:``. Each writes before it reads what the other
writes, so whichever runs second sees the first, and revoking is idempotent (a full
revoke empties the lot; a partial one raises what the lot gave back to the refunded share,
atomically in the store; a won dispute lowers it back, see ``_refunds``), so every order
and every replay ends in the same state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nasca_core._errors import StoreError, UnknownPackError, UnknownPlanError, WebhookError
from nasca_core._money import to_usd
from nasca_core._windows import carried_months, cycle_end, cycle_window
from nasca_core.billing._models import BillingPolicy, WebhookAction, WebhookResult
from nasca_core.billing._refunds import (
    INDEX_TTL_MS,
    billing_key,
    lot_target,
    read_refunds,
    remember_refund,
    settle_lot,
)
from nasca_core.billing._requests import CONFIG, Flow, StoreOp, StripeOp, ask
from nasca_core.billing._webhook import (
    SESSION_EVENTS,
    ApplyPlan,
    AwaitPayment,
    Catalog,
    Decision,
    GrantPack,
    Ignore,
    Refund,
    Renewal,
    Review,
    SubscriptionChange,
    decide,
    in_grace,
    verify_and_parse,
)
from nasca_core.stores import SubChange, SubscriptionResult, UserKeys

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._live import ConfigSnapshot

log = logging.getLogger("nasca")

DAY_MS = 86_400_000
EVENT_TTL_MS = 30 * DAY_MS  # Stripe retries for 3 days and can resend an event for 30

Emit = Callable[..., None]


def webhook_flow(payload: bytes | str, header: str | None, secret: str, tolerance: int, *, ledger: Nasca,
                 catalog: Callable[[ConfigSnapshot], Catalog], emit: Emit,
                 policy: BillingPolicy, refetch: bool = False) -> Flow[WebhookResult]:
    """``refetch`` (a Stripe client is configured): read sessions and refunded charges
    from Stripe instead of trusting the event's snapshot, which may be older than events
    that arrived before it. Raises SignatureError, WebhookError (nothing changed),
    StoreError, CheckoutError (Stripe unreachable: answer 5xx, Stripe retries)."""
    event = verify_and_parse(payload, header, secret, tolerance)
    now = ledger.now()
    now_ms = int(now * 1000)
    marker = billing_key(ledger, "evt", event["id"])
    prior = yield from ask(StoreOp.get_marker(marker, now_ms))
    if prior is not None:
        return _replayed(prior, event)
    if refetch:
        event = yield from _fresh(event, ledger.namespace)
    snapshot = yield from ask(CONFIG)
    try:
        decision = decide(event, ledger.namespace, catalog(snapshot), now_ms)
    except WebhookError as exc:
        if not isinstance(exc.__cause__, UnknownPackError | UnknownPlanError):
            raise
        # Another process may have just added it (a webhook worker never reserves, so
        # nothing else tells it the config moved): read the config once more.
        ledger.live.invalidate()
        decision = decide(event, ledger.namespace, catalog((yield from ask(CONFIG))), now_ms)
    result = yield from _apply(decision, event, now, now_ms, ledger, emit, policy)
    yield from ask(StoreOp.put_marker(marker, result.model_dump_json(), EVENT_TTL_MS, now_ms))
    return result


def _fresh(event: dict[str, Any], namespace: str) -> Flow[dict[str, Any]]:
    obj = event["data"]["object"]
    kind = event["type"]
    md = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    call: StripeOp[dict[str, Any] | None] | None = None
    if kind in SESSION_EVENTS and md.get("nasca_user_id") and md.get("nasca_namespace") in (None, namespace):
        # line_items expanded: the price the session charged is checked against the pack's
        call = StripeOp.retrieve_checkout_session(str(obj.get("id")), {"expand": ["line_items"]})
    elif kind == "charge.refunded" and obj.get("object") == "charge":
        call = StripeOp.retrieve_charge(str(obj.get("id")), missing_ok=True)
    if call is None:
        return event
    fresh = yield from ask(call)
    if not isinstance(fresh, dict):
        raise WebhookError(f"Stripe has no {call.what}: an event about it grants and revokes nothing")
    return {**event, "data": {**event["data"], "object": fresh}}


def _apply(d: Decision, event: Mapping[str, Any], now: float, now_ms: int, ledger: Nasca,
           emit: Emit, policy: BillingPolicy) -> Flow[WebhookResult]:
    if isinstance(d, Ignore):
        return _result(event, "ignored", user_id=d.user_id, detail=d.detail)
    if isinstance(d, AwaitPayment):
        return _result(event, "awaiting_payment", user_id=d.user_id,
                       detail=f"session {d.session_id} is not paid yet")
    if isinstance(d, GrantPack):
        return (yield from apply_grant(d, event, now, now_ms, ledger, emit, policy))
    if isinstance(d, Review):
        return (yield from apply_review(d, event, now_ms, ledger, emit))
    if isinstance(d, ApplyPlan):
        if d.mismatch:
            log.warning("nasca: session %s gave tier %s although %s", d.session_id, d.plan.tier, d.mismatch)
        if d.customer:
            yield from _remember_customer(ledger, d.user_id, d.customer, now_ms, subscriber=True)
        applied = yield from ask(StoreOp.apply_subscription(ledger.user_keys(d.user_id, now), d.change,
                                                            now_ms))
        ledger.leases.retire(ledger.user_keys(d.user_id, now))  # the tier may have changed: no stale lease
        once = billing_key(ledger, "once", d.session_id)
        first = yield from ask(StoreOp.claim_marker(once, INDEX_TTL_MS, now_ms))
        if first:
            emit("purchase_completed", d.user_id, session_id=d.session_id, plan=d.plan.id, tier=d.plan.tier,
                 amount=d.amount, currency=d.currency, prompt_id=d.prompt_id)
        return _result(event, "plan_applied" if applied.status else "stale", duplicate=not first,
                       user_id=d.user_id, tier=applied.tier)
    if isinstance(d, SubscriptionChange):
        user = d.user_id
        if user is None and d.customer:
            user = yield from ask(StoreOp.get_marker(billing_key(ledger, "cus", d.customer), now_ms))
        if user is None:
            return _result(event, "ignored", detail="no nasca_user_id metadata and an unknown customer")
        change, grace = yield from with_grace(ledger, d, policy, now_ms)
        change = yield from held(ledger, change, now_ms)
        applied = yield from apply_change(ledger, ledger.user_keys(user, now), change, now_ms)
        yield from remember_grace(ledger, d, grace, applied.status, now_ms)
        if d.customer and change.active:
            yield from _remember_customer(ledger, user, d.customer, now_ms, subscriber=True)
        action: WebhookAction = ("stale" if applied.status == 0
                                 else "tier_set" if applied.tier else "tier_cleared")
        return _result(event, action, duplicate=applied.status == 2, user_id=user, tier=applied.tier)
    if isinstance(d, Renewal):
        return (yield from apply_renewal(d, event, now_ms, ledger, emit))
    assert isinstance(d, Refund)
    return (yield from apply_refund(d, event, now, now_ms, ledger, policy))


MAX_REVIEWS = 200  # orders held for review that are kept (the list before the keyed set kept 200)


def with_grace(ledger: Nasca, d: SubscriptionChange, policy: BillingPolicy,
               now_ms: int) -> Flow[tuple[SubChange, int | None]]:
    """The change, carrying its grace for the store to merge into the subscription's record
    in the same atomic step (the earliest first failed payment since it was last paid wins,
    whatever the order or a failure between steps); and what to write to the grace marker
    of older Nasca versions afterwards (None: leave it)."""
    if d.grace_from is None and not (d.paid or d.change.final):
        return d.change, None
    raw = yield from ask(StoreOp.get_marker(billing_key(ledger, "grace", d.change.sub_id), now_ms))
    began = int(raw) if raw and raw.isdigit() else 0  # a grace begun before it lived in the record
    if d.grace_from is None:  # paid again (or deleted): the next failure starts a new grace
        return replace(d.change, grace_from=0), 0 if began else None
    since = min(began, d.grace_from) if began else d.grace_from
    change = in_grace(d.change, since, policy)
    return replace(change, grace_from=since, grace_s=policy.past_due_grace_days * 86_400), None


def remember_grace(ledger: Nasca, d: SubscriptionChange, grace: int | None, status: int,
                   now_ms: int) -> Flow[None]:
    """Clear an older version's grace marker once the subscription is paid again."""
    if grace is not None and status in (1, 2):
        key = billing_key(ledger, "grace", d.change.sub_id)
        yield from ask(StoreOp.put_marker(key, str(grace), None, now_ms))


def apply_change(ledger: Nasca, keys: UserKeys, change: SubChange, now_ms: int) -> Flow[SubscriptionResult]:
    """The store's subscription step, given the billing-cycle window in force now under the
    user's anchor spec (the timezone's math, which Lua lacks), so the step keeps that window,
    ending it on a boundary of the new cycle (``cycle_end``), or, with none in force, the keys
    of the calendar month whose spend the new cycle's first window takes on; read again and
    retried while another step changed the spec in between."""
    cut_for = change.anchor or 0  # the step's next anchor, as the flow expects it
    for _ in range(_CYCLE_TRIES if change.anchor is not None else 1):
        if change.anchor is not None:
            seen = (yield from ask(StoreOp.snapshot(keys, now_ms))).anchor
            at = max(change.event_created, now_ms // 1000)  # a late delivery acts on today's window
            start, end = cycle_window(at, ledger.tz, seen)
            carry = ("", "")
            if end:  # the window in force ends on the new cycle's boundary: never a short one
                end = cycle_end(start, end, at, cut_for, ledger.tz)
            elif cut_for:
                old, new = carried_months(now_ms / 1000, ledger.tz, cut_for)
                carry = keys.month_of(old), keys.month_of(new)
            change = replace(change, seen=seen, window=(start, end), carry=carry, cut_for=cut_for)
        applied = yield from ask(StoreOp.apply_subscription(keys, change, now_ms))
        ledger.leases.retire(keys)  # the tier may have changed: no stale lease here
        if applied.status == -4:  # another subscription's anchor (or none) comes next
            cut_for = applied.anchor
        elif applied.status != -3:
            return applied
    raise StoreError("the user's anchor spec changed under five subscription steps in a row")


_CYCLE_TRIES = 5


def held(ledger: Nasca, change: SubChange, now_ms: int) -> Flow[SubChange]:
    """The change, giving no tier when the subscription's checkout is held for review."""
    if change.active and (yield from ask(StoreOp.get_marker(billing_key(ledger, "subrev", change.sub_id),
                                                              now_ms))):
        return replace(change, active=False)
    return change


def apply_renewal(d: Renewal, event: Mapping[str, Any], now_ms: int, ledger: Nasca,
                  emit: Emit) -> Flow[WebhookResult]:
    user = d.user_id
    if user is None and d.customer:
        user = yield from ask(StoreOp.get_marker(billing_key(ledger, "cus", d.customer), now_ms))
    if user is None:
        return _result(event, "ignored", detail="no nasca_user_id metadata and an unknown customer")
    # Keyed by the invoice: its invoice.paid resent, or a second event for it, counts once.
    once = billing_key(ledger, "inv", d.invoice_id)
    first = yield from ask(StoreOp.claim_marker(once, INDEX_TTL_MS, now_ms))
    if first:
        emit("purchase_completed", user, session_id=None, plan=d.plan.id if d.plan else None,
             tier=d.plan.tier if d.plan else None, amount=d.amount, currency=d.currency, prompt_id=None,
             renewal=True, invoice_id=d.invoice_id, subscription=d.subscription)
    return _result(event, "renewal_recorded", duplicate=not first, user_id=user,
                   detail=f"renewal: {d.amount} {d.currency.upper()} paid")


def _remember_customer(ledger: Nasca, user: str, customer: str, now_ms: int,
                       subscriber: bool = False) -> Flow[None]:
    yield from ask(StoreOp.put_marker(billing_key(ledger, "cus", customer), user, None, now_ms))
    if subscriber:  # the customer whose subscription the Billing Portal link manages
        yield from ask(StoreOp.put_marker(billing_key(ledger, "portal", user), customer, None, now_ms))


def apply_grant(d: GrantPack, event: Mapping[str, Any], now: float, now_ms: int, ledger: Nasca, emit: Emit,
           policy: BillingPolicy) -> Flow[WebhookResult]:
    if d.payment_intent:
        index = json.dumps({"u": d.user_id, "l": d.lot.id, "g": d.lot.granted})
        pi = billing_key(ledger, "pi", d.payment_intent)
        yield from ask(StoreOp.put_marker(pi, index, INDEX_TTL_MS, now_ms))
    if d.customer:
        yield from ask(StoreOp.put_marker(billing_key(ledger, "cus", d.customer), d.user_id, None, now_ms))
    keys = ledger.user_keys(d.user_id, now)
    granted = yield from ask(StoreOp.grant(keys, d.lot))
    if granted:
        if d.mismatch:
            log.warning("nasca: session %s granted $%s of AI spend although %s", d.lot.id,
                        to_usd(d.lot.granted), d.mismatch)
        emit("purchase_completed", d.user_id, session_id=d.lot.id, pack=d.pack.id, amount=d.amount,
             currency=d.currency, spend=to_usd(d.lot.granted), prompt_id=d.prompt_id, lot_id=d.lot.id)
    memo = None
    if d.payment_intent:  # a refund or dispute that arrived first was remembered
        memo, _ = yield from read_refunds(ledger, d.payment_intent, now_ms)
    if memo is not None and lot_target(policy, memo, d.lot.granted)[0] != 0:
        taken = yield from settle_lot(ledger, keys, d.payment_intent or "", d.lot.id, d.lot.granted, policy,
                                      memo, now_ms)
        if taken < 0:  # a resent completion after a dispute was won
            return _result(event, "restored", duplicate=not granted, user_id=d.user_id, lot_id=d.lot.id,
                           restored=to_usd(-taken), detail=f"gave back ${to_usd(-taken)} of AI spend")
        return _result(event, "revoked", duplicate=not granted, user_id=d.user_id, lot_id=d.lot.id,
                       revoked=to_usd(taken),
                       detail=f"refunded before this event: granted and revoked ${to_usd(taken)} at once")
    return _result(event, "granted", duplicate=not granted, user_id=d.user_id, lot_id=d.lot.id,
                   detail=d.mismatch)


def apply_review(d: Review, event: Mapping[str, Any], now_ms: int, ledger: Nasca,
            emit: Emit) -> Flow[WebhookResult]:
    o = d.order
    if d.payment_intent:  # a hand grant for this session (lot id = session id) is revoked by its refund
        index = json.dumps({"u": o.user_id, "l": o.session_id, "g": d.lot_granted})
        pi = billing_key(ledger, "pi", d.payment_intent)
        yield from ask(StoreOp.put_marker(pi, index, INDEX_TTL_MS, now_ms))
    if d.customer:
        yield from ask(StoreOp.put_marker(billing_key(ledger, "cus", d.customer), o.user_id, None, now_ms))
    if d.plan_change is not None:  # before the tier is cleared, so a later event can't give it back
        sub = d.plan_change.sub_id
        yield from ask(StoreOp.put_marker(billing_key(ledger, "subrev", sub), o.session_id, None, now_ms))
        yield from ask(StoreOp.apply_subscription(ledger.user_keys(o.user_id, now_ms / 1000), d.plan_change,
                                                  now_ms))
        ledger.leases.retire(ledger.user_keys(o.user_id, now_ms / 1000))
    review = billing_key(ledger, "review", o.session_id)
    first = yield from ask(StoreOp.claim_marker(review, INDEX_TTL_MS, now_ms))
    if first:
        # One entry per order in one keyed set: two orders held at once both stay listed.
        yield from ask(StoreOp.put_entry(reviews_key(ledger), o.session_id, o.model_dump_json()))
        log.warning("nasca: session %s held for review (nothing granted): %s", o.session_id, o.reason)
        yield from prune_reviews(ledger)
        emit("purchase_completed", o.user_id, session_id=o.session_id, pack=o.pack, amount=o.paid,
             currency=o.currency, spend=0, prompt_id=None, lot_id=None, review=True)
    return _result(event, "needs_review", duplicate=not first, user_id=o.user_id, lot_id=o.session_id,
                   detail=f"{o.reason}: nothing granted, the order awaits review")


def reviews_key(ledger: Nasca) -> str:
    return f"{ledger.namespace}:billing:reviews:set"  # "reviews" held a JSON list before


def prune_reviews(ledger: Nasca) -> Flow[None]:
    """Keep the newest MAX_REVIEWS orders held for review (the dashboard reads them all);
    an older one stays in Stripe's records and in the log line written when it was held."""
    listed = yield from ask(StoreOp.entries(reviews_key(ledger)))
    if len(listed) <= MAX_REVIEWS:
        return
    ordered = sorted(listed, key=lambda sid: (json.loads(listed[sid]).get("at", ""), sid))
    for session_id in ordered[:len(listed) - MAX_REVIEWS]:
        log.warning("nasca: order %s dropped from the review list (more than %d held)", session_id,
                    MAX_REVIEWS)
        yield from ask(StoreOp.put_entry(reviews_key(ledger), session_id, None))


def apply_refund(d: Refund, event: Mapping[str, Any], now: float, now_ms: int, ledger: Nasca,
            policy: BillingPolicy) -> Flow[WebhookResult]:
    memo = yield from remember_refund(ledger, d.payment_intent, d.entry(), now_ms)
    raw = yield from ask(StoreOp.get_marker(billing_key(ledger, "pi", d.payment_intent), now_ms))
    what = "dispute" if d.dispute else "refund"
    if raw is None:
        return _result(event, "refund_recorded",
                       detail=f"no credit lot bought with this payment yet: the {what} is remembered "
                              "and applied when the purchase arrives")
    index = json.loads(raw)
    user, lot_id = str(index["u"]), str(index["l"])
    keys = ledger.user_keys(user, now)
    if "g" in index:
        granted = int(index["g"])
    else:  # an index written before it kept the lot's size
        lots = yield from ask(StoreOp.all_lots(keys))
        granted = next((lot.granted for lot in lots if lot.id == lot_id), 0)
    if not d.dispute and lot_target(policy, memo, granted) == (0, False):
        log.info("nasca: partial refund of %s: the credits of lot %s are kept", d.charge_id, lot_id)
        return _result(event, "ignored", user_id=user, lot_id=lot_id,
                       detail="partial refund: the credits are kept (on_partial_refund='keep')")
    taken = yield from settle_lot(ledger, keys, d.payment_intent, lot_id, granted, policy, memo, now_ms)
    if taken < 0 or (taken == 0 and d.dispute and d.state == "won"):  # the sign says what happened
        return _result(event, "restored", user_id=user, lot_id=lot_id, restored=to_usd(-taken),
                       detail=f"{'dispute won' if d.state == 'won' else what}: gave back "
                              f"${to_usd(-taken)} of AI spend")
    return _result(event, "revoked", user_id=user, lot_id=lot_id, revoked=to_usd(taken),
                   detail=f"{what}: revoked ${to_usd(taken)} of AI spend")


def _result(event: Mapping[str, Any], action: WebhookAction, **fields: Any) -> WebhookResult:
    return WebhookResult(event_id=str(event["id"]), type=str(event["type"]), action=action, **fields)


def _replayed(prior: str, event: Mapping[str, Any]) -> WebhookResult:
    try:
        return WebhookResult.model_validate_json(prior).model_copy(update={"duplicate": True})
    except Exception:
        return WebhookResult(event_id=str(event["id"]), type=str(event["type"]), action="ignored",
                             duplicate=True)
