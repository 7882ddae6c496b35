"""The upgrade page offers a subscriber Stripe's Billing Portal to manage or cancel, over
HTTP on the ASGI app, with the local Stripe and stripe-python."""

from __future__ import annotations

import pytest

from nasca_core.server import UpgradeLinks, create_app
from nasca_core.testing.stripe import StripeServer
from tests._webapp import PUBLIC, WHSEC, billed, client, settings

# stripe-python 16.1's async HTTPXClient posts bytes with data=, which httpx 0.28 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

ORIGIN = {"Origin": PUBLIC}


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_subscriber_gets_a_portal_link_and_others_do_not(make_nasca):
    with StripeServer(webhook_secret=WHSEC) as srv:
        n = billed(make_nasca, srv.client())
        app = create_app(n, settings())
        links = UpgradeLinks(settings())
        page = links.url("ann")
        path = page.removeprefix(PUBLIC)
        async with client(app) as c:
            before = await c.get(path)
            assert before.status_code == 200 and "Manage or cancel your subscription" not in before.text
            r = await c.post(f"{path}/portal", headers=ORIGIN)
            assert r.status_code == 404 and "no subscription" in r.text  # not a subscriber
            as_json = {**ORIGIN, "Accept": "application/json"}
            r = await c.post(f"{path}/checkout", data={"item": "pro"}, headers=as_json)
            session_id = r.json()["url"].rsplit("/", 1)[1]
            signed = srv.complete_session(session_id, deliver=False)
            hook = await c.post("/stripe/webhook", content=signed.payload, headers=signed.headers)
            assert hook.json()["action"] == "plan_applied"
            after = await c.get(path)
            assert "Manage or cancel your subscription" in after.text and f"{path}/portal" in after.text
            r = await c.post(f"{path}/portal", headers=ORIGIN)
            assert r.status_code == 303
            (portal,) = srv.portal_sessions
            assert r.headers["location"] == portal["url"]
            assert portal["customer"] == srv.session(session_id)["customer"]
            assert portal["return_url"] == page  # back to the upgrade page
            refused = await c.post(f"{path}/portal", headers={"Origin": "https://evil.example"})
            assert refused.status_code == 403 and len(srv.portal_sessions) == 1
