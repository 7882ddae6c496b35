"""The ledger contract, run on the memory store, a real Redis and a real Redis Cluster."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import pytest

from nasca_core import (
    InvalidAmountError,
    InvalidUserError,
    NascaBlockedError,
    Tier,
    UnknownTierError,
)
from nasca_core.stores import Lot

DAY = 86400.0


def spend(n, user, cost, estimate=None, tier=None):
    r = n.reserve(estimate if estimate is not None else cost, user=user, tier=tier)
    return n.settle(r, cost)


def test_reserve_settle_counts_every_window(make_nasca):
    n = make_nasca()
    spend(n, "u1", "0.03", tier="pro")
    spend(n, "u1", "0.02", tier="pro")
    u = n.get_usage("u1", tier="pro")
    assert (u.daily_spent, u.weekly_spent, u.monthly_spent) == (Decimal("0.05"),) * 3
    assert u.daily_limit == Decimal(2) and u.weekly_limit == Decimal(5) and u.monthly_limit == Decimal(10)
    assert u.daily_percent == pytest.approx(2.5)
    assert u.month_calls == 2 and u.month_cost == Decimal("0.05") and u.in_flight == 0
    assert not u.blocked and u.blocked_reason is None


def test_block_when_window_spent_and_error_fields(make_nasca, clock):
    n = make_nasca()
    spend(n, "u1", "0.10")
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.001", user="u1")
    err = info.value
    assert (err.user_id, err.tier, err.window) == ("u1", "free", "daily")
    assert err.resets_at.isoformat() == "2026-11-19T00:00:00+00:00"
    assert "daily" in err.upgrade_message and "$0.10" in err.upgrade_message
    assert err.checkout_url is None
    assert err.usage is not None and err.usage.blocked and err.usage.daily_spent == Decimal("0.10")
    # a blocked reserve holds nothing
    assert n.get_usage("u1").in_flight == 0


def test_holds_count_until_settled_or_released(make_nasca):
    n = make_nasca()
    r1 = n.reserve("0.06", user="u1")
    r2 = n.reserve("0.05", user="u1")  # 0.06 held < 0.10: admitted (default admission)
    assert n.get_usage("u1").in_flight == Decimal("0.11")
    with pytest.raises(NascaBlockedError):
        n.reserve("0.001", user="u1")  # holds exhaust the window
    n.release(r2)
    r3 = n.reserve("0.001", user="u1")
    n.settle(r1, "0.01")
    n.settle(r3, "0.001")
    u = n.get_usage("u1")
    assert u.in_flight == 0 and u.daily_spent == Decimal("0.011")


def test_strict_admits_only_when_estimate_fits(make_nasca):
    n = make_nasca(strict=True)
    spend(n, "u1", "0.08")
    with pytest.raises(NascaBlockedError):
        n.reserve("0.03", user="u1")
    n.settle(n.reserve("0.02", user="u1"), "0.02")
    assert n.get_usage("u1").daily_spent == Decimal("0.10")


def test_settle_is_idempotent_and_survives_expired_hold(make_nasca, clock):
    n = make_nasca(hold_ttl=60)
    r = n.reserve("0.01", user="u1")
    first = n.settle(r, "0.01")
    again = n.settle(r, "0.01")  # a retried settle (e.g. after a lost reply) is not charged twice
    assert first.cost_nanos == again.cost_nanos == 10_000_000
    assert n.get_usage("u1").daily_spent == Decimal("0.01")
    late = n.reserve("0.01", user="u1")
    clock.advance(120)  # the hold expired: the user is not locked out...
    assert n.get_usage("u1").in_flight == 0
    n.settle(late, "0.02")  # ...and the late settle still charges: spend is never dropped
    assert n.get_usage("u1").daily_spent == Decimal("0.03")


def test_windows_reset_on_the_calendar(make_nasca, clock):
    n = make_nasca()
    spend(n, "u1", "0.10")
    with pytest.raises(NascaBlockedError):
        n.reserve("0.01", user="u1")
    clock.advance(12 * 3600)  # Thursday 00:00: a new day, same week and month
    spend(n, "u1", "0.05")
    u = n.get_usage("u1")
    assert u.daily_spent == Decimal("0.05") and u.monthly_spent == Decimal("0.15")
    up = n.get_usage("u1", tier="pro")
    assert up.weekly_spent == Decimal("0.15")
    clock.advance(4 * DAY)  # Monday: a new ISO week
    assert n.get_usage("u1", tier="pro").weekly_spent == 0
    clock.advance(9 * DAY)  # December 1st: a new month
    u = n.get_usage("u1")
    assert u.monthly_spent == 0 and u.month_calls == 0
    assert u.resets_at.isoformat() == "2027-01-01T00:00:00+00:00"


def test_settle_lands_in_the_window_where_the_call_ended(make_nasca, clock):
    n = make_nasca()
    clock.advance(12 * 3600 - 1)  # one second before midnight
    r = n.reserve("0.05", user="u1")
    clock.advance(2)
    n.settle(r, "0.05")
    assert n.get_usage("u1").daily_spent == Decimal("0.05")


def test_timezone_windows(make_nasca, clock):
    n = make_nasca(timezone="America/New_York")
    spend(n, "u1", "0.10")  # 07:00 in New York
    clock.advance(11 * 3600)  # 23:00 UTC = 18:00 New York: same local day
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.01", user="u1")
    assert info.value.resets_at.isoformat() == "2026-11-19T00:00:00-05:00"
    clock.advance(6 * 3600)  # 00:00 New York
    spend(n, "u1", "0.01")


def test_set_tier_and_user_tier_apply_in_every_process(make_nasca):
    a, b = make_nasca(), make_nasca()
    spend(a, "u1", "0.10")
    with pytest.raises(NascaBlockedError):
        b.reserve("0.01", user="u1")
    a.set_tier("free", Tier(daily=1, monthly=2))  # no deploy, no restart of b
    spend(b, "u1", "0.50")
    assert b.get_usage("u1").daily_limit == Decimal(1)
    a.set_tier("team", Tier(monthly=50))  # a tier only the store knows
    a.set_user_tier("u2", "team")
    spend(b, "u2", "5")  # b was given tier "free" by default, the stored tier wins
    u = b.get_usage("u2")
    assert u.tier == "team" and u.monthly_spent == Decimal(5) and u.daily_limit is None
    a.set_user_tier("u2", None)
    assert b.get_usage("u2").tier == "free"
    a.set_tier("free", None)  # drop the stored override: back to the constructor's tier
    assert b.get_usage("u1").daily_limit == Decimal("0.10")


def test_user_context_threads_and_tasks(make_nasca):
    import contextvars

    n = make_nasca()
    with n.user("ctx-user", tier="pro"):
        spend(n, None, "0.01")
        seen = []
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(lambda: seen.append(n.resolve_user()),))
        t.start()
        t.join()

        async def in_task():
            r = await n.areserve("0.01")
            await n.asettle(r, "0.01")
            return n.resolve_user()

        seen.append(asyncio.run(in_task()))
    assert seen == [("ctx-user", "pro")] * 2
    assert n.get_usage("ctx-user", tier="pro").daily_spent == Decimal("0.02")
    with pytest.raises(InvalidUserError):
        n.reserve("0.01")


def test_seed_style_user_callables(make_nasca):
    class User:
        id, plan = "seed-1", "pro"

    class Ctx:
        user = User()

    n = make_nasca(get_user_id=lambda c: c.user.id, get_user_tier=lambda c: c.user.plan)
    r = n.reserve("0.5", ctx=Ctx())
    assert (r.user_id, r.tier) == ("seed-1", "pro")
    n.settle(r, "0.5")
    assert n.get_usage("seed-1", tier="pro").daily_spent == Decimal("0.5")


@pytest.mark.parametrize(
    "call",
    [
        lambda n: n.reserve(float("nan"), user="u1"),
        lambda n: n.reserve(float("inf"), user="u1"),
        lambda n: n.reserve("-0.01", user="u1"),
        lambda n: n.reserve("abc", user="u1"),
        lambda n: n.reserve(nanos=-5, user="u1"),
        lambda n: n.reserve(nanos=1.5, user="u1"),
        lambda n: n.reserve("0.01", user=""),
        lambda n: n.reserve("0.01", user=42),
        lambda n: n.reserve("0.01", user="u1", tier="gold"),
        lambda n: n.settle(n.reserve("0", user="u1"), "-1"),
        lambda n: n.settle(n.reserve("0", user="u1"), float("nan")),
        lambda n: n.set_user_tier("u1", "gold"),
        lambda n: n.set_tier("free", Tier(daily=0)),
        lambda n: n.set_tier("free", Tier(monthly=-1)),
    ],
)
def test_bad_input_is_typed_and_changes_nothing(make_nasca, call):
    from nasca_core import ConfigurationError, NascaError

    n = make_nasca()
    spend(n, "u1", "0.01")
    before = n.get_usage("u1")
    with pytest.raises(NascaError) as info:
        call(n)
    assert isinstance(info.value, InvalidAmountError | InvalidUserError | UnknownTierError
                      | ConfigurationError)
    assert str(info.value)  # says what to fix
    after = n.get_usage("u1")
    assert after.daily_spent == before.daily_spent and after.month_calls == before.month_calls
    assert n.get_usage("u1").tier == "free" and after.daily_limit == Decimal("0.10")


def test_concurrent_callers_overspend_at_most_one_call(make_nasca, backend):
    n = make_nasca(tiers={"t": Tier(monthly=1)}, default_tier="t")
    cost = "0.03"
    barrier = threading.Barrier(20)

    def worker():
        barrier.wait()
        for _ in range(10):
            try:
                spend(n, "hot", cost)
            except NascaBlockedError:
                return

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent = n.get_usage("hot").monthly_spent
    # Each call holds its estimate: a call is admitted only while spent + holds < $1, so the
    # final spend is below $1 + one call.
    assert Decimal(1) <= spent < Decimal(1) + Decimal(cost)


async def test_async_concurrent_strict_never_overspends(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=1)}, default_tier="t", strict=True)

    async def one():
        try:
            r = await n.areserve("0.03", user="hot")
        except NascaBlockedError:
            return 0
        await asyncio.sleep(0)
        await n.asettle(r, "0.03")
        return 1

    results = await asyncio.gather(*(one() for _ in range(200)))
    u = await n.aget_usage("hot")
    assert sum(results) == 33 and u.monthly_spent == Decimal("0.99")


def test_credits_cover_exhausted_windows_oldest_lot_first(make_nasca):
    n = make_nasca()
    keys = lambda: n.user_keys("u1", n.now())  # noqa: E731
    store = n.store.sync
    assert store.grant(keys(), Lot("lot-a", "p5", paid=5_000_000_000, currency="usd",
                                   granted=30_000_000, remaining=30_000_000))
    assert not store.grant(keys(), Lot("lot-a", "p5", paid=5_000_000_000, currency="usd",
                                       granted=30_000_000, remaining=30_000_000))  # exactly once
    store.grant(keys(), Lot("lot-b", "p1", paid=1_000_000_000, currency="usd",
                            granted=1_000_000_000, remaining=1_000_000_000))
    spend(n, "u1", "0.08")
    charge = spend(n, "u1", "0.05")  # 0.02 from the tier, 0.03 from lot-a (oldest)
    assert (charge.tier_nanos, charge.credit_nanos) == (20_000_000, 30_000_000)
    u = n.get_usage("u1")
    assert u.daily_spent == Decimal("0.10") and u.month_cost == Decimal("0.13")
    assert u.credit_balance == Decimal(1) and u.credit_balance_display == Decimal(1)
    charge = spend(n, "u1", "0.25")  # all from lot-b
    assert charge.credit_nanos == 250_000_000
    u = n.get_usage("u1")
    assert u.credit_balance == Decimal("0.75") and u.credit_balance_display == Decimal("0.75")
    assert store.revoke_to(keys(), "lot-b", 1 << 62) == 750_000_000
    assert store.revoke_to(keys(), "lot-b", 1 << 62) == 0
    with pytest.raises(NascaBlockedError):
        n.reserve("0.01", user="u1")


def test_hard_daily_cap_ignores_credits(make_nasca):
    n = make_nasca(tiers={"capped": Tier(daily="0.10", monthly=5, credits_cover={"monthly"})},
                   default_tier="capped")
    n.store.sync.grant(n.user_keys("u1", n.now()),
                        Lot("l", "p", paid=1, currency="usd", granted=10**9, remaining=10**9))
    spend(n, "u1", "0.10")
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.01", user="u1")
    assert info.value.window == "daily"
    assert "Upgrade your plan" in info.value.upgrade_message and "credits" not in info.value.upgrade_message
    assert n.get_usage("u1").credit_balance == Decimal(1)


def test_identical_results_on_every_backend(make_nasca, clock, backend):
    """A fixed scenario's full trace on this backend equals the memory store's trace."""
    import uuid

    from tests._scenario import run_scenario
    from tests.conftest import FakeClock

    start = clock.now
    trace = run_scenario(make_nasca, clock)
    reference_clock = FakeClock(start)
    reference = run_scenario(
        lambda **kw: make_nasca(store=f"memory://{uuid.uuid4().hex}", clock=reference_clock, **kw),
        reference_clock,
    )
    assert trace == reference
    assert ("blocked", "u2", "daily") in trace and any(t[0] == "ok" and t[4] > 0 for t in trace)


def test_many_holds_in_flight_are_summed_and_expire(make_nasca, clock, backend):
    n = make_nasca(tiers={"big": Tier(monthly=1000, max_in_flight=None)}, default_tier="big", hold_ttl=60)
    holds = [n.reserve("0.01", user="busy") for _ in range(600)]
    assert n.get_usage("busy").in_flight == Decimal(6)
    for r in holds[:200]:
        n.release(r)
    for r in holds[200:300]:
        n.settle(r, "0.02")
    u = n.get_usage("busy")
    assert u.in_flight == Decimal(3) and u.monthly_spent == Decimal(2)
    if backend in ("redis", "cluster"):  # the running sum is gone (evicted, or written by an older version)
        client = n.store.sync.client
        client.delete(n.user_keys("busy", n.now()).held)
        assert n.get_usage("busy").in_flight == Decimal(3)  # rebuilt from the live holds
    clock.advance(61)
    late = n.reserve("0.01", user="busy")
    assert n.get_usage("busy").in_flight == Decimal("0.01")
    n.settle(late, "0.01")
    assert n.get_usage("busy").in_flight == 0


def _spend_in_child(uri: str, namespace: str) -> None:
    from nasca_core import Nasca

    n = Nasca(uri, tiers={"t": Tier(monthly=10)}, default_tier="t", namespace=namespace)
    n.settle(n.reserve("0.10", user="forked"), "0.10")
    n.close()


@pytest.mark.redis
def test_forked_workers_never_share_hold_ids(redis_url):
    """Hold ids dedupe retried settles, so two forked workers must not draw the same ones."""
    import multiprocessing
    import uuid

    from nasca_core import Nasca

    namespace = f"fork{uuid.uuid4().hex[:8]}"
    n = Nasca(redis_url, tiers={"t": Tier(monthly=10)}, default_tier="t", namespace=namespace)
    n.get_usage("forked")  # the parent has imported and used Nasca before forking
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_spend_in_child, args=(redis_url, namespace)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    u = n.get_usage("forked")
    assert u.monthly_spent == Decimal("0.40") and u.month_calls == 4


def test_a_hold_id_reserved_twice_holds_once(make_nasca):
    """A store that runs the same reserve twice (a client retry after a lost reply) holds
    its estimate once, answers "admitted" both times, and one settle clears it."""
    from nasca_core.stores import ReserveOp

    n = make_nasca()
    snap = n.live.current()
    now_ms = int(n.now() * 1000)
    op = ReserveOp(keys=n.user_keys("u1"), now_ms=now_ms, hold_id="retried-1", estimate=60_000_000,
                   hold_expiry_ms=now_ms + 60_000, strict=False, tier="free", tiers_json=snap.tiers_json,
                   config_version=snap.version, tier_compiled=snap.compiled["free"])
    first, again = n.store.sync.reserve(op), n.store.sync.reserve(op)
    assert (first.status, again.status) == (1, 1) and first.held == again.held == 60_000_000
    assert n.get_usage("u1").in_flight == Decimal("0.06")
    n.reserve("0.01", user="u1")  # 0.06 held, not 0.12: the user can still start a call
    from nasca_core import Reservation

    n.settle(Reservation("u1", "free", "retried-1", 60_000_000, op.keys), "0.06")
    u = n.get_usage("u1")
    assert u.in_flight == Decimal("0.01") and u.daily_spent == Decimal("0.06")
