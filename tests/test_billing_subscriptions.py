"""Subscriptions that count: renewals (``invoice.paid``) are revenue, a failed renewal keeps
the tier for a grace period, cancelling at period end keeps it until Stripe ends the
subscription, and a subscriber gets a Billing Portal link. Against the local Stripe,
with stripe-python, events signed the way Stripe signs them."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from nasca_core.billing import BillingPolicy, Plan
from nasca_core.testing.stripe import StripeServer
from tests._billing import PLANS, SECRET, billed, event, session, signed, subscription

SUCCESS = "https://app.example.com/ok"


@pytest.fixture
def srv():
    with StripeServer(webhook_secret=SECRET) as server:
        yield server


def hand(n, signed_event):
    return n.billing.handle_stripe_webhook(signed_event.payload, signed_event.signature)


def subscribe(n, srv, user="u1", plan="pro"):
    n.billing.create_checkout(user, plan)
    sid = srv.last_session_id
    r = hand(n, srv.complete_session(sid, deliver=False))
    assert r.action == "plan_applied"
    return sid


def test_renewals_are_revenue_once_each(make_nasca, srv):
    n = billed(make_nasca, billing={"stripe": srv.client(), "success_url": SUCCESS})
    report = n.analytics.month()  # listening from here on
    assert report.orders == 0
    sid = subscribe(n, srv)
    first = srv.invoice_paid(sid, billing_reason="subscription_create", deliver=False)
    assert hand(n, first).action == "ignored"  # counted with its checkout
    renewal = srv.invoice_paid(sid, deliver=False)
    r = hand(n, renewal)
    assert (r.action, r.user_id, r.duplicate) == ("renewal_recorded", "u1", False)
    assert hand(n, renewal).duplicate  # Stripe's resend
    again = srv.invoice_paid(sid, amount=1500, deliver=False)  # a discounted renewal: $15 was paid
    assert hand(n, again).action == "renewal_recorded"
    report = n.analytics.month()
    assert report.orders == 3 and report.revenue_usd == Decimal(55)  # 20 at checkout, 20, 15
    assert report.funnel.purchase_completed == 0  # renewals follow no upgrade prompt
    assert n.get_usage("u1").tier == "pro"


def test_a_renewal_without_metadata_finds_its_user_by_customer(make_nasca, srv):
    n = billed(make_nasca, billing={"stripe": srv.client(), "success_url": SUCCESS})
    srv.add_price("price_team", 9900, interval="year")
    sid = subscribe(n, srv, plan="team")
    bare = srv.invoice_paid(sid, deliver=False).event["data"]["object"]
    bare["parent"]["subscription_details"]["metadata"] = {}
    bare["lines"]["data"][0]["pricing"] = {"type": "price_details",
                                           "price_details": {"price": "price_team", "product": "prod_1"}}
    bare["id"] += "x"
    r = n.billing.handle_stripe_webhook(*signed(event("invoice.paid", bare)))
    assert (r.action, r.user_id) == ("renewal_recorded", "u1")
    bare.update(customer="cus_nobody", id=bare["id"] + "y")
    assert n.billing.handle_stripe_webhook(*signed(event("invoice.paid", bare))).action == "ignored"


def test_invoices_of_other_apps_are_ignored(make_nasca):
    n = billed(make_nasca)
    inv = event("invoice.paid", {"id": "in_1", "object": "invoice", "amount_paid": 100, "currency": "usd",
                                 "customer": "cus_1", "billing_reason": "subscription_cycle",
                                 "parent": {"type": "subscription_details", "subscription_details": {
                                     "subscription": "sub_1", "metadata": {"nasca_namespace": "other"}}}})
    assert n.billing.handle_stripe_webhook(*signed(inv)).action == "ignored"
    no_sub = event("invoice.paid", {"id": "in_2", "object": "invoice", "amount_paid": 100,
                                    "currency": "usd"})
    assert n.billing.handle_stripe_webhook(*signed(no_sub)).action == "ignored"


@pytest.mark.parametrize("status", ["past_due", "unpaid"])
def test_a_failed_renewal_keeps_the_tier_for_the_grace_period(make_nasca, status):
    n = billed(make_nasca)
    n.billing.policy = BillingPolicy(past_due_grace_days=3)
    sub = subscription("u1", namespace=n.namespace, sub_id="sub_G")
    end = 1_800_000_000  # the paid month ends here
    sub["items"]["data"][0].update(current_period_start=end - 30 * 86400, current_period_end=end)
    n.billing.handle_stripe_webhook(*signed(event("customer.subscription.created", sub, created=end - 1000)))
    # Stripe's shape: creating the renewal invoice moved the period on to the unpaid month
    # before its payment failed, so the grace runs from that month's start, not its end.
    failed = copy.deepcopy({**sub, "status": status})
    failed["items"]["data"][0].update(current_period_start=end, current_period_end=end + 30 * 86400)
    r = n.billing.handle_stripe_webhook(*signed(event("customer.subscription.updated", failed,
                                                      created=end + 100)))
    assert r.tier == "pro" and n.get_usage("u1").tier == "pro"
    later = end + 3 * 86400 + 1
    r = n.billing.handle_stripe_webhook(*signed(event("customer.subscription.updated", failed,
                                                      created=later)))
    assert r.action == "tier_cleared" and n.get_usage("u1").tier == "free"
    # paid after all: back on the plan
    n.billing.handle_stripe_webhook(*signed(event("customer.subscription.updated", sub, created=later + 10)))
    assert n.get_usage("u1").tier == "pro"


def test_cancel_at_period_end_keeps_the_tier_until_stripe_ends_it(make_nasca, srv):
    n = billed(make_nasca, billing={"stripe": srv.client(), "success_url": SUCCESS})
    sid = subscribe(n, srv)
    hand(n, srv.invoice_paid(sid, deliver=False))
    scheduled = srv.subscription_event(sid, cancel_at_period_end=True, deliver=False)
    assert scheduled.event["data"]["object"]["cancel_at_period_end"] is True
    assert hand(n, scheduled).tier == "pro" and n.get_usage("u1").tier == "pro"
    ended = srv.subscription_event(sid, "customer.subscription.deleted", deliver=False)
    assert hand(n, ended).action == "tier_cleared" and n.get_usage("u1").tier == "free"


def test_subscribers_get_a_billing_portal_session(make_nasca, srv):
    n = billed(make_nasca, billing={"stripe": srv.client(), "success_url": SUCCESS})
    assert n.billing.create_portal_session("u1", SUCCESS) is None  # not a subscriber
    sid = subscribe(n, srv)
    url = n.billing.create_portal_session("u1", SUCCESS)
    (portal,) = srv.portal_sessions
    assert url == portal["url"] and portal["object"] == "billing_portal.session"
    assert portal["customer"] == srv.session(sid)["customer"] and portal["return_url"] == SUCCESS
    assert srv.requests[-1].path == "/v1/billing_portal/sessions"


# stripe-python 16.1's HTTPXClient posts bytes with data=, which httpx 0.28 deprecates.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
async def test_portal_async_twin(make_nasca, srv):
    n = billed(make_nasca, billing={"stripe": srv.client(), "success_url": SUCCESS})
    subscribe(n, srv)
    assert (await n.billing.acreate_portal_session("u1", SUCCESS)).startswith(srv.url)
    await n.store.for_loop().close()


# -- the tier follows what was paid --------------------------------------------------------------------
BASIC = Plan(id="basic", tier="free", price=5, interval="month", stripe_price="price_basic")


def deliver(n, e):
    return n.billing.handle_stripe_webhook(*signed(e))


def test_a_price_switched_in_the_portal_decides_the_tier_not_the_metadata(make_nasca):
    n = billed(make_nasca, billing={"plans": [*PLANS, BASIC]})
    sub = subscription("u1", namespace=n.namespace, plan="team", sub_id="sub_P", price="price_team")
    assert deliver(n, event("customer.subscription.created", sub, created=1000)).tier == "team"
    # The customer moved to the cheaper price; the subscription keeps nasca_plan=team.
    cheaper = subscription("u1", namespace=n.namespace, plan="team", sub_id="sub_P", price="price_basic")
    r = deliver(n, event("customer.subscription.updated", cheaper, created=1100))
    assert r.tier == "free" and n.get_usage("u1").tier == "free"
    unknown = subscription("u1", namespace=n.namespace, plan="team", sub_id="sub_P", price="price_other")
    r = deliver(n, event("customer.subscription.updated", unknown, created=1200))
    assert r.action == "tier_cleared" and n.get_usage("u1").tier == "free"
    r = deliver(n, event("customer.subscription.updated", sub, created=1300))  # back on the team price
    assert n.get_usage("u1").tier == "team"


def test_a_renewal_counts_for_the_plan_of_the_price_charged():
    from nasca_core.billing._webhook import Catalog, Renewal, decide

    catalog = Catalog({}, {p.id: p for p in [*PLANS, BASIC]}, frozenset({"free", "pro", "team"}), False,
                      BillingPolicy())
    inv = {"id": "in_1", "object": "invoice", "amount_paid": 500, "currency": "usd", "customer": "cus_1",
           "billing_reason": "subscription_cycle",
           "lines": {"object": "list", "data": [{"pricing": {"type": "price_details", "price_details": {
               "price": "price_basic", "product": "prod_1"}}}]},
           "parent": {"type": "subscription_details", "subscription_details": {
               "subscription": "sub_1", "metadata": {"nasca_plan": "team", "nasca_user_id": "u1"}}}}
    d = decide(event("invoice.paid", inv), "default", catalog, 0)
    assert isinstance(d, Renewal) and d.plan is not None and d.plan.id == "basic"


@pytest.mark.parametrize("order", ["checkout_first", "subscription_first"])
def test_a_free_plan_checkout_is_held_for_review(make_nasca, order):
    # A 100%-off coupon (or any $0 checkout of a plan without a trial): no tier, whatever
    # order the checkout and its subscription's events arrive in.
    n = billed(make_nasca)
    s = session("u1", namespace=n.namespace, plan="pro", subscription="sub_F", amount_total=0)
    sub = subscription("u1", namespace=n.namespace, sub_id="sub_F")
    done = event("checkout.session.completed", s, created=1000)
    created = event("customer.subscription.created", sub, created=999)
    results = [deliver(n, e) for e in ((done, created) if order == "checkout_first" else (created, done))]
    assert n.get_usage("u1").tier == "free"
    review = results[0 if order == "checkout_first" else 1]
    assert review.action == "needs_review" and "amount_total 0" in review.detail
    (held,) = n.billing.review_orders()
    assert (held.session_id, held.pack, held.expected) == (s["id"], "pro", Decimal(20))
    later = event("customer.subscription.updated", sub, created=1100)
    assert deliver(n, later).tier is None and n.get_usage("u1").tier == "free"


def test_mismatch_policy_grant_gives_a_discounted_plan(make_nasca):
    n = billed(make_nasca)
    n.billing.policy = BillingPolicy(on_amount_mismatch="grant")
    s = session("u1", namespace=n.namespace, plan="pro", subscription="sub_D", amount_total=1000)
    r = deliver(n, event("checkout.session.completed", s))
    assert (r.action, r.tier) == ("plan_applied", "pro")


def test_a_plan_with_a_trial_may_start_at_zero(make_nasca, srv):
    trial = Plan(id="pro", tier="pro", price=20, interval="month", trial_days=14)
    n = billed(make_nasca, billing={"plans": [trial], "stripe": srv.client(), "success_url": SUCCESS})
    n.billing.create_checkout("u1", "pro")
    assert srv.checkout_requests[-1].params["subscription_data"]["trial_period_days"] == "14"
    r = hand(n, srv.complete_session(srv.last_session_id, amount_total=0, deliver=False))
    assert (r.action, r.tier) == ("plan_applied", "pro")
    n.billing.create_checkout("u2", "pro")
    r = hand(n, srv.complete_session(srv.last_session_id, amount_total=500, deliver=False))
    assert r.action == "needs_review" and n.get_usage("u2").tier == "free"
