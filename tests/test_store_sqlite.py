"""The SQLite store on real files: many processes on one file, a holder killed with SIGKILL,
its URI, its layout version and its failures (the contract suite runs it beside memory and
Redis; tests/test_ledger_properties.py against the reference model)."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sqlite3
import time
import uuid
from contextlib import suppress
from decimal import Decimal
from pathlib import Path

import pytest

from nasca_core import ConfigurationError, Nasca, NascaBlockedError, StoreError, Tier
from nasca_core.stores import UserKeys
from nasca_core.stores._sqlite_schema import connect
from nasca_core.stores.sqlite import SqliteStore

COST = Decimal("0.07")


def _spender(uri: str, namespace: str, strict: bool, start: float, out: multiprocessing.Queue) -> None:
    n = Nasca(uri, tiers={"t": Tier(monthly=1)}, default_tier="t", namespace=namespace, strict=strict)
    charged = 0
    while time.time() < start:  # every process starts together
        time.sleep(0.001)
    while True:
        try:
            r = n.reserve(COST, user="hot")
        except NascaBlockedError:
            break
        charged += n.settle(r, COST).cost_nanos
    n.close()
    out.put(charged)


@pytest.mark.parametrize("strict", [False, True])
def test_many_processes_one_user_one_file(tmp_path, strict):
    """Six processes spend one user's $1 on one file: what the file counts is what was
    charged, and the overshoot stays within admission's bound (none when strict)."""
    uri, namespace = f"sqlite:///{tmp_path}/shared.db", f"mp{uuid.uuid4().hex[:8]}"
    Nasca(uri, tiers={"t": Tier(monthly=1)}, default_tier="t", namespace=namespace).close()  # creates it
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_spender, args=(uri, namespace, strict, start, out)) for _ in range(6)]
    for p in procs:
        p.start()
    charged = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    n = Nasca(uri, tiers={"t": Tier(monthly=1)}, default_tier="t", namespace=namespace)
    u = n.get_usage("hot")
    assert u.monthly_spent * 10**9 == charged and u.in_flight == 0
    assert u.month_calls == charged // 70_000_000
    over = u.monthly_spent - 1
    assert over <= (0 if strict else COST) and u.monthly_spent >= 1 - COST


def _hold_then_spin(uri: str, namespace: str, ready: multiprocessing.Queue) -> None:
    n = Nasca(uri, tiers={"t": Tier(monthly=100)}, default_tier="t", namespace=namespace, hold_ttl=HOLD_S)
    done = 0
    while True:  # write transactions back to back until killed
        n.settle(n.reserve("0.01", user="busy"), "0.01")
        done += 1
        if done == 200:  # late, so the hold is young when the parent looks at it
            n.reserve("0.50", user="victim")  # this hold's process never settles it
            ready.put(-done)
        elif done % 50 == 0:
            ready.put(done)


HOLD_S = 2.0


def test_sigkilled_holder_leaves_an_intact_file_and_its_hold_expires(tmp_path):
    uri, namespace = f"sqlite:///{tmp_path}/kill.db", f"k{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Queue()
    proc = ctx.Process(target=_hold_then_spin, args=(uri, namespace, ready))
    proc.start()
    while ready.get(timeout=30) > 0:
        pass  # until the victim's hold is taken
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of a write transaction, likely
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    reported = 200
    with suppress(queue.Empty):  # what the child said before it died, without waiting
        while True:
            reported = max(reported, ready.get_nowait())
    conn = sqlite3.connect(tmp_path / "kill.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    n = Nasca(uri, tiers={"t": Tier(monthly=100)}, default_tier="t", namespace=namespace)
    assert n.get_usage("victim").in_flight == Decimal("0.50")
    busy = n.get_usage("busy")
    # Every settle the child said it committed is there; a few more may have committed unsaid
    # (and a report or two may have died in the queue's feeder thread with it).
    assert reported <= busy.month_calls <= reported + 150
    assert busy.monthly_spent == Decimal("0.01") * busy.month_calls
    time.sleep(HOLD_S + 0.2)  # the dead process's hold expires by itself: nothing to clean up
    assert n.get_usage("victim").in_flight == 0
    n.settle(n.reserve("0.99", user="victim"), "0.99")
    assert n.get_usage("victim").monthly_spent == Decimal("0.99")


def test_uri_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = Nasca("sqlite:///rel.db", tiers={"t": Tier(daily=1)}, default_tier="t")
    rel.settle(rel.reserve("0.25", user="u"), "0.25")
    rel.close()
    assert (tmp_path / "rel.db").exists()
    absolute = Nasca(f"sqlite:///{tmp_path}/rel.db", tiers={"t": Tier(daily=1)}, default_tier="t")
    assert absolute.get_usage("u").daily_spent == Decimal("0.25")  # the same file
    assert "sqlite" in repr(absolute)
    absolute.close()


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite://host/x.db",
                                 "sqlite:///no/such/dir/x.db", "sqlite:///x.db?mode=ro"])
def test_malformed_sqlite_uris(uri):
    with pytest.raises(ConfigurationError, match="SQLite"):
        Nasca(uri, tiers={"t": Tier(daily=1)}, default_tier="t")


def test_a_file_of_another_layout_or_not_a_database_is_refused(tmp_path):
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ConfigurationError, match=r"layout version 99.*upgrade Nasca"):
        Nasca(f"sqlite:///{newer}", tiers={"t": Tier(daily=1)}, default_tier="t")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is no database" * 100)
    with pytest.raises(ConfigurationError, match="Can't open"):
        Nasca(f"sqlite:///{junk}", tiers={"t": Tier(daily=1)}, default_tier="t")


