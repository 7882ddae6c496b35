"""The owner's threshold webhook: signed like Stripe's (HMAC-SHA256 over ``timestamp.body``),
retried with backoff off the caller's path, against a real local HTTP server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from nasca_core import ConfigurationError, Nasca, SignatureError, Tier, verify_owner_webhook
from nasca_core.pricing import TokenUsage

SECRET = "whsec_owner_0123456789abcdef"
MODEL = "thr-model"


class Receiver:
    """An HTTP server that answers 500 to the first ``fail`` requests (the first one slowly)."""

    def __init__(self, fail: int, slow: float = 0.0) -> None:
        self.fail, self.slow = fail, slow
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    attempt = len(receiver.requests)
                    status = 500 if attempt < receiver.fail else 200
                    receiver.requests.append((dict(self.headers), body, status))
                if attempt == 0 and receiver.slow:
                    time.sleep(receiver.slow)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/nasca"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail=2, slow=0.5)
    yield r
    r.close()


def test_the_webhook_is_signed_retried_and_off_the_callers_path(receiver: Receiver) -> None:
    n = Nasca(tiers={"free": Tier(daily=1, warn_at=(0.8,))}, default_tier="free",
              prices={MODEL: {"input": 1000, "output": 1000}},
              threshold_webhook_url=receiver.url, threshold_webhook_secret=SECRET)
    assert n.thresholds.webhook is not None
    n.thresholds.webhook.backoff = (0.05, 0.1, 0.2)
    for _ in range(39):
        n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1").finish(
            TokenUsage(input_tokens=10, output_tokens=10))
    started = time.perf_counter()
    c = n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1")
    c.finish(TokenUsage(input_tokens=10, output_tokens=10))
    assert time.perf_counter() - started < 0.4  # the first attempt takes 0.5 s: not on the call's path
    assert c.warning is not None
    assert n.thresholds.flush() and n.thresholds.webhook.flush(10)
    assert [status for _, _, status in receiver.requests] == [500, 500, 200]
    assert len({h["Nasca-Webhook-Id"] for h, _, _ in receiver.requests}) == 1  # one delivery, retried
    first_id = receiver.requests[0][0]["Nasca-Webhook-Id"]
    assert {json.loads(b)["id"] for _, b, _ in receiver.requests} == {first_id}  # the id is signed
    headers, body, _ = receiver.requests[-1]
    verify_owner_webhook(body, headers["Nasca-Signature"], SECRET)
    sent = json.loads(body)
    assert sent["type"] == "threshold_crossed" and set(sent) == {"id", "type", "created", "data"}
    assert (sent["data"]["user_id"], sent["data"]["fraction"], sent["data"]["window"]) == ("u1", 0.8, "daily")
    assert sent["data"]["spent"] == "0.8" and sent["data"]["prompt_id"] == "w:" + c.reservation.hold_id
    with pytest.raises(SignatureError):
        verify_owner_webhook(body.replace(b"0.8", b"0.1"), headers["Nasca-Signature"], SECRET)
    with pytest.raises(SignatureError):
        verify_owner_webhook(body, headers["Nasca-Signature"], "another-secret-of-16-chars")
    with pytest.raises(SignatureError):  # a replay after the tolerance
        verify_owner_webhook(body, headers["Nasca-Signature"], SECRET, now=time.time() + 600)
    assert n.thresholds.webhook.delivered == 1
    n.close()


def test_a_delivery_that_never_succeeds_is_given_up_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    r = Receiver(fail=100)
    try:
        n = Nasca(tiers={"free": Tier(daily=1, warn_at=(0.5,))}, default_tier="free",
                  prices={MODEL: {"input": 1000, "output": 1000}},
                  threshold_webhook_url=r.url, threshold_webhook_secret=SECRET)
        assert n.thresholds.webhook is not None
        n.thresholds.webhook.backoff = (0.01, 0.01)
        for _ in range(25):
            n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1").finish(
                TokenUsage(input_tokens=10, output_tokens=10))
        assert n.thresholds.flush() and n.thresholds.webhook.flush(10)
        assert len(r.requests) == 3 and n.thresholds.webhook.given_up == 1
        assert "gave up after 3 attempts" in caplog.text
    finally:
        r.close()


@pytest.mark.parametrize("url, secret", [("ftp://example.com", SECRET), ("https://example.com/h", None),
                                         ("https://example.com/h", "short")])
def test_a_bad_webhook_configuration_is_refused(url: str, secret: str | None) -> None:
    with pytest.raises(ConfigurationError, match="threshold_webhook"):
        Nasca(tiers={"free": Tier(daily=1)}, threshold_webhook_url=url, threshold_webhook_secret=secret)


# -- verify_owner_webhook: typed errors on any header, rotation, the id inside the signature --------
BODY = b'{"id":"d1","type":"threshold_crossed","created":1,"data":{}}'


@pytest.mark.parametrize("header", [
    None, "", "t=\u00b2,v1=ab", "t={t},v1=\u00e9", "t=" + "9" * 5000 + ",v1=" + "a" * 64,
    "t=-1,v1=" + "a" * 64,
    "t={t},v1=" + "A" * 64, "t={t},v1=" + "a" * 63, "t={t}", "v1=" + "a" * 64, "t=0{t},v1={good}",
    "t={t},v1={good}x", "x" * 10_000, "t={t},v1={good}".replace(",", ";"), "t=\u0661\u0662,v1={good}"])
def test_a_crafted_signature_header_is_a_signature_error(header: str | None) -> None:
    from nasca_core._owner_webhook import sign

    t = int(time.time())
    good = sign(BODY, SECRET, t).split("v1=")[1]
    if header is not None:
        header = header.replace("{t}", str(t)).replace("{good}", good)
    with pytest.raises(SignatureError):
        verify_owner_webhook(BODY, header, SECRET)


def test_any_v1_of_the_header_or_any_secret_passes_while_rotating() -> None:
    from nasca_core._owner_webhook import sign

    t, old, new = int(time.time()), SECRET, "whsec_owner_new_fedcba9876543210"
    header = sign(BODY, [old, new], t)
    assert header.count("v1=") == 2
    verify_owner_webhook(BODY, header, new)
    verify_owner_webhook(BODY, header, old)
    verify_owner_webhook(BODY, sign(BODY, old, t), [new, old])
    verify_owner_webhook(BODY, f"t={t},v1={'0' * 64},{sign(BODY, old, t).split(',')[1]}", old)
    with pytest.raises(SignatureError):
        verify_owner_webhook(BODY, header, "whsec_owner_other_0000000000000")


def test_a_replay_with_a_new_delivery_id_breaks_the_signature() -> None:
    from nasca_core._owner_webhook import sign

    t = int(time.time())
    header = sign(BODY, SECRET, t)
    verify_owner_webhook(BODY, header, SECRET)
    with pytest.raises(SignatureError):  # the id a receiver dedupes on is signed
        verify_owner_webhook(BODY.replace(b'"d1"', b'"d2"'), header, SECRET)


# -- the sender: bounded, stopped by close(), aclose() off the loop ------------------------------------
def _sender_threads() -> int:
    return sum(t.name == "nasca-webhook" and t.is_alive() for t in threading.enumerate())


def test_close_stops_the_sender_thread_and_a_full_queue_drops_and_counts() -> None:
    from nasca_core._owner_webhook import WebhookSender

    before = _sender_threads()
    for _ in range(5):
        n = Nasca(tiers={"free": Tier(daily=1, warn_at=(0.8,))}, threshold_webhook_url="http://127.0.0.1:9/x",
                  threshold_webhook_secret=SECRET)
        assert n.thresholds.webhook is not None
        n.thresholds.webhook.backoff = ()
        n.thresholds.webhook.send(b"{}")
        n.close()
    assert _sender_threads() == before
    w = WebhookSender("http://127.0.0.1:9/x", SECRET, backoff=(60.0,), queue_limit=3)
    ids = [w.send_event("threshold_crossed", {"k": i}) for i in range(5)]
    assert sum(i is None for i in ids) == 2 and w.stats()["dropped"] == 2
    assert SECRET not in repr(w)
    w.close(0.2)
    assert w.send(b"{}") is None  # closed: counted, never a new thread
    assert _sender_threads() == before


async def test_aclose_does_not_block_the_event_loop() -> None:
    r = Receiver(fail=0, slow=1.0)
    try:
        n = Nasca(tiers={"free": Tier(daily=1, warn_at=(0.5,))}, default_tier="free",
                  prices={MODEL: {"input": 1000, "output": 1000}},
                  threshold_webhook_url=r.url, threshold_webhook_secret=SECRET)
        for _ in range(25):
            c = await n.astart_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1")
            await c.afinish(TokenUsage(input_tokens=10, output_tokens=10))
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await n.aclose()
        ticker.cancel()
        assert len(r.requests) == 1 and ticks >= 10  # the slow delivery ran while the loop ticked
    finally:
        r.close()


def test_nasca_serve_posts_crossings_to_the_owners_url_with_the_secret_from_the_environment(
        receiver: Receiver) -> None:
    from nasca_core.server import ServeConfig, build_nasca

    config = ServeConfig.parse({"store": "memory://", "threshold_webhook_url": receiver.url,
                                "tiers": {"free": {"daily": 1, "warn_at": [0.8]}}})
    n = build_nasca(config, {"NASCA_THRESHOLD_WEBHOOK_SECRET": SECRET})
    n.set_price(MODEL, {"input": 1000, "output": 1000})
    assert n.thresholds.webhook is not None
    n.thresholds.webhook.backoff = (0.05, 0.1, 0.2)
    for _ in range(40):
        n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1").finish(
            TokenUsage(input_tokens=10, output_tokens=10))
    assert n.thresholds.flush() and n.thresholds.webhook.flush(10)
    headers, body, status = receiver.requests[-1]
    assert status == 200
    verify_owner_webhook(body, headers["Nasca-Signature"], SECRET)
    assert json.loads(body)["data"]["user_id"] == "u1"
    n.close()
    with pytest.raises(ConfigurationError):  # a URL without the secret in the environment
        build_nasca(config, {})
    with pytest.raises(ConfigurationError, match="secret"):  # the secret never goes in the file
        ServeConfig.parse({"store": "memory://", "threshold_webhook_secret": SECRET})
