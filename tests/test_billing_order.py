"""Webhooks in any order, and amounts never trusted: Stripe's published objects, signed the
way Stripe signs them, on every backend.

Stripe documents that events arrive in any order (a completion that got a 500 is retried
after the refund that followed it): every order ends in the state of the natural one.
"""

from __future__ import annotations

import itertools
import threading
from decimal import Decimal

import pytest

from nasca_core import ConfigurationError
from nasca_core.billing import BillingPolicy, ReviewOrder
from tests._billing import SECRET, billed, charge, event, session, signed


def deliver(n, e):
    return n.handle_stripe_webhook(*signed(e))


def complete(n, **fields):
    """Deliver checkout.session.completed for a paid p5 session of u1."""
    return deliver(n, event("checkout.session.completed", session("u1", namespace=n.namespace, **fields)))


def lots(n, user="u1"):
    return [(x.id, x.remaining, x.revoked) for x in n.credit_lots(user)]


def async_purchase(n, pi="pi_async", refunded=None):
    """A bank-debit checkout: completed unpaid, then paid, then refunded (in full by default)."""
    unpaid = session("u1", namespace=n.namespace, payment_intent=pi, payment_status="unpaid",
                     session_id=f"cs_test_{pi}")
    paid = {**unpaid, "payment_status": "paid"}
    return {
        "completed": event("checkout.session.completed", unpaid),
        "succeeded": event("checkout.session.async_payment_succeeded", paid),
        "refunded": event("charge.refunded", charge(pi, refunded=refunded)),
    }


# -- every order ends in the same state ----------------------------------------------------------------
@pytest.mark.parametrize("order", list(itertools.permutations(["completed", "succeeded", "refunded"])))
def test_every_order_of_a_full_refund_ends_revoked(make_nasca, backend, order):
    n = billed(make_nasca)
    events = async_purchase(n)
    results = [deliver(n, events[name]) for name in order]
    ((lot_id, remaining, revoked),) = lots(n)
    assert (lot_id, remaining, revoked) == ("cs_test_pi_async", 0, True)
    assert n.get_usage("u1").credit_balance == 0
    if order[0] == "refunded":  # remembered, not "ignored and forgotten"
        assert results[0].action == "refund_recorded"
    # and replays, in reverse, change nothing
    for name in reversed(order):
        assert deliver(n, events[name]).duplicate
    assert lots(n) == [("cs_test_pi_async", 0, True)]


@pytest.mark.parametrize("order", list(itertools.permutations(["completed", "succeeded", "refunded"])))
def test_every_order_of_a_partial_refund_keeps_the_same_share(make_nasca, order):
    n = billed(make_nasca)
    events = async_purchase(n, refunded=200)  # $2 of $5 back: 3/5 of the $3 lot stays
    for name in order:
        deliver(n, events[name])
    assert lots(n) == [("cs_test_pi_async", Decimal("1.8"), False)]


def test_refunds_in_any_order_of_their_running_totals(make_nasca):
    n = billed(make_nasca)
    s = session("u1", namespace=n.namespace, payment_intent="pi_two")
    full = event("charge.refunded", charge("pi_two", refunded=500))
    part = event("charge.refunded", charge("pi_two", refunded=100))
    assert deliver(n, full).action == "refund_recorded"
    assert deliver(n, part).action == "refund_recorded"  # the older, smaller total does not undo it
    r = deliver(n, event("checkout.session.completed", s))
    assert r.action == "revoked" and r.revoked == Decimal(3) and "at once" in r.detail
    assert n.get_usage("u1").credit_balance == 0


@pytest.mark.parametrize("policy, left", [("proportional", Decimal("1.2")), ("keep", Decimal(3)),
                                          ("revoke", Decimal(0))])
def test_partial_refund_policy(make_nasca, policy, left):
    n = billed(make_nasca)
    n.billing.policy = BillingPolicy(on_partial_refund=policy)
    complete(n, payment_intent="pi_p")
    deliver(n, event("charge.refunded", charge("pi_p", refunded=300)))  # 60% back
    assert n.credit_lots("u1")[0].remaining == left
    deliver(n, event("charge.refunded", charge("pi_p", refunded=300)))  # Stripe's resend: no more taken
    assert n.credit_lots("u1")[0].remaining == left


def _spend_one_dollar(make_nasca):
    from nasca_core import Tier

    n = billed(make_nasca, tiers={"t": Tier(monthly="0.01")}, default_tier="t", billing={"plans": []})
    complete(n, payment_intent="pi_s")
    n.settle(n.reserve("0.01", user="u1"), "0.01")
    n.settle(n.reserve("1", user="u1"), "1")  # $1 of the $3 lot spent, $2 left
    return n


