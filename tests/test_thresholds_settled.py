"""Threshold events follow what settles actually returned, on every store: not the reserve's
projection. Holds that fail fire nothing, an estimate below the real cost can't skip a mark, a
call that ends in the next window counts there, a failed claim is tried again, and settles the
background sender or a journal replay lands fire too."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from nasca_core import Nasca, NascaBlockedError, StoreError, ThresholdEvent, Tier
from nasca_core.pricing import TokenUsage

MODEL = "thr-model"
PRICES = {MODEL: {"input": 1000, "output": 1000}}  # $0.001 a token
TIERS = {"free": Tier(daily=1, warn_at=(0.8, 0.95))}


def _nasca(make_nasca: Any, **kw: Any) -> tuple[Any, list[ThresholdEvent]]:
    n = make_nasca(tiers=TIERS, prices=PRICES, **kw)
    events: list[ThresholdEvent] = []
    n.on_threshold(events.append)
    return n, events


def _settled(n: Any) -> None:
    n.flush()
    assert n.thresholds.flush()


def _call(n: Any, tin: int, tout: int, *, max_tokens: int | None = None, user: str = "u") -> Any:
    c = n.start_call(MODEL, prompt_tokens=tin, max_tokens=max_tokens if max_tokens is not None else tout,
                     user=user)
    c.finish(TokenUsage(input_tokens=tin, output_tokens=tout))
    return c


def test_holds_that_fail_fire_nothing_and_the_real_crossing_still_fires(make_nasca) -> None:
    n, events = _nasca(make_nasca)
    inflight = [n.start_call(MODEL, prompt_tokens=50, max_tokens=50, user="u") for _ in range(8)]
    c = _call(n, 50, 50)
    assert c.warning is not None  # the projection counts the 8 holds: a warning, as projected
    for x in inflight:
        x.fail()  # the provider failed: nothing spent
    _settled(n)
    assert events == [] and n.get_usage("u").daily_crossed == ()
    for _ in range(8):
        _call(n, 50, 50)
    _settled(n)
    assert [(e.fraction, e.spent) for e in events] == [(0.8, Decimal("0.8"))]
    assert n.get_usage("u").daily_crossed == (0.8,)


def test_a_settle_past_marks_the_estimate_did_not_predict_fires_them_all(make_nasca) -> None:
    n, events = _nasca(make_nasca, default_tier="free")
    _call(n, 10, 490)  # 50%
    c = n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="u")  # estimate: 52%
    assert c.warning is None
    c.finish(TokenUsage(input_tokens=10, output_tokens=600))  # really: 111%
    _settled(n)
    assert sorted((e.fraction, e.spent) for e in events) == [(0.8, Decimal("1.11")), (0.95, Decimal("1.11"))]
    assert n.get_usage("u").daily_crossed == (0.8, 0.95)
    assert n.analytics.month().events["threshold_crossed"] == 2
    with pytest.raises(NascaBlockedError):
        n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="u")


def test_a_call_that_ends_after_midnight_counts_in_the_day_it_landed_in(make_nasca, clock) -> None:
    n, events = _nasca(make_nasca)
    clock.now = 1_795_046_400.0 - 3600  # 2026-11-18 23:00 UTC
    for _ in range(39):
        _call(n, 10, 10)  # $0.78
    n.flush()  # landed before the fake clock jumps (a queued settle that old is set aside)
    c = n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="u")
    assert c.warning is not None  # projected to 80% of the 18th
    clock.advance(7200)  # it ends at 01:00 on the 19th
    c.finish(TokenUsage(input_tokens=10, output_tokens=10))
    _settled(n)
    assert events == []  # the 18th stopped at $0.78, the 19th has $0.02
    for _ in range(39):
        _call(n, 10, 10)
    _settled(n)
    assert [(e.window_id, e.spent) for e in events] == [("20261119", Decimal("0.8"))]
    clock.advance(-7200)
    assert n.get_usage("u").daily_spent == Decimal("0.78") and n.get_usage("u").daily_crossed == ()


class _FailingClaims:
    def __init__(self, store: Any, left: list[int]) -> None:
        self._store, self._left = store, left

    def __getattr__(self, name: str) -> Any:
        if name == "claim_marker" and self._left[0] > 0:
            self._left[0] -= 1
            raise StoreError("the store is away")
        return getattr(self._store, name)


def test_a_claim_that_fails_is_tried_again_by_the_next_settle(make_nasca) -> None:
    n, events = _nasca(make_nasca)
    left = [1]
    n.store.see_sync = lambda s: _FailingClaims(s, left)
    for _ in range(40):
        _call(n, 10, 10)
    _settled(n)
    assert events == [] and left == [0]
    _call(n, 10, 10)
    _settled(n)
    assert [(e.fraction, e.spent) for e in events] == [(0.8, Decimal("0.82"))]


def test_a_direct_settle_fires_without_any_reserve_warning(make_nasca) -> None:
    n, events = _nasca(make_nasca)
    r = n.reserve(nanos=0, user="core")  # the estimate says nothing: no warning
    assert r.warning is None
    n.settle(r, "0.9")
    _settled(n)
    assert [(e.fraction, e.user_id, e.tier) for e in events] == [(0.8, "core", "free")]


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_settles_the_background_sender_lands_fire(make_nasca) -> None:
    n, events = _nasca(make_nasca, settle_in_background=True)
    charges = [_call(n, 10, 10).charge for _ in range(40)]
    assert any(c.pending for c in charges)
    _settled(n)
    assert [(e.fraction, e.spent) for e in events] == [(0.8, Decimal("0.8"))]


def _queue_then_die(uri: str, namespace: str, state_dir: str) -> None:
    n = Nasca(uri, tiers=TIERS, default_tier="free", prices=PRICES, namespace=namespace,
              state_dir=state_dir, settle_in_background=True)
    for _ in range(39):
        _call(n, 10, 10)
    n.flush()
    n.deferred._flush_lock.acquire()  # the sender never gets to the last one
    assert _call(n, 10, 10).charge.pending
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_journal_replay_in_the_next_process_fires_the_crossing(kind, tmp_path, request) -> None:
    uri = f"sqlite:///{tmp_path}/ledger.db" if kind == "sqlite" else request.getfixturevalue("redis_url")
    ns, state = f"r{uuid.uuid4().hex[:8]}", tmp_path / "state"
    proc = multiprocessing.get_context("fork").Process(target=_queue_then_die, args=(uri, ns, str(state)))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    n = Nasca(uri, tiers=TIERS, default_tier="free", prices=PRICES, namespace=ns, state_dir=Path(state))
    events: list[ThresholdEvent] = []
    n.on_threshold(events.append)  # added after the replay: still told
    assert n.stats.deferred_replayed == 1
    assert n.thresholds.flush()
    assert [(e.fraction, e.spent, e.user_id) for e in events] == [(0.8, Decimal("0.8"), "u")]
    n.close()


def test_the_settle_reply_carries_the_counters_after_the_call_and_the_limits_on_every_store(
        make_nasca) -> None:
    n = make_nasca(tiers={"free": Tier(daily=1, weekly=3, warn_at=(0.5,))}, prices=PRICES,
                   settle_in_background=False)
    n.limits.set_user_limits("own", Tier(daily=2))
    replies: list[Any] = []

    class Spy:
        def __init__(self, store: Any) -> None:
            self._store = store

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self._store, name)
            if name != "settle":
                return attr
            return lambda op: replies.append(attr(op)) or replies[-1]

    n.store.see_sync = Spy
    n.settle(n.reserve("0.1", user="u"), "0.3")
    n.settle(n.reserve("0.1", user="own"), "0.3")
    assert [(r.spent, r.limits) for r in replies] == [
        ((300_000_000, 300_000_000, 300_000_000), (1_000_000_000, 3_000_000_000, -1)),
        ((300_000_000, 300_000_000, 300_000_000), (2_000_000_000, -1, -1))]


def test_200_threads_crossing_together_fire_each_mark_once(make_nasca) -> None:
    ledgers = [make_nasca(tiers=TIERS, prices=PRICES) for _ in range(3)]
    events: list[float] = []
    lock = threading.Lock()
    for n in ledgers:
        n.on_threshold(lambda e: (lock.acquire(), events.append(e.fraction), lock.release()))
    start = threading.Barrier(50)

    def worker(k: int) -> None:
        start.wait()
        for _ in range(4):
            try:
                _call(ledgers[k % 3], 10, 10, user="crowd")
            except NascaBlockedError:
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in ledgers:
        _settled(n)
    assert sorted(events) == [0.8, 0.95]


def test_a_full_mark_queue_drops_and_counts_and_a_later_settle_queues_it_again(make_nasca) -> None:
    from nasca_core._threshold_hooks import Thresholds

    n = make_nasca(tiers={"free": Tier(daily=1, warn_at=(0.5,))}, prices=PRICES, settle_in_background=False)
    n.thresholds = Thresholds(n, queue_limit=1, hook_timeout=30)  # the settle's landing goes to this one
    gate = threading.Event()
    got: list[str] = []
    n.thresholds.on_threshold(lambda e: (gate.wait(10), got.append(e.user_id)))
    for user in ("a", "b", "c"):
        for _ in range(25):
            _call(n, 10, 10, user=user)  # each reaches 50% on its 25th call
    # One mark on the worker, at most one waiting: the third found the queue full.
    assert n.thresholds.dropped >= 1
    gate.set()
    assert n.thresholds.flush()
    for user in ("a", "b", "c"):
        _call(n, 10, 10, user=user)  # the next settle past a dropped mark queues it again
        _settled(n)
    assert sorted(got) == ["a", "b", "c"]
