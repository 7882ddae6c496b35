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
from typing import Any

import pytest

from nasca_core import Nasca, StoreError, Tier, _journal_home
from nasca_core._journal import Journal, encode
from tests.conftest import RedisProcess, _free_port, _need_redis

TIERS = {"free": Tier(daily=1, monthly=5)}


def located(n: Nasca) -> Nasca:
    """``n`` once it has read the store's id and adopted what that found (off its build)."""
    assert n.deferred.located.wait(10)
    return n


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


# -- the journal directory is the store's, not the address's -------------------------------
def _at(host: str, port: int) -> str:
    return f"redis://{host}:{port}/0?socket_connect_timeout=0.3&socket_timeout=0.5"


def _build_then_defer(url: str, namespace: str, state_dir: str, costs: list[str], ready: Any, go: Any,
                      forget: bool) -> None:
    from nasca_core import _journal_home

    if forget:  # as a process started afresh, with nothing read from the store before
        _journal_home._known.clear()
    n = Nasca(url, tiers=TIERS, default_tier="free", namespace=namespace, state_dir=state_dir,
              on_store_error="allow")
    n.deferred.located.wait(0.0 if forget else 10)  # the id, once read, names its directory
    ready.put(str(n.deferred.journal.directory))
    go.get(timeout=30)  # the store has gone away
    for cost in costs:
        n.settle(n.reserve(cost, user="u1"), cost)
    os.kill(os.getpid(), signal.SIGKILL)


def _defer_in_a_child(url: str, namespace: str, state: Path, costs: list[str], stop: Any,
                      forget: bool = False) -> Path:
    """A worker builds its Nasca, the store goes away (``stop``), the worker defers ``costs``
    and is killed. Returns the directory it journaled in."""
    ctx = multiprocessing.get_context("fork")
    ready, go = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_build_then_defer, args=(url, namespace, str(state), costs, ready, go, forget))
    proc.start()
    directory = Path(ready.get(timeout=30))
    stop()
    go.put(1)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert sum(p.read_text().count('"s"') for p in directory.glob("*.jsonl")) == len(costs)
    return directory


@pytest.mark.redis
def test_a_journal_written_through_localhost_is_replayed_through_127_0_0_1(tmp_path):
    _need_redis()
    port, state, data = _free_port(), tmp_path / "state", tmp_path / "redis"
    data.mkdir()
    namespace = f"j{uuid.uuid4().hex[:8]}"
    server = RedisProcess(port, data, "--appendonly", "yes")  # the store id outlives the restart
    directory = _defer_in_a_child(_at("localhost", port), namespace, state, ["0.10", "0.25"], server.stop)
    orphans = list(directory.glob("*.jsonl"))
    server = RedisProcess(port, data, "--appendonly", "yes")
    try:
        n = located(Nasca(_at("127.0.0.1", port), tiers=TIERS, default_tier="free", namespace=namespace,
                          state_dir=str(state)))
        assert n.stats.deferred_replayed == 2
        assert n.get_usage("u1").daily_spent == Decimal("0.35")
        assert not any(p.exists() for p in orphans)
        n.close()
    finally:
        server.stop()


@pytest.mark.redis
def test_a_worker_that_never_reached_the_store_is_replayed_once_its_address_is_known(tmp_path, caplog):
    """Built while the store was down, a worker can't read the id: it journals under its
    address (as earlier releases did). Another address doesn't find that; the next Nasca on
    the same address reads the id, records the address under it, and replays it."""
    _need_redis()
    port, state, data = _free_port(), tmp_path / "state", tmp_path / "redis"
    data.mkdir()
    namespace = f"j{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, logger="nasca"):
        directory = _defer_in_a_child(_at("localhost", port), namespace, state, ["0.05"], lambda: None,
                                      forget=True)
    assert not directory.name.startswith("id-")
    server = RedisProcess(port, data, "--appendonly", "yes")
    try:
        kw: dict[str, Any] = dict(tiers=TIERS, default_tier="free", namespace=namespace, state_dir=str(state))
        other = located(Nasca(_at("127.0.0.1", port), **kw))
        assert other.stats.deferred_replayed == 0  # nothing links that address to this store yet
        same = located(Nasca(_at("localhost", port), **kw))
        assert same.stats.deferred_replayed == 1
        assert other.get_usage("u1").daily_spent == Decimal("0.05")
        # From now on a worker on "localhost" that can't reach the store journals by the id.
        server.stop()
        again = _defer_in_a_child(_at("localhost", port), namespace, state, ["0.01"], lambda: None,
                                  forget=True)
        assert again.name.startswith("id-")  # the id read through "localhost" names it
        other.close()
        same.close()
    finally:
        server.stop()