def test_partial_refund_after_spending_counts_what_was_spent(make_nasca):
    # Half of the $5 back: the user paid $2.50 and may have had $1.50 of credit in all;
    # $1 of it was spent, so $0.50 stays (not $1.50: that would be $2.50 of credit).
    n = _spend_one_dollar(make_nasca)
    r = deliver(n, event("charge.refunded", charge("pi_s", refunded=250)))
    assert r.action == "revoked" and r.revoked == Decimal("1.5")
    assert n.credit_lots("u1")[0].remaining == Decimal("0.5")
    # Stripe's resend of the same running total, or reconciliation, takes nothing more
    assert deliver(n, event("charge.refunded", charge("pi_s", refunded=250))).revoked == 0
    assert n.credit_lots("u1")[0].remaining == Decimal("0.5")


@pytest.mark.parametrize("order", [(100, 250), (250, 100)])
def test_partial_refunds_after_spending_in_any_order(make_nasca, order):
    n = _spend_one_dollar(make_nasca)
    for refunded in order:  # $1 then $2.50 in all: $1.50 of the $3 lot is taken back, once
        deliver(n, event("charge.refunded", charge("pi_s", refunded=refunded)))
    assert n.credit_lots("u1")[0].remaining == Decimal("0.5")
    deliver(n, event("charge.refunded", charge("pi_s", refunded=500)))  # then the rest
    assert n.credit_lots("u1")[0].remaining == 0 and n.credit_lots("u1")[0].revoked


def test_a_partial_refund_takes_no_more_than_is_left(make_nasca):
    n = _spend_one_dollar(make_nasca)
    n.settle(n.reserve("1.5", user="u1"), "1.5")  # $0.50 left
    r = deliver(n, event("charge.refunded", charge("pi_s", refunded=250)))
    assert r.revoked == Decimal("0.5") and n.credit_lots("u1")[0].remaining == 0


def test_refund_events_handled_at_once_are_both_remembered(make_nasca, backend):
    # Two refunds of one payment whose purchase has not arrived, handled at the same moment:
    # both read the store before either writes. The larger running total must survive.
    from nasca_core.billing._requests import StoreOp
    from nasca_core.billing._webhook import refund_of
    from nasca_core.billing._webhook_flow import apply_refund

    n = billed(make_nasca)
    store = n.store.sync
    flows = []
    for refunded in (400, 100):  # the larger total's handler is interleaved with the smaller's
        e = event("charge.refunded", charge("pi_both", refunded=refunded))
        flows.append(apply_refund(refund_of(e["data"]["object"]), e, n.now(), int(n.now() * 1000), n,
                                  n.billing.policy))
    answers = [None, None]
    live = [True, True]
    while any(live):  # one store operation of each in turn
        for i, flow in enumerate(flows):
            if not live[i]:
                continue
            try:
                request = flow.send(answers[i])
            except StopIteration:
                live[i] = False
                continue
            assert isinstance(request, StoreOp)
            answers[i] = request.run(store)
    r = complete(n, payment_intent="pi_both")  # 4/5 refunded: 1/5 of the $3 lot stays
    assert r.action == "revoked" and lots(n)[0][1] == Decimal("0.6")


def test_a_dispute_before_the_purchase_revokes_it(make_nasca):
    n = billed(make_nasca)
    dispute = {"id": "dp_1", "object": "dispute", "amount": 500, "charge": "ch_1", "currency": "usd",
               "payment_intent": "pi_d", "reason": "fraudulent", "status": "needs_response"}
    assert deliver(n, event("charge.dispute.created", dispute)).action == "refund_recorded"
    r = complete(n, payment_intent="pi_d")
    assert r.action == "revoked" and n.get_usage("u1").credit_balance == 0


def _race(n, bodies):
    barrier = threading.Barrier(len(bodies))
    errors = []

    def run(body):
        barrier.wait()
        try:
            n.handle_stripe_webhook(*body)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_refund_racing_its_purchase_always_ends_revoked(make_nasca, backend):
    n = billed(make_nasca)
    for i in range(8 if backend in ("memory", "sqlite") else 4):
        pi = f"pi_race{i}"
        s = session("u1", namespace=n.namespace, payment_intent=pi, session_id=f"cs_{pi}")
        _race(n, [signed(event("checkout.session.completed", s)),
                  signed(event("charge.refunded", charge(pi)))])
    assert n.get_usage("u1").credit_balance == 0
    assert all(remaining == 0 and revoked for _, remaining, revoked in lots(n))


