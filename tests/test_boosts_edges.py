"""Boosts and own limits at their edges, on the memory store, a SQLite file, a real Redis and a
real Redis Cluster: a boost that ends during a call still pays for it, a replayed id adds
nothing after its boost ended, boosted limits stop at the ledger's maximum, an override
without a cap keeps the tier's, a forged Tier is refused, and the fallback follows the
user's own hard caps."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest

from nasca_core import (
    InvalidInputError,
    NascaBlockedError,
    NascaBusyError,
    StoreError,
    Tier,
    start_with_fallback,
)
from nasca_core._journal import decode, encode
from nasca_core._money import MAX_NANOS, to_usd
from nasca_core.stores._base import MAX_BOOSTS
from nasca_core.stores._effective import ENDED_KEEP_MS, MAX_ENDED

HOUR = 3600.0


def spend(n, user, cost, tier=None):
    return n.settle(n.reserve(cost, user=user, tier=tier), cost)


def test_a_boost_that_lapses_during_a_call_still_pays_for_it(make_nasca, clock):
    n = make_nasca()
    n.billing.grant_credits("u1", spend="1.00", paid="0", idempotency_key="k1")
    spend(n, "u1", "0.10")  # free's daily $0.10 is spent
    n.grant_boost("u1", "daily", amount="0.50", until=timedelta(minutes=10))
    call = n.reserve("0.05", user="u1")  # admitted on the boost
    clock.advance(11 * 60)  # the boost lapses while the call runs
    charge = n.settle(call, "0.05")
    assert (charge.tier_nanos, charge.credit_nanos) == (50_000_000, 0)
    u = n.get_usage("u1")
    assert u.credit_balance == Decimal("1.00") and u.daily_spent == Decimal("0.15")
    late = n.reserve("0.01", user="u1")  # reserved after its end: the credits pay
    assert n.settle(late, "0.01").credit_nanos == 10_000_000


def test_a_boost_cleared_during_a_call_still_pays_for_it_and_not_for_the_next(make_nasca, clock):
    n = make_nasca()
    n.billing.grant_credits("u1", spend="1.00", paid="0", idempotency_key="k1")
    spend(n, "u1", "0.10")
    n.grant_boost("u1", "daily", amount="0.50", until=timedelta(hours=2))
    call = n.reserve("0.05", user="u1")
    clock.advance(1)
    n.limits.clear_boosts("u1")  # it ends now: at the settle, it was in force at the reserve
    assert n.get_usage("u1").boosts == () and n.get_usage("u1").daily_limit == Decimal("0.10")
    assert n.settle(call, "0.05").credit_nanos == 0
    clock.advance(0.001)  # reserved in a later ms than the clear (within it, the settle pays: _effective)
    after = n.reserve("0.02", user="u1")
    assert n.settle(after, "0.02").credit_nanos == 20_000_000
    assert n.get_usage("u1").credit_balance == Decimal("0.98")


def test_a_deferred_settle_keeps_its_reserve_time():
    """The journal carries a settle's reserve time: replayed after a restart, the boost that
    admitted the call still pays for it; a journal line from before the field reads as 0."""
    from nasca_core import Nasca

    n = Nasca("memory://", tiers={"t": Tier(daily=1)}, default_tier="t", clock=lambda: 1_795_003_200.0)
    op = n._settle_op(n.reserve("0.01", user="u"), "0.01", None, (0, 0))
    assert op.reserved_ms == 1_795_003_200_000
    line = json.loads(encode(op))["s"]
    assert decode(line) == op
    del line["rt"]
    assert decode(line).reserved_ms == 0 and decode(line).boosts_at == op.now_ms - 1


def test_a_replayed_id_adds_nothing_after_its_boost_lapsed_or_was_cleared(make_nasca, clock):
    n = make_nasca()
    _, new = n.limits.grant("u1", "daily", amount="0.20", until=timedelta(hours=1), id="t-1")
    assert new
    clock.advance(HOUR)  # t-1 lapses
    _, new = n.limits.grant("u1", "daily", amount="0.20", until=timedelta(hours=1), id="t-1")
    assert not new and n.get_usage("u1").daily_limit == Decimal("0.10")
    n.grant_boost("u1", "daily", amount="0.30", until=timedelta(hours=1), id="t-2")
    n.limits.clear_boosts("u1")
    again = n.grant_boost("u1", "daily", amount="0.30", until=timedelta(hours=1), id="t-2")  # a stale form
    assert again.id == "t-2"
    u = n.get_usage("u1")
    assert u.boosts == () and u.daily_limit == Decimal("0.10")
    clock.advance(ENDED_KEEP_MS / 1000)  # remembered that long after its end, then forgotten
    _, new = n.limits.grant("u1", "daily", amount="0.20", until=timedelta(hours=1), id="t-1")
    assert new and n.get_usage("u1").daily_limit == Decimal("0.30")


def test_at_most_max_ended_ids_are_remembered_the_earliest_ended_go_first(make_nasca, clock):
    n = make_nasca()
    for i in range(MAX_BOOSTS):
        n.grant_boost("u1", "monthly", amount="0.01", until=timedelta(hours=1), id=f"e{i}")
    n.limits.clear_boosts("u1")
    clock.advance(1)
    n.grant_boost("u1", "monthly", amount="0.01", until=timedelta(hours=1), id=f"e{MAX_BOOSTS}")
    n.limits.clear_boosts("u1")  # MAX_ENDED + 1 ended: e0 ended first, so it is forgotten
    assert MAX_BOOSTS + 1 > MAX_ENDED
    assert not n.limits.grant("u1", "monthly", amount="0.01", until=timedelta(hours=1), id="e1")[1]
    assert n.limits.grant("u1", "monthly", amount="0.01", until=timedelta(hours=1), id="e0")[1]
    assert n.get_usage("u1").monthly_limit == Decimal("0.51")


def test_boosted_limits_stop_at_the_ledgers_maximum(make_nasca):
    n = make_nasca(tiers={"big": Tier(daily=9_000_000, weekly="0.10")}, default_tier="big")
    for _ in range(2):  # $9.2M: past 2^53 nanos, where a double stops being exact
        n.grant_boost("u1", "daily", amount="100000", until=timedelta(hours=1))
    cap = to_usd(MAX_NANOS)
    assert n.get_usage("u1").daily_limit == cap
    spend(n, "u1", "0.10")  # the weekly window is spent: a blocked reserve builds its Usage too
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.01", user="u1")
    assert info.value.window == "weekly" and info.value.usage.daily_limit == cap
    n.set_user_limits("u1", Tier(daily=9_000_000))  # the weekly cap gone: the daily's room
    r = n.reserve("0.01", user="u1")
    assert r.room == MAX_NANOS - 100_000_000
    n.settle(r, "0.01")


def test_an_override_without_a_cap_keeps_the_tiers_and_one_with_a_cap_replaces_it(make_nasca):
    n = make_nasca(tiers={"t": Tier(daily=1, max_in_flight=2)}, default_tier="t")
    n.set_user_limits("u1", Tier(daily=5))
    assert n.get_usage("u1").daily_limit == Decimal(5)
    held = [n.reserve("0.01", user="u1") for _ in range(2)]
    with pytest.raises(NascaBusyError):  # the tier's cap of 2, not Tier's default 64
        n.reserve("0.01", user="u1")
    n.set_user_limits("u1", Tier(daily=5, max_in_flight=3))
    held.append(n.reserve("0.01", user="u1"))
    with pytest.raises(NascaBusyError):
        n.reserve("0.01", user="u1")
    for r in held:
        n.release(r)
    assert n.get_usage("u1").own_limits == Tier(daily=5, max_in_flight=3)


@pytest.mark.parametrize("forged", [
    lambda: Tier.model_construct(daily="abc"),
    lambda: Tier(daily=1).model_copy(update={"max_in_flight": "x"}),
    lambda: Tier(daily=1).model_copy(update={"daily": Decimal(-1)}),
    lambda: Tier(daily=1).model_copy(update={"credits_cover": frozenset({"daily"})}),  # monthly hard
])
def test_a_tier_that_skipped_validation_is_refused_with_nothing_stored(make_nasca, forged):
    n = make_nasca()
    with pytest.raises(InvalidInputError):
        n.set_user_limits("u1", forged())
    assert n.get_usage("u1").own_limits is None
    spend(n, "u1", "0.01")  # the user's calls go on


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis", "cluster"])  # a Redis reply: only Redis gives one
def test_a_redis_refusal_is_a_store_error(make_nasca):
    n = make_nasca()
    n.store.sync.client.set(n.user_keys("u1").meta, "not a hash")  # WRONGTYPE for every script
    with pytest.raises(StoreError):
        n.get_usage("u1")
    with pytest.raises(StoreError):
        n.limits.grant_boost("u1", "daily", amount="1", until=timedelta(hours=1))


def falling(**kw) -> Tier:
    return Tier(**{"daily": "0.005", "on_exhausted": "fallback", "fallback_model": "gpt-4o-mini",
                   "fallback_allowance": Tier(daily="0.002"), **kw})


def test_the_fallback_follows_the_users_own_hard_caps(make_nasca):
    n = make_nasca(tiers={"soft": falling(), "hard": falling(credits_cover=frozenset({"monthly"}))},
                   default_tier="soft")
    n.set_user_limits("own-hard", Tier(daily="0.005", credits_cover=frozenset({"monthly", "weekly"})))
    n.set_user_tier("own-soft", "hard")
    n.set_user_limits("own-soft", Tier(daily="0.005"))  # credits may extend its daily: not hard
    for user in ("own-hard", "own-soft"):
        n.settle(n.reserve(nanos=1, user=user), "0.006")
    with pytest.raises(NascaBlockedError) as blocked:  # a hard cap of the user's own: no fallback
        start_with_fallback(n, "gpt-4o", prompt="hi", user="own-hard")
    assert blocked.value.window == "daily"
    call, fell = start_with_fallback(n, "gpt-4o", prompt="hi", user="own-soft")
    assert fell is not None and call.model == "gpt-4o-mini"
    call.finish(None)
