"""The overspend bound the README states, checked with random estimate errors on every store.

Default admission lets a call start while spend + holds < limit. Let c* be the last call
admitted and F the calls in flight when it was admitted; then

    final spend <= limit + sum over F of (real - hold)+ + real(c*)

and with ``Tier(max_in_flight=N)``, |F| <= N - 1, so the overshoot is at most N calls'.
"""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasca_core import NascaBlockedError, Tier

LIMIT = 100_000_000  # $0.10 in nanos
# real cost = hold * num / den: from free calls to 5x underestimates
FACTORS = [(0, 1), (1, 10), (1, 2), (1, 1), (2, 1), (3, 1), (5, 1)]
ops = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 40_000_000), st.sampled_from(FACTORS)),
    st.tuples(st.just("settle"), st.integers(0, 50), st.just((1, 1))),
), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops, cap=st.sampled_from([None, 1, 3, 8]))
def test_overspend_never_exceeds_the_stated_bound(make_nasca, sequence, cap):
    n = make_nasca(tiers={"t": Tier(monthly="0.10", max_in_flight=cap)}, default_tier="t")
    user = f"u{uuid.uuid4().hex[:10]}"
    in_flight: list[tuple[object, int, int]] = []  # (reservation, hold, real)
    last: tuple[int, list[tuple[int, int]]] | None = None  # c*'s real, F's (hold, real)
    for op, a, (num, den) in sequence:
        if op == "reserve":
            try:
                r = n.reserve(nanos=a, user=user)
            except NascaBlockedError:
                continue
            real = a * num // den
            last = (real, [(hold, rl) for _, hold, rl in in_flight])
            in_flight.append((r, a, real))
            if cap is not None:
                assert len(in_flight) <= cap
        elif in_flight:
            r, _, real = in_flight.pop(a % len(in_flight))
            n.settle(r, nanos=real)
    for r, _, real in in_flight:
        n.settle(r, nanos=real)
    spent = int(n.get_usage(user).monthly_spent * 10**9)
    if last is None:
        assert spent == 0
        return
    real_last, flight = last
    bound = LIMIT + sum(max(real - hold, 0) for hold, real in flight) + real_last
    assert spent <= bound
    if cap is not None:
        worst_over = max([max(real - hold, 0) for hold, real in flight] + [0])
        assert spent <= LIMIT + (cap - 1) * worst_over + real_last
