"""The app-wide ceiling's warnings and its hit, through the threshold machinery
(``Thresholds.ceiling_seen``): ``on_threshold`` hooks and the owner's signed webhook get a
``ThresholdEvent(scope="ceiling")`` once per window id and fraction across processes, on memory,
SQLite, a real Redis and a real Cluster; analytics does not count it; a user's event keeps
``scope="user"``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from nasca_core import ThresholdEvent, Tier, verify_owner_webhook
from nasca_core.stores import PoolKeys, PoolTakeOp, PoolTakeResult

NANO = 10**9
SECRET = "whsec_owner_0123456789abcdef"
TTLS = (3_600_000, 7_200_000, 86_400_000)
LIMITS = (1 * NANO, -1, 5 * NANO)  # daily $1, monthly $5


def _take(n: Any, lease: str, least: int = NANO // 100) -> PoolTakeOp:
    now_ms = int(n.now() * 1000)
    keys = PoolKeys.build(n.namespace, "app", n.windows_at().ids)
    return PoolTakeOp(keys, now_ms, lease, 10 * least, least, LIMITS, now_ms + 5_000, TTLS)


def _events(n: Any) -> list[ThresholdEvent]:
    seen: list[ThresholdEvent] = []
    n.on_threshold(seen.append)
    return seen


def test_ceiling_marks_fire_once_across_processes(make_nasca: Callable[..., Any]) -> None:
    a, b = make_nasca(), make_nasca()  # two processes on one store
    got_a, got_b = _events(a), _events(b)
    far = PoolTakeResult(granted=NANO // 10, window=0, spent=(NANO // 2, 0, NANO // 2), held=0)
    a.thresholds.ceiling_seen(_take(a, "c1"), far, (0.8, 0.95))
    near = PoolTakeResult(granted=NANO // 20, window=0, spent=(NANO * 81 // 100, 0, NANO * 81 // 100), held=0)
    for n, lease in ((a, "c2"), (b, "c3"), (a, "c4"), (b, "c5")):  # seen again and again, in both
        n.thresholds.ceiling_seen(_take(n, lease), near, (0.8, 0.95))
    assert a.thresholds.flush() and b.thresholds.flush()
    fired = got_a + got_b
    assert [(e.scope, e.window, e.fraction) for e in fired] == [("ceiling", "daily", 0.8)]
    event = fired[0]
    assert event.user_id == "" and event.tier == "" and event.prompt_id == ""
    assert event.window_id == a.windows_at().ids[0]
    assert event.spent == Decimal("0.81") and event.limit == Decimal("1")
    assert event.resets_at == datetime.fromtimestamp(a.windows_at().ends[0], a.tz)
    # Nothing for analytics: the ceiling is the owner's limit, not a step of a user's funnel.
    assert a.analytics.month(a.windows_at().ids[2]).warning_funnel.thresholds_crossed == 0


def test_the_ceiling_hit_fires_once_per_window(make_nasca: Callable[..., Any]) -> None:
    a, b = make_nasca(), make_nasca()
    got_a, got_b = _events(a), _events(b)
    spent = (NANO * 99 // 100, 0, NANO * 99 // 100)
    refused = PoolTakeResult(granted=0, window=1, spent=spent, held=NANO // 200)  # blocked by the day
    a.thresholds.ceiling_seen(_take(a, "c0", least=NANO // 50), refused, ())  # refused, then taken again
    assert a.thresholds.flush() and got_a == []
    for n, lease in ((a, "c1"), (b, "c2"), (b, "c3")):
        n.thresholds.ceiling_seen(_take(n, lease, least=NANO // 50), refused, (), blocked=True)
    assert a.thresholds.flush() and b.thresholds.flush()
    fired = got_a + got_b
    assert [(e.scope, e.window, e.fraction, e.spent) for e in fired] == [
        ("ceiling", "daily", 1.0, Decimal("0.99"))]


def test_a_ceiling_without_warn_at_fires_only_its_hit(make_nasca: Callable[..., Any]) -> None:
    n = make_nasca()
    got = _events(n)
    past = PoolTakeResult(granted=NANO // 100, window=0, spent=(NANO * 9 // 10, 0, NANO * 9 // 10), held=0)
    n.thresholds.ceiling_seen(_take(n, "c1"), past, ())
    assert n.thresholds.flush() and got == []


def test_ceiling_seen_never_raises_on_a_bad_reply(make_nasca: Callable[..., Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    n = make_nasca()
    bad = PoolTakeResult(granted=0, window=1, spent=(), held=0)  # type: ignore[arg-type]
    n.thresholds.ceiling_seen(_take(n, "c1"), bad, (0.5,), blocked=True)  # no exception: the call goes on
    assert "ceiling threshold could not be queued" in caplog.text


def test_a_user_event_keeps_scope_user() -> None:
    from nasca_core import Nasca

    n = Nasca(tiers={"free": Tier(daily=1, warn_at=(0.5,))}, default_tier="free")
    got = _events(n)
    n.settle(n.reserve("0.1", user="u1"), "0.6")
    assert n.thresholds.flush()
    assert [(e.scope, e.user_id, e.fraction) for e in got] == [("user", "u1", 0.5)]
    n.close()


class _Receiver:
    def __init__(self) -> None:
        self.bodies: list[tuple[bytes, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append((body, self.headers["Nasca-Signature"]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/nasca"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_the_owner_webhook_says_it_is_the_ceiling(receiver: _Receiver) -> None:
    from nasca_core import Nasca

    n = Nasca(tiers={"free": Tier(daily=1, warn_at=(0.5,))}, default_tier="free",
              threshold_webhook_url=receiver.url, threshold_webhook_secret=SECRET)
    n.settle(n.reserve("0.1", user="u1"), "0.6")  # a user's own mark, beside the ceiling's
    spent = (NANO * 96 // 100, 0, NANO * 96 // 100)
    n.thresholds.ceiling_seen(_take(n, "c1"), PoolTakeResult(NANO // 100, 0, spent, 0), (0.8, 0.95))
    n.thresholds.ceiling_seen(_take(n, "c2", least=NANO // 10), PoolTakeResult(0, 1, spent, 0), (),
                              blocked=True)
    assert n.thresholds.flush() and n.thresholds.webhook is not None and n.thresholds.webhook.flush(10)
    posted = []
    for body, signature in receiver.bodies:
        verify_owner_webhook(body, signature, SECRET)
        posted.append(json.loads(body))
    assert {p["type"] for p in posted} == {"threshold_crossed"}
    users = [p["data"] for p in posted if p["data"]["scope"] == "user"]
    assert [(d["user_id"], d["fraction"]) for d in users] == [("u1", 0.5)] and users[0]["prompt_id"]
    data = sorted((p["data"] for p in posted if p["data"]["scope"] != "user"), key=lambda d: d["fraction"])
    assert [(d["scope"], d["window"], d["fraction"], d["user_id"]) for d in data] == [
        ("ceiling", "daily", 0.8, ""), ("ceiling", "daily", 0.95, ""), ("ceiling", "daily", 1.0, "")]
    assert data[2]["limit"] == "1" and data[2]["spent"] == "0.96"
    n.close()


def test_through_the_ledger_marks_then_the_hit(make_nasca: Callable[..., Any]) -> None:
    from nasca_core import NascaCeilingError

    ceiling = Tier(daily=1, warn_at=(0.5, 0.9))
    a, b = make_nasca(tiers={"t": Tier()}, default_tier="t", ceiling=ceiling), \
        make_nasca(tiers={"t": Tier()}, default_tier="t", ceiling=ceiling)
    fired = _events(a)
    b.on_threshold(fired.append)
    blocked = admitted = 0
    for i in range(150):  # many users, two processes, one ceiling
        n = (a, b)[i % 2]
        try:
            n.settle(n.reserve("0.01", user=f"u{i % 9}"), "0.01")
            admitted += 1
        except NascaCeilingError:
            blocked += 1
    assert blocked >= 50
    for n in (a, b):
        n.flush()
        assert n.thresholds.flush()
    assert all(e.window_id == a.windows_at().ids[0] and e.user_id == "" for e in fired)
    got = [(e.scope, e.window, e.fraction) for e in fired]
    assert sorted(got) == [("ceiling", "daily", 0.5), ("ceiling", "daily", 0.9), ("ceiling", "daily", 1.0)]
    status = a.ceiling_status()
    assert status is not None and status.daily is not None
    # Each call charged once, never past the ceiling (estimates are the costs); all but what
    # the other process's live chunk held when one was blocked is spent.
    assert status.daily.spent == admitted * Decimal("0.01") and Decimal("0.9") <= status.daily.spent <= 1



def test_a_raised_ceiling_warns_and_hits_anew(make_nasca: Callable[..., Any]) -> None:
    """The once-per-window marker carries the limit: after the owner raises a ceiling that was
    hit, its warning and its hit fire again, at the new limit."""
    from nasca_core import NascaCeilingError

    n = make_nasca(tiers={"t": Tier()}, default_tier="t", settle_in_background=False,
                   ceiling=Tier(daily="0.05", warn_at=(0.8,)))
    fired = _events(n)

    def spend() -> int:
        blocked = 0
        for i in range(30):
            try:
                n.settle(n.reserve("0.01", user=f"u{i}"), "0.01")
            except NascaCeilingError:
                blocked += 1
        n.flush()
        assert n.thresholds.flush()
        return blocked

    assert spend() == 25
    assert [(e.fraction, e.limit) for e in fired] == [(0.8, Decimal("0.05")), (1.0, Decimal("0.05"))]
    n.set_ceiling(Tier(daily="0.10", warn_at=(0.8,)))
    assert spend() == 25
    assert [(e.fraction, e.limit) for e in fired[2:]] == [(0.8, Decimal("0.1")), (1.0, Decimal("0.1"))]
    assert spend() == 30  # the same limit again: nothing new
    assert len(fired) == 4


@pytest.mark.parametrize("background", [True, False])
def test_a_mark_crossed_here_fires_without_another_take(make_nasca: Callable[..., Any],
                                                         background: bool) -> None:
    """One $0.60 call on a $1 ceiling warning at 50%: the warning comes from this process's own
    charge (the sender's next round, or flush()), not only at the next chunk take."""
    import time

    n = make_nasca(tiers={"t": Tier()}, default_tier="t", settle_in_background=background,
                   ceiling=Tier(daily=1, warn_at=(0.5, 0.9)))
    fired = _events(n)
    takes = n.stats.pool_takes
    n.settle(n.reserve("0.60", user="u1"), "0.60")
    if background:  # no flush: the sender's round after the charge landed reads the pool
        deadline = time.monotonic() + 10
        while not fired and time.monotonic() < deadline:
            n.thresholds.flush()
            time.sleep(0.02)
    else:
        n.flush()
        assert n.thresholds.flush()
    assert [(e.scope, e.fraction, e.spent) for e in fired] == [("ceiling", 0.5, Decimal("0.6"))]
    assert n.stats.pool_takes == takes + 1  # the call's own take: none more
