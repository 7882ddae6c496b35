"""Random sequences of ledger operations against a simple reference model."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nasca_core import InvalidInputError, NascaBlockedError, Tier
from nasca_core._money import to_usd
from nasca_core.stores import Lot
from nasca_core.stores._base import MAX_BOOSTS
from tests.conftest import FakeClock

HOLD_TTL = 600
TIER_CHOICES = [
    Tier(daily="0.10", monthly="0.50"),
    Tier(daily="0.05", weekly="0.20", monthly=1),
    Tier(monthly="0.30"),
    Tier(daily="0.08", monthly="0.12", credits_cover={"monthly"}),
    Tier(weekly="0.10", monthly="0.06", credits_cover={"daily", "monthly"}),  # weekly is hard
]

# Whole cents hit the limit boundaries exactly; odd nanos test rounding-free arithmetic.
amounts = st.one_of(st.integers(0, 6).map(lambda c: c * 10_000_000),
                    st.integers(0, 60_000_000))
ops = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from(["a", "b"]), amounts),
    st.tuples(st.just("spend"), st.sampled_from(["a", "b"]), amounts),  # reserve + settle at once
    st.tuples(st.just("settle"), st.integers(0, 30), amounts),
    st.tuples(st.just("release"), st.integers(0, 30), st.just(0)),
    st.tuples(st.just("set_tier"), st.integers(0, len(TIER_CHOICES) - 1), st.just(0)),
    st.tuples(st.just("advance"), st.sampled_from([60, 3600, 6 * 3600, 86400, 7 * 86400]), st.just(0)),
    st.tuples(st.just("grant"), st.sampled_from(["a", "b"]),
              st.integers(1, 10).map(lambda c: c * 10_000_000)),
    # a user's own limits (a TIER_CHOICES index, -1 clears) and boosts (window, cents, minutes)
    st.tuples(st.just("limits"), st.sampled_from(["a", "b"]), st.integers(-1, len(TIER_CHOICES) - 1)),
    st.tuples(st.just("boost"), st.sampled_from(["a", "b"]),
              st.tuples(st.integers(0, 2), st.integers(1, 8), st.sampled_from([1, 61, 1500, 20000]))),
)


@dataclass
class Model:
    """The ledger as plain bookkeeping: dicts of window ids, a list of holds and of lots."""

    tier: Tier
    spent: dict[tuple[str, str], int] = field(default_factory=dict)
    holds: dict[str, tuple[str, int, float]] = field(default_factory=dict)
    lots: dict[str, list[list[int]]] = field(default_factory=dict)  # user -> [[remaining, paid, granted]]
    own: dict[str, Tier] = field(default_factory=dict)  # set_user_limits: replaces the tier
    boosts: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)  # (window, nanos, until)

    def held(self, user: str, now: float) -> int:
        return sum(a for u, a, exp in self.holds.values() if u == user and exp > now)

    def credits(self, user: str) -> int:
        return sum(lot[0] for lot in self.lots.get(user, []))

    def windows(self, user: str, ids: tuple[str, str, str], now: float) -> list[tuple[str, int | None, bool]]:
        # A boost counts while ``until`` is after ``now``: at a settle, ``now`` is 1 ms before its
        # reserve (``SettleOp.boosts_at``), so a boost ending in the reserve's ms pays there too.
        names = ("daily", "weekly", "monthly")
        tier = self.own.get(user, self.tier)
        out = []
        for i, (name, wid) in enumerate(zip(names, ids, strict=True)):
            limit = tier.limit(name)  # type: ignore[arg-type]
            boost = sum(n for w, n, until in self.boosts.get(user, []) if w == i and until > now)
            out.append((wid, None if limit is None else int(limit * 10**9) + boost,
                        limit is not None and name not in tier.credits_cover))
        return out

    def admits(self, user: str, ids: tuple[str, str, str], now: float) -> bool:
        held = self.held(user, now)
        worst = None
        for wid, limit, hard in self.windows(user, ids, now):
            if limit is None:
                continue
            over = self.spent.get((user, wid), 0) + held - limit
            if over >= 0:
                if hard:
                    return False
                worst = over if worst is None else max(worst, over)
        return worst is None or worst < self.credits(user)

    def settle(self, user: str, ids: tuple[str, str, str], cost: int, reserved_at: float = 0.0) -> None:
        now = reserved_at - 0.001  # the boosts in force at the call's reserve
        room = [max(0, limit - self.spent.get((user, wid), 0))
                for wid, limit, hard in self.windows(user, ids, now) if limit is not None and not hard]
        tier_part = min([cost, *room])
        need, from_credits = cost - tier_part, 0
        for lot in self.lots.get(user, []):
            take = min(lot[0], need)
            lot[0] -= take
            need -= take
            from_credits += take
        for wid, _limit, hard in self.windows(user, ids, now):
            key = (user, wid)
            self.spent[key] = self.spent.get(key, 0) + (cost if hard else cost - from_credits)


def run(make_nasca, sequence) -> None:
    clock = FakeClock(1_795_003_200.0)
    n = make_nasca(tiers={"t": TIER_CHOICES[0]}, default_tier="t", clock=clock,
                   namespace=f"p{uuid.uuid4().hex[:10]}", hold_ttl=HOLD_TTL)
    model = Model(TIER_CHOICES[0])
    reservations: list = []
    for kind, a, b in sequence:
        ids = n.windows_at(clock.now).ids
        if kind in ("reserve", "spend"):
            expected = model.admits(a, ids, clock.now)
            try:
                r = n.reserve(nanos=b, user=a)
            except NascaBlockedError:
                assert not expected
            else:
                assert expected
                if kind == "spend":
                    n.settle(r, nanos=b)
                    model.settle(a, ids, b, clock.now)
                else:
                    reservations.append((r, clock.now))
                    model.holds[r.hold_id] = (a, b, clock.now + HOLD_TTL)
        elif kind in ("settle", "release") and reservations:
            r, reserved_at = reservations.pop(a % len(reservations))
            model.holds.pop(r.hold_id, None)
            if kind == "settle":
                n.settle(r, nanos=b)
                model.settle(r.user_id, ids, b, reserved_at)
            else:
                n.release(r)
        elif kind == "set_tier":
            n.set_tier("t", TIER_CHOICES[a])
            model.tier = TIER_CHOICES[a]
        elif kind == "advance":
            clock.advance(a)
        elif kind == "grant":
            lot_id = uuid.uuid4().hex
            n.store.sync.grant(n.user_keys(a, clock.now),
                                Lot(lot_id, "p", paid=2 * b, currency="usd", granted=b, remaining=b))
            model.lots.setdefault(a, []).append([b, 2 * b, b])
        elif kind == "limits":
            n.set_user_limits(a, None if b < 0 else TIER_CHOICES[b])
            if b < 0:
                model.own.pop(a, None)
            else:
                model.own[a] = TIER_CHOICES[b]
        elif kind == "boost":
            window, cents, minutes = b
            live = [x for x in model.boosts.get(a, []) if x[2] > clock.now]
            try:
                n.grant_boost(a, ("daily", "weekly", "monthly")[window], amount=f"0.0{cents}",
                              until=timedelta(minutes=minutes))
            except InvalidInputError:
                assert len(live) == MAX_BOOSTS  # refused, nothing changed
            else:
                model.boosts[a] = [*live, (window, cents * 10_000_000, clock.now + minutes * 60)]
        for user in ("a", "b"):
            ids = n.windows_at(clock.now).ids
            u = n.get_usage(user)
            for (wid, limit, _), name in zip(model.windows(user, ids, clock.now),
                                             ("daily", "weekly", "monthly"), strict=True):
                if limit is not None:
                    assert getattr(u, f"{name}_spent") == to_usd(model.spent.get((user, wid), 0))
            assert u.in_flight == to_usd(model.held(user, clock.now))
            assert u.credit_balance == to_usd(model.credits(user))
            assert u.credit_balance_display == to_usd(2 * model.credits(user))
            assert u.blocked == (not model.admits(user, ids, clock.now))


# Credits paying past a coverable window while a hard window counts every cent.
HARD_CAP_WITH_CREDITS = [("set_tier", 4, 0), ("grant", "a", 50_000_000),
                         ("spend", "a", 60_000_000), ("spend", "a", 30_000_000)]
# A boost lapsing in the very ms of a reserve: that reserve doesn't count it, its settle does.
BOOST_ENDING_AT_THE_RESERVE = [("set_tier", 0, 0), ("grant", "b", 10_000_000), ("limits", "b", 1),
                               ("boost", "b", (0, 1, 1)), ("advance", 60, 0), ("spend", "b", 50_000_001)]


sequences = st.tuples(st.integers(0, len(TIER_CHOICES) - 1), st.lists(ops, max_size=40)).map(
    lambda t: [("set_tier", t[0], 0), *t[1]]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequences)
@example(HARD_CAP_WITH_CREDITS)
@example(BOOST_ENDING_AT_THE_RESERVE)
def test_memory_store_agrees_with_reference_model(make_memory_nasca, sequence):
    run(make_memory_nasca, sequence)



@pytest.mark.redis
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequences)
@example(HARD_CAP_WITH_CREDITS)
@example(BOOST_ENDING_AT_THE_RESERVE)
def test_redis_store_agrees_with_reference_model(make_redis_nasca, sequence):
    run(make_redis_nasca, sequence)


def _maker(uri_factory):
    from nasca_core import Nasca

    made = []

    def make(**kw):
        n = Nasca(uri_factory(), **kw)
        made.append(n)
        return n

    return make, made


@pytest.fixture
def make_redis_nasca(redis_url):
    make, made = _maker(lambda: redis_url)
    yield make
    for n in made:
        n.close()


@pytest.fixture
def make_memory_nasca():
    make, _ = _maker(lambda: "memory://")
    return make


def test_reference_model_sanity():
    m = Model(Tier(daily="0.10", monthly=1))
    ids = ("d", "w", "m")
    m.settle("a", ids, 100_000_000)
    assert not m.admits("a", ids, 0)
    m.lots["a"] = [[5, 10, 5]]
    assert m.admits("a", ids, 0)
    m.settle("a", ids, 7)  # 5 from credits, 2 over the tier
    assert m.credits("a") == 0 and m.spent[("a", "m")] == 100_000_002


@pytest.mark.cluster
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequences)
@example(HARD_CAP_WITH_CREDITS)
@example(BOOST_ENDING_AT_THE_RESERVE)
def test_cluster_store_agrees_with_reference_model(make_cluster_nasca, sequence):
    run(make_cluster_nasca, sequence)


@pytest.fixture
def make_cluster_nasca(cluster_url):
    make, made = _maker(lambda: cluster_url)
    yield make
    for n in made:
        n.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequences)
@example(HARD_CAP_WITH_CREDITS)
@example(BOOST_ENDING_AT_THE_RESERVE)
def test_sqlite_store_agrees_with_reference_model(make_sqlite_nasca, sequence):
    run(make_sqlite_nasca, sequence)


@pytest.fixture
def make_sqlite_nasca(tmp_path):
    # One file for every example (run() gives each its own namespace), as a long-lived store is.
    make, made = _maker(lambda: f"sqlite:///{tmp_path}/props.db")

    def make_one(**kw):
        while made:  # the previous example's Nasca: close its connection
            made.pop().close()
        return make(**kw)

    yield make_one
    for n in made:
        n.close()