def test_a_file_locked_past_the_timeout_is_a_store_error(tmp_path):
    path = str(tmp_path / "locked.db")
    store = SqliteStore(path, timeout=0.2)
    keys = UserKeys.build("ns", "u", ("d", "w", "m"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with pytest.raises(StoreError, match="SQLite store unavailable"):
            store.set_user_tier(keys, "pro")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.snapshot(keys, 0).stored_tier is None  # nothing was written
    store.set_user_tier(keys, "pro")  # and it works again once the lock is gone
    assert store.snapshot(keys, 0).stored_tier == "pro"
    store.close()


def test_expired_rows_are_swept_without_a_cron(tmp_path, monkeypatch):
    import nasca_core.stores.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_SWEEP_EVERY", 50)
    clock = {"now": 1_795_003_200.0}
    n = Nasca(f"sqlite:///{tmp_path}/sweep.db", tiers={"t": Tier(daily=100)}, default_tier="t",
              clock=lambda: clock["now"])
    for day in range(30):
        n.settle(n.reserve("0.01", user=f"u{day}"), "0.01")
        clock["now"] += 86400
    for _ in range(60):
        n.settle(n.reserve("0.01", user="today"), "0.01")
    conn = sqlite3.connect(Path(tmp_path) / "sweep.db")
    days = conn.execute("SELECT COUNT(*) FROM counter").fetchone()[0]
    conn.close()
    # Only windows still open survive (today's and this week's counters); thirty days of
    # users' old day counters are gone.
    assert days <= 6
    n.close()


def test_a_file_locked_by_another_process_is_a_store_error_not_a_config_error(tmp_path) -> None:
    path = str(tmp_path / "locked.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write on a brand-new file
    try:
        with pytest.raises(StoreError, match="busy"):
            connect(path, 0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    connect(path, 0.05).close()  # and once it lets go, the store opens


def _plans(conn: sqlite3.Connection) -> list[str]:
    from nasca_core.stores._sqlite_schema import SWEEP

    return [" ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (0,))) for sql in SWEEP]


def _migrate(uri: str) -> int:
    from nasca_core.cli import main

    return main(["migrate", "--store", uri, "--namespace", "x"])


def test_every_sweep_query_uses_an_expiry_index(tmp_path):
    store = SqliteStore(str(tmp_path / "plan.db"))
    conn = sqlite3.connect(tmp_path / "plan.db")
    plans = _plans(conn)
    conn.close()
    store.close()
    assert len(plans) == 5
    for table, plan in zip(("counter", "month", "hold", "settled", "marker"), plans, strict=True):
        assert plan.startswith(f"SEARCH {table} USING COVERING INDEX {table}_expires (expires"), plan


def test_a_file_written_without_the_expiry_indexes_gets_them_at_open(tmp_path):
    """A layout-1 file from before the counter/month/marker indexes: opening it adds them
    (the version stays 1, so an older release still reads it), its data intact."""
    from nasca_core.stores._sqlite_schema import SCHEMA

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(f"{SCHEMA} PRAGMA user_version = 1;")
    old.execute("INSERT INTO counter VALUES ('ns:{x}:u:d:1', 5, 9999999999999)")
    old.commit()
    assert [p.split(" ")[0] for p in _plans(old)] == ["SCAN", "SCAN", "SEARCH", "SEARCH", "SCAN"]
    old.close()
    assert _migrate(f"sqlite:///{path}") == 0
    conn = sqlite3.connect(path)
    assert all(p.startswith("SEARCH") for p in _plans(conn))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT value FROM counter").fetchall() == [(5,)]
    conn.close()


def test_opening_a_complete_file_takes_no_write_lock(tmp_path):
    """Every open but a file's first only reads the schema: a worker starting while another
    process holds the write lock is not held up by the index check."""
    path = str(tmp_path / "busy.db")
    connect(path, 1).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        connect(path, 2).close()
        assert time.monotonic() - started < 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_processes_opening_an_old_file_at_once_all_succeed(tmp_path):
    from nasca_core.stores._sqlite_schema import SCHEMA

    path = tmp_path / "race.db"
    old = sqlite3.connect(path)
    old.executescript(f"{SCHEMA} PRAGMA user_version = 1;")
    old.close()
    ctx = multiprocessing.get_context("fork")
    start = time.time() + 0.3

    def opener() -> None:
        while time.time() < start:
            time.sleep(0.001)
        connect(str(path), 10).close()

    procs = [ctx.Process(target=opener) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    conn = sqlite3.connect(path)
    assert {"counter_expires", "month_expires", "marker_expires", "store_id"} <= {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


def test_an_older_file_opened_read_only_is_used_without_the_new_indexes(tmp_path, caplog):
    """Indexes added since layout 1 are created at open; a file that can't be written (a
    read-only mount, a read-only connection) opens as it did before they existed."""
    import logging

    from nasca_core.stores._sqlite_schema import _add_missing

    path = tmp_path / "old.db"
    connect(str(path), 10).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX month_expires")
    conn.close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    with caplog.at_level(logging.WARNING, logger="nasca"):
        _add_missing(ro)  # raised "attempt to write a readonly database"
    assert "month_expires" in caplog.text and not ro.in_transaction
    assert ro.execute("SELECT count(*) FROM month").fetchone() == (0,)
    ro.close()
    connect(str(path), 10).close()  # writable again: created
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'month_expires'").fetchone() == (1,)
    conn.close()
