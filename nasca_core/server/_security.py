"""Dashboard sessions, CSRF tokens, origin checks and the login throttle: HMAC,
comparisons and counters, no I/O.

CSRF: the dashboard sets a random ``nasca_csrf`` cookie (SameSite=Strict, HttpOnly) and
puts ``HMAC(csrf key, cookie)`` in every form; a POST must bring both, and its Origin
(or Referer) header, when sent, must be this app's. A site that can plant cookies cannot
forge the pair without the server secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from nasca_core.server._links import derive
from nasca_core.server._settings import ServerSettings, origin_of

ADMIN_COOKIE = "nasca_admin"
CSRF_COOKIE = "nasca_csrf"
SESSION_TTL = 12 * 3600


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Keys:
    csrf: bytes
    session: bytes | None  # None: no admin token, so no token sessions
    admin_token: bytes | None

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Keys:
        secret = settings.secrets[0]
        token = settings.admin_token.get_secret_value().encode() if settings.admin_token else None
        # The session key depends on the admin token: changing the token ends every session.
        session = derive(secret, b"nasca admin session v1\0" + token) if token else None
        return cls(derive(secret, b"nasca csrf v1"), session, token)


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(keys: Keys, cookie: str) -> str:
    return _mac(keys.csrf, cookie)


def csrf_ok(keys: Keys, cookie: str | None, field: str | None) -> bool:
    if not cookie or not field:
        return False
    return hmac.compare_digest(csrf_token(keys, cookie), field)


def token_ok(keys: Keys, presented: str | None) -> bool:
    if keys.admin_token is None or not presented:
        return False
    return hmac.compare_digest(keys.admin_token, presented.encode())


def session_value(keys: Keys, now: float) -> str:
    assert keys.session is not None
    expires = int(now) + SESSION_TTL
    return f"{expires}.{_mac(keys.session, str(expires))}"


def session_ok(keys: Keys, value: str | None, now: float) -> bool:
    if keys.session is None or not value or value.count(".") != 1:
        return False
    expires, _, mac = value.partition(".")
    if not hmac.compare_digest(_mac(keys.session, expires), mac):
        return False
    return expires.isascii() and expires.isdigit() and len(expires) <= 12 and int(expires) > now


def origin_allowed(origin: str | None, referer: str | None, allowed: Iterable[str]) -> bool:
    """A state-changing request's Origin (else Referer) must be one of ``allowed``; a
    request with neither (a non-browser client) passes: the CSRF token still applies."""
    allowed = set(allowed)
    if origin and origin != "null":
        return origin.lower() in allowed
    if origin == "null":
        return False
    if referer:
        return origin_of(referer) in allowed
    return True


class LoginThrottle:
    """Failed admin logins per client: each client has a bucket of ``burst`` failures that
    refills at one per ``refill_seconds``; a failure with the bucket empty blocks the
    client for 2, 4, 8 ... seconds (at most ``max_backoff``). A success forgets the client.

    Pure: the caller passes the time and the client's key (its IP). At most ``max_clients``
    are remembered (the least recently seen are dropped first), so memory stays bounded.
    """

    def __init__(self, *, burst: int = 5, refill_seconds: float = 30.0, max_backoff: float = 900.0,
                 max_clients: int = 10_000) -> None:
        self.burst, self.refill = burst, refill_seconds
        self.max_backoff, self.max_clients = max_backoff, max_clients
        self._clients: OrderedDict[str, list[float]] = OrderedDict()  # tokens, at, strikes, blocked until

    def _state(self, client: str, now: float) -> list[float]:
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = [float(self.burst), now, 0.0, 0.0]
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
            state[0] = min(float(self.burst), state[0] + max(0.0, now - state[1]) / self.refill)
            state[1] = now
        return state

    def retry_after(self, client: str, now: float) -> int:
        """Whole seconds the client must wait before its next attempt (0: it may try now)."""
        state = self._clients.get(client)
        if state is None:
            return 0
        state = self._state(client, now)
        wait = state[3] - now
        if state[0] < 1:
            wait = max(wait, (1 - state[0]) * self.refill)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, client: str, now: float) -> None:
        state = self._state(client, now)
        state[0] = max(0.0, state[0] - 1)
        if state[0] < 1:
            state[2] += 1
            state[3] = now + min(self.max_backoff, 2.0 ** state[2])

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)
