"""Hypothesis drives the public API on every store with good and bad input: each call is
accepted and does what it says, or raises a NascaError subclass quickly with the ledger
unchanged (never a decimal.Overflow, an AttributeError or a raw Redis error)."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasca_core import NascaError, Reservation, Tier

KNOWN = ["u1", "}x", "a{b}:h"]
good_amounts = st.one_of(st.decimals(0, 1, places=9),
                         st.sampled_from(["0.05", "0.1", "3", 0, 1, 0.25, "1_000"]))
bad_amounts = st.one_of(
    st.sampled_from(["1e999998", "1e400000", "1e-20", "0.0000000005", "nan", "Infinity", "", "0x1", "-1",
                     "9" * 80, "1e15", "-0"]),
    st.decimals(allow_nan=True, allow_infinity=True), st.floats(), st.integers(-10**20, 10**20),
    st.text(max_size=12), st.none(), st.booleans(), st.just({}), st.just([1]),
)
amounts = st.one_of(good_amounts, good_amounts, bad_amounts)  # a call needs every argument good
good_users = st.sampled_from(KNOWN)
users = st.one_of(good_users, good_users, good_users, st.text(max_size=300), st.integers(), st.none(),
                  st.just("a\x00b"), st.just("x" * 257))
tiers = st.sampled_from([None, None, None, "free", "pro", "gold", "", 5])
ops = st.tuples(st.sampled_from(["reserve", "spend", "usage", "user_tier", "grant"]), users, amounts, tiers)


def _state(n: Any) -> list[Any]:
    out = []
    for user in KNOWN:
        u = n.get_usage(user)
        out.append((u.tier, u.daily_spent, u.monthly_spent, u.month_cost, u.month_calls, u.in_flight,
                    u.credit_balance, tuple(lot.remaining for lot in n.billing.credit_lots(user))))
    return out


def _run(n: Any, op: tuple[str, Any, Any, Any]) -> None:
    kind, user, amount, tier = op
    if kind == "reserve":
        r = n.reserve(amount, user=user, tier=tier)
        assert isinstance(r, Reservation) and r.estimate_nanos >= 0
        n.release(r)
    elif kind == "spend":
        r = n.reserve("0", user=user, tier=tier)
        before = n.get_usage(r.user_id, tier=tier).month_cost
        try:
            charge = n.settle(r, amount)
        except NascaError:
            n.release(r)
            raise
        assert n.get_usage(r.user_id, tier=tier).month_cost == before + charge.cost
    elif kind == "usage":
        n.get_usage(user, tier=tier)
    elif kind == "user_tier":
        n.set_user_tier(user, tier)
        n.set_user_tier(user, None)
    else:
        grant = n.billing.grant_credits(user, spend=amount, idempotency_key=uuid.uuid4().hex)
        assert grant.lot.remaining > 0  # never a $0 lot


@pytest.mark.parametrize("examples", [40])
def test_every_input_is_accepted_or_refused_cleanly(make_nasca, backend, examples):
    n = make_nasca(tiers={"free": Tier(daily=5, monthly=50), "pro": Tier(monthly=100)}, default_tier="free")

    seen = {"accepted": set(), "refused": set()}

    @settings(max_examples=examples if backend in ("memory", "sqlite") else examples // 2, deadline=None,
              derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(ops, min_size=1, max_size=6))
    def check(sequence: list[tuple[str, Any, Any, Any]]) -> None:
        for op in sequence:
            before = _state(n)
            started = time.perf_counter()
            try:
                _run(n, op)
            except NascaError:
                assert time.perf_counter() - started < 1.0, op  # refused in O(1), not after a long parse
                assert _state(n) == before, op  # (a refused settle released its zero hold)
                seen["refused"].add(op[0])
            else:
                seen["accepted"].add(op[0])

    check()
    # The run exercised both sides of every entry point (hypothesis explores and shrinks).
    assert seen["refused"] >= {"reserve", "grant"} and seen["accepted"] >= {"reserve"}
    assert Decimal(0) <= n.get_usage("u1").month_cost


@pytest.mark.parametrize("usage", [{}, {"input_tokens": 5}, "12", 7, object()])
def test_finish_with_unreadable_usage_is_a_usage_parse_error(make_nasca, usage):
    from nasca_core import UsageParseError

    n = make_nasca(tiers={"t": Tier(monthly=1)}, default_tier="t")
    call = n.start_call("gpt-4o-mini", prompt="hello there", user="u1")
    held = n.get_usage("u1").in_flight
    with pytest.raises(UsageParseError, match="TokenUsage"):
        call.finish(usage)
    assert n.get_usage("u1").in_flight == held > 0 and n.get_usage("u1").month_calls == 0
    charge = call.finish()  # the call can still be charged: the counted prompt
    u = n.get_usage("u1")
    assert charge.cost_nanos > 0 and u.in_flight == 0 and u.month_cost == charge.cost
