"""Credit packs and plans, manual grants, the display balance in what users paid, which
windows credits cover, and users living on credits under concurrency."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nasca_core.billing
from nasca_core import (
    ConfigurationError,
    InvalidAmountError,
    InvalidInputError,
    InvalidUserError,
    Nasca,
    NascaBlockedError,
    Tier,
    UnknownTierError,
)
from nasca_core.billing import (
    Billing,
    CreditPack,
    CurrencyMismatchError,
    Plan,
    UnknownPackError,
    UnknownPlanError,
)
from nasca_core.testing.stripe import asimulate_purchase, simulate_purchase
from tests._billing import FIXTURES, PACKS, SECRET, SHARED, TIERS, billed

DAY = 86400.0


# -- models ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"price": -5, "spend": 3}, {"price": 5, "spend": -3}, {"price": 0, "spend": 3}, {"price": 5, "spend": 0},
    {"price": "nan", "spend": 3}, {"price": 5, "spend": "inf"}, {"price": "4.999", "spend": 3},
    {"price": 500.5, "spend": 3, "currency": "jpy"}, {"price": 5, "spend": 3, "currency": "dollars"},
    {"price": 5, "spend": 100_001}, {"price": 5, "spend": 3, "expires_in_days": 0},
    {"price": 5, "spend": 3, "extra": 1}, {"price": True, "spend": 3},
])
def test_bad_packs_are_configuration_errors(kwargs):
    with pytest.raises(ConfigurationError) as info:
        CreditPack(id="p", **kwargs)
    assert "CreditPack" in str(info.value)


@pytest.mark.parametrize("pack_id", ["", "has space", "a/b", "x" * 65, 5, None])
def test_bad_pack_ids(pack_id):
    with pytest.raises(ConfigurationError):
        CreditPack(id=pack_id, price=5, spend=3)


def test_pack_and_plan_amounts():
    assert CreditPack(id="p", price="4.99", spend=3).unit_amount == 499
    assert CreditPack(id="p", price=500, spend=3, currency="JPY").unit_amount == 500
    assert CreditPack(id="p", price="1.234", spend=3, currency="kwd").unit_amount == 1234
    assert CreditPack(id="p", price=5, spend=6).is_bonus
    assert not CreditPack(id="p", price=5, spend=6, currency="eur").is_bonus
    with pytest.raises(ConfigurationError):
        Plan(id="p", tier="pro", price=20, interval="fortnight")
    with pytest.raises(ConfigurationError):
        Plan(id="p", tier="", price=20)
    plan = Plan(id="pro", tier="pro", price="19.99", interval="year", stripe_price="price_x")
    assert plan.unit_amount == 1999 and plan.model_dump(mode="json")["price"] == "19.99"


def test_bonus_packs_when_the_owner_forbids_them():
    bonus = CreditPack(id="b", price=5, spend=6)
    with pytest.raises(ConfigurationError):
        Nasca("memory://", tiers=TIERS, default_tier="free", packs=[bonus], allow_bonus_credits=False)
    n = Nasca("memory://", tiers=TIERS, default_tier="free", packs=[CreditPack(id="fair", price=5, spend=5)],
              allow_bonus_credits=False)
    with pytest.raises(ConfigurationError):
        n.set_pack("b", bonus)
    assert "b" not in n.packs


def test_constructor_checks():
    n = Nasca("memory://", tiers=TIERS, default_tier="free")
    with pytest.raises(ConfigurationError):
        Billing(n, packs=[PACKS[0], PACKS[0]])
    with pytest.raises(ConfigurationError):
        Billing(n, packs=[CreditPack(id="pro", price=1, spend=1)],
                plans=[Plan(id="pro", tier="pro", price=1)])
    with pytest.raises(ConfigurationError):
        Billing(n, packs={"other": PACKS[0]})
    with pytest.raises(ConfigurationError):
        Billing(n, packs=["p5"])
    with pytest.raises(UnknownTierError):
        Billing(n, plans=[Plan(id="x", tier="missing", price=1)])
    with pytest.raises(ConfigurationError):
        Billing(n, success_url="/relative")
    with pytest.raises(ConfigurationError):
        Billing(n, stripe="sk_test_123")
    with pytest.raises(ConfigurationError):
        Billing(n, webhook_secret="")


def test_exported_members():
    assert nasca_core.billing.__all__ == sorted(nasca_core.billing.__all__)
    for name in nasca_core.billing.__all__:
        assert getattr(nasca_core.billing, name)


def test_local_server_objects_are_stripes_published_examples():
    from nasca_core.testing._stripe_events import CHECKOUT_SESSION_CREATE_PARAMS, OBJECTS, SOURCE_COMMIT

    if not SHARED.exists():
        if os.environ.get("CI"):
            pytest.fail("../shared/stripe/fixtures.json must sit beside the project in CI")
        pytest.skip("../shared/stripe/fixtures.json is not here")
    assert FIXTURES["source"]["commit"] == SOURCE_COMMIT
    for name, value in OBJECTS.items():
        assert value == FIXTURES["objects"][name]
    assert set(FIXTURES["checkout_session_create_params"]) == CHECKOUT_SESSION_CREATE_PARAMS


# -- live packs and plans ------------------------------------------------------------------------
def test_packs_and_plans_are_live_config_shared_by_processes(make_nasca):
    a = billed(make_nasca)
    b = billed(make_nasca)
    a.set_pack("p50", CreditPack(id="p50", price=50, spend=40))
    a.set_pack("p5", CreditPack(id="p5", price=5, spend="3.5"))
    a.set_plan("pro", Plan(id="pro", tier="pro", price=25))
    b.live.invalidate()  # another process reads the store on its next config load
    assert b.packs["p50"].spend == Decimal(40) and b.packs["p5"].spend == Decimal("3.5")
    assert b.plans["pro"].price == Decimal(25)
    a.set_pack("p5", None)  # retired: not on offer, still honoured for sessions under way
    b.live.invalidate()
    assert "p5" not in b.packs
    with pytest.raises(UnknownPackError):
        b.grant_credits("u1", "p5", idempotency_key="k")
    from tests._billing import event, session, signed

    payload, header = signed(event("checkout.session.completed", session("u1", namespace=b.namespace)))
    assert b.handle_stripe_webhook(payload, header).action == "granted"
    a.set_pack("p5", CreditPack(id="p5", price=5, spend=3))
    assert "p5" in a.packs
    with pytest.raises(UnknownPackError):
        a.set_pack("never", None)
    with pytest.raises(UnknownPlanError):
        a.set_plan("never", None)
    with pytest.raises(ConfigurationError):
        a.set_pack("x", CreditPack(id="y", price=1, spend=1))
    with pytest.raises(ConfigurationError):
        a.set_pack("pro", CreditPack(id="pro", price=1, spend=1))
    with pytest.raises(UnknownTierError):
        a.set_plan("gold", Plan(id="gold", tier="gold", price=1))


def test_a_webhook_worker_sees_a_pack_another_process_just_added(make_nasca):
    web = billed(make_nasca)
    worker = billed(make_nasca)
    assert "p1" not in worker.packs  # loaded and cached
    web.set_pack("p1", CreditPack(id="p1", price=1, spend=1))
    from tests._billing import event, session, signed

    s = session("u1", namespace=web.namespace, pack="p1", amount_total=100)
    e = event("checkout.session.completed", s)
    assert worker.handle_stripe_webhook(*signed(e)).action == "granted"


async def test_async_live_config(make_nasca):
    n = billed(make_nasca)
    await n.aset_pack("p7", CreditPack(id="p7", price=7, spend=7))
    await n.aset_plan("team", None)
    grant = await n.agrant_credits("u1", "p7", idempotency_key="k7")
    assert grant.granted and grant.lot.granted == Decimal(7)
    assert "p7" in await n.billing.aget_packs() and "team" not in await n.billing.aget_plans()
    assert await n.arevoke_credits("u1", "k7") == Decimal(7)
    assert [lot.revoked for lot in await n.acredit_lots("u1")] == [True]
    await n.store.for_loop().close()


# -- manual grants --------------------------------------------------------------------------------
def test_grant_credits_is_idempotent_by_key(make_nasca, clock):
    n = billed(make_nasca)
    first = n.grant_credits("u1", "p5", idempotency_key="ticket-81")
    assert first.granted and first.lot.id == "ticket-81" and first.lot.pack == "p5"
    lot = first.lot
    assert (lot.paid, lot.granted, lot.display_remaining) == (Decimal(5), Decimal(3), Decimal(5))
    again = n.grant_credits("u1", spend=100, idempotency_key="ticket-81")
    assert not again.granted and again.lot.granted == Decimal(3)
    support = n.grant_credits("u1", spend="2", idempotency_key="goodwill-1")
    assert support.lot.paid == Decimal(2) and support.lot.pack is None and support.lot.currency == "usd"
    free = n.grant_credits("u1", spend="1", paid=0, idempotency_key="promo")
    assert free.lot.display_remaining == 0
    u = n.get_usage("u1")
    assert u.credit_balance == Decimal(6) and u.credit_balance_display == Decimal(7)
    assert [x.id for x in n.credit_lots("u1")] == ["ticket-81", "goodwill-1", "promo"]
    assert n.revoke_credits("u1", "goodwill-1") == Decimal(2)
    assert n.revoke_credits("u1", "goodwill-1") == 0
    assert n.revoke_credits("u1", "never") == 0
    assert n.get_usage("u1").credit_balance == Decimal(4)


def test_grant_credits_expiry(make_nasca, clock):
    n = billed(make_nasca)
    at = datetime.fromtimestamp(clock.now, UTC) + timedelta(days=2)
    n.grant_credits("u1", spend=1, idempotency_key="k", expires_at=at)
    n.grant_credits("u1", spend=1, idempotency_key="k2", expires_at=clock.now + 3 * DAY)
    assert n.get_usage("u1").credit_balance == Decimal(2)
    clock.advance(2 * DAY + 1)
    assert n.get_usage("u1").credit_balance == Decimal(1)
    with pytest.raises(InvalidInputError):
        n.grant_credits("u1", spend=1, idempotency_key="k3", expires_at=clock.now - 1)
    with pytest.raises(InvalidInputError):
        n.grant_credits("u1", spend=1, idempotency_key="k4", expires_at=datetime(2030, 1, 1))


@pytest.mark.parametrize("call, error", [
    (lambda n: n.grant_credits("u1", spend=-1, idempotency_key="k"), InvalidAmountError),
    (lambda n: n.grant_credits("u1", spend=0, idempotency_key="k"), InvalidAmountError),
    (lambda n: n.grant_credits("u1", spend="nan", idempotency_key="k"), InvalidAmountError),
    (lambda n: n.grant_credits("u1", spend=1, paid=-1, idempotency_key="k"), InvalidAmountError),
    (lambda n: n.grant_credits("u1", spend=200_000, idempotency_key="k"), InvalidAmountError),
    (lambda n: n.grant_credits("u1", "p5", paid="-5", idempotency_key="k"), InvalidAmountError),
    (lambda n: n.grant_credits("u1", "nope", idempotency_key="k"), UnknownPackError),
    (lambda n: n.grant_credits("u1", "p5", currency="eur", idempotency_key="k"), CurrencyMismatchError),
    (lambda n: n.grant_credits("u1", spend=1, currency="eur", idempotency_key="k"), InvalidInputError),
    (lambda n: n.grant_credits("u1", spend=1, currency="euro", paid=1, idempotency_key="k"),
     InvalidInputError),
    (lambda n: n.grant_credits("u1", "p5", spend=1, idempotency_key="k"), ConfigurationError),
    (lambda n: n.grant_credits("u1", idempotency_key="k"), ConfigurationError),
    (lambda n: n.grant_credits("u1", spend=1, idempotency_key=""), InvalidInputError),
    (lambda n: n.grant_credits("u1", spend=1, idempotency_key="x" * 300), InvalidInputError),
    (lambda n: n.grant_credits("", spend=1, idempotency_key="k"), InvalidUserError),
    (lambda n: n.grant_credits("u1", CreditPack(id="p5", price=5, spend=9), idempotency_key="k"),
     ConfigurationError),
])
def test_bad_grants_change_nothing(make_nasca, call, error):
    n = billed(make_nasca)
    with pytest.raises(error):
        call(n)
    assert n.credit_lots("u1") == () and n.get_usage("u1").credit_balance == 0


def test_currency_lots_show_in_what_was_paid(make_nasca):
    n = billed(make_nasca)
    n.grant_credits("u1", "e5", idempotency_key="k")
    n.grant_credits("u2", spend=3, paid="2.5", currency="GBP", idempotency_key="k")
    u1, u2 = n.get_usage("u1"), n.get_usage("u2")
    assert u1.credit_balance_display == Decimal(5) and u1.credit_currency == "eur"
    assert n.credit_lots("u2")[0].currency == "gbp" and u2.credit_balance_display == Decimal("2.5")


# -- the display balance: property tests against a reference model ---------------------------------------
def _display(lots):
    exact = sum((Fraction(r * p, g) for p, g, r in lots if g), Fraction(0))
    return (Decimal(int(exact)) / Decimal(10**9)).quantize(Decimal("0.000001"))


money_cents = st.integers(min_value=1, max_value=5_000)
ops = st.lists(st.one_of(
    st.tuples(st.just("topup"), money_cents, st.integers(min_value=0, max_value=10_000)),
    st.tuples(st.just("spend"), st.integers(min_value=1, max_value=3_000)),
    st.tuples(st.just("refund"), st.integers(min_value=0, max_value=20)),
), min_size=1, max_size=25)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops)
def test_display_balance_matches_a_reference_model(ops):
    n = Nasca("memory://", tiers={"t": Tier(monthly="0.01")}, default_tier="t", clock=lambda: 1_795_003_200.0,
              webhook_secret=SECRET)
    n.settle(n.reserve("0.01", user="u"), "0.01")  # the tier's allowance is gone: credits pay
    lots: list[list[int]] = []  # [paid, granted, remaining] in nanos, oldest first
    limit = spent = 10_000_000
    for op in ops:
        if op[0] == "topup":
            _, spend_cents, paid_cents = op
            key = f"lot{len(lots)}"
            n.grant_credits("u", spend=Decimal(spend_cents) / 100, paid=Decimal(paid_cents) / 100,
                            idempotency_key=key)
            lots.append([paid_cents * 10**7, spend_cents * 10**7, spend_cents * 10**7])
        elif op[0] == "spend":
            cost = op[1] * 10**7  # cents of AI spend
            credits = sum(x[2] for x in lots)
            if not spent - limit < credits:  # the core's admission rule (no holds in flight)
                with pytest.raises(NascaBlockedError):
                    n.reserve(Decimal(op[1]) / 100, user="u")
                continue
            charge = n.settle(n.reserve(Decimal(op[1]) / 100, user="u"), Decimal(op[1]) / 100)
            need = cost
            for x in lots:  # oldest first
                take = min(x[2], need)
                x[2] -= take
                need -= take
            assert charge.credit_nanos == cost - need
            spent += need
        elif lots:
            i = op[1] % len(lots)
            assert n.revoke_credits("u", f"lot{i}") == Decimal(lots[i][2]) / 10**9
            lots[i][2] = 0
        u = n.get_usage("u")
        assert u.credit_balance == Decimal(sum(x[2] for x in lots)) / 10**9
        assert abs(u.credit_balance_display - _display(lots)) <= Decimal("0.000001")
        for lot, (paid, granted, remaining) in zip(n.credit_lots("u"), lots, strict=True):
            assert lot.remaining == Decimal(remaining) / 10**9
            expected = Decimal(remaining * paid) / Decimal(granted) / Decimal(10**9)
            assert abs(lot.display_remaining - expected) <= Decimal("0.000001")


def test_display_across_top_ups_at_different_ratios_and_a_refund(make_nasca):
    """$5 for $3, $10 for $10, $20 for $12.50 (bonus-free ratios differ), partial use, one refund."""
    from tests._billing import charge, event, session, signed

    n = billed(make_nasca, tiers={"t": Tier(monthly="0.01")}, default_tier="t", billing={"plans": []})
    n.settle(n.reserve("0.01", user="u1"), "0.01")
    pis = {}
    for pack, cents in (("p5", 500), ("p10", 1000), ("p20", 2000)):
        s = session("u1", namespace=n.namespace, pack=pack, amount_total=cents)
        pis[pack] = s["payment_intent"]
        n.handle_stripe_webhook(*signed(event("checkout.session.completed", s)))
    u = n.get_usage("u1")
    assert u.credit_balance == Decimal("25.5") and u.credit_balance_display == Decimal(35)
    n.settle(n.reserve("4.5", user="u1"), "4.5")  # all $3 of the first lot, $1.50 of the second
    u = n.get_usage("u1")
    assert u.credit_balance == Decimal(21) and u.credit_balance_display == Decimal("28.5")
    n.handle_stripe_webhook(*signed(event("charge.refunded", charge(pis["p20"], amount=2000))))
    u = n.get_usage("u1")
    assert u.credit_balance == Decimal("8.5") and u.credit_balance_display == Decimal("8.5")


# -- which windows credits cover, end to end ------------------------------------------------------------
def test_daily_window_covered_by_credits(make_nasca, clock):
    n = billed(make_nasca)  # free: daily $0.10 (coverable), monthly $0.50
    n.settle(n.reserve("0.10", user="u1"), "0.10")
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.01", user="u1")
    assert info.value.window == "daily"
    u = simulate_purchase(n, "u1", "p5", SECRET)
    assert not u.blocked and u.credit_balance_display == Decimal(5)
    charge = n.settle(n.reserve("0.30", user="u1"), "0.30")
    assert (charge.tier_nanos, charge.credit_nanos) == (0, 300_000_000)
    u = n.get_usage("u1")
    assert u.daily_spent == Decimal("0.10") and u.credit_balance == Decimal("2.7")
    assert u.credit_balance_display == Decimal("4.5")
    clock.advance(DAY)  # a new day: the tier pays again first
    charge = n.settle(n.reserve("0.05", user="u1"), "0.05")
    assert (charge.tier_nanos, charge.credit_nanos) == (50_000_000, 0)


def test_daily_hard_cap_is_not_bought_out(make_nasca, clock):
    capped = {"capped": Tier(daily="0.10", weekly="0.25", monthly=5, credits_cover={"weekly", "monthly"})}
    n = billed(make_nasca, tiers=capped, default_tier="capped", billing={"plans": []})
    simulate_purchase(n, "u1", "p5", SECRET)
    n.settle(n.reserve("0.10", user="u1"), "0.10")
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.01", user="u1")
    assert info.value.window == "daily"
    assert n.get_usage("u1").credit_balance == Decimal(3)  # untouched
    # over the days, the weekly window runs out: credits cover it, the daily cap still holds
    for _ in range(8):
        clock.advance(DAY / 2)
        try:
            n.settle(n.reserve("0.10", user="u1"), "0.10")
        except NascaBlockedError as err:
            assert err.window == "daily"
    u = n.get_usage("u1")
    assert u.daily_spent <= Decimal("0.10") and u.hard_windows == frozenset({"daily"})
    assert u.weekly_spent == Decimal("0.25") and u.month_credit_spend == Decimal("0.25")
    assert u.credit_balance + u.month_credit_spend == Decimal(3)


def test_monthly_window_covered_then_blocked_when_credits_run_out(make_nasca):
    n = billed(make_nasca, tiers={"m": Tier(monthly="0.50")}, default_tier="m", billing={"plans": []})
    n.settle(n.reserve("0.50", user="u1"), "0.50")
    n.grant_credits("u1", spend="0.20", idempotency_key="k")
    n.settle(n.reserve("0.15", user="u1"), "0.15")
    n.settle(n.reserve("0.04", user="u1"), "0.04")
    assert n.get_usage("u1").credit_balance == Decimal("0.01")
    charge = n.settle(n.reserve("0.05", user="u1"), "0.05")  # credits give what they have
    assert charge.credit_nanos == 10_000_000
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.01", user="u1")
    assert info.value.window == "monthly"


async def test_async_simulate_purchase(make_nasca):
    n = billed(make_nasca)
    n.settle(n.reserve("0.10", user="u1"), "0.10")
    u = await asimulate_purchase(n, "u1", "p10")
    assert u.credit_balance_display == Decimal(10) and not u.blocked
    await n.store.for_loop().close()
    pool = getattr(getattr(n.store.for_loop(), "client", None), "connection_pool", None)
    if pool is not None:
        await pool.disconnect()


# -- users living on credits, concurrently ---------------------------------------------------------------
def test_hundred_concurrent_calls_on_credits_stay_within_the_bound(make_nasca, backend, request):
    store = {}
    if backend == "cluster":
        # redis-py's cluster pools refuse a 101st connection to a node ("Too many connections"),
        # and a cluster reserve holds two (the user's slot and the config version's): give the
        # client room for 100 concurrent callers, as an app expecting such bursts would.
        from redis.cluster import ClusterNode, RedisCluster

        url = request.getfixturevalue("cluster_url")
        nodes = [ClusterNode(h, int(p)) for h, p in (x.rsplit(":", 1) for x in url.split("//")[1].split(","))]
        store = {"store": RedisCluster(startup_nodes=nodes, max_connections=512)}
        request.addfinalizer(store["store"].close)
    n = billed(make_nasca, tiers={"t": Tier(monthly="0.01")}, default_tier="t", billing={"plans": []},
               **store)
    n.settle(n.reserve("0.01", user="hot"), "0.01")
    n.grant_credits("hot", spend=1, paid=2, idempotency_key="topup")
    cost = Decimal("0.03")
    barrier = threading.Barrier(100)
    admitted, errors = [], []

    def call():
        barrier.wait()
        try:
            r = n.reserve(cost, user="hot")
        except NascaBlockedError:
            return
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
            return
        n.settle(r, cost)
        admitted.append(1)

    threads = [threading.Thread(target=call) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    u = n.get_usage("hot")
    assert u.credit_balance >= 0 and u.credit_balance_display >= 0
    assert u.credit_balance + u.month_credit_spend == Decimal(1)  # drawn exactly what was granted, no more
    assert u.month_cost == Decimal("0.01") + len(admitted) * cost
    # admission counts holds: spend stays below allowance + credits + one call per round
    assert u.month_cost < Decimal("0.01") + Decimal(1) + cost
    assert u.credit_balance == 0  # demand ($3) was above the credits: they were all used


async def test_hundred_concurrent_strict_calls_never_overspend(make_nasca, backend):
    n = billed(make_nasca, tiers={"t": Tier(monthly="0.01")}, default_tier="t", billing={"plans": []},
               strict=True)
    await n.asettle(await n.areserve("0.01", user="hot"), "0.01")
    await n.agrant_credits("hot", spend=1, idempotency_key="topup")

    async def call():
        try:
            r = await n.areserve("0.03", user="hot")
        except NascaBlockedError:
            return 0
        await asyncio.sleep(0)
        await n.asettle(r, "0.03")
        return 1

    done = sum(await asyncio.gather(*(call() for _ in range(100))))
    u = await n.aget_usage("hot")
    assert done == 33 and u.credit_balance == Decimal("0.01") and u.month_credit_spend == Decimal("0.99")
    assert u.monthly_spent == Decimal("0.01")  # the tier never ran over
    store = n.store.for_loop()
    await store.close()
    pool = getattr(getattr(store, "client", None), "connection_pool", None)
    if pool is not None:
        await pool.disconnect()
