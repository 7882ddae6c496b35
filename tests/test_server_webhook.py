"""The Stripe webhook endpoint on every backend: Stripe's signature scheme, 400 for bad
signatures and payloads, duplicates granted once, the purchase in the analytics."""

from __future__ import annotations

import json
from decimal import Decimal

from nasca_core.analytics import analytics_for
from nasca_core.server import create_app
from nasca_core.testing.stripe import completed_session_event, sign_payload
from tests._webapp import WHSEC, billed, block, client, settings


async def test_signed_event_grants_once_and_records_the_purchase(make_nasca):
    n = billed(make_nasca)
    app = create_app(n, settings())
    err = block(n, "ann")
    signed = completed_session_event(n, "ann", "p10", prompt_id=err.prompt_id)
    async with client(app) as c:
        first = await c.post("/stripe/webhook", content=signed.payload, headers=signed.headers)
        again = await c.post("/stripe/webhook", content=signed.payload, headers=signed.headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["action"] == "granted" and not first.json()["duplicate"]
    assert again.json()["duplicate"] is True
    assert len(n.credit_lots("ann")) == 1 and n.get_usage("ann").credit_balance == Decimal(9)
    await analytics_for(n).aflush()
    report = analytics_for(n).month()
    assert report.funnel.purchase_completed == 1 and report.orders == 1 and report.revenue_usd == Decimal(10)


async def test_bad_signatures_and_payloads_get_400_and_change_nothing(make_nasca):
    n = billed(make_nasca)
    app = create_app(n, settings())
    signed = completed_session_event(n, "ann", "p5")
    body = signed.payload
    tampered = body.replace(b'"ann"', b'"eve"')
    cases = [
        (body, {}),  # no signature header
        (body, {"Stripe-Signature": sign_payload(body, "whsec_someone_else")}),
        (tampered, {"Stripe-Signature": signed.signature}),
        (body, {"Stripe-Signature": sign_payload(body, WHSEC, timestamp=1_000_000)}),  # too old
        (body, {"Stripe-Signature": "t=1,v1=deadbeef"}),
    ]
    async with client(app) as c:
        for payload, headers in cases:
            r = await c.post("/stripe/webhook", content=payload, headers=headers)
            assert r.status_code == 400 and r.json() == {"error": "invalid signature"}
        not_json = b"{not json"
        r = await c.post("/stripe/webhook", content=not_json,
                         headers={"Stripe-Signature": sign_payload(not_json, WHSEC)})
        assert r.status_code == 400 and "not JSON" in r.json()["error"]
        not_event = json.dumps({"object": "charge", "id": "ch_1"}).encode()
        r = await c.post("/stripe/webhook", content=not_event,
                         headers={"Stripe-Signature": sign_payload(not_event, WHSEC)})
        assert r.status_code == 400
        huge = b"x" * 2_000_000
        r = await c.post("/stripe/webhook", content=huge, headers={"Stripe-Signature": "t=1,v1=0"})
        assert r.status_code == 413
    assert n.credit_lots("ann") == () and n.credit_lots("eve") == ()
    assert analytics_for(n).month().orders == 0


async def test_webhook_secret_from_the_settings(make_nasca):
    n = make_nasca(packs=billed(make_nasca).billing.packs.values())
    app = create_app(n, settings(stripe_webhook_secret="whsec_from_settings"))
    signed = completed_session_event(n, "ann", "p5", secret="whsec_from_settings")
    async with client(app) as c:
        r = await c.post("/stripe/webhook", content=signed.payload, headers=signed.headers)
    assert r.status_code == 200 and r.json()["action"] == "granted"
    unconfigured = make_nasca()
    async with client(create_app(unconfigured, settings())) as c:
        r = await c.post("/stripe/webhook", content=signed.payload, headers=signed.headers)
    assert r.status_code == 500 and r.json() == {"error": "webhooks are not configured"}


async def test_stripe_unreachable_during_the_reread_is_a_500_stripe_retries(make_nasca):
    from nasca_core.testing.stripe import StripeServer
    from tests._webapp import free_port

    stand_in = StripeServer(webhook_secret=WHSEC, port=free_port()).start()
    try:
        n = billed(make_nasca, stripe=stand_in.client(), success_url="https://app.example.com/ok")
        app = create_app(n, settings())
        n.billing.create_checkout("ann", "p5")
        signed = stand_in.complete_session(stand_in.last_session_id, deliver=False)
        stand_in.stop()  # Stripe is down when the event arrives
        async with client(app) as c:
            r = await c.post("/stripe/webhook", content=signed.payload, headers=signed.headers)
            assert r.status_code == 500 and r.json() == {"error": "stripe unavailable"}
            assert n.credit_lots("ann") == ()
            stand_in.start()  # Stripe retries the event once it is back
            r = await c.post("/stripe/webhook", content=signed.payload, headers=signed.headers)
        assert r.status_code == 200 and r.json()["action"] == "granted"
        assert n.get_usage("ann").credit_balance == Decimal(3)
    finally:
        stand_in.stop()
