"""Deferred settles survive the process: journaled before ``settle`` returns, replayed by the
next Nasca on the same store and namespace once the owner is gone, deduplicated by hold id,
bounded, and visible in ``nasca.stats``. Real processes, a real Redis that goes away."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from nasca_core import Nasca, StoreError, Tier
from nasca_core._journal import Journal, encode
from tests.conftest import RedisProcess, _free_port, _need_redis

TIERS = {"free": Tier(daily=1, monthly=5)}


def _url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.3&socket_timeout=0.5"


def _defer_then_die(url: str, namespace: str, state_dir: str, costs: list[str]) -> None:
    n = Nasca(url, tiers=TIERS, default_tier="free", namespace=namespace, state_dir=state_dir,
              on_store_error="allow")
    for cost in costs:
        r = n.reserve(cost, user="u1")  # admitted unchecked: the store is down
        assert n.settle(r, cost).deferred
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit, no flush


def _run_and_kill(url: str, namespace: str, state_dir: Path, costs: list[str]) -> None:
    proc = multiprocessing.get_context("fork").Process(
        target=_defer_then_die, args=(url, namespace, str(state_dir), costs))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


@pytest.fixture
def port_and_dir(tmp_path):
    _need_redis()
    return _free_port(), tmp_path / "state"


def test_a_killed_process_s_deferred_settles_are_replayed_once(port_and_dir, tmp_path, caplog):
    port, state = port_and_dir
    namespace = f"j{uuid.uuid4().hex[:8]}"
    _run_and_kill(_url(port), namespace, state, ["0.10", "0.25"])  # Redis is not running at all
    [journal] = list(state.rglob("*.jsonl"))
    assert journal.read_text().count('"s"') == 2  # on disk before settle returned
    server = RedisProcess(port, tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="nasca"):
            n = Nasca(_url(port), tiers=TIERS, default_tier="free", namespace=namespace, state_dir=str(state))
        assert "replaying 2 settles deferred by a process that died" in caplog.text
        assert (n.stats.deferred_replayed, n.stats.deferred_retried, n.stats.deferred_pending) == (2, 2, 0)
        u = n.get_usage("u1")
        assert u.daily_spent == Decimal("0.35") and u.month_calls == 2
        assert not journal.exists()
        n.close()
        again = Nasca(_url(port), tiers=TIERS, default_tier="free", namespace=namespace, state_dir=str(state))
        assert again.stats.deferred_replayed == 0 and again.get_usage("u1").daily_spent == Decimal("0.35")
        other = Nasca(_url(port), tiers=TIERS, default_tier="free", namespace="another", state_dir=str(state))
        assert other.get_usage("u1").daily_spent == 0  # another namespace's journal is not its own
        again.close()
        other.close()
    finally:
        server.stop()


def test_replay_waits_for_the_store_and_dedupes_by_hold_id(port_and_dir, tmp_path):
    port, state = port_and_dir
    namespace = f"j{uuid.uuid4().hex[:8]}"
    _run_and_kill(_url(port), namespace, state, ["0.05"])
    [journal] = list(state.rglob("*.jsonl"))
    (journal.parent / "999-copy.jsonl").write_text(journal.read_text())  # the same hold twice
    # Built while the store is still down: it adopts the settle and keeps it (in its own journal).
    n = Nasca(_url(port), tiers=TIERS, default_tier="free", namespace=namespace, state_dir=str(state))
    assert n.stats.deferred_replayed == 1 and n.stats.deferred_pending == 1
    assert n.stats.deferred_pending_nanos == 50_000_000
    assert [p.name for p in journal.parent.glob("*.jsonl")] == [n.deferred.journal.path.name]
    server = RedisProcess(port, tmp_path)
    try:
        r = n.reserve("0.01", user="u1")
        n.settle(r, "0.01")  # the next settle flushes the queue first
        u = n.get_usage("u1")
        assert u.daily_spent == Decimal("0.06") and u.month_calls == 2
        assert n.stats.deferred_pending == 0 and n.deferred.journal.path.stat().st_size == 0
        n.close()
    finally:
        server.stop()


def test_a_live_owner_s_journal_is_left_alone(port_and_dir, tmp_path):
    port, state = port_and_dir
    kw = dict(tiers=TIERS, default_tier="free", namespace=f"j{uuid.uuid4().hex[:8]}", state_dir=str(state),
              on_store_error="allow")
    owner = Nasca(_url(port), **kw)
    owner.settle(owner.reserve("0.20", user="u1"), "0.20")
    server = RedisProcess(port, tmp_path)
    try:
        bystander = Nasca(_url(port), **kw)  # the owner still holds its journal's lock
        assert bystander.stats.deferred_replayed == 0 and bystander.get_usage("u1").daily_spent == 0
        owner.store.sync.client.connection_pool.disconnect()
        assert owner.flush_deferred() == 1
        assert bystander.get_usage("u1").daily_spent == Decimal("0.20")
        owner.close()
        bystander.close()
    finally:
        server.stop()


def test_entries_older_than_the_settled_marker_are_refused_and_kept(port_and_dir, tmp_path, caplog):
    port, state = port_and_dir
    namespace = f"j{uuid.uuid4().hex[:8]}"
    _run_and_kill(_url(port), namespace, state, ["0.05"])
    server = RedisProcess(port, tmp_path)
    try:
        two_hours_later = lambda: __import__("time").time() + 7200  # noqa: E731
        with caplog.at_level(logging.ERROR, logger="nasca"):
            n = Nasca(_url(port), tiers=TIERS, default_tier="free", namespace=namespace, state_dir=str(state),
                      clock=two_hours_later)
        assert n.stats.deferred_refused == 1 and n.stats.deferred_replayed == 0
        assert "could charge twice" in caplog.text
        [aside] = list(state.rglob("*.refused"))
        assert json.loads(aside.read_text())["s"]["c"] == 50_000_000  # kept for the owner to judge
        assert n.get_usage("u1").daily_spent == 0
        n.close()
    finally:
        server.stop()


def test_the_queue_is_bounded_and_a_full_one_is_an_error(port_and_dir):
    port, state = port_and_dir
    n = Nasca(_url(port), tiers=TIERS, default_tier="free", namespace=f"j{uuid.uuid4().hex[:8]}",
              state_dir=str(state), on_store_error="allow")
    n.deferred.limit = 2  # a small bound instead of 100,000 settles
    for _ in range(2):
        assert n.settle(n.reserve("0.01", user="u1"), "0.01").deferred
    with pytest.raises(StoreError, match="already pending"):
        n.settle(n.reserve("0.01", user="u1"), "0.01")
    assert n.stats.deferred_pending == 2


def test_an_unwritable_journal_keeps_the_settle_in_memory_and_says_so(port_and_dir, tmp_path, caplog):
    port, _ = port_and_dir
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    n = Nasca(_url(port), tiers=TIERS, default_tier="free", state_dir=str(blocker), on_store_error="allow",
              namespace=f"j{uuid.uuid4().hex[:8]}")
    with caplog.at_level(logging.ERROR, logger="nasca"):
        assert n.settle(n.reserve("0.01", user="u1"), "0.01").deferred
    assert "kept in memory only" in caplog.text
    assert n.stats.deferred_unjournaled == 1 and n.stats.deferred_pending == 1
    server = RedisProcess(port, tmp_path)
    try:
        n.store.sync.client.connection_pool.disconnect()
        assert n.flush_deferred() == 1 and n.get_usage("u1").daily_spent == Decimal("0.01")
    finally:
        server.stop()


def test_no_journal_for_memory(tmp_path):
    n = Nasca("memory://", tiers=TIERS, default_tier="free", state_dir=str(tmp_path))
    assert n.deferred.journal is None and n.store.identity is None


def test_a_line_cut_by_a_crash_is_skipped_and_applied_settles_are_not_pending():
    from nasca_core._journal import pending_in
    from nasca_core.stores import SettleOp, UserKeys

    def op(hold_id: str, cost: int) -> SettleOp:
        return SettleOp(keys=UserKeys.build("ns", "u1", ("d", "w", "m")), now_ms=1, hold_id=hold_id,
                        estimate=cost, cost=cost, tier="free", tiers_json="{}",
                        tier_compiled=(-1, -1, -1, 0, 0, 0), ttls_ms=(1000, 1000, 1000),
                        marker_expiry_ms=2, input_tokens=3, output_tokens=4)

    a, b, c = encode(op("a", 1)), encode(op("b", 2)), encode(op("c", 3))
    ops = pending_in(iter([a, b, a, json.dumps({"d": "b"}) + "\n", c[: len(c) // 2]]))
    assert ops == [op("a", 1)]  # b was applied, c was cut mid-write, a counted once


def test_a_forked_worker_journals_apart_from_its_parent(port_and_dir, tmp_path):
    """gunicorn --preload: the parent built Nasca and deferred a settle, then forked a
    worker that deferred its own and was killed. Only the worker's journal is an orphan."""
    port, state = port_and_dir
    kw = dict(tiers=TIERS, default_tier="free", namespace=f"j{uuid.uuid4().hex[:8]}", state_dir=str(state),
              on_store_error="allow")
    parent = Nasca(_url(port), **kw)
    parent.settle(parent.reserve("0.10", user="u1"), "0.10")
    proc = multiprocessing.get_context("fork").Process(
        target=lambda: (parent.settle(parent.reserve("0.02", user="u1"), "0.02"),
                        os.kill(os.getpid(), signal.SIGKILL)))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert len(list(state.rglob("*.jsonl"))) == 2
    server = RedisProcess(port, tmp_path)
    try:
        adopter = Nasca(_url(port), **kw)
        assert adopter.stats.deferred_replayed == 1  # the worker's 0.02; the parent still holds its lock
        assert adopter.get_usage("u1").daily_spent == Decimal("0.02")
        parent.store.sync.client.connection_pool.disconnect()
        assert parent.flush_deferred() == 1  # the parent's own, once
        assert adopter.get_usage("u1").daily_spent == Decimal("0.12")
        parent.close()
        adopter.close()
    finally:
        server.stop()


def test_a_new_journal_is_never_taken_for_a_dead_ones(tmp_path: Path) -> None:
    # Another process scanning for dead journals while this one creates its own must never
    # adopt (and delete) the new file in the moment before its owner locks it.
    stop = threading.Event()
    adopted: list[Path] = []

    def scan() -> None:
        scanner = Journal(tmp_path)
        while not stop.is_set():
            adopted.extend(path for path, _ in scanner.orphans())

    thread = threading.Thread(target=scan)
    thread.start()
    try:
        journals = []
        for _ in range(300):
            j = Journal(tmp_path)
            j.append('{"d": "x"}\n')
            journals.append(j)
            assert j.path is not None and j.path.exists()
    finally:
        stop.set()
        thread.join()
    assert adopted == []
    assert all(j.path is not None and os.fstat(j._fd).st_nlink == 1 for j in journals)  # type: ignore[arg-type]
    for j in journals:
        j.close()
