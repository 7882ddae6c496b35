"""Subscriptions that count: renewals (``invoice.paid``) are revenue, a failed renewal keeps
the tier for a grace period, cancelling at period end keeps it until Stripe ends the
subscription, and a subscriber gets a Billing Portal link. Against the local Stripe,
with stripe-python, events signed the way Stripe signs them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from nasca_core.billing import BillingPolicy
from nasca_core.testing.stripe import StripeServer
from tests._billing import SECRET, billed, event, signed, subscription

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
    end = 1_800_000_000
    sub["items"]["data"][0]["current_period_end"] = end
    n.billing.handle_stripe_webhook(*signed(event("customer.subscription.created", sub, created=end - 1000)))
    failed = {**sub, "status": status}
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
