"""Soft thresholds against models of their own: the pure projection rules (``_thresholds``),
and the events, by a model that replays a call history (allowance and credits split, holds
released, calls across midnight, estimates below the real cost) and expects an event exactly
where a settle's real spend first reaches a mark in the day it landed in."""

from __future__ import annotations

import contextlib
import math
from datetime import UTC as UTC_TZ
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from hypothesis import example, given, settings
from hypothesis import strategies as st

from nasca_core import Nasca
from nasca_core._thresholds import admitted, allowance_room, crossed, marks
from nasca_core._windows import WindowClock, load_zone
from nasca_core.stores import ReserveOp, ReserveResult, UserKeys

UTC = load_zone("UTC")
CLOCK = WindowClock(UTC)
KEYS = UserKeys.build("props", "u1", CLOCK.at(1_795_003_200.0).ids)
limit = st.one_of(st.just(-1), st.integers(1, 10**12))
fractions = st.lists(st.sampled_from([0.1, 0.25, 0.5, 0.8, 0.9, 0.95, 0.99]), min_size=1, max_size=4,
                     unique=True).map(lambda xs: tuple(sorted(xs)))


def op(estimate: int) -> ReserveOp:
    return ReserveOp(keys=KEYS, now_ms=1_795_003_200_000, hold_id="h1", estimate=estimate,
                     hold_expiry_ms=0, strict=False, tier="t", tiers_json="{}", config_version=0)


@given(limits=st.tuples(limit, limit, limit), warn=fractions)
def test_a_mark_is_the_smallest_spend_at_or_over_its_fraction(limits, warn) -> None:
    for i, f, mark in marks(limits, warn):
        exact = Fraction(limits[i]) * Fraction(repr(f))
        assert mark == math.ceil(exact) and mark - 1 < exact <= mark


@settings(max_examples=200)
@given(limits=st.tuples(limit, limit, limit), hard=st.tuples(st.booleans(), st.booleans(), st.booleans()),
       spent=st.tuples(*[st.integers(0, 2 * 10**12)] * 3), held=st.integers(0, 10**12),
       estimate=st.integers(0, 10**11), warn=fractions)
def test_the_projected_warning_follows_the_reference(limits, hard, spent, held, estimate, warn) -> None:
    held = max(held, estimate)  # the reply's holds include this call's
    compiled = (*limits, *map(int, hard))
    r = admitted("u1", op(estimate), ReserveResult(1, "t", 0, spent, held, -1), compiled, warn,
                 CLOCK.at, UTC)
    # Reference: a window credits may extend counts only what the allowance can still pay, and
    # once nothing is left there (credits pay) it warns of nothing.
    covered = [i for i in range(3) if limits[i] >= 0 and not hard[i]]
    excess = max((spent[i] - limits[i] for i in covered), default=0)
    own = [s - excess if i in covered and excess > 0 else s for i, s in enumerate(spent)]
    room = min((max(0, limits[i] - own[i]) for i in covered), default=None)
    expected = {(i, f) for i in range(3) if limits[i] >= 0 for f in warn
                if (hard[i] or room != 0)
                and own[i] + (held if hard[i] or room is None else min(held, room))
                >= math.ceil(Fraction(limits[i]) * Fraction(repr(f)))}
    assert (r.warning is None) == (not expected)
    if r.warning is not None:
        assert r.warning.fraction == max(f for _, f in expected)
        assert r.warning.prompt_id == "w:h1"
    assert allowance_room(compiled, spent)[1] == (-1 if room is None else room)


# -- events: an independent model replaying a call history through a real ledger ----------------
DAY_LIMIT = 10**9  # $1 a day, credits may extend it
PRICES = {"m": {"input": 1000, "output": 1000}}  # $0.001 a token: a token is 10**6 nanos
WARN = (0.5, 0.8, 0.95)
step = st.one_of(
    st.tuples(st.just("start"), st.integers(1, 150), st.integers(0, 150)),  # prompt, max output
    st.tuples(st.just("finish"), st.integers(0, 7), st.integers(0, 400)),  # which open call, real output
    st.tuples(st.just("fail"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("tick"), st.integers(60, 4 * 3600), st.just(0)))  # crosses midnight at times


@settings(max_examples=60, deadline=None)
@example(steps=[("start", 100, 100), ("finish", 0, 300)] * 3, credits=0)  # every mark, by real cost
@example(steps=[("start", 150, 150), ("tick", 7200, 0), ("finish", 0, 150)] * 4, credits=300_000_000)
@given(steps=st.lists(step, min_size=1, max_size=40), credits=st.sampled_from([0, 0, 300_000_000]))
def test_events_fire_exactly_at_real_settled_crossings(steps, credits) -> None:
    from nasca_core import NascaBlockedError, Tier
    from nasca_core.pricing import TokenUsage
    from tests.conftest import FakeClock

    clock = FakeClock(1_795_039_200.0)  # 2026-11-18 22:00 UTC: the history runs past midnight
    n = Nasca(tiers={"t": Tier(daily=1, warn_at=WARN)}, default_tier="t", prices=PRICES, clock=clock)
    got: list[tuple[str, float, Decimal]] = []
    n.on_threshold(lambda e: got.append((e.window_id, e.fraction, e.spent)))
    if credits:
        n.grant_credits("u", spend=Decimal(credits) / 10**9, paid="0", idempotency_key="k")
    # The model: per day, what the allowance counts (cost less what credits paid), and the balance.
    day_spent: dict[str, int] = {}
    balance, expected, open_calls = credits, [], []
    for kind, a, b in steps:
        if kind == "tick":
            clock.advance(a)
        elif kind == "start":
            with contextlib.suppress(NascaBlockedError):  # admission is not what this checks
                open_calls.append((n.start_call("m", prompt_tokens=a, max_tokens=b, user="u"), a))
        elif open_calls:
            c, prompt = open_calls.pop(a % len(open_calls))
            if kind == "fail":
                c.fail()  # nothing spent, whatever its hold projected
                continue
            cost = (prompt + b) * 10**6  # the provider's real count, maybe past the estimate
            c.finish(TokenUsage(input_tokens=prompt, output_tokens=b))
            day = datetime.fromtimestamp(clock.now, UTC_TZ).strftime("%Y%m%d")  # where it ended
            before = day_spent.get(day, 0)
            by_allowance = min(cost, max(0, DAY_LIMIT - before))
            by_credits = min(cost - by_allowance, balance)
            balance -= by_credits
            after = day_spent[day] = before + cost - by_credits
            expected += [(day, f, Decimal(after) / 10**9) for f in WARN
                         if before < Fraction(DAY_LIMIT) * Fraction(repr(f)) <= after]
    for c, _ in open_calls:
        c.fail()
    assert n.thresholds.flush()
    assert sorted(got) == sorted(expected)
    n.close()


@given(limits=st.tuples(limit, limit, limit), spent=st.tuples(*[st.integers(0, 2 * 10**12)] * 3),
       warn=fractions)
def test_usage_lists_the_fractions_settled_spend_reached(limits, spent, warn) -> None:
    got = crossed(limits, spent, warn)
    for i in range(3):
        assert got[i] == [f for f in warn if limits[i] >= 0 and spent[i] >= limits[i] * Fraction(repr(f))]
