"""Signed holds of the ledger API: the server signs the hold a reserve returns and takes back
only that hold, unaltered, on settle and release. HMAC-SHA256, no I/O.

A client echoes the hold it got (``remote._wire.Hold``); the server rebuilds the
Reservation from it, so each field decides something: the user and tier the settle charges,
the hold id it dedupes on and drops, the estimate it frees, the billing-cycle anchor that
names its month and the admission time whose boosts it keeps. Trusting them would let a
client that drops or changes one (a hand-written client forgetting ``anchor``) charge the
wrong month or draw credits a boost covered. The MAC rides in the hold id (``<id>.<MAC>``),
so a client that sends the hold back as it came needs nothing more.

The key is derived from the server secret (``NASCA_SECRET``) for this purpose only, as the
upgrade links' is (``_links.derive``); holds signed under a previous secret still verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence

from nasca_core.remote._wire import Hold
from nasca_core.server._links import derive

_PURPOSE = b"nasca v1 hold v1"
_MAC_BYTES = 16  # 128 bits: 22 characters of base64url
UNCHECKED = "u."  # the store's hold id of a hold the client admitted alone (no MAC)


def _mac(key: bytes, hold: Hold, base_id: str) -> str:
    fields = [hold.user, hold.tier, base_id, hold.estimate_nanos, hold.anchor, hold.reserved_ms]
    payload = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    digest = hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class HoldSigner:
    """Signs holds with the first of ``secrets`` and verifies them with any."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        self._keys = [derive(s, _PURPOSE) for s in secrets]

    def sign(self, hold: Hold) -> Hold:
        """``hold`` with its MAC appended to its id."""
        mac = _mac(self._keys[0], hold, hold.hold_id)
        return hold.model_copy(update={"hold_id": f"{hold.hold_id}.{mac}"})

    def verify(self, hold: Hold) -> str | None:
        """The store's hold id of ``hold``: its own id when its MAC is right, ``u.<id>`` for a
        hold with no MAC (admitted by the client alone), None when altered."""
        base, dot, mac = hold.hold_id.rpartition(".")
        if not dot:
            return UNCHECKED + hold.hold_id
        ok = False
        for key in self._keys:  # every key, so the time says nothing about which matched
            ok |= hmac.compare_digest(mac.encode(), _mac(key, hold, base).encode())
        return base if ok else None