def _defer_with_the_store_refusing(uri: str, kw: dict[str, Any], cost: str) -> None:
    """In a worker that is then killed: a settle the store refuses. Used where the store
    can't be stopped for one process (the session's cluster, a file others use)."""
    def worker() -> None:
        n = located(Nasca(uri, on_store_error="allow", **kw))  # a worker that ran a while

        def down(op: Any) -> Any:
            raise StoreError("the store went away")
        n.store.sync.settle = down  # type: ignore[method-assign]
        n.settle(n.reserve(cost, user="u1"), cost)
        os.kill(os.getpid(), signal.SIGKILL)

    proc = multiprocessing.get_context("fork").Process(target=worker)
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL


@pytest.mark.cluster
def test_cluster_node_lists_in_another_order_share_one_journal(cluster_url, tmp_path):
    nodes = cluster_url.split("://", 1)[1].split(",")
    reordered = "redis+cluster://" + ",".join(reversed(nodes))
    namespace, state = f"j{uuid.uuid4().hex[:8]}", tmp_path / "state"
    kw: dict[str, Any] = dict(tiers=TIERS, default_tier="free", namespace=namespace, state_dir=str(state))
    _defer_with_the_store_refusing(cluster_url, kw, "0.20")
    [journal] = list(state.rglob("*.jsonl"))
    n = located(Nasca(reordered, **kw))
    assert n.stats.deferred_replayed == 1 and not journal.exists()
    assert n.get_usage("u1").daily_spent == Decimal("0.20")
    one = located(Nasca(f"redis+cluster://{nodes[-1]}", **kw))  # one node of them: the same store
    again = Nasca(f"redis+cluster://{nodes[-1]}", **kw)  # its id now known for that address
    store_id = _journal_home._known[(str(n.store.identity), namespace)]
    assert again.deferred.journal.directory.name == f"id-{store_id}"
    again.close()
    one.close()
    n.close()


def test_the_store_id_is_read_once_per_process(tmp_path, monkeypatch):
    from nasca_core.stores.sqlite import SqliteStore

    reads: list[str] = []
    real = SqliteStore.store_id
    monkeypatch.setattr(SqliteStore, "store_id", lambda self, ns: reads.append(ns) or real(self, ns))
    uri = f"sqlite:///{tmp_path}/once.db"
    made = [Nasca(uri, tiers=TIERS, default_tier="free", state_dir=str(tmp_path)) for _ in range(3)]
    for n in made:
        for _ in range(5):
            n.settle(n.reserve("0.01", user="u1"), "0.01")
        located(n)
    assert reads == ["nasca"]  # by one of them, off their builds; the others wait for it
    other = located(Nasca(uri, tiers=TIERS, default_tier="free", namespace="other", state_dir=str(tmp_path)))
    assert reads == ["nasca", "other"]
    assert other.deferred.journal.directory != made[0].deferred.journal.directory
    for n in (*made, other):
        n.close()


def test_a_moved_sqlite_file_keeps_its_journal(tmp_path):
    """The id lives in the file: a journal left for ``a/ledger.db`` is replayed after the
    file is moved to ``b/ledger.db`` (a new mount, a renamed directory)."""
    from nasca_core import _journal_home

    (tmp_path / "a").mkdir()
    kw: dict[str, Any] = dict(tiers=TIERS, default_tier="free", state_dir=str(tmp_path / "state"))
    _defer_with_the_store_refusing(f"sqlite:///{tmp_path}/a/ledger.db", kw, "0.03")
    [journal] = list((tmp_path / "state").rglob("*.jsonl"))
    os.rename(tmp_path / "a", tmp_path / "b")
    _journal_home._known.clear()  # as a new process
    moved = located(Nasca(f"sqlite:///{tmp_path}/b/ledger.db", **kw))
    assert not journal.exists()
    assert moved.stats.deferred_replayed == 1 and moved.get_usage("u1").daily_spent == Decimal("0.03")
    moved.close()


