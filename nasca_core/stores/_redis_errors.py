"""The one translation of redis-py's errors into Nasca's, shared by every Redis operation
(the ledger's, billing's and analytics')."""

from __future__ import annotations

from types import TracebackType

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nasca_core._errors import StoreError, UnknownTierError

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def translate(exc: BaseException, tier: str = "") -> BaseException:
    """The Nasca error for a redis-py error: StoreError when Redis can't be reached or refuses
    a command or script, UnknownTierError when a script found no such tier; any other error as it is."""
    if isinstance(exc, ResponseError) and "NASCA unknown tier" in str(exc):
        return UnknownTierError(tier)
    if isinstance(exc, _UNAVAILABLE):
        return StoreError(f"Redis unavailable: {exc}")
    if isinstance(exc, ResponseError):  # a script error, WRONGTYPE, OOM...: typed, as other stores
        return StoreError(f"Redis refused the command: {str(exc)[:300]}")
    return exc


class redis_errors:
    """Raises what ``translate`` makes of an error inside the block (sync or async code)."""

    __slots__ = ("tier",)

    def __init__(self, tier: str = "") -> None:
        self.tier = tier

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, Exception):
            mapped = translate(exc, self.tier)
            if mapped is not exc:
                raise mapped from exc


REDIS_ERRORS = redis_errors()  # for operations that name no tier