# -- amounts are never trusted ---------------------------------------------------------------------------
@pytest.mark.parametrize("total", [0, 1, 400, 501])
def test_amount_mismatch_is_held_for_review_by_default(make_nasca, total):
    n = billed(make_nasca)
    seen = []
    n.billing_listeners.append(seen.append)
    s = session("u1", namespace=n.namespace, amount_total=total)
    e = event("checkout.session.completed", s)
    r = deliver(n, e)
    assert r.action == "needs_review" and r.lot_id == s["id"] and "amount_total" in r.detail
    assert n.credit_lots("u1") == () and n.get_usage("u1").credit_balance == 0
    (order,) = n.billing.review_orders()
    assert isinstance(order, ReviewOrder)
    assert (order.session_id, order.user_id, order.pack) == (s["id"], "u1", "p5")
    assert (order.paid, order.expected, order.currency) == (Decimal(total) / 100, Decimal(5), "usd")
    # a replay, and the same session in another event, add no second order
    assert deliver(n, e).duplicate
    assert deliver(n, event("checkout.session.async_payment_succeeded", s)).duplicate
    assert len(n.billing.review_orders()) == 1
    # revenue is what Stripe says was paid
    assert [(x.kind, x.data["amount"], x.data.get("review")) for x in seen] == [
        ("purchase_completed", Decimal(total) / 100, True)]
    # the owner settles it by hand: the session id is the lot id, so a later webhook can't double it
    n.grant_credits("u1", "p5", idempotency_key=s["id"], paid=Decimal(total) / 100)
    assert n.get_usage("u1").credit_balance == Decimal(3)


@pytest.mark.parametrize("total, granted", [(250, Decimal("1.5")), (400, Decimal("2.4")), (500, Decimal(3)),
                                            (1000, Decimal(3))])
def test_proportional_grants_the_share_paid_never_more_than_the_pack(make_nasca, total, granted):
    n = billed(make_nasca)
    n.billing.policy = BillingPolicy(on_amount_mismatch="proportional")
    deliver(n, event("checkout.session.completed", session("u1", namespace=n.namespace, amount_total=total)))
    (lot,) = n.credit_lots("u1")
    assert (lot.granted, lot.paid) == (granted, Decimal(total) / 100)
    assert n.billing.review_orders() == ()


def test_proportional_holds_a_free_or_foreign_session_for_review(make_nasca):
    n = billed(make_nasca)
    n.billing.policy = BillingPolicy(on_amount_mismatch="proportional")
    for s in (session("u1", namespace=n.namespace, amount_total=0),
              session("u1", namespace=n.namespace, currency="gbp")):
        assert deliver(n, event("checkout.session.completed", s)).action == "needs_review"
    assert n.credit_lots("u1") == () and len(n.billing.review_orders()) == 2


def test_grant_policy_grants_the_pack_and_records_what_was_paid(make_nasca):
    n = billed(make_nasca)
    n.billing.policy = BillingPolicy(on_amount_mismatch="grant")
    r = complete(n, amount_total=100)
    assert r.action == "granted" and "amount_total 100" in r.detail
    (lot,) = n.credit_lots("u1")
    assert (lot.granted, lot.paid) == (Decimal(3), Decimal(1))


def test_currency_and_stripe_price_are_checked(make_nasca):
    n = billed(make_nasca)
    r = deliver(n, event("checkout.session.completed", session("u1", namespace=n.namespace, currency="gbp")))
    assert r.action == "needs_review" and "GBP" in r.detail
    # a line item with another Stripe price than the pack's (when Stripe expanded them)
    s = session("u1", namespace=n.namespace, pack="p20", amount_total=2000)
    s["line_items"] = {"object": "list", "data": [{"id": "li_1", "object": "item",
                                                   "price": {"id": "price_cheap", "object": "price"}}]}
    r = deliver(n, event("checkout.session.completed", s))
    assert r.action == "needs_review" and "price_cheap" in r.detail
    s["line_items"]["data"][0]["price"]["id"] = "price_p20"
    s["id"] += "b"
    assert deliver(n, event("checkout.session.completed", s)).action == "granted"
    assert n.get_usage("u1").credit_balance == Decimal("12.5")


