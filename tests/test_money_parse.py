"""The one amount parser (``nasca_core._money``): exact for every sane amount, and absurd
lengths, exponents and magnitudes are a typed error in microseconds, before any Decimal
arithmetic (``Decimal("1e999998") * 10**9`` would build a million-digit integer)."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nasca_core import ConfigurationError, InvalidAmountError, Nasca, Tier
from nasca_core._money import MAX_NANOS, parse_amount, to_nanos

ABSURD = ["1e999998", "1E400000", "9" * 64 + "e99", "-1e999998", "1e-999999999999", "9" * 5000,
          "1" + "0" * 63, 10**100_000, Decimal("1e999998"), Decimal("-Infinity"), float("inf"), "NaN",
          "sNaN", "1e", "$", "", "0x10", "1,5", True, None, [1]]


@pytest.mark.parametrize("value", ABSURD, ids=[f"absurd{i}" for i in range(len(ABSURD))])
def test_absurd_amounts_are_a_typed_error_in_microseconds(value):
    start = time.perf_counter()
    try:
        to_nanos(value)
    except InvalidAmountError as exc:
        assert len(str(exc)) < 200  # the message does not echo a 5000-digit input
    else:
        assert to_nanos(value) == 0  # only "1e-999999999999": smaller than a nano, it is zero
    assert time.perf_counter() - start < 0.005


def test_the_bounds():
    assert to_nanos("9007199.254740992") == MAX_NANOS
    with pytest.raises(InvalidAmountError):
        to_nanos("9007199.254740993")
    assert to_nanos("1e6") == 10**15 and to_nanos("$0.25") == 250_000_000 and to_nanos(" 3 ") == 3 * 10**9
    assert to_nanos("1e-40") == 0 and to_nanos("-0") == 0
    with pytest.raises(InvalidAmountError):
        to_nanos("1e-40", allow_zero=False)  # rounds to zero: not an amount > 0
    with pytest.raises(InvalidAmountError):
        to_nanos("0", allow_zero=False)
    assert parse_amount("1.50") == Decimal("1.50") and parse_amount(2) == Decimal(2)
    assert parse_amount(0.1) == Decimal("0.1")  # the shortest decimal, not the binary expansion


@given(st.decimals(min_value=0, max_value=9_000_000, places=9, allow_nan=False, allow_infinity=False))
def test_exact_for_every_sane_amount(value):
    assert to_nanos(value) == int(value * 10**9)
    assert to_nanos(str(value)) == int(value * 10**9)


def test_every_entry_point_uses_it():
    n = Nasca("memory://", tiers={"t": Tier()}, default_tier="t")
    for call, error in ((lambda: n.reserve("1e999998", user="u1"), InvalidAmountError),
                        (lambda: Tier(monthly="1e400000"), ConfigurationError),
                        (lambda: n.billing.grant_credits("u1", spend="1e999998", idempotency_key="k"),
                         InvalidAmountError)):
        start = time.perf_counter()
        with pytest.raises(error, match="maximum"):
            call()
        assert time.perf_counter() - start < 0.01
    n.close()


class _Lying(int):  # an int whose comparisons say it is in range, whatever it holds
    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return False


def test_an_int_subclass_whose_comparisons_lie_is_checked_as_its_value():
    n = Nasca("memory://", tiers={"t": Tier(daily="0.01")}, default_tier="t", settle_in_background=False)
    r = n.reserve(nanos=1, user="u")
    with pytest.raises(InvalidAmountError):
        n.settle(r, nanos=_Lying(-10**9))
    with pytest.raises(InvalidAmountError):
        n.reserve(nanos=_Lying(10**30), user="u")
    assert n.get_usage("u").daily_spent == 0
    assert type(n.settle(r, nanos=_Lying(7)).cost_nanos) is int  # a plain int reaches the store
