"""The server side of remote mode (``server/_v1*.py``): signed holds, the admin keys, the
threshold step and boosts of a remote call, server-side pricing, and the /v1 reserve's
options; over a real uvicorn on loopback, mostly over a real Redis.

These run the server's ``create_app`` in this process (``tests._remote.serve``), not a
``nasca serve`` process, on purpose: the server ledger's clock is the test's FakeClock, so a
boost can lapse or a billing cycle turn while a call is in flight, and the test reads the
server's ledger (its hooks, its analytics) directly. The real-process tests (keys from the
environment, a server killed mid-run) are in tests/test_remote.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from nasca_core import ConfigurationError, Nasca, Tier, UnauthorizedError
from nasca_core.billing import CreditPack
from nasca_core.pricing import TokenUsage
from nasca_core.server import ApiKeys, ServerSettings, create_app
from tests import _remote
from tests._billing import SECRET as WEBHOOK_SECRET
from tests._remote import ADMIN_KEY as ADMIN
from tests._remote import KEY
from tests._webapp import LiveServer
from tests.test_anchor_stores import PLANS, TIERS, at, month, subscribe

serve, make_remote = _remote.serve, _remote.make_remote  # fixtures

pytestmark = pytest.mark.redis
KEYS = ApiKeys([KEY], admin=[ADMIN])


def post(url: str, path: str, body: dict[str, Any], key: str = KEY) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {key}"})


def reserve(url: str, **body: Any) -> dict[str, Any]:
    reply = post(url, "/v1/reserve", {"user": "u1", **body})
    assert reply.status_code == 200, reply.text
    return reply.json()


# -- signed holds ----------------------------------------------------------------------------
@pytest.mark.parametrize("change", [
    {"estimate_nanos": 1}, {"tier": "pro"}, {"user": "u2"}, {"anchor": "1780000000,1782000000,0"},
    {"reserved_ms": 1}, {"hold_id": "abc.forged-mac"},
])
def test_an_altered_hold_is_refused_on_settle_and_release_and_changes_nothing(serve, change):
    s = serve()
    hold = reserve(s.url, estimate="0.05")["hold"]
    bad = {**hold, **change}
    for path, body in (("/v1/settle", {"hold": bad, "cost": "0.01"}), ("/v1/release", {"hold": bad})):
        reply = post(s.url, path, body)
        assert reply.status_code == 422 and reply.json()["error"] == "invalid_input", reply.text
        assert "hold" in reply.json()["message"]
    for user in ("u1", "u2"):
        u = s.nasca.get_usage(user)
        assert u.daily_spent == 0 and u.in_flight == (Decimal("0.05") if user == "u1" else 0)
    assert post(s.url, "/v1/settle", {"hold": hold, "cost": "0.02"}).status_code == 200  # as it came
    assert s.nasca.get_usage("u1").daily_spent == Decimal("0.02")


def test_a_hold_echoed_without_its_anchor_cannot_charge_the_calendar_month():
    # The reviewer's probe: an anchored user, a hand-written client that echoes the hold
    # without ``anchor``. Before signing, each such settle charged the calendar month, which
    # the user's billing-cycle limit never saw: 6 x $4 on a $10 monthly tier.
    class Clock:
        now = at(2026, 6, 15, 8)

    clock = Clock()
    n = Nasca("memory://", tiers=TIERS, default_tier="free", timezone="Europe/Paris", plans=PLANS,
              webhook_secret=WEBHOOK_SECRET, clock=lambda: clock.now)
    subscribe(n, clock, "sub_A", "pro", clock.now)
    assert n.get_usage("u1").tier == "pro"
    clock.now = at(2026, 6, 18)
    s = _remote.Served(n, None, KEYS).start()
    try:
        hold = reserve(s.url, estimate="4", strict=True)["hold"]
        assert hold["anchor"]
        stripped = {k: v for k, v in hold.items() if k != "anchor"}
        reply = post(s.url, "/v1/settle", {"hold": stripped, "cost": "4"})
        assert reply.status_code == 422 and reply.json()["error"] == "invalid_input"
        assert month(n)[0] == 0 and n.get_usage("u1").in_flight == 4
        assert post(s.url, "/v1/settle", {"hold": hold, "cost": "4"}).status_code == 200
        again = reserve(s.url, estimate="4", strict=True)["hold"]
        assert post(s.url, "/v1/settle", {"hold": again, "cost": "4"}).status_code == 200
        third = post(s.url, "/v1/reserve", {"user": "u1", "estimate": "4", "strict": True})
        assert third.status_code == 402  # $8 of $10 in the billing cycle: no room for $4 more
        assert month(n)[0] == 8
    finally:
        s.stop()


def test_a_hold_signed_before_a_secret_rotation_still_settles(serve, redis_url, clock):
    s = serve()
    hold = reserve(s.url, estimate="0.05")["hold"]
    settings = ServerSettings(secret="a-new-secret-0123456789abcdef", previous_secrets=(_remote.SECRET,))
    with LiveServer(create_app(s.nasca, settings, api_keys=KEYS)) as live:
        assert post(live.url, "/v1/settle", {"hold": hold, "cost": "0.01"}).status_code == 200
        fresh = reserve(live.url, estimate="0.01")["hold"]
    # ...and one signed with another secret is not this server's
    assert post(s.url, "/v1/settle", {"hold": fresh, "cost": "0.01"}).status_code == 422
    assert s.nasca.get_usage("u1").daily_spent == Decimal("0.01")


def test_a_hold_the_client_admitted_alone_settles_unchecked(serve):
    # on_store_error="allow": the client held nothing on the server and has no MAC to send
    s = serve()
    real = reserve(s.url, estimate="0.05")["hold"]
    base = real["hold_id"].rpartition(".")[0]
    alone = {"user": "u1", "tier": "free", "hold_id": base, "estimate_nanos": 50_000_000}
    assert post(s.url, "/v1/release", {"hold": alone}).status_code == 200
    assert s.nasca.get_usage("u1").in_flight == Decimal("0.05")  # the signed hold is untouched
    for _ in range(2):  # idempotent by its id
        assert post(s.url, "/v1/settle", {"hold": alone, "cost": "0.03"}).status_code == 200
    u = s.nasca.get_usage("u1")
    assert u.daily_spent == Decimal("0.03") and u.in_flight == Decimal("0.05")


# -- what the settle keeps from the reserve: boosts, the threshold step -------------------------
def test_a_boost_in_force_at_the_reserve_covers_the_remote_settle(serve, clock):
    s = serve(tiers={"t": Tier(daily=1)}, default_tier="t")
    s.nasca.billing.grant_credits("u1", spend="5", paid="5", idempotency_key="g1")
    s.nasca.settle(s.nasca.reserve("0.9", user="u1"), "0.9")
    s.nasca.grant_boost("u1", "daily", amount=1, until=clock() + 60)
    reply = reserve(s.url, estimate="0.9")
    assert reply["hold"]["reserved_ms"] == int(clock() * 1000)
    clock.advance(120)  # the boost lapses while the call runs
    c = post(s.url, "/v1/settle", {"hold": reply["hold"], "cost": "0.9"}).json()
    assert (c["tier_nanos"], c["credit_nanos"]) == (900_000_000, 0)  # as a local settle: the boost's
    assert s.nasca.get_usage("u1").credit_balance == 5


def test_a_warned_remote_call_carries_the_warning_and_fires_the_servers_threshold(make_remote):
    n = make_remote(tiers={"t": Tier(daily=1, warn_at=(0.5,))}, default_tier="t")
    server = n.served.nasca
    events: list[Any] = []
    server.on_threshold(events.append)
    n.settle(n.reserve("0.45", user="u1"), "0.45")
    assert reserve(n.served.url, estimate="0.01")["warning"] is None  # 46%: under the mark
    call = n.start_call("gpt-4o-mini", prompt_tokens=1_000_000, max_tokens=1, user="u1")
    w = call.reservation.warning
    assert w is not None and (w.window, w.fraction) == ("daily", 0.5)
    call.finish(TokenUsage(input_tokens=1_000_000, output_tokens=0))
    assert server.thresholds.flush()
    assert [(e.user_id, e.fraction, e.window) for e in events] == [("u1", 0.5, "daily")]
    assert server.get_usage("u1").daily_crossed == (0.5,)
    assert server.analytics.month().events["threshold_crossed"] == 1


# -- admin keys -----------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/tiers", {"name": "free", "tier": {"daily": "1000"}}),
    ("/v1/user-tier", {"user": "u1", "tier": "pro"}),
    ("/v1/credits", {"user": "u1", "spend": "100", "paid": "100", "idempotency_key": "k1"}),
])
def test_a_plain_key_cannot_change_limits_tiers_or_credits(serve, path, body):
    s = serve(keys=KEYS)
    reply = post(s.url, path, body)
    assert reply.status_code == 403 and reply.json()["error"] == "forbidden"
    u = s.nasca.get_usage("u1")
    assert (u.tier, u.daily_limit, u.credit_balance) == ("free", Decimal("0.10"), 0)
    assert post(s.url, path, body, key=ADMIN).status_code == 200
    assert post(s.url, "/v1/reserve", {"user": "u1", "estimate": "0.01"}, key=ADMIN).status_code == 200
    client = Nasca(s.url, api_key=KEY)
    try:
        with pytest.raises(UnauthorizedError, match="admin"):
            client.set_user_tier("u1", "free")
    finally:
        client.close()


def test_a_grant_without_paid_is_a_bonus_not_revenue(serve):
    s = serve(keys=KEYS, packs=[CreditPack(id="p10", spend=10, price=10)])
    reply = post(s.url, "/v1/credits", {"user": "u1", "pack": "p10", "idempotency_key": "k1"}, key=ADMIN)
    assert reply.status_code == 200 and Decimal(reply.json()["lot"]["paid"]) == 0
    paid = post(s.url, "/v1/credits", {"user": "u2", "pack": "p10", "paid": "10", "idempotency_key": "k2"},
                key=ADMIN)
    assert Decimal(paid.json()["lot"]["paid"]) == 10
    assert s.nasca.get_usage("u1").credit_balance == s.nasca.get_usage("u2").credit_balance == 10


def test_admin_keys_from_the_environment():
    keys = ApiKeys.from_env({"NASCA_API_KEYS": KEY, "NASCA_ADMIN_API_KEYS": f" {ADMIN} "})
    assert keys.is_admin(keys.find(f"Bearer {ADMIN}")) and not keys.is_admin(keys.find(f"Bearer {KEY}"))
    with pytest.raises(ConfigurationError, match="both"):
        ApiKeys([KEY], admin=[KEY])
    with pytest.raises(ConfigurationError):
        ApiKeys([KEY], admin=["short"])


# -- pricing, strict, retries ---------------------------------------------------------------
def test_a_settle_by_model_and_usage_is_priced_with_the_servers_table(serve):
    s = serve(prices={"house-model": {"input": "2", "output": "8"}})  # $ per million tokens
    hold = reserve(s.url, model="house-model", prompt_tokens=1000, max_tokens=100)["hold"]
    usage = {"input_tokens": 1_000_000, "output_tokens": 500_000, "cache_read_tokens": 0}
    c = post(s.url, "/v1/settle", {"hold": hold, "model": "house-model", "usage": usage}).json()
    assert c["cost_nanos"] == 6_000_000_000 == s.nasca.cost_of(
        "house-model", TokenUsage(input_tokens=1_000_000, output_tokens=500_000))
    u = s.nasca.get_usage("u1")
    assert u.month_input_tokens == 1_000_000 and u.month_output_tokens == 500_000
    both = post(s.url, "/v1/settle", {"hold": hold, "model": "house-model", "nanos": 1})
    assert both.status_code == 422 and both.json()["error"] == "invalid_input"
    unknown = post(s.url, "/v1/reserve", {"user": "u2", "estimate": "0.01"}).json()["hold"]
    reply = post(s.url, "/v1/settle", {"hold": unknown, "model": "no-such-model", "usage": usage})
    assert reply.status_code == 422 and reply.json()["error"] == "unknown_model"
    assert s.nasca.get_usage("u2").in_flight == Decimal("0.01")  # nothing settled


def test_strict_on_a_model_reserve_is_refused_not_ignored(serve):
    s = serve()
    reply = post(s.url, "/v1/reserve", {"user": "u1", "model": "gpt-4o-mini", "prompt_tokens": 10,
                                        "strict": True})
    assert reply.status_code == 422 and "strict" in reply.json()["message"]
    assert s.nasca.get_usage("u1").in_flight == 0


def test_a_retried_settle_answers_the_split_that_landed(serve):
    s = serve()
    s.nasca.billing.grant_credits("u1", spend="1", paid="1", idempotency_key="g1")
    hold = reserve(s.url, estimate="0.05")["hold"]
    body = {"hold": hold, "cost": "0.15"}  # $0.10 of allowance, $0.05 of credits
    first, again = (post(s.url, "/v1/settle", body).json() for _ in range(2))
    assert first == again and (first["tier_nanos"], first["credit_nanos"]) == (100_000_000, 50_000_000)
    assert s.nasca.get_usage("u1").credit_balance == Decimal("0.95")



def test_a_blocked_model_reserve_falls_back_when_asked_and_settles_on_the_fallback_allowance(serve):
    tier = Tier(monthly="0.01", on_exhausted="fallback", fallback_model={"gpt-4o": "gpt-4o-mini"},
                fallback_allowance=Tier(daily="0.002"))
    s = serve(tiers={"t": tier}, default_tier="t")
    s.nasca.settle(s.nasca.reserve("0.01", user="u1"), "0.01")  # the tier's month is spent
    call = {"model": "gpt-4o", "prompt_tokens": 100, "max_tokens": 10}
    assert post(s.url, "/v1/reserve", {"user": "u1", **call}).status_code == 402  # not asked: blocks
    reply = reserve(s.url, **call, fallback=True)
    assert reply["model"] == "gpt-4o-mini" and reply["hold"]["tier"] == "t:fallback"
    assert reply["fallback"]["requested"] == "gpt-4o" and reply["fallback"]["window"] == "monthly"
    cost = s.nasca.cost_of("gpt-4o-mini", TokenUsage(input_tokens=100, output_tokens=10))
    settled = post(s.url, "/v1/settle", {"hold": reply["hold"], "model": "gpt-4o-mini",
                                         "usage": {"input_tokens": 100, "output_tokens": 10}}).json()
    assert settled["cost_nanos"] == cost
    u = s.nasca.get_usage("u1")
    assert u.monthly_spent == Decimal("0.01") and u.in_flight == 0  # the tier's own month is untouched
    assert u.fallback is not None and u.fallback.daily_spent == Decimal(cost) / 10**9
    amount = post(s.url, "/v1/reserve", {"user": "u1", "estimate": "0.01", "fallback": True})
    assert amount.status_code == 422
    # a hold no server signed can't claim the fallback allowance
    forged = {"user": "u1", "tier": "t:fallback", "hold_id": "h1", "estimate_nanos": 0}
    assert post(s.url, "/v1/settle", {"hold": forged, "cost": "0.001"}).status_code == 422
    assert s.nasca.get_usage("u1").fallback.daily_spent == Decimal(cost) / 10**9



async def test_a_remote_model_call_is_priced_by_the_server_not_the_clients_table(make_remote, monkeypatch):
    # The client's own table (shipped + the server's overrides) may be another release's, or
    # lack a model the server prices. Its finish must not consult it: it sends the counts.
    n = make_remote(prices={"house-model": {"input": "2", "output": "8", "cache_read": "1"}})

    def no_client_prices(*_):
        raise AssertionError("a remote call's finish priced with the client's table")

    class Counting:  # the client's table still picks the tokenizer that counts streamed text
        def __init__(self, pricer):
            self.pricer = pricer

        def __getattr__(self, name):
            return no_client_prices if name == "cost" else getattr(self.pricer, name)

    client_pricer = type(n).pricer.fget
    monkeypatch.setattr(type(n), "pricer", property(lambda self: Counting(client_pricer(self))))
    monkeypatch.setattr(type(n), "cost_of", no_client_prices)
    usage = TokenUsage(input_tokens=1000, output_tokens=100, cache_read_tokens=400)
    expected = n.served.nasca.cost_of("house-model", usage)
    assert expected == 600 * 2_000 + 400 * 1_000 + 100 * 8_000  # cached input at its own rate
    call = n.start_call("house-model", prompt_tokens=50, max_tokens=10, user="u1")
    assert call.finish(usage).cost_nanos == expected
    acall = await n.astart_call("house-model", prompt_tokens=50, max_tokens=10, user="u1")
    assert (await acall.afinish(usage)).cost_nanos == expected
    u = n.served.nasca.get_usage("u1")
    assert u.month_cost == Decimal(2 * expected) / 10**9 and u.in_flight == 0 and u.month_input_tokens == 2000
