"""Stripe webhooks: Stripe's published objects, Stripe's signature scheme, stripe-python's
verification; exactly-once grants under duplicates, retries and concurrent deliveries."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from decimal import Decimal

import pytest

from nasca_core import SignatureError, Tier, WebhookError
from nasca_core.billing import BillingPolicy, CreditPack, UnknownPackError, UnknownPlanError
from tests._billing import (
    SECRET,
    billed,
    charge,
    event,
    obj,
    session,
    signed,
    stripe_signature,
    subscription,
)


async def aclose(n):
    # Nasca.close() closes the sync client only: close this loop's asyncio client and pool.
    store = n.store.for_loop()
    await store.close()
    pool = getattr(getattr(store, "client", None), "connection_pool", None)
    if pool is not None:
        await pool.disconnect()


def deliver(n, e, secret=SECRET, timestamp=None):
    payload, header = signed(e, secret, timestamp)
    return n.handle_stripe_webhook(payload, header)


def state(n, user):
    u = n.get_usage(user)
    lots = n.credit_lots(user)
    return (u.tier, u.credit_balance, u.credit_balance_display, [(x.id, x.remaining) for x in lots])


# -- checkout.session.completed -------------------------------------------------------------------
def test_completed_session_grants_the_pack_once(make_nasca):
    n = billed(make_nasca)
    seen = []
    n.billing_listeners.append(seen.append)
    s = session("u1", namespace=n.namespace, prompt_id="prompt-7")
    e = event("checkout.session.completed", s)
    result = deliver(n, e)
    assert (result.action, result.duplicate, result.user_id) == ("granted", False, "u1")
    assert result.lot_id == s["id"]
    assert result.event_id == e["id"] and result.type == "checkout.session.completed"
    u = n.get_usage("u1")
    assert u.credit_balance == Decimal(3) and u.credit_balance_display == Decimal(5)
    (lot,) = n.credit_lots("u1")
    assert (lot.id, lot.pack, lot.currency) == (s["id"], "p5", "usd")
    assert (lot.paid, lot.granted) == (Decimal(5), Decimal(3))
    # the same event again, and the same session in another event (Stripe's retry of a new attempt)
    again = deliver(n, e)
    assert again.duplicate and again.action == "granted"
    other = deliver(n, event("checkout.session.async_payment_succeeded", s))
    assert other.duplicate and other.action == "granted"
    assert n.get_usage("u1").credit_balance == Decimal(3)
    got = [(ev.kind, ev.user_id, ev.data["pack"], ev.data["amount"], ev.data["prompt_id"]) for ev in seen]
    assert got == [("purchase_completed", "u1", "p5", Decimal(5), "prompt-7")]


def test_spend_comes_from_the_pack_never_from_the_event(make_nasca):
    n = billed(make_nasca)
    # metadata saying $99,999 (or anything) grants the pack's spend: metadata carries ids only
    s = session("u1", namespace=n.namespace, spend="99999")
    deliver(n, event("checkout.session.completed", s))
    (lot,) = n.credit_lots("u1")
    assert lot.paid == Decimal(5) and lot.granted == Decimal(3)
    # the pack changed after checkout: the pack as it is now decides
    n.set_pack("p5", CreditPack(id="p5", price=5, spend=2))
    deliver(n, event("checkout.session.completed", session("u2", namespace=n.namespace, spend="1e999998")))
    assert n.credit_lots("u2")[0].granted == Decimal(2)


def test_unpaid_session_waits_for_async_payment(make_nasca):
    n = billed(make_nasca)
    s = session("u1", namespace=n.namespace, payment_status="unpaid")
    r = deliver(n, event("checkout.session.completed", s))
    assert r.action == "awaiting_payment" and n.credit_lots("u1") == ()
    s["payment_status"] = "paid"
    r = deliver(n, event("checkout.session.async_payment_succeeded", s))
    assert r.action == "granted" and n.get_usage("u1").credit_balance == Decimal(3)


def test_legacy_adaptive_pricing_reads_the_source_currency(make_nasca):
    n = billed(make_nasca)
    s = session("u1", namespace=n.namespace, currency="eur", amount_total=463)
    s["currency_conversion"] = {"amount_subtotal": 500, "amount_total": 500, "fx_rate": "0.926",
                                "source_currency": "usd"}
    deliver(n, event("checkout.session.completed", s))
    assert n.credit_lots("u1")[0].paid == Decimal(5)


def test_pack_lot_expires_when_the_pack_says(make_nasca, clock):
    n = billed(make_nasca, billing={"packs": [CreditPack(id="p5", price=5, spend=3, expires_in_days=30)]})
    deliver(n, event("checkout.session.completed", session("u1", namespace=n.namespace)))
    (lot,) = n.credit_lots("u1")
    assert lot.expires_at is not None and lot.expires_at.timestamp() == pytest.approx(clock.now + 30 * 86400)
    clock.advance(31 * 86400)
    assert n.get_usage("u1").credit_balance == 0 and n.credit_lots("u1")[0].expired


def test_unknown_pack_changes_nothing(make_nasca):
    n = billed(make_nasca)
    s = session("u1", namespace=n.namespace, amount_total=100)
    s["metadata"]["nasca_pack"] = "nope"
    e = event("checkout.session.completed", s)
    with pytest.raises(WebhookError) as info:
        deliver(n, e)
    assert isinstance(info.value.__cause__, UnknownPackError)
    assert n.credit_lots("u1") == () and n.get_usage("u1").credit_balance == 0
    # nothing was remembered either: once the owner fixes the config, Stripe's retry grants
    n.set_pack("nope", CreditPack(id="nope", price=1, spend=1))
    assert deliver(n, e).action == "granted"
    assert n.get_usage("u1").credit_balance == Decimal(1)


def test_eur_pack_checks_its_currency(make_nasca):
    n = billed(make_nasca)
    deliver(n, event("checkout.session.completed",
                     session("u1", namespace=n.namespace, pack="e5", currency="eur", amount_total=500)))
    lot = n.credit_lots("u1")[0]
    assert (lot.paid, lot.currency, lot.granted) == (Decimal(5), "eur", Decimal(4))
    u = n.get_usage("u1")
    assert u.credit_currency == "eur" and u.credit_balance_display == Decimal(5)
    # paid in USD for a EUR pack: held for review, nothing granted
    r = deliver(n, event("checkout.session.completed", session("u1", namespace=n.namespace, pack="e5")))
    assert r.action == "needs_review" and len(n.credit_lots("u1")) == 1


def test_events_for_others_are_acknowledged_and_ignored(make_nasca):
    n = billed(make_nasca)
    plain = event("checkout.session.completed", session("u1", namespace=n.namespace))
    plain["data"]["object"]["metadata"] = {}
    other_ns = event("checkout.session.completed", session("u1", namespace="another-app"))
    published = obj("event")  # Stripe's example event exactly as published (a plan.created)
    for e in (plain, other_ns, published):
        r = deliver(n, e)
        assert r.action == "ignored" and not r.duplicate and r.detail
    assert n.credit_lots("u1") == ()


# -- signatures and payloads ------------------------------------------------------------------------
def test_bad_signatures_raise_and_change_nothing(make_nasca):
    n = billed(make_nasca)
    e = event("checkout.session.completed", session("u1", namespace=n.namespace))
    payload, header = signed(e)
    bad = [
        stripe_signature(payload, "whsec_someone_else"),
        stripe_signature(payload + b" ", SECRET),
        stripe_signature(payload, SECRET, int(time.time()) - 301),  # outside stripe's tolerance
        "t=123",
        "",
        None,
        header.replace("v1=", "v0="),
    ]
    for h in bad:
        with pytest.raises(SignatureError):
            n.handle_stripe_webhook(payload, h)
    with pytest.raises(SignatureError):
        n.handle_stripe_webhook(payload.replace(b'"u1"', b'"u2"'), header)
    assert n.credit_lots("u1") == () and n.credit_lots("u2") == ()
    # several v1 entries (a secret being rolled): one match is enough
    two = f"{stripe_signature(payload, 'whsec_old').split(',')[1]},{header}"
    assert n.handle_stripe_webhook(payload, two).action == "granted"


def test_signature_of_the_local_server_matches_stripe_python():
    from stripe import WebhookSignature

    from nasca_core.testing.stripe import sign_payload

    body = '{"id": "evt_1"}'
    assert sign_payload(body, SECRET, 1700000000) == WebhookSignature.generate_signature_header(
        body, SECRET, 1700000000)
    ours = stripe_signature(body.encode(), SECRET, 1700000000)
    assert sign_payload(body.encode(), SECRET, 1700000000) == ours


@pytest.mark.parametrize("payload", [
    b"not json", b"[1, 2]", b'{"object": "event"}', b'{"id": "evt_1", "type": "x", "object": "event"}',
    json.dumps({"id": "evt_1", "object": "event", "type": "checkout.session.completed", "created": 1,
                "data": {"object": "cs_1"}}).encode(),
    b"\xff\xfe",
])
def test_malformed_payloads_raise_webhook_error(make_nasca, payload):
    n = billed(make_nasca)
    try:
        header = stripe_signature(payload)
    except UnicodeDecodeError:  # not text: sign the bytes as they are
        header = "t=1,v1=00"
    with pytest.raises(WebhookError):
        n.handle_stripe_webhook(payload, header)


def test_bad_metadata_raises_webhook_error(make_nasca):
    n = billed(make_nasca)
    for md in ({"nasca_user_id": "\x00bad"}, {"nasca_pack": ""}):
        s = session("u1", namespace=n.namespace)
        s["metadata"].update(md)
        with pytest.raises(WebhookError):
            deliver(n, event("checkout.session.completed", s))
    s = session("u1", namespace=n.namespace)
    s["amount_total"] = None
    with pytest.raises(WebhookError):
        deliver(n, event("checkout.session.completed", s))
    assert n.credit_lots("u1") == ()


def test_no_webhook_secret_is_a_configuration_error(make_nasca):
    from nasca_core import ConfigurationError

    n = billed(make_nasca, billing={"webhook_secret": None})
    with pytest.raises(ConfigurationError):
        deliver(n, event("checkout.session.completed", session("u1", namespace=n.namespace)))


# -- refunds -----------------------------------------------------------------------------------------
def test_full_refund_revokes_what_remains_of_that_lot(make_nasca):
    n = billed(make_nasca, tiers={"t": Tier(monthly="0.01")}, default_tier="t", billing={"plans": []})
    first = session("u1", namespace=n.namespace, pack="p5", payment_intent="pi_first")
    second = session("u1", namespace=n.namespace, pack="p10", amount_total=1000, payment_intent="pi_second")
    deliver(n, event("checkout.session.completed", first))
    deliver(n, event("checkout.session.completed", second))
    n.settle(n.reserve("0.01", user="u1"), "0.01")  # the tier's allowance
    n.settle(n.reserve("1", user="u1"), "1")  # $1 from the first lot (oldest first)
    n.billing.policy = BillingPolicy(on_partial_refund="keep")
    partial = deliver(n, event("charge.refunded", charge("pi_first", refunded=200)))
    assert partial.action == "ignored" and "partial" in partial.detail
    r = deliver(n, event("charge.refunded", charge("pi_first")))
    assert (r.action, r.user_id, r.lot_id, r.revoked) == ("revoked", "u1", first["id"], Decimal(2))
    assert "$2" in r.detail
    u = n.get_usage("u1")
    assert u.credit_balance == Decimal(10) and u.credit_balance_display == Decimal(10)
    lots = {x.id: x for x in n.credit_lots("u1")}
    assert lots[first["id"]].revoked and lots[first["id"]].remaining == 0
    assert deliver(n, event("charge.refunded", charge("pi_first"))).detail == "refund: revoked $0 of AI spend"
    unknown = deliver(n, event("charge.refunded", charge("pi_elsewhere")))
    assert unknown.action == "refund_recorded"
    assert n.get_usage("u1").credit_balance == Decimal(10)


# -- subscriptions ------------------------------------------------------------------------------------
def test_plan_checkout_then_subscription_lifecycle(make_nasca):
    n = billed(make_nasca)
    seen = []
    n.billing_listeners.append(seen.append)
    s = session("u1", namespace=n.namespace, plan="pro", subscription="sub_A", customer="cus_A",
                amount_total=2000)
    r = deliver(n, event("checkout.session.completed", s, created=1000))
    assert (r.action, r.tier) == ("plan_applied", "pro") and n.get_usage("u1").tier == "pro"
    assert deliver(n, event("checkout.session.completed", s, created=1000)).duplicate
    sub = subscription("u1", namespace=n.namespace, sub_id="sub_A", customer="cus_A")
    # the paid period ended at 1050 and its renewal failed: Stripe moved the period on first
    sub["items"]["data"][0].update(current_period_start=1050, current_period_end=1050 + 30 * 86400)
    r = deliver(n, event("customer.subscription.updated", {**sub, "status": "past_due"}, created=1100))
    assert (r.action, r.tier) == ("tier_set", "pro")  # within the 7-day grace period
    grace_over = 1050 + 7 * 86400
    r = deliver(n, event("customer.subscription.updated", {**sub, "status": "unpaid"}, created=grace_over))
    assert r.action == "tier_cleared" and n.get_usage("u1").tier == "free"
    r = deliver(n, event("customer.subscription.updated", sub, created=grace_over + 100))
    assert n.get_usage("u1").tier == "pro"
    r = deliver(n, event("customer.subscription.deleted", {**sub, "status": "canceled"},
                         created=grace_over + 200))
    assert r.action == "tier_cleared" and n.get_usage("u1").tier == "free"
    assert [e.kind for e in seen] == ["purchase_completed"] and seen[0].data["plan"] == "pro"
    assert seen[0].data["amount"] == Decimal(20)


def test_out_of_order_subscription_events_never_revive_a_plan(make_nasca):
    n = billed(make_nasca)
    sub = subscription("u1", namespace=n.namespace, sub_id="sub_B")
    deleted = event("customer.subscription.deleted", {**sub, "status": "canceled"}, created=2000)
    late_update = event("customer.subscription.updated", sub, created=1900)
    created = event("customer.subscription.created", {**sub, "status": "incomplete"}, created=1800)
    r = deliver(n, deleted)
    assert r.action == "tier_cleared"
    assert deliver(n, late_update).action == "stale"
    assert deliver(n, created).action == "stale"
    assert n.get_usage("u1").tier == "free"
    # and a newer event after a deletion is stale too: deleted is final
    assert deliver(n, event("customer.subscription.updated", sub, created=2100)).action == "stale"
    # an older update arriving after a newer one is ignored
    sub2 = subscription("u1", namespace=n.namespace, sub_id="sub_C")
    sub2["items"]["data"][0].update(current_period_start=1000, current_period_end=1000 + 30 * 86400)
    # unpaid since 1000, and the grace period is over
    lapsed = 1000 + 8 * 86400
    deliver(n, event("customer.subscription.updated", {**sub2, "status": "unpaid"}, created=lapsed))
    assert deliver(n, event("customer.subscription.updated", sub2, created=lapsed - 1)).action == "stale"
    assert n.get_usage("u1").tier == "free"


def test_two_subscriptions_the_one_started_last_wins(make_nasca):
    n = billed(make_nasca)
    old = subscription("u1", namespace=n.namespace, sub_id="sub_old", plan="pro", created=100)
    new = subscription("u1", namespace=n.namespace, sub_id="sub_new", plan="team", created=200,
                       price="price_team")
    deliver(n, event("customer.subscription.created", old, created=100))
    deliver(n, event("customer.subscription.created", new, created=200))
    assert n.get_usage("u1").tier == "team"
    # cancelling the old plan after the upgrade keeps the new one
    r = deliver(n, event("customer.subscription.deleted", {**old, "status": "canceled"}, created=300))
    assert (r.action, r.tier) == ("tier_set", "team") and n.get_usage("u1").tier == "team"


def test_subscription_maps_customer_and_price_without_metadata(make_nasca):
    n = billed(make_nasca)
    s = session("u9", namespace=n.namespace, plan="team", subscription="sub_T", customer="cus_T",
                amount_total=9900)
    assert deliver(n, event("checkout.session.completed", s, created=10)).tier == "team"
    bare = subscription(None, namespace=n.namespace, plan=None, sub_id="sub_T", customer="cus_T",
                        price="price_team")
    bare["metadata"] = {}
    r = deliver(n, event("customer.subscription.updated", {**bare, "status": "canceled"}, created=20))
    assert (r.action, r.user_id) == ("tier_cleared", "u9")
    stranger = {**bare, "customer": "cus_unknown", "id": "sub_X"}
    assert deliver(n, event("customer.subscription.updated", stranger, created=30)).action == "ignored"
    not_ours = {**bare, "items": {"data": [], "object": "list"}}
    assert deliver(n, event("customer.subscription.updated", not_ours, created=40)).action == "ignored"


def test_unknown_plan_or_tier_changes_nothing(make_nasca):
    n = billed(make_nasca)
    sub = subscription("u1", namespace=n.namespace, plan="enterprise", sub_id="sub_E")
    with pytest.raises(WebhookError) as info:
        deliver(n, event("customer.subscription.created", sub))
    assert isinstance(info.value.__cause__, UnknownPlanError)
    assert n.get_usage("u1").tier == "free"


def test_retired_plan_keeps_its_subscribers(make_nasca):
    n = billed(make_nasca)
    n.set_plan("pro", None)
    assert "pro" not in n.plans
    sub = subscription("u1", namespace=n.namespace, plan="pro", sub_id="sub_R")
    assert deliver(n, event("customer.subscription.updated", sub)).tier == "pro"


# -- concurrency: 20 deliveries of one event grant once, on every backend ------------------------------
def test_twenty_concurrent_deliveries_grant_once_threads(make_nasca, backend):
    n = billed(make_nasca)
    seen = []
    n.billing_listeners.append(seen.append)
    payload, header = signed(event("checkout.session.completed", session("u1", namespace=n.namespace)))
    barrier = threading.Barrier(20)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(n.handle_stripe_webhook(payload, header))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(not r.duplicate for r in results) == 1 and len(results) == 20
    assert len(n.credit_lots("u1")) == 1 and n.get_usage("u1").credit_balance == Decimal(3)
    assert len(seen) == 1


async def test_twenty_concurrent_deliveries_grant_once_asyncio(make_nasca, backend):
    n = billed(make_nasca)
    seen = []
    n.billing_listeners.append(seen.append)
    s = session("u1", namespace=n.namespace)
    payload, header = signed(event("checkout.session.completed", s))
    other_payload, other_header = signed(event("checkout.session.completed", s))  # Stripe's new attempt
    results = await asyncio.gather(
        *(n.ahandle_stripe_webhook(payload, header) for _ in range(10)),
        *(n.ahandle_stripe_webhook(other_payload, other_header) for _ in range(10)))
    assert sum(not r.duplicate for r in results) == 1
    assert len(await n.acredit_lots("u1")) == 1
    assert (await n.aget_usage("u1")).credit_balance == Decimal(3) and len(seen) == 1
    await aclose(n)


async def test_concurrent_subscription_events_settle_on_the_newest(make_nasca, backend):
    n = billed(make_nasca)
    sub = subscription("u1", namespace=n.namespace, sub_id="sub_Z")
    events = [event("customer.subscription.updated", {**sub, "status": "active" if i % 2 else "unpaid"},
                    created=5000 + i) for i in range(20)]
    bodies = [signed(e) for e in events]
    await asyncio.gather(*(n.ahandle_stripe_webhook(p, h) for p, h in reversed(bodies)))
    # the newest event (created 5019, active) decides, whatever the arrival order
    assert (await n.aget_usage("u1")).tier == "pro"
    # a deletion is final even when its event sorts before the updates (clocks, retries)
    await n.ahandle_stripe_webhook(*signed(event("customer.subscription.deleted",
                                                 {**sub, "status": "canceled"}, created=4000)))
    await asyncio.gather(*(n.ahandle_stripe_webhook(*signed(e)) for e in events))
    assert (await n.aget_usage("u1")).tier == "free"
    await aclose(n)


def test_event_marker_expires_but_the_lot_id_still_dedupes(make_nasca, clock, backend):
    n = billed(make_nasca)
    e = event("checkout.session.completed", session("u1", namespace=n.namespace))
    deliver(n, e)
    if backend == "memory":
        clock.advance(31 * 86400)  # past the event marker's TTL (memory follows the Nasca clock)
        r = deliver(n, e)
        assert r.duplicate and r.action == "granted"
    assert len(n.credit_lots("u1")) == 1


def test_support_grant_for_a_session_is_not_doubled_by_its_late_webhook(make_nasca):
    n = billed(make_nasca)
    s = session("u1", namespace=n.namespace)
    n.grant_credits("u1", "p5", idempotency_key=s["id"])  # support saw the payment first
    r = deliver(n, event("checkout.session.completed", s))
    assert r.action == "granted" and r.duplicate
    assert n.get_usage("u1").credit_balance == Decimal(3)
