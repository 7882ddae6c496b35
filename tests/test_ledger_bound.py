"""The overspend bound the README states, checked with random estimate errors on every store.

Default admission lets a call start while spend + holds < limit. Let c* be the last call
admitted and F the calls in flight when it was admitted; then

    final spend <= limit + sum over F of (real - hold)+ + real(c*)

and with ``Tier(max_in_flight=N)``, |F| <= N - 1, so the overshoot is at most N calls'. Under a
budget lease (on by default where the background sender is) the same: the store counts a lease
as one call in flight, and a capped tier's lease carries one call at a time.
"""

from __future__ import annotations

import uuid
from typing import Any

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
    # In the store's terms a budget lease is one call: its hold L, its real cost what its calls
    # cost; a call under a lease it already holds is no admission there (the README's bound).
    n = make_nasca(tiers={"t": Tier(monthly="0.10", max_in_flight=cap)}, default_tier="t")
    user = f"u{uuid.uuid4().hex[:10]}"
    most = cap  # calls in flight at once, leases on or off
    in_flight: list[tuple[object, int, int]] = []  # (reservation, hold, real)
    leases: dict[int, list[Any]] = {}  # id(lease) -> [its hold L, the reals of its calls]
    last: tuple[Any, list[Any], list[int]] | None = None  # c*, F's plain (hold, real), leases before it
    for op, a, (num, den) in sequence:
        if op == "reserve":
            try:
                r = n.reserve(nanos=a, user=user)
            except NascaBlockedError:
                continue
            real = a * num // den
            lease = n.leases.calls.get(r.hold_id)
            if lease is None or id(lease) not in leases:  # an admission in the store
                plain = [(hold, rl) for x, hold, rl in in_flight if x.hold_id not in n.leases.calls]
                last = (real if lease is None else id(lease), plain, list(leases))
                if lease is not None:
                    leases[id(lease)] = [lease.size, []]
            if lease is not None:
                leases[id(lease)][1].append(real)
            in_flight.append((r, a, real))
            if most is not None:
                assert len(in_flight) <= most
        elif in_flight:
            r, _, real = in_flight.pop(a % len(in_flight))
            n.settle(r, nanos=real)
    for r, _, real in in_flight:
        n.settle(r, nanos=real)
    spent = int(n.get_usage(user).monthly_spent * 10**9)
    if last is None:
        assert spent == 0
        return
    star, plain, before = last
    real_last = sum(leases[star][1]) if star in leases and star not in before else star
    # F: the plain calls in flight and every lease taken before c* (a lease whose hold had gone
    # only makes the bound looser).
    over = [max(real - hold, 0) for hold, real in plain]
    over += [max(sum(leases[x][1]) - leases[x][0], 0) for x in before]
    assert spent <= LIMIT + sum(over) + real_last
    if most is not None:
        assert spent <= LIMIT + (most - 1) * max([*over, 0]) + real_last
