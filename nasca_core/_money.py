"""Exact money: the ledger counts integer nano-dollars (1e-9 USD).

One token of the cheapest priced model costs a few to a few hundred nano-dollars,
and a Lua number (a double) holds every integer up to 2**53 nano-dollars ($9M) exactly.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from nasca_core._errors import ConfigurationError, InvalidAmountError

NANOS_PER_USD = 1_000_000_000
MAX_NANOS = 2**53  # exact in Lua doubles
# One call's cost or one credit lot: Lua formats numbers with 14 significant digits
# (tostring, cjson), so amounts the scripts write back stay below 1e14 ($100,000).
MAX_OP_NANOS = 10**14
_NANO = Decimal(NANOS_PER_USD)

Amount = Decimal | int | float | str


# The parser's bounds, checked before any Decimal arithmetic: Decimal("1e999998") is cheap to
# build but scaling it to nanos builds a million-digit integer (seconds of CPU, then
# decimal.Overflow). Nothing the ledger holds is above $9M or needs more than nano precision.
_MAX_TEXT = 64  # characters in a written amount
_MAX_ADJUSTED = 15  # the leading digit's power of ten: 1e15 dollars is far above any limit
_MIN_ADJUSTED = -40  # smaller than this rounds to 0 nanos whatever the digits
_MAX_INT_BITS = 64


def parse_amount(amount: Amount, *, what: str = "amount", allow_zero: bool = True) -> Decimal:
    """Read a number of dollars (Decimal, int, float or text such as ``"5"``, ``"$0.25"``,
    ``"1e-3"``) in O(1): absurd lengths, exponents and magnitudes are rejected before any
    Decimal arithmetic. Returns the exact Decimal, finite and not negative.

    Raises InvalidAmountError.
    """
    if isinstance(amount, bool):
        raise InvalidAmountError(f"{what} must be a number of dollars, not a bool")
    if isinstance(amount, int):
        if amount.bit_length() > _MAX_INT_BITS:
            raise InvalidAmountError(f"{what} is above the ledger's maximum of $9,007,199")
        value = Decimal(amount)
    elif isinstance(amount, float):
        if not math.isfinite(amount):
            raise InvalidAmountError(f"{what} must be finite, got {amount!r}")
        value = Decimal(repr(amount))  # the shortest decimal that round-trips, not the binary expansion
    elif isinstance(amount, str):
        text = amount.strip()
        if len(text) > _MAX_TEXT:
            raise InvalidAmountError(f"{what} must be a number of dollars of at most {_MAX_TEXT} "
                                     f"characters, got {len(text)}")
        try:
            value = Decimal(text[1:] if text.startswith("$") else text)
        except (InvalidOperation, ValueError):
            raise InvalidAmountError(f"{what} must be a number of dollars, got {_short(amount)}") from None
    elif isinstance(amount, Decimal):
        value = amount
    else:
        raise InvalidAmountError(f"{what} must be a number of dollars, got {type(amount).__name__}")
    if not value.is_finite():
        raise InvalidAmountError(f"{what} must be finite, got {_short(amount)}")
    if value.is_signed() and value != 0:
        raise InvalidAmountError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {_short(amount)}")
    if value.is_zero() or value.adjusted() < _MIN_ADJUSTED:
        if not allow_zero:
            raise InvalidAmountError(f"{what} must be > 0, got {_short(amount)}")
        return Decimal(0)
    if value.adjusted() > _MAX_ADJUSTED:
        raise InvalidAmountError(f"{what} {_short(amount)} is above the ledger's maximum of $9,007,199")
    return value


def to_nanos(amount: Amount, *, what: str = "amount", allow_zero: bool = True) -> int:
    """Convert dollars to integer nano-dollars (``parse_amount``, then exact rounding to the
    nearest nano), rejecting NaN, infinities, negatives and absurd magnitudes in O(1).

    Raises InvalidAmountError.
    """
    value = parse_amount(amount, what=what, allow_zero=allow_zero)
    try:
        nanos = int((value * _NANO).to_integral_value(rounding=ROUND_HALF_EVEN))
    except ArithmeticError:  # a Decimal with more digits than the context holds
        raise InvalidAmountError(f"{what} must be a number of dollars, got {_short(amount)}") from None
    if nanos > MAX_NANOS:
        raise InvalidAmountError(f"{what} {_short(amount)} is above the ledger's maximum of $9,007,199")
    if nanos == 0 and not allow_zero:
        raise InvalidAmountError(f"{what} must be at least one nano-dollar, got {_short(amount)}")
    return nanos


def _short(amount: object) -> str:
    text = repr(amount)
    return text if len(text) <= 40 else text[:37] + "..."


def check_nanos(nanos: int, *, what: str = "amount", maximum: int = MAX_OP_NANOS) -> int:
    """Validate an amount already in nano-dollars. Raises InvalidAmountError."""
    if isinstance(nanos, bool) or not isinstance(nanos, int):
        raise InvalidAmountError(f"{what} in nano-dollars must be an int, got {nanos!r}")
    nanos = int.__index__(nanos)  # a plain int: a subclass's own comparisons could lie
    if nanos < 0 or nanos > maximum:
        raise InvalidAmountError(f"{what} must be between 0 and {maximum} nano-dollars, got {nanos}")
    return nanos


def amount_arg(dollars: Amount | None, nanos: int | None, *, what: str, default: int | None = None) -> int:
    """An amount given in dollars or as ``nanos=`` (not both), checked, in nanos; ``default``
    when neither is given. Raises ConfigurationError, InvalidAmountError."""
    if nanos is not None:
        if dollars is not None:
            raise ConfigurationError(f"pass the {what} in dollars or nanos=, not both")
        if type(nanos) is int and 0 <= nanos <= MAX_OP_NANOS:  # the common case, on every call
            return nanos
        return check_nanos(nanos, what=what)
    if dollars is None:
        if default is None:
            raise ConfigurationError(f"settle() needs the call's real {what} (dollars or nanos=)")
        return default
    return check_nanos(to_nanos(dollars, what=what), what=what)


def to_usd(nanos: int) -> Decimal:
    """Nano-dollars to an exact Decimal number of dollars."""
    return Decimal(nanos) / _NANO