def test_policy_is_checked(make_nasca):
    n = billed(make_nasca)
    with pytest.raises(ConfigurationError):
        BillingPolicy(on_amount_mismatch="trust")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        n.billing.policy = "grant"
    assert n.billing.policy == BillingPolicy()


def test_review_orders_are_in_the_month_report_and_its_text(make_nasca):
    from nasca_core.analytics._text import report_text

    n = billed(make_nasca)
    assert n.analytics.month().review_orders == []  # listening from here on
    s = session("u1", namespace=n.namespace, amount_total=1)
    deliver(n, event("checkout.session.completed", s, created=int(n.now())))
    report = n.analytics.month()
    assert [o.session_id for o in report.review_orders] == [s["id"]]
    assert report.orders == 1 and report.revenue_usd == Decimal("0.01")  # what Stripe says was paid
    text = report_text(report)
    assert "Orders held for review (1)" in text and s["id"] in text and "paid $0.01" in text
    assert n.analytics.month("2020-01").review_orders == []


# -- with a Stripe client, the object is read from Stripe, not from the event's snapshot ---------------
@pytest.fixture
def stand_in():
    from nasca_core.testing.stripe import StripeServer

    with StripeServer(webhook_secret=SECRET) as server:
        yield server


def with_stripe(make_nasca, srv):
    return billed(make_nasca, billing={"stripe": srv.client(), "success_url": "https://app.example.com/ok"})


def test_a_stale_snapshot_is_read_fresh_from_stripe(make_nasca, stand_in):
    n = with_stripe(make_nasca, stand_in)
    n.billing.create_checkout("u1", "p5")
    sid = stand_in.last_session_id
    stale = stand_in.complete_session(sid, payment_status="unpaid", deliver=False)  # a bank debit, pending
    stand_in.complete_session(sid, deliver=False)  # paid since; that event is still on its way
    r = n.billing.handle_stripe_webhook(stale.payload, stale.signature)
    assert r.action == "granted" and n.get_usage("u1").credit_balance == Decimal(3)
    # two partial refunds; only the first one's event has arrived: the charge says $4 of $5 back
    first = stand_in.refund(sid, amount=100, deliver=False)
    stand_in.refund(sid, amount=300, deliver=False)
    r = n.billing.handle_stripe_webhook(first.payload, first.signature)
    assert r.action == "revoked" and n.credit_lots("u1")[0].remaining == Decimal("0.6")


def test_an_event_about_a_session_stripe_does_not_know_is_refused(make_nasca, stand_in):
    from nasca_core import WebhookError

    n = with_stripe(make_nasca, stand_in)
    with pytest.raises(WebhookError, match="Stripe has no checkout session"):
        deliver(n, event("checkout.session.completed", session("u1", namespace=n.namespace)))
    assert n.credit_lots("u1") == ()


def test_the_stripe_price_charged_is_checked(make_nasca, stand_in):
    n = with_stripe(make_nasca, stand_in)
    stand_in.add_price("price_p20", 2000)
    n.billing.create_checkout("u1", "p20")
    sid = stand_in.last_session_id
    r = n.billing.handle_stripe_webhook(*_payload(stand_in.complete_session(sid, deliver=False)))
    assert r.action == "granted"  # the expanded line items carry the pack's Stripe price
    # another price of the same amount (a test price, another product) is not the pack
    stand_in.add_price("price_other", 2000)
    n.billing.set_pack("p20", n.billing.packs["p20"].model_copy(update={"stripe_price": "price_other"}))
    n.billing.create_checkout("u2", "p20")
    n.billing.set_pack("p20", n.billing.packs["p20"].model_copy(update={"stripe_price": "price_p20"}))
    other = stand_in.last_session_id
    r = n.billing.handle_stripe_webhook(*_payload(stand_in.complete_session(other, deliver=False)))
    assert r.action == "needs_review" and "price_other" in r.detail


def _payload(signed_event):
    return signed_event.payload, signed_event.signature


def test_the_policy_can_come_from_nasca_toml():
    from nasca_core.server._config import ServeConfig, build_nasca

    config = ServeConfig.parse({"store": "memory://", "tiers": {"free": {"monthly": 1}},
                                "billing": {"on_amount_mismatch": "proportional", "past_due_grace_days": 3}})
    n = build_nasca(config, {})
    try:
        assert n.billing.policy == BillingPolicy(on_amount_mismatch="proportional", past_due_grace_days=3)
    finally:
        n.close()
    with pytest.raises(ConfigurationError):
        build_nasca(ServeConfig.parse({"store": "memory://", "billing": {"on_amount_mismatch": "trust"}}), {})
