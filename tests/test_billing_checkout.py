"""Stripe Checkout through stripe-python's real HTTP clients (requests, httpx) to the local
Stripe server, which records the form parameters it receives; and the whole purchase walked
like a browser: session URL, Pay, signed webhook to a webhook endpoint, success URL."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nasca_core import ConfigurationError, InvalidUserError, Nasca, NascaBlockedError, Tier, WebhookError
from nasca_core.billing import (
    CheckoutError,
    CreditPack,
    Plan,
    StripeConfig,
    UnknownPackError,
    UnknownPlanError,
)
from nasca_core.testing.stripe import StripeServer
from tests._billing import FIXTURES, PACKS, PLANS, SECRET, TIERS

SUCCESS = "https://app.example/billing/done?session={CHECKOUT_SESSION_ID}"
CANCEL = "https://app.example/billing"


@pytest.fixture
def stripe_server():
    with StripeServer(webhook_secret=SECRET, api_key="sk_test_nasca") as srv:
        srv.add_price("price_p20", 2000, "usd")
        srv.add_price("price_team", 9900, "usd", interval="year")
        yield srv


def shop(srv, store="memory://", **billing):
    conf = {"packs": PACKS, "plans": PLANS, "stripe": srv.client("sk_test_nasca"), "success_url": SUCCESS,
            "cancel_url": CANCEL, "webhook_secret": SECRET}
    conf.update(billing)
    return Nasca(store, tiers=TIERS, default_tier="free", **conf)


def test_pack_checkout_sends_stripes_parameters(stripe_server):
    n = shop(stripe_server)
    started = []
    n.billing_listeners.append(started.append)
    url = n.create_checkout("u_42", "p5", prompt_id="hold-9")
    (req,) = stripe_server.checkout_requests
    assert req.api_key == "sk_test_nasca" and req.headers["content-type"].startswith(
        "application/x-www-form-urlencoded")
    assert "stripe-version" in req.headers
    md = {"nasca_user_id": "u_42", "nasca_namespace": "nasca", "nasca_pack": "p5",
          "nasca_prompt_id": "hold-9"}  # ids only, never an amount
    assert req.params == {
        "mode": "payment",
        "line_items": [{"price_data": {"currency": "usd", "unit_amount": "500",
                                       "product_data": {"name": "$3 of AI credits"}}, "quantity": "1"}],
        "success_url": SUCCESS,
        "cancel_url": CANCEL,
        "client_reference_id": "u_42",
        "metadata": md,
        "payment_intent_data": {"metadata": md},
    }
    assert ("success_url", SUCCESS) in req.form  # the {CHECKOUT_SESSION_ID} template, unfilled
    assert set(req.params) <= set(FIXTURES["checkout_session_create_params"])
    session = stripe_server.session(stripe_server.last_session_id)
    assert url == session["url"] and session["amount_total"] == 500 and session["mode"] == "payment"
    assert [(e.kind, e.user_id, e.data["pack"], e.data["amount"], e.data["prompt_id"]) for e in started] == [
        ("checkout_started", "u_42", "p5", Decimal(5), "hold-9")]
    assert started[0].data["session_id"] == stripe_server.last_session_id


def test_stripe_price_and_plan_checkouts(stripe_server):
    n = shop(stripe_server)
    n.create_checkout("u1", "p20")
    last = stripe_server.checkout_requests
    assert last[-1].params["line_items"] == [{"price": "price_p20", "quantity": "1"}]
    n.create_checkout("u1", "pro", customer_email="u1@example.com", success_url="https://other.example/ok")
    params = stripe_server.checkout_requests[-1].params
    md = {"nasca_user_id": "u1", "nasca_namespace": "nasca", "nasca_plan": "pro"}
    assert params["mode"] == "subscription" and params["metadata"] == md
    assert params["subscription_data"] == {"metadata": md} and "payment_intent_data" not in params
    assert params["line_items"][0]["price_data"]["recurring"] == {"interval": "month"}
    assert params["customer_email"] == "u1@example.com" and params["success_url"] == "https://other.example/ok"
    n.create_checkout("u1", PLANS[1])
    last = stripe_server.checkout_requests
    assert last[-1].params["line_items"] == [{"price": "price_team", "quantity": "1"}]


# stripe-python 16.1's HTTPXClient posts bytes with data=, which httpx 0.28 deprecates.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
async def test_async_checkout_uses_stripes_async_client(stripe_server):
    import stripe

    http = stripe.HTTPXClient()  # passed in, so the test can close its connections
    client = stripe.StripeClient("sk_test_nasca", base_addresses={"api": stripe_server.url},
                                 http_client=http, max_network_retries=0)
    n = shop(stripe_server, stripe=client)
    try:
        url = await n.acreate_checkout("u1", "p10")
        assert url.endswith(stripe_server.last_session_id)
        params = stripe_server.checkout_requests[-1].params
        assert params["line_items"][0]["price_data"]["unit_amount"] == "1000"
        assert params["metadata"]["nasca_pack"] == "p10"
    finally:
        await http.close_async()
        http.close()


def test_checkout_errors(stripe_server):
    n = shop(stripe_server, stripe=stripe_server.client("sk_test_wrong"))
    with pytest.raises(CheckoutError) as info:
        n.create_checkout("u1", "p5")
    assert info.value.http_status == 401 and info.value.request_id
    n = shop(stripe_server)
    with pytest.raises(UnknownPackError):
        n.create_checkout("u1", "nope")
    with pytest.raises(UnknownPlanError):
        n.create_checkout("u1", Plan(id="gold", tier="pro", price=1))
    with pytest.raises(ConfigurationError):
        n.create_checkout("u1", CreditPack(id="p5", price=5, spend=4))  # not the pack on offer
    with pytest.raises(InvalidUserError):
        n.create_checkout("", "p5")
    stripe_server.prices.pop("price_p20")
    with pytest.raises(CheckoutError) as info:  # Stripe's 400: no such price
        n.create_checkout("u1", "p20")
    assert info.value.http_status == 400 and info.value.code == "resource_missing"
    assert len(stripe_server.checkout_requests) == 2  # the refused ones only
    with pytest.raises(ConfigurationError):
        shop(stripe_server, stripe=None).create_checkout("u1", "p5")
    with pytest.raises(ConfigurationError):
        shop(stripe_server, success_url=None).create_checkout("u1", "p5")


def test_local_server_answers_like_stripe(stripe_server):
    client = stripe_server.client("sk_test_nasca")
    import stripe

    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.checkout.sessions.create(params={"mode": "payment", "success_url": SUCCESS,
                                                   "line_items": [{"price": "price_p20", "quantity": 1}],
                                                   "not_a_param": "x"})  # type: ignore[typeddict-unknown-key]
    assert info.value.code == "parameter_unknown"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.create(params={"mode": "subscription", "success_url": SUCCESS,
                                                   "line_items": [{"price": "price_p20", "quantity": 1}]})
    s = client.v1.checkout.sessions.create(params={"mode": "payment", "success_url": SUCCESS,
                                                   "line_items": [{"price": "price_p20", "quantity": 2}]})
    assert (s.object, s.status, s.payment_status, s.amount_total, s.currency) == (
        "checkout.session", "open", "unpaid", 4000, "usd")
    assert s.id.startswith("cs_test_") and s.url and s.created
    again = client.v1.checkout.sessions.retrieve(s.id)
    assert again.id == s.id
    # every field of Stripe's published session is there
    assert set(FIXTURES["objects"]["checkout.session"]) <= set(s.to_dict())


def test_stripe_config_builds_the_client(stripe_server):
    conf = StripeConfig(api_key="sk_test_nasca", webhook_secret=SECRET, api_base=stripe_server.url)
    assert "sk_test_nasca" not in repr(conf)
    n = Nasca("memory://", tiers=TIERS, default_tier="free", packs=PACKS, stripe=conf, success_url=SUCCESS)
    assert n.create_checkout("u1", "p5").startswith(stripe_server.url)
    payload = stripe_server.complete_session(stripe_server.last_session_id)
    assert n.handle_stripe_webhook(payload.payload, payload.signature).action == "granted"


class _Webhooks:
    """The app's webhook endpoint: raw body and Stripe-Signature in, 200 or 400 out."""

    def __init__(self, nasca):
        app = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    result = nasca.handle_stripe_webhook(body, self.headers.get("Stripe-Signature"))
                    status, out = 200, result.model_dump_json().encode()
                except WebhookError as exc:
                    status, out = 400, str(exc).encode()
                app.statuses.append(status)
                self.send_response(status)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.statuses: list[int] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stripe/webhook"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_blocked_user_buys_a_pack_like_a_browser_and_carries_on(stripe_server):
    n = shop(stripe_server, store="memory://", packs=PACKS)
    hook = _Webhooks(n)
    stripe_server.webhook_url = hook.url
    try:
        n.settle(n.reserve("0.10", user="u1"), "0.10")
        with pytest.raises(NascaBlockedError) as info:
            n.reserve("0.01", user="u1")
        url = n.create_checkout("u1", "p5", prompt_id=info.value.prompt_id)
        page = urllib.request.urlopen(url).read().decode()
        assert "Pay 5.00 USD" in page
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(urllib.request.Request(url, data=b"", method="POST"))
        assert redirect.value.code == 303
        sid = stripe_server.last_session_id
        assert redirect.value.headers["Location"] == SUCCESS.replace("{CHECKOUT_SESSION_ID}", sid)
        assert hook.statuses == [200]
        delivered = json.loads(stripe_server.deliveries[-1].response)
        assert delivered["action"] == "granted" and delivered["lot_id"] == sid
        # Stripe retries: the endpoint answers 200, nothing more is granted
        assert stripe_server.deliver(stripe_server.deliveries[-1]).status == 200
        u = n.get_usage("u1")
        assert u.credit_balance_display == Decimal(5) and u.credit_balance == Decimal(3)
        charge = n.settle(n.reserve("0.30", user="u1"), "0.30")
        assert charge.credit_nanos == 300_000_000
        assert n.get_usage("u1").credit_balance_display == Decimal("4.5")
        # a refund through the same endpoint
        stripe_server.refund(sid)
        assert hook.statuses[-1] == 200 and n.get_usage("u1").credit_balance == 0
        # a tampered delivery is refused with 400
        bad = stripe_server.complete_session(sid, deliver=False)
        bad.signature = bad.signature[:-1] + ("0" if bad.signature[-1] != "0" else "1")  # always a change
        assert stripe_server.deliver(bad).status == 400
    finally:
        hook.close()


