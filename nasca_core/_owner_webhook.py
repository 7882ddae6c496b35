"""The owner's webhook: signed JSON POSTs, retried with backoff on a thread of their own.

The signature follows Stripe's scheme: ``Nasca-Signature: t=<unix seconds>,v1=<hex>``, where
the hex is HMAC-SHA256, keyed by the shared secret, of ``"<t>.<body>"``; the receiver checks
it with ``verify_owner_webhook`` (constant-time, with a tolerance against replays; several
``v1=`` values, one per secret, let a secret be rotated). The body is
``{"id", "type", "created", "data"}``: the delivery id is signed with the rest and stays the same
across retries, so a receiver dedupes on ``id`` (a replay can't change it without breaking the
signature). ``type`` is ``"threshold_crossed"`` and ``data`` a ``ThresholdEvent`` as JSON, whose
``scope`` is ``"user"`` or ``"ceiling"`` (the app-wide ceiling's marks and its hit, with
``user_id`` ``""``). Delivery is at-most-once across a crash: queued deliveries live in memory (the
queue is bounded; ``dropped`` counts what a full one refused), and a process that dies with
deliveries queued loses them, though the event stays recorded in analytics. ``Nasca.close()``
gives queued ones time to go.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Sequence

import httpx

from nasca_core._errors import ConfigurationError, SignatureError

log = logging.getLogger("nasca")

SIGNATURE_HEADER = "Nasca-Signature"
ID_HEADER = "Nasca-Webhook-Id"  # the body's "id" too (that one is signed)
QUEUE_LIMIT = 1000  # deliveries queued or waiting for a retry; past it new ones are dropped
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # waits before each retry; then the delivery is given up


_STAMP = re.compile(r"[0-9]{1,12}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _mac(body: bytes, secret: str, timestamp: int | str) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str | Sequence[str], timestamp: int) -> str:
    """The ``Nasca-Signature`` header value of ``body`` sent at ``timestamp`` (one ``v1`` per secret)."""
    secrets = (secret,) if isinstance(secret, str) else tuple(secret)
    return f"t={timestamp}," + ",".join(f"v1={_mac(body, s, timestamp)}" for s in secrets)


def verify_owner_webhook(body: bytes, header: str | None, secret: str | Sequence[str], *,
                         tolerance_s: float = 300, now: float | None = None) -> None:
    """Check an owner webhook's ``Nasca-Signature`` against its raw ``body``; ``secret`` may be
    several (while rotating one), and the header may carry several ``v1`` values: any match passes.

    Raises SignatureError for a missing, malformed or wrong signature (``t`` must be 1 to 12 ASCII
    digits, each ``v1`` 64 lowercase hex digits), or a timestamp more than ``tolerance_s`` from
    ``now``. O(header) and never anything but SignatureError for any text."""
    if not isinstance(header, str) or len(header) > 4096:
        raise SignatureError("missing or malformed Nasca-Signature header")
    stamp, given = None, []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and stamp is None and _STAMP.fullmatch(value):
            stamp = value  # signed as sent: "0123" is not "123"
        elif name == "v1" and _HEX64.fullmatch(value):
            given.append(value.encode())
    if stamp is None or not given:
        raise SignatureError("missing or malformed Nasca-Signature header")
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        raise SignatureError("Nasca-Signature timestamp outside the tolerance")
    secrets = (secret,) if isinstance(secret, str) else tuple(secret)
    expected = [_mac(body, s, stamp).encode() for s in secrets]
    # Every pair is compared (no early exit), in constant time per pair.
    if not any([hmac.compare_digest(e, g) for e in expected for g in given]):
        raise SignatureError("Nasca-Signature does not match the body")


class WebhookSender:
    """Posts JSON bodies to ``url``; a failed attempt (an error or a non-2xx answer) is retried
    after each wait of ``backoff`` in turn, then logged and given up. ``flush()`` waits for
    every delivery to end; ``close()`` stops the thread. Raises ConfigurationError for a URL
    that is not http(s) or a secret shorter than 16 characters."""

    def __init__(self, url: str, secret: str | None, *, backoff: Sequence[float] = BACKOFF_S,
                 timeout: float = 5.0, queue_limit: int = QUEUE_LIMIT) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"threshold_webhook_url must be an http(s) URL, got {url!r}")
        if not isinstance(secret, str) or len(secret) < 16:
            raise ConfigurationError("threshold_webhook_url needs threshold_webhook_secret= "
                                     "(16 characters or more) to sign its requests")
        self.url, self.backoff, self.timeout, self.queue_limit = url, tuple(backoff), timeout, queue_limit
        self._secret = secret
        self._due: list[tuple[float, int, str, bytes, int]] = []  # (when, seq, id, body, attempt)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._busy = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = self.given_up = self.dropped = 0

    def __repr__(self) -> str:
        return f"WebhookSender(url={self.url!r})"  # never the secret

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"queued": len(self._due) + self._busy, "delivered": self.delivered,
                    "given_up": self.given_up, "dropped": self.dropped}

    def send_event(self, kind: str, data: object) -> str | None:
        """Queue ``{"id", "type": kind, "created", "data"}``; returns its id (None: dropped)."""
        delivery = uuid.uuid4().hex
        body = json.dumps({"id": delivery, "type": kind, "created": int(time.time()), "data": data},
                          separators=(",", ":")).encode()
        return self.send(body, delivery)

    def send(self, body: bytes, delivery: str | None = None) -> str | None:
        """Queue ``body`` for delivery; returns its delivery id, or None when the queue is full
        or the sender closed (counted in ``dropped``)."""
        delivery = delivery or uuid.uuid4().hex
        with self._cond:
            if len(self._due) + self._busy >= self.queue_limit or self._stop.is_set():
                self.dropped += 1
                log.error("nasca: owner webhook queue full or closed; delivery %s dropped", delivery)
                return None
            heapq.heappush(self._due, (time.monotonic(), next(self._seq), delivery, body, 0))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="nasca-webhook", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return delivery

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until no delivery is queued or in flight; False on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._due or self._busy:
                if (left := end - time.monotonic()) <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Give queued deliveries up to ``timeout`` s, then stop and join the thread (what is
        still queued is logged and lost: at-most-once)."""
        self.flush(timeout)
        with self._cond:
            self._stop.set()
            left = len(self._due)
            self._due.clear()
            self._cond.notify_all()
        if left:
            log.error("nasca: owner webhook closed with %d deliveries undelivered", left)
        if self._thread is not None:
            self._thread.join(self.timeout + 1.0)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Async twin of close(): waits on a thread, never on the loop."""
        await asyncio.to_thread(self.close, timeout)

    def _next(self) -> tuple[str, bytes, int] | None:
        with self._cond:
            while not self._stop.is_set() and (not self._due or self._due[0][0] > time.monotonic()):
                self._cond.wait(None if not self._due else self._due[0][0] - time.monotonic())
            if self._stop.is_set():
                return None
            _, _, delivery, body, attempt = heapq.heappop(self._due)
            self._busy += 1
            return delivery, body, attempt

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while (item := self._next()) is not None:
                delivery, body, attempt = item
                ok = False
                try:
                    ok = self._post(client, delivery, body)
                finally:
                    with self._cond:
                        self._busy -= 1
                        if ok:
                            self.delivered += 1
                        elif attempt < len(self.backoff) and not self._stop.is_set():
                            heapq.heappush(self._due, (time.monotonic() + self.backoff[attempt],
                                                       next(self._seq), delivery, body, attempt + 1))
                        else:
                            self.given_up += 1
                            log.error("nasca: owner webhook %s gave up after %d attempts", delivery,
                                      attempt + 1)
                        self._cond.notify_all()

    def _post(self, client: httpx.Client, delivery: str, body: bytes) -> bool:
        headers = {"Content-Type": "application/json", ID_HEADER: delivery,
                   SIGNATURE_HEADER: sign(body, self._secret, int(time.time()))}
        try:
            answer = client.post(self.url, content=body, headers=headers)
        except Exception as exc:  # a network error or a bad URL: retried, never raised
            log.warning("nasca: owner webhook %s failed, will retry: %s", delivery, exc)
            return False
        if 200 <= answer.status_code < 300:
            return True
        log.warning("nasca: owner webhook %s answered %d, will retry", delivery, answer.status_code)
        return False
