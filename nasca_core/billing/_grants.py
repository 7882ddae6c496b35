"""Manual grants, free of I/O: the credit lot ``grant_credits`` asks the store to add."""

from __future__ import annotations

from datetime import datetime

from nasca_core._errors import ConfigurationError, CurrencyMismatchError, InvalidInputError
from nasca_core._money import Amount, check_nanos, to_nanos
from nasca_core.billing._catalog import check_bonus
from nasca_core.billing._models import CreditPack, check_currency
from nasca_core.stores import Lot

DAY_MS = 86_400_000
_MAX_KEY = 255


def check_idempotency_key(key: object) -> str:
    """Raises InvalidInputError unless ``key`` is 1-255 printable characters."""
    if not isinstance(key, str) or not key.strip() or len(key) > _MAX_KEY or any(ord(c) < 32 for c in key):
        raise InvalidInputError(f"idempotency_key must be 1-{_MAX_KEY} printable characters")
    return key


def expiry_ms(expires_at: datetime | float | None, now_ms: int) -> int:
    """``expires_at`` in epoch ms (0 = never). Raises InvalidInputError."""
    if expires_at is None:
        return 0
    if isinstance(expires_at, datetime):
        if expires_at.tzinfo is None:
            raise InvalidInputError("expires_at must be timezone-aware (e.g. datetime.now(UTC))")
        ms = int(expires_at.timestamp() * 1000)
    elif isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
        ms = int(expires_at * 1000)
    else:
        raise InvalidInputError(f"expires_at must be a datetime or epoch seconds, got {expires_at!r}")
    if ms <= now_ms:
        raise InvalidInputError("expires_at is in the past")
    return ms


def pack_lot(pack: CreditPack, key: str, paid: Amount | None, currency: str | None, expires_ms: int,
             now_ms: int, allow_bonus_credits: bool) -> Lot:
    """The lot of a pack granted by hand (``paid`` defaults to its price; its own expiry
    applies unless ``expires_at`` was given). Raises ConfigurationError,
    CurrencyMismatchError, InvalidAmountError."""
    check_bonus(pack, allow_bonus_credits)
    if currency is not None and _currency(currency) != pack.currency:
        raise CurrencyMismatchError(pack.id, pack.currency, currency)
    paid_n = to_nanos(pack.price if paid is None else paid, what="paid")
    if not expires_ms and pack.expires_in_days:
        expires_ms = now_ms + pack.expires_in_days * DAY_MS
    return _lot(key, pack.id, paid_n, pack.currency, to_nanos(pack.spend), expires_ms, now_ms)


def spend_lot(key: str, spend: Amount | None, paid: Amount | None, currency: str | None, expires_ms: int,
              now_ms: int) -> Lot:
    """The lot of ``spend`` dollars of AI spend for ``paid`` (default: the spend, in USD).
    Raises ConfigurationError, InvalidInputError, InvalidAmountError."""
    if spend is None:
        raise ConfigurationError("grant_credits() needs pack= or spend=")
    cur = _currency(currency or "usd")
    spend_n = to_nanos(spend, what="spend", allow_zero=False)
    if paid is None and cur != "usd":
        raise InvalidInputError(f"give paid= for credits paid in {cur.upper()}")
    paid_n = spend_n if paid is None else to_nanos(paid, what="paid")
    return _lot(key, "", paid_n, cur, spend_n, expires_ms, now_ms)


def _lot(key: str, pack_id: str, paid: int, currency: str, spend: int, expires_ms: int, now_ms: int) -> Lot:
    check_nanos(spend, what="spend")
    check_nanos(paid, what="paid")
    return Lot(id=key, pack=pack_id, paid=paid, currency=currency, granted=spend, remaining=spend,
               expires_ms=expires_ms, created_ms=now_ms)


def _currency(value: str) -> str:
    try:
        return check_currency(value)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
