"""Budget leases across real processes (fork), on a real Redis and a real SQLite file.

- the bound: several processes of several threads hammer one user; with leases on, the spend
  stays within the limit plus the same bound as with leases off (one call per caller in flight);
- staleness: a limit lowered in another process is seen here within ``LEASE_S``, with at
  most one lease over it;
- a crash: a process killed with SIGKILL while holding a lease with settles queued loses
  nothing (its journal replays in the next process) and its lease's hold expires.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from typing import Any

import pytest

from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core._lease_policy import LEASE_S, MAX_CALLS, MIN_HOLD_TTL_S

pytestmark = pytest.mark.timeout(120)

LIMIT = 100_000_000  # $0.10 a day
CALL = 500_000  # each call's estimate and cost
PROCESSES, THREADS = 3, 4
_fork = multiprocessing.get_context("fork")


@pytest.fixture(params=["redis", "sqlite"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return str(request.getfixturevalue("redis_url"))


def _ledger(store: str, namespace: str, leases: bool, state_dir: str, **kwargs: Any) -> Nasca:
    return Nasca(store, tiers={"free": Tier(daily=LIMIT / 1e9, max_in_flight=None)}, default_tier="free",
                 namespace=namespace, leases=leases, state_dir=state_dir, **kwargs)


def _hammer(store: str, namespace: str, leases: bool, state_dir: str, out: Any) -> None:
    n = _ledger(store, namespace, leases, state_dir)
    admitted = [0]
    lock = threading.Lock()

    def caller() -> None:
        blocked = 0
        while blocked < 3:  # a busy or blocked answer may pass as other callers settle
            try:
                r = n.reserve(nanos=CALL, user="u")
            except NascaBlockedError:
                blocked += 1
                continue
            n.settle(r, nanos=CALL, background=True)
            with lock:
                admitted[0] += 1

    threads = [threading.Thread(target=caller) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n.close()
    out.put((admitted[0], n.stats.leased))


def _run(store: str, leases: bool, state_dir: str) -> tuple[int, int, int]:
    namespace = f"b{uuid.uuid4().hex[:10]}"
    out = _fork.Queue()
    procs = [_fork.Process(target=_hammer, args=(store, namespace, leases, state_dir, out))
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    got = [out.get(timeout=100) for _ in procs]
    for p in procs:
        p.join(10)
    n = _ledger(store, namespace, False, state_dir)
    try:
        snap = n.store.sync.snapshot(n.user_keys("u"), int(n.now() * 1000))
    finally:
        n.close()
    assert snap.held == 0  # every lease's hold dropped at close
    return snap.spent[0], sum(a for a, _ in got), sum(x for _, x in got)


def test_many_processes_stay_within_the_same_bound(shared_store, tmp_path):
    bound = LIMIT + PROCESSES * THREADS * CALL  # default admission: one call per caller over
    spent_off, calls_off, _ = _run(shared_store, False, str(tmp_path / "off"))
    spent_on, calls_on, leased = _run(shared_store, True, str(tmp_path / "on"))
    assert spent_off == calls_off * CALL and spent_on == calls_on * CALL  # nothing lost, nothing twice
    assert LIMIT <= spent_off <= bound
    assert LIMIT <= spent_on <= bound
    assert leased > 0  # the user was far from the limit at first


def _lower(store: str, namespace: str, state_dir: str, limit: float) -> None:
    n = _ledger(store, namespace, False, state_dir)
    n.set_tier("free", Tier(daily=limit, max_in_flight=None))
    n.close()


def test_a_limit_lowered_elsewhere_is_seen_within_the_lease_life(shared_store, tmp_path):
    namespace = f"s{uuid.uuid4().hex[:10]}"
    n = _ledger(shared_store, namespace, True, str(tmp_path))
    try:
        for _ in range(3):
            n.settle(n.reserve(nanos=CALL, user="u"), nanos=CALL, background=True)
        assert n.stats.leased == 2
        lease = MAX_CALLS * CALL
        p = _fork.Process(target=_lower, args=(shared_store, namespace, str(tmp_path), 3 * CALL / 1e9))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        changed, spent, blocked_at = time.monotonic(), 3 * CALL, None
        while time.monotonic() - changed < LEASE_S + 2:
            try:
                r = n.reserve(nanos=CALL, user="u")
            except NascaBlockedError:
                blocked_at = time.monotonic() - changed
                break
            n.settle(r, nanos=CALL, background=True)
            spent += CALL
            time.sleep(0.1)  # slower than the lease's life uses it up: it ends by its age
        # Not seen at once (the lease was live), and seen once the lease ended.
        assert blocked_at is not None and 0.5 < blocked_at <= LEASE_S + 0.5
        # the stated bound: at most one lease over the new limit (plus one call, default admission)
        assert spent - 3 * CALL <= lease + CALL
        n.flush()
        assert n.get_usage("u").daily_spent * 10**9 == spent
    finally:
        n.close()


def _crash(store: str, namespace: str, state_dir: str, calls: int) -> None:
    n = _ledger(store, namespace, True, state_dir, hold_ttl=MIN_HOLD_TTL_S)
    assert n.deferred.sender is not None
    n.deferred.sender.stop()  # its settles stay queued (journaled), as if the sender were behind
    for _ in range(calls):
        n.settle(n.reserve(nanos=CALL, user="u"), nanos=CALL, background=True)
    assert n.stats.leased == calls - 1 and len(n.deferred) >= calls - 1
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_process_killed_holding_a_lease_loses_nothing(shared_store, tmp_path):
    namespace = f"k{uuid.uuid4().hex[:10]}"
    calls = 20
    p = _fork.Process(target=_crash, args=(shared_store, namespace, str(tmp_path), calls))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    n = _ledger(shared_store, namespace, False, str(tmp_path))  # adopts the dead process's journal
    try:
        n.flush()
        assert n.stats.deferred_replayed >= calls - 1
        keys, now_ms = n.user_keys("u"), int(n.now() * 1000)
        snap = n.store.sync.snapshot(keys, now_ms)
        assert snap.spent[0] == calls * CALL  # every settle once
        # The lease's hold ends with its expiry (the shortest hold_ttl a lease is taken with).
        assert n.store.sync.snapshot(keys, now_ms + int(MIN_HOLD_TTL_S * 1000) + 1_000).held == 0
    finally:
        n.close()


CAP = 4


def _fill(store: str, namespace: str, state_dir: str, gate: Any, out: Any) -> None:
    # A lease first (a plain call teaches it, the next takes it), then calls held until refused.
    n = Nasca(store, tiers={"free": Tier(daily=LIMIT / 1e9, max_in_flight=CAP)}, default_tier="free",
              namespace=namespace, leases=True, state_dir=state_dir)
    for _ in range(2):
        n.settle(n.reserve(nanos=CALL, user="u"), nanos=CALL)
    leased = n.stats.leased
    gate.wait(30)
    held = []
    while True:
        try:
            held.append(n.reserve(nanos=CALL, user="u"))
        except NascaBlockedError:
            break
    gate.wait(30)  # every process holds its calls until all were refused
    out.put((len(held), leased, sum(r.hold_id in n.leases.calls for r in held)))
    for r in held:
        n.settle(r, nanos=CALL)
    n.close()


def test_the_in_flight_cap_is_exact_across_processes_holding_leases(shared_store, tmp_path):
    # Was: each process's lease admitted CAP calls, counted as one call by the others: 3 x 4.
    namespace, out = f"c{uuid.uuid4().hex[:10]}", _fork.Queue()
    gate = _fork.Barrier(PROCESSES)
    procs = [_fork.Process(target=_fill, args=(shared_store, namespace, str(tmp_path), gate, out))
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert sum(held for held, _, _ in got) == CAP
    assert all(leased == 1 for _, leased, _ in got)  # each took a lease before
