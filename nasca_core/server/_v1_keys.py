"""API keys of the ledger API (``NASCA_API_KEYS``, ``NASCA_ADMIN_API_KEYS``) and the rate
limit per key.

A plain key (what an app's processes hold) reaches reserve, settle, release, usage and the
config; an admin key also reaches what changes what users may spend or have paid for: the
tiers, a user's tier and credit grants. A leaked app key so can't mint credits or lift limits.

Keys are compared in constant time against every configured key (no early exit, so the
time taken says nothing about which key, or how much of one, matched). Several keys may be
configured at once, so a key rotates without downtime: add the new one, move the clients,
remove the old one.

The rate limit is a token bucket per key in this process: ``rate`` requests a second,
bursts up to ``burst``. It is per process on purpose: a store-shared tally (the admin login
throttle's) would add a store round trip to every reserve and settle.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping, Sequence

from nasca_core._errors import ConfigurationError

MIN_KEY_LENGTH = 16
DEFAULT_RATE = 2000.0  # requests per second per key


class ApiKeys:
    """The keys this server accepts and each key's token bucket. Raises ConfigurationError
    for a key shorter than ``MIN_KEY_LENGTH``, or a rate that is not positive."""

    def __init__(
        self,
        keys: Sequence[str],
        *,
        admin: Sequence[str] = (),
        rate: float = DEFAULT_RATE,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        keys = [k.strip() for k in keys if k.strip()]
        admin = [k.strip() for k in admin if k.strip()]
        if set(keys) & set(admin):
            raise ConfigurationError("a key is in both NASCA_API_KEYS and NASCA_ADMIN_API_KEYS")
        self._plain = len(keys)
        keys = [*keys, *admin]
        if any(len(k) < MIN_KEY_LENGTH for k in keys):
            raise ConfigurationError(
                f"NASCA_API_KEYS: every key needs {MIN_KEY_LENGTH} characters or more "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
            )
        if not rate > 0:
            raise ConfigurationError(f"the API rate limit must be positive, got {rate!r}")
        self._keys = [k.encode() for k in keys]
        self.rate, self.burst = float(rate), float(burst if burst is not None else 2 * rate)
        self._clock = clock
        self._buckets = [(self.burst, clock()) for _ in keys]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiKeys:
        """``NASCA_API_KEYS`` and ``NASCA_ADMIN_API_KEYS`` (comma-separated) and
        ``NASCA_API_RATE`` (requests a second per key). Raises ConfigurationError."""
        raw_rate = env.get("NASCA_API_RATE") or str(DEFAULT_RATE)
        try:
            rate = float(raw_rate)
        except ValueError:
            raise ConfigurationError(f"NASCA_API_RATE must be a number, got {raw_rate!r}") from None
        return cls((env.get("NASCA_API_KEYS") or "").split(","),
                   admin=(env.get("NASCA_ADMIN_API_KEYS") or "").split(","), rate=rate)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def find(self, authorization: str | None) -> int | None:
        """Which key an ``Authorization: Bearer <key>`` header holds (its index), or None."""
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        found = None
        for i, key in enumerate(self._keys):
            if hmac.compare_digest(presented, key) and presented:
                found = i
        return found

    def is_admin(self, key: int) -> bool:
        """Whether key ``key`` (from ``find``) is one of the admin keys."""
        return key >= self._plain

    def admit(self, key: int) -> float:
        """Take one request from ``key``'s bucket: 0.0 when it may go, else the seconds until
        one would be admitted."""
        tokens, then = self._buckets[key]
        now = self._clock()
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0
