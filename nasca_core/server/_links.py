"""Signed upgrade links: who, which tier, which prompt, until when; HMAC-SHA256, no I/O.

A token is ``<base64url JSON>.<base64url MAC>``; the MAC key is derived from the server
secret for this purpose only. ``verify`` answers None for anything wrong (bad encoding,
wrong MAC, expired) so callers cannot tell, or tell others, which.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nasca_core._errors import ConfigurationError
from nasca_core._identity import check_user_id

if TYPE_CHECKING:
    from nasca_core._errors import NascaBlockedError
    from nasca_core.server._settings import ServerSettings

MAX_TOKEN = 4096
_PURPOSE = b"nasca upgrade link v1"


@dataclass(frozen=True, slots=True)
class UpgradeToken:
    user_id: str
    tier: str | None
    prompt_id: str | None
    expires_at: int  # epoch seconds


def derive(secret: bytes, purpose: bytes) -> bytes:
    """A key for one purpose, so one secret never signs two kinds of thing."""
    return hmac.new(secret, purpose, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(token: UpgradeToken, secret: bytes) -> str:
    body = {"u": token.user_id, "x": token.expires_at}
    if token.tier is not None:
        body["t"] = token.tier
    if token.prompt_id is not None:
        body["p"] = token.prompt_id
    payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
    mac = hmac.new(derive(secret, _PURPOSE), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def verify(text: str, secrets: Sequence[bytes], now: float) -> UpgradeToken | None:
    """The token, if a secret signed it and it has not expired; otherwise None."""
    if not isinstance(text, str) or len(text) > MAX_TOKEN or text.count(".") != 1:
        return None
    payload, _, mac_text = text.partition(".")
    try:
        mac = _unb64(mac_text)
    except (binascii.Error, ValueError):
        return None
    ok = False
    for secret in secrets:  # every secret is tried: the time taken does not say which matched
        expected = hmac.new(derive(secret, _PURPOSE), payload.encode(), hashlib.sha256).digest()
        ok |= hmac.compare_digest(expected, mac)
    if not ok:
        return None
    try:
        body = json.loads(_unb64(payload))
        token = UpgradeToken(str(body["u"]), body.get("t"), body.get("p"), int(body["x"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return token if token.expires_at > now else None


class UpgradeLinks:
    """Signs upgrade-page URLs; as ``Nasca(checkout_url=UpgradeLinks(settings))`` it puts
    a link on every ``NascaBlockedError`` (``create_app``/``connect`` install it for you).

    Raises ConfigurationError without ``settings.public_url``.
    """

    def __init__(self, settings: ServerSettings, *, clock: Callable[[], float] = time.time) -> None:
        if settings.public_url is None:
            raise ConfigurationError("upgrade links need ServerSettings(public_url='https://.../nasca')")
        self.base = settings.public_url
        self._secret = settings.secrets[0]
        self._ttl = settings.link_ttl
        self._clock = clock

    def token(self, user_id: str, tier: str | None = None, prompt_id: str | None = None,
              ttl: int | None = None) -> str:
        check_user_id(user_id)
        expires = int(self._clock()) + (self._ttl if ttl is None else int(ttl))
        return sign(UpgradeToken(user_id, tier, prompt_id, expires), self._secret)

    def url(self, user_id: str, tier: str | None = None, prompt_id: str | None = None,
            ttl: int | None = None) -> str:
        """The upgrade page of ``user_id`` (valid for ``ttl`` seconds). Raises InvalidUserError."""
        return f"{self.base}/u/{self.token(user_id, tier, prompt_id, ttl)}"

    def __call__(self, err: NascaBlockedError) -> str:
        return self.url(err.user_id, err.tier, err.prompt_id)
