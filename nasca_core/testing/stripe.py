"""A local Stripe for tests, demos, notebooks and browser tests: Checkout Sessions, the
lists and retrievals reconciliation reads (sessions, refunds, charges, invoices, with
Stripe's pagination), Billing Portal sessions and signed webhooks, with the standard
library only.

    with StripeServer(webhook_url="http://127.0.0.1:8000/stripe/webhook",
                      webhook_secret="whsec_test") as srv:
        client = StripeClient("sk_test_x", base_addresses={"api": srv.url})
        url = nasca.billing.create_checkout("u_42", "p5")        # POST /v1/checkout/sessions
        srv.requests[-1].params["metadata"]              # what stripe-python sent
        srv.complete_session(srv.last_session_id)         # signed checkout.session.completed

Objects start from Stripe's published examples (``stripe_objects.json``); the server fills
in the fields it gives meaning to (ids, amounts, status, metadata, URLs). Webhooks are
signed with Stripe's scheme: ``Stripe-Signature: t=<unix>,v1=<HMAC-SHA256 of "<t>.<body>">``.
The page at a session's ``url`` has a Pay button that completes it and redirects to the
success URL, so a browser can walk the whole purchase.

``simulate_purchase(nasca, user, pack_id)`` needs no server: it signs a completed session
for the pack and hands it to ``nasca.billing.handle_stripe_webhook``.
"""

from nasca_core.testing._stripe_api import decode_form
from nasca_core.testing._stripe_events import (
    SignedEvent,
    asimulate_purchase,
    completed_session_event,
    sign_payload,
    signed_event,
    simulate_purchase,
)
from nasca_core.testing._stripe_http import StripeRequest
from nasca_core.testing._stripe_server import DEFAULT_WEBHOOK_SECRET, StripeServer

__all__ = [
    "DEFAULT_WEBHOOK_SECRET",
    "SignedEvent",
    "StripeRequest",
    "StripeServer",
    "asimulate_purchase",
    "completed_session_event",
    "decode_form",
    "sign_payload",
    "signed_event",
    "simulate_purchase",
]
