"""Dashboard sessions, CSRF tokens and origin checks: HMAC and comparisons, no I/O (the
login throttle is ``_throttle``).

CSRF: the dashboard sets a random ``nasca_csrf`` cookie (SameSite=Strict, HttpOnly) and
puts ``HMAC(csrf key, cookie)`` in every form; a POST must bring both, and its Origin
(or Referer) header, when sent, must be this app's. A site that can plant cookies cannot
forge the pair without the server secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
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
