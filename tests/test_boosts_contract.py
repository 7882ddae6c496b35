"""Boosts and per-user limits, the same on the memory store, a SQLite file, a real Redis and a
real Redis Cluster: admission, the output cap's room, hard caps, the in-flight cap, the settle's
window charges and get_usage all apply the user's effective limits, and a boost ends on time by
the ledger's (injected) clock."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from nasca_core import InvalidInputError, NascaBlockedError, NascaBusyError, Tier
from nasca_core.stores._base import MAX_BOOSTS
from tests.conftest import FakeClock

HOUR = 3600.0


def spend(n, user, cost, tier=None):
    return n.settle(n.reserve(cost, user=user, tier=tier), cost)


def test_a_boost_raises_the_window_until_it_ends_on_time(make_nasca, clock):
    n = make_nasca()
    spend(n, "u1", "0.10")  # free: the daily $0.10 is spent
    with pytest.raises(NascaBlockedError):
        n.reserve("0.001", user="u1")
    boost = n.grant_boost("u1", "daily", amount="0.05", until=timedelta(hours=2))
    assert boost.window == "daily" and boost.amount == Decimal("0.05")
    assert boost.until.timestamp() == clock.now + 2 * HOUR
    u = n.get_usage("u1")
    assert u.daily_limit == Decimal("0.15") and [b.id for b in u.boosts] == [boost.id]
    spend(n, "u1", "0.04")
    clock.advance(2 * HOUR - 1)  # one second before its end: still in force
    spend(n, "u1", "0.005")
    assert n.get_usage("u1").daily_spent == Decimal("0.145")
    clock.advance(1)  # its end, by the ledger's clock: gone on the next reserve
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.001", user="u1")
    assert info.value.limit == Decimal("0.10") and info.value.window == "daily"
    u = n.get_usage("u1")
    assert u.daily_limit == Decimal("0.10") and u.boosts == () and u.blocked


def test_boosts_add_up_and_one_id_counts_once(make_nasca):
    n = make_nasca()
    n.grant_boost("u1", "monthly", amount="0.25", until=timedelta(days=3), id="ticket-1")
    again = n.grant_boost("u1", "monthly", amount="9", until=timedelta(days=9), id="ticket-1")
    assert again.amount == Decimal("0.25")  # the first grant of that id, unchanged
    n.grant_boost("u1", "monthly", amount="0.25", until=timedelta(days=1))
    u = n.get_usage("u1")
    assert u.monthly_limit == Decimal("1.00") and len(u.boosts) == 2
    n.limits.clear_boosts("u1", "daily")  # another window: nothing ends
    assert len(n.get_usage("u1").boosts) == 2
    n.limits.clear_boosts("u1")
    u = n.get_usage("u1")
    assert u.monthly_limit == Decimal("0.50") and u.boosts == ()


def test_a_boost_on_a_window_without_a_limit_does_nothing(make_nasca):
    n = make_nasca()
    n.grant_boost("u1", "weekly", amount="5", until=timedelta(days=1))  # free has no weekly limit
    u = n.get_usage("u1")
    assert u.weekly_limit is None and len(u.boosts) == 1
    spend(n, "u1", "0.10")
    with pytest.raises(NascaBlockedError):
        n.reserve("0.001", user="u1")


def test_own_limits_replace_the_tier_and_boosts_add_to_them(make_nasca):
    n = make_nasca()
    n.set_user_tier("u1", "pro")  # the stored tier beats the caller's...
    n.set_user_limits("u1", Tier(daily="0.20"))  # ...and the user's own limits replace it
    u = n.get_usage("u1", tier="free")
    assert u.tier == "pro" and u.own_limits == Tier(daily="0.20")
    assert (u.daily_limit, u.weekly_limit, u.monthly_limit) == (Decimal("0.20"), None, None)
    spend(n, "u1", "0.20", tier="free")
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.001", user="u1", tier="free")
    assert (info.value.tier, info.value.limit) == ("pro", Decimal("0.20"))
    n.grant_boost("u1", "daily", amount="0.30", until=timedelta(hours=1))
    r = n.reserve("0.01", user="u1")
    assert r.room == 300_000_000  # the output cap's room: 0.20 + 0.30 - 0.20 spent
    n.settle(r, "0.01")
    n.set_user_limits("u1", None)
    assert n.get_usage("u1").daily_limit == Decimal("2.30")  # pro's $2 plus the boost


def test_own_hard_caps_and_in_flight_cap_apply(make_nasca):
    n = make_nasca()
    n.billing.grant_credits("u1", spend="1.00", paid="0", idempotency_key="k1")
    spend(n, "u1", "0.15")  # free's daily $0.10 counts 0.10: credits paid the rest
    n.set_user_limits("u1", Tier(daily="0.10", monthly=1, credits_cover=frozenset({"monthly"}),
                                 max_in_flight=1))
    assert n.get_usage("u1").hard_windows == frozenset({"daily"})
    with pytest.raises(NascaBlockedError):  # a hard daily cap: credits can't lift it
        n.reserve("0.001", user="u1")
    n.grant_boost("u1", "daily", amount="0.10", until=timedelta(hours=1))
    first = n.reserve("0.01", user="u1")
    with pytest.raises(NascaBusyError):  # the override's in-flight cap of 1
        n.reserve("0.01", user="u1")
    n.release(first)


def test_the_settle_charges_windows_on_the_effective_limits(make_nasca):
    n = make_nasca()
    n.billing.grant_credits("u1", spend="1.00", paid="0", idempotency_key="k1")
    n.grant_boost("u1", "daily", amount="0.10", until=timedelta(hours=1))
    charge = spend(n, "u1", "0.15")  # within the boosted $0.20: the tier pays it all
    assert charge.credit_nanos == 0
    u = n.get_usage("u1")
    assert u.credit_balance == Decimal("1.00") and u.daily_spent == Decimal("0.15")
    charge = spend(n, "u1", "0.10")  # 0.05 over the boosted day: credits pay that part
    assert charge.credit_nanos == 50_000_000
    assert n.get_usage("u1").credit_balance == Decimal("0.95")


def test_at_most_max_boosts_in_force_and_a_refusal_changes_nothing(make_nasca, clock):
    n = make_nasca()
    for i in range(MAX_BOOSTS):
        n.grant_boost("u1", "monthly", amount="0.01", until=timedelta(hours=1 + i))
    with pytest.raises(InvalidInputError):
        n.grant_boost("u1", "monthly", amount="0.01", until=timedelta(hours=1))
    assert len(n.get_usage("u1").boosts) == MAX_BOOSTS
    clock.advance(HOUR)  # the first has lapsed: room for one
    n.grant_boost("u1", "monthly", amount="0.01", until=timedelta(hours=1))
    assert n.get_usage("u1").monthly_limit == Decimal("0.50") + Decimal("0.01") * MAX_BOOSTS


async def test_async_twins(make_nasca):
    n = make_nasca()
    await n.aset_user_limits("u1", Tier(daily="0.30"))
    boost = await n.agrant_boost("u1", "daily", amount="0.20", until=timedelta(hours=1))
    u = await n.aget_usage("u1")
    assert u.daily_limit == Decimal("0.50") and u.boosts[0].id == boost.id
    await n.limits.aclear_boosts("u1")
    await n.aset_user_limits("u1", None)
    u = await n.aget_usage("u1")
    assert u.daily_limit == Decimal("0.10") and u.own_limits is None and u.boosts == ()


def _trace(n, clock, seed):
    """A random run of overrides, boosts, reserves, settles and clock steps; what it saw."""
    rnd = random.Random(seed)
    seen = []
    live = []
    n.billing.grant_credits("u", spend="0.03", paid="0", idempotency_key="c0")  # settles split
    for step in range(40):
        op = rnd.random()
        if op < 0.13:  # an id seen before (in force, lapsed or cleared) adds nothing
            n.grant_boost("u", rnd.choice(["daily", "weekly", "monthly"]),
                          amount=f"0.0{rnd.randint(1, 9)}", until=timedelta(minutes=rnd.randint(1, 90)),
                          id=f"b{rnd.randint(0, step)}")
        elif op < 0.15:
            n.limits.clear_boosts("u", rnd.choice([None, "daily", "monthly"]))
        elif op < 0.22:
            n.set_user_limits("u", rnd.choice([None, Tier(daily="0.05"), Tier(weekly="0.20", daily="0.08",
                              credits_cover=frozenset({"monthly", "weekly"})), Tier(monthly="0.30")]))
        elif op < 0.27:
            n.set_user_tier("u", rnd.choice([None, "pro", "free"]))
        elif op < 0.35:
            clock.advance(rnd.randint(1, 40) * 60)
        elif op < 0.40 and step == 5:
            n.billing.grant_credits("u", spend="0.05", paid="0", idempotency_key="c1")
        elif op < 0.75:
            try:
                r = n.reserve(f"0.0{rnd.randint(0, 4)}{rnd.randint(1, 9)}", user="u")
                seen.append(("ok", r.tier, r.room))
                live.append(r)
            except NascaBlockedError as err:
                seen.append((type(err).__name__, err.tier, err.window, err.limit, err.spent))
        elif live:
            c = n.settle(live.pop(0), f"0.0{rnd.randint(0, 3)}{rnd.randint(0, 9)}")
            seen.append(("settled", c.tier_nanos, c.credit_nanos))
        u = n.get_usage("u")
        seen.append((*tuple((w.window, w.limit, w.spent) for w in u.windows), u.in_flight, len(u.boosts)))
    return seen


@pytest.mark.parametrize("seed", [1, 12, 19, 20])  # runs that meet a limit and draw credits
def test_random_runs_are_identical_on_every_store(make_nasca, clock, backend, seed):
    """This store's trace equals a fresh memory store's, run in the same test on its own clock
    (calls held across clock steps settle after their boosts lapsed or were cleared)."""
    start = clock.now
    trace = _trace(make_nasca(), clock, seed)
    reference_clock = FakeClock(start)
    reference = _trace(make_nasca(store=f"memory://{uuid.uuid4().hex}", clock=reference_clock),
                       reference_clock, seed)
    assert any(s[0] == "NascaBlockedError" for s in trace)
    assert any(s[0] == "settled" and s[2] > 0 for s in trace)
    assert trace == reference


def test_warnings_follow_the_effective_limits(make_nasca):
    n = make_nasca(tiers={"w": Tier(daily=1, warn_at=(0.8,))}, default_tier="w")
    spend(n, "plain", "0.85")
    assert n.reserve("0.01", user="plain").warning is not None  # 0.86 of $1: past 80%
    n.grant_boost("boosted", "daily", amount="1", until=timedelta(hours=1))
    spend(n, "boosted", "0.85")
    assert n.reserve("0.01", user="boosted").warning is None  # 0.86 of $2
    spend(n, "boosted", "0.80")
    warned = n.reserve("0.01", user="boosted").warning
    assert warned is not None and warned.limit == Decimal(2)
    n.set_user_limits("own", Tier(daily=10))
    spend(n, "own", "0.85")
    assert n.reserve("0.01", user="own").warning is None  # 0.86 of the user's own $10


@pytest.mark.redis
def test_a_boosted_user_costs_no_extra_redis_command(redis_server_factory):
    """The reserve and the settle read the user's own limits and boosts with the stored tier
    (one HMGET): a call of a boosted user with their own limits runs what a plain user's runs."""
    import redis

    from nasca_core import Nasca

    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0"
    # Per-call scripts: no budget lease (a capped tier gets one too), so each call runs both.
    n = Nasca(url, tiers={"t": Tier(daily=100, monthly=1000)}, default_tier="t", namespace="lean",
              leases=False)
    admin = redis.Redis.from_url(url)
    n.set_user_limits("b", Tier(daily=50))
    for i in range(3):
        n.grant_boost("b", "daily", amount="1", until=timedelta(hours=1 + i))
    calls = {}
    for user in ("p", "b", "p"):
        spend(n, user, "0.001")  # warm: counters exist, scripts loaded
        admin.config_resetstat()
        for _ in range(20):
            spend(n, user, "0.001")
        stats = admin.info("commandstats")
        calls[user] = {k: int(v["calls"]) for k, v in stats.items() if k not in (
            "cmdstat_config|resetstat", "cmdstat_info")}
    assert calls["b"] == calls["p"] and calls["b"]["cmdstat_evalsha"] == 40  # one script each way
    assert n.get_usage("b").daily_limit == Decimal(53)
    n.close()
    admin.close()


def test_concurrent_grants_are_each_kept(make_nasca):
    """A grant reads, prunes and writes the user's boosts in one atomic step: 24 grants from
    as many threads (two Nasca, as two processes would be) all land, and a replay adds none."""
    import threading

    a, b = make_nasca(), make_nasca()
    start = threading.Barrier(24)

    def grant(i: int) -> None:
        start.wait()
        (a if i % 2 else b).grant_boost("u1", "monthly", amount="0.01", until=timedelta(hours=1), id=f"g{i}")

    threads = [threading.Thread(target=grant, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.grant_boost("u1", "monthly", amount="0.01", until=timedelta(hours=1), id="g3")  # a replay
    u = b.get_usage("u1")
    assert sorted(x.id for x in u.boosts) == sorted(f"g{i}" for i in range(24))
    assert u.monthly_limit == Decimal("0.74")
