"""A hold taken on one `nasca serve` replica and settled on another charges the billing-cycle
month it was checked against: the /v1 hold token carries the anchor spec (real uvicorn
servers over a real Redis)."""

from __future__ import annotations

from decimal import Decimal

import httpx

from tests import _remote
from tests._billing import SECRET as WEBHOOK_SECRET
from tests._remote import KEY
from tests.test_anchor_stores import PLANS, TIERS, at, month, subscribe

serve = _remote.serve  # fixture


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {KEY}"})


def test_a_hold_settled_on_another_replica_charges_the_anchored_month(serve, clock):
    options = {"tiers": TIERS, "default_tier": "free", "timezone": "Europe/Paris", "plans": PLANS,
               "webhook_secret": WEBHOOK_SECRET}
    a, b = serve(**options), serve(**options)  # one namespace, one Redis
    clock.now = at(2026, 6, 15, 8)
    subscribe(a.nasca, clock, "sub_A", "pro", clock.now)
    clock.now = at(2026, 6, 18)
    for _ in range(3):
        reply = post(a.url, "/v1/reserve", {"user": "u1", "estimate": "4", "strict": True})
        if reply.status_code == 402:
            break
        hold = reply.json()["hold"]
        assert hold["anchor"] == f"0,0,{int(at(2026, 6, 15, 8))}"
        assert post(b.url, "/v1/settle", {"hold": hold, "cost": "4"}).status_code == 200
    assert reply.status_code == 402  # the third: 8 spent of pro's 10, in the anchored month
    assert month(a.nasca) == (Decimal(8), (2026, 7, 15, 8, 0))
    assert month(b.nasca) == (Decimal(8), (2026, 7, 15, 8, 0))
