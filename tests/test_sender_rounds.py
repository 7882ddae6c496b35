"""The background sender's rounds (``_sender``): the ``on_idle`` hook the ledger sets (its
leases' reaper) runs on the sender's thread, outside the queue's lock, each round and when
idle, and the sender never waits past the deadline it returns; the retry backoff doubles only
after a flush the store refused; a flush that fails before the store call puts its settles
back as they were taken."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

import nasca_core._deferred as deferred_module
from nasca_core import StoreError
from tests.test_fold_calls import lease_ops
from tests.test_fold_sender import COSTS, TIERS, _ledger, _queue, _usage, _wait_for

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@SQLITE
def test_on_idle_runs_on_the_sender_s_thread_outside_the_lock_and_bounds_its_wait(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=True)
    deferred, seen, due = n.deferred, [], [0.02]

    def on_idle(now: float) -> float | None:
        seen.append((now, threading.current_thread().name, deferred._lock.locked(), len(deferred)))
        return due[0]

    deferred.on_idle = on_idle
    calls, _ = lease_ops(n, "u", COSTS[:2])
    _queue(n, calls)  # starts the sender: a round, then idle
    _wait_for(lambda: len(seen) >= 1)
    assert seen[0][3] == 0  # after the round's flush: the settles had landed
    time.sleep(1.5)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    assert len(seen) >= 10 and {name for _, name, _, _ in seen} == {"nasca-settle-sender"}
    assert not any(locked for _, _, locked, _ in seen)
    # Idle, it waits what the hook asked (20 ms), not its idle check's second.
    assert max(gaps) < 0.9, gaps
    due[0] = None  # nothing due: called again all the same, when the idle check comes
    time.sleep(0.1)
    before = len(seen)
    time.sleep(1.6)
    assert 1 <= len(seen) - before <= 3
    assert _usage(n, "u")[:2] == (2, Decimal("0.003"))


@SQLITE
def test_a_failing_on_idle_is_logged_and_the_sender_goes_on(make_nasca, caplog):
    n = make_nasca(tiers=TIERS, default_tier="t", settle_in_background=True)
    failures = []

    def on_idle(now: float) -> float | None:
        failures.append(now)
        raise RuntimeError("reaper bug")

    n.deferred.on_idle = on_idle
    calls, _ = lease_ops(n, "u", COSTS[:3])
    with caplog.at_level(logging.ERROR, logger="nasca"):
        for op in calls:  # one at a time: a round each
            _queue(n, [op])
            _wait_for(lambda: len(n.deferred) == 0)
        _wait_for(lambda: len(failures) >= 3)
    assert "idle hook failed" in caplog.text
    assert _usage(n, "u")[:2] == (3, Decimal("0.006"))


@SQLITE
def test_the_backoff_doubles_only_after_a_refused_flush(make_nasca):
    n = _ledger(make_nasca)  # its thread never runs: the test runs the rounds
    deferred, sender, store = n.deferred, n.deferred.sender, n.store.sync
    calls, _ = lease_ops(n, "u", COSTS[:3])
    _queue(n, calls[:1])
    store.settle_many = lambda ops: (_ for _ in ()).throw(StoreError("down"))
    assert sender._round(deferred, None) == (0.05, 0.05)
    assert sender._round(deferred, 0.05) == (0.1, 0.1)
    del store.settle_many
    # The store is back; a settle queued while the round flushed is left for the next round:
    # soon, and no failure, so no doubling.
    real_end = deferred._flushed

    def send_racing_the_end(done: int) -> None:
        deferred._flushed = real_end
        _queue(n, calls[1:2])
        real_end(done)

    deferred._flushed = send_racing_the_end
    assert sender._round(deferred, 0.1) == (0.05, None)
    assert deferred.queued() == 1
    store.settle_many = lambda ops: (_ for _ in ()).throw(StoreError("down"))
    assert sender._round(deferred, None) == (0.05, 0.05)  # a new outage starts at the first delay
    del store.settle_many
    assert sender._round(deferred, 0.05) == (None, None)
    assert len(deferred) == 0 and _usage(n, "u")[:2] == (2, Decimal("0.003"))


@SQLITE
def test_a_flush_that_fails_before_the_store_call_puts_its_settles_back(make_nasca, monkeypatch):
    n = _ledger(make_nasca)
    calls, _ = lease_ops(n, "u", COSTS[:4])
    _queue(n, calls)

    def bug(*args: Any) -> Any:
        raise RuntimeError("a bug while folding")

    monkeypatch.setattr(deferred_module, "write_folds", bug)
    with pytest.raises(RuntimeError):
        n.flush()
    assert n.deferred.queued() == 4 and len(n.deferred) == 4  # none counted in flight
    started = time.monotonic()
    r = n.reserve(nanos=1_000_000, user="u")  # the user's read gets its turn at once
    assert time.monotonic() - started < 1.0
    n.release(r)
    monkeypatch.undo()
    assert n.flush() == 4
    assert _usage(n, "u") == (4, Decimal("0.010"), Decimal("0.010"), Decimal("0.05"), 46)


@SQLITE
def test_a_settle_set_aside_is_no_longer_foldable(make_nasca):
    n = _ledger(make_nasca)
    calls, _ = lease_ops(n, "u", COSTS[:3])
    # Past their settled markers' life: a retry could charge twice, so they are set aside.
    _queue(n, [dataclasses.replace(op, marker_expiry_ms=1) for op in calls])
    assert n.flush() == 0
    assert n.stats.deferred_refused == 3
    assert len(n.deferred) == 0 and not n.deferred._foldable


@SQLITE
def test_a_far_idle_deadline_keeps_the_check_that_the_ledger_lives(make_nasca):
    from nasca_core._sender import _IDLE_S

    n = _ledger(make_nasca)  # its thread never runs: the test runs the rounds
    deferred, sender = n.deferred, n.deferred.sender
    deferred.on_idle = lambda now: 30.0  # a lease that ends in 30 s
    assert sender._round(deferred, None) == (_IDLE_S, None)  # a ledger dropped meanwhile is noticed
    deferred.on_idle = lambda now: 0.2
    assert sender._round(deferred, None) == (0.2, None)