def test_a_store_that_lost_its_data_under_the_same_address_gets_its_old_journals(tmp_path, caplog):
    """A new store where the old one was (its data lost, the file replaced): its id is new,
    and the old id's dead-process settles are replayed into it, as when the address named
    the journal, and said so."""
    from nasca_core import _journal_home

    uri = f"sqlite:///{tmp_path}/l.db"
    kw: dict[str, Any] = dict(tiers=TIERS, default_tier="free", state_dir=str(tmp_path / "s"))
    _defer_with_the_store_refusing(uri, kw, "0.07")
    [journal] = list((tmp_path / "s").rglob("*.jsonl"))
    for name in ("l.db", "l.db-wal", "l.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)  # a new, empty store at the same path
    _journal_home._known.clear()
    with caplog.at_level(logging.WARNING, logger="nasca"):
        again = located(Nasca(uri, **kw))
    assert "is not the one it was" in caplog.text and not journal.exists()
    assert again.stats.deferred_replayed == 1 and again.get_usage("u1").daily_spent == Decimal("0.07")
    again.close()
    _journal_home._known.clear()
    twice = located(Nasca(uri, **kw))
    assert twice.stats.deferred_replayed == 0 and twice.get_usage("u1").daily_spent == Decimal("0.07")
    twice.close()


def test_a_copied_sqlite_file_never_takes_the_original_s_journal(tmp_path):
    """``cp ledger.db backup.db`` copies the id too: the copy, another file, makes its own
    (the id is kept with the file's device and inode), so the original's dead-process
    settles are replayed into the original, never into the copy."""
    import shutil

    from nasca_core import _journal_home

    prod, copy = tmp_path / "ledger.db", tmp_path / "backup.db"
    kw: dict[str, Any] = dict(tiers=TIERS, default_tier="free", state_dir=str(tmp_path / "state"))
    Nasca(f"sqlite:///{prod}", **kw).close()
    shutil.copy(prod, copy)
    _defer_with_the_store_refusing(f"sqlite:///{prod}", kw, "0.40")
    _journal_home._known.clear()  # as a new process
    backup = located(Nasca(f"sqlite:///{copy}", **kw))
    assert backup.stats.deferred_replayed == 0 and backup.get_usage("u1").daily_spent == 0
    backup.close()
    _journal_home._known.clear()
    again = located(Nasca(f"sqlite:///{prod}", **kw))
    assert again.stats.deferred_replayed == 1 and again.get_usage("u1").daily_spent == Decimal("0.40")
    again.close()


def test_building_a_nasca_never_waits_for_the_store(tmp_path):
    """The store's id is read off the build: against a socket that never answers (redis-py
    before 8 has no socket timeout) a Nasca is built at once, from sync or async code."""
    import socket
    import time

    import redis

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connects, never answers
    try:
        client = redis.Redis(host="127.0.0.1", port=silent.getsockname()[1], socket_timeout=None)
        started = time.monotonic()
        n = Nasca(store=client, tiers=TIERS, default_tier="free", state_dir=str(tmp_path),
                  namespace=f"j{uuid.uuid4().hex[:8]}")
        assert time.monotonic() - started < 1.0
        assert not n.deferred.located.is_set()  # still waiting, on its own thread
    finally:
        silent.close()


@pytest.mark.redis
def test_the_store_id_is_read_without_a_write_once_made(redis_url):
    """An id already made is only read: a replica, or a user whose ACL forbids writes, reads it."""
    import redis

    namespace = f"j{uuid.uuid4().hex[:8]}"
    n = Nasca(redis_url, tiers=TIERS, default_tier="free", namespace=namespace)
    made = n.store.sync.store_id(namespace)
    admin = redis.Redis.from_url(redis_url)
    user = f"ro{uuid.uuid4().hex[:6]}"
    admin.acl_setuser(user, enabled=True, nopass=True, keys=["*"], commands=["+get", "+ping", "+client",
                                                                              "+hello", "+info"])
    try:
        reader = Nasca(redis.Redis.from_url(redis_url, username=user), tiers=TIERS, default_tier="free",
                       namespace=namespace)
        assert reader.store.sync.store_id(namespace) == made
        reader.close()
    finally:
        admin.acl_deluser(user)
        admin.close()
        n.close()
