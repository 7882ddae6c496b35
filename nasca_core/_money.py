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


def to_nanos(amount: Amount, *, what: str = "amount", allow_zero: bool = True) -> int:
    """Convert dollars to integer nano-dollars, rejecting NaN, infinities and negatives.

    Raises InvalidAmountError.
    """
    if isinstance(amount, bool):
        raise InvalidAmountError(f"{what} must be a number of dollars, not a bool")
    if isinstance(amount, float):
        if not math.isfinite(amount):
            raise InvalidAmountError(f"{what} must be finite, got {amount!r}")
        amount = repr(amount)  # the shortest decimal that round-trips, not the binary expansion
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(amount)
    except (InvalidOperation, TypeError, ValueError):
        raise InvalidAmountError(f"{what} must be a number of dollars, got {amount!r}") from None
    if not value.is_finite():
        raise InvalidAmountError(f"{what} must be finite, got {amount!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidAmountError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {amount!r}")
    nanos = int((value * _NANO).to_integral_value(rounding=ROUND_HALF_EVEN))
    if nanos > MAX_NANOS:
        raise InvalidAmountError(f"{what} {amount!r} is above the ledger's maximum of $9,007,199")
    return nanos


def check_nanos(nanos: int, *, what: str = "amount", maximum: int = MAX_OP_NANOS) -> int:
    """Validate an amount already in nano-dollars. Raises InvalidAmountError."""
    if isinstance(nanos, bool) or not isinstance(nanos, int):
        raise InvalidAmountError(f"{what} in nano-dollars must be an int, got {nanos!r}")
    if nanos < 0 or nanos > maximum:
        raise InvalidAmountError(f"{what} must be between 0 and {maximum} nano-dollars, got {nanos}")
    return nanos


def amount_arg(dollars: Amount | None, nanos: int | None, *, what: str, default: int | None = None) -> int:
    """An amount given in dollars or as ``nanos=`` (not both), checked, in nanos; ``default``
    when neither is given. Raises ConfigurationError, InvalidAmountError."""
    if nanos is not None:
        if dollars is not None:
            raise ConfigurationError(f"pass the {what} in dollars or nanos=, not both")
        return check_nanos(nanos, what=what)
    if dollars is None:
        if default is None:
            raise ConfigurationError(f"settle() needs the call's real {what} (dollars or nanos=)")
        return default
    return check_nanos(to_nanos(dollars, what=what), what=what)


def to_usd(nanos: int) -> Decimal:
    """Nano-dollars to an exact Decimal number of dollars."""
    return Decimal(nanos) / _NANO