def test_plan_purchase_through_the_server_moves_the_tier(stripe_server):
    n = shop(stripe_server, store="memory://")
    n.create_checkout("u1", "pro")
    sid = stripe_server.last_session_id
    done = stripe_server.complete_session(sid)
    assert n.handle_stripe_webhook(done.payload, done.signature).tier == "pro"
    created = stripe_server.subscription_event(sid, "customer.subscription.created")
    assert n.handle_stripe_webhook(created.payload, created.signature).tier == "pro"
    assert n.get_usage("u1").tier == "pro" and n.get_usage("u1").monthly_limit == Decimal(10)
    ended = stripe_server.subscription_event(sid, "customer.subscription.deleted")
    assert n.handle_stripe_webhook(ended.payload, ended.signature).action == "tier_cleared"
    assert n.get_usage("u1").tier == "free"


def test_tiers_only_from_the_constructor():
    n = Nasca("memory://", tiers={"free": Tier(monthly=1)}, default_tier="free")
    from nasca_core import UnknownTierError
    from nasca_core.billing import Billing

    with pytest.raises(UnknownTierError):
        Billing(n, plans=[Plan(id="pro", tier="pro", price=20)])


def test_simulate_purchase_for_the_readme_demo():
    from nasca_core.testing.stripe import simulate_purchase

    n = Nasca("memory://", tiers={"free": Tier(daily="0.10", monthly="0.50")}, default_tier="free",
              packs=[CreditPack(id="p5", price=5, spend=3)], webhook_secret="whsec_demo")
    n.settle(n.reserve("0.10", user="u1"), "0.10")
    with pytest.raises(NascaBlockedError):
        n.reserve("0.01", user="u1")
    u = simulate_purchase(n, "u1", "p5")  # a signed checkout.session.completed, verified by stripe-python
    assert not u.blocked and u.credit_balance_display == Decimal(5) and u.credit_balance == Decimal(3)
    n.settle(n.reserve("0.03", user="u1"), "0.03")
    assert n.get_usage("u1").credit_balance_display == Decimal("4.95")
    with pytest.raises(UnknownPackError):
        simulate_purchase(n, "u1", "p6")
    with pytest.raises(WebhookError):
        simulate_purchase(n, "u1", "p5", secret="whsec_wrong")
    bare = Nasca("memory://", tiers={"free": Tier(monthly=1)}, default_tier="free",
                 packs=[CreditPack(id="p5", price=5, spend=3)])
    with pytest.raises(ConfigurationError):
        simulate_purchase(bare, "u1", "p5")


def test_delivery_to_nobody_is_recorded_not_raised(stripe_server):
    expired = {"id": "cs_test_x", "object": "checkout.session"}
    signed = stripe_server.event("checkout.session.expired", expired)
    assert stripe_server.deliver(signed, "http://127.0.0.1:9/stripe").status == 0
