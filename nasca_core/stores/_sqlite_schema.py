"""The SQLite store's tables, its layout version, and how a connection is opened.

One row per Redis key (or per member of a Redis set, hash or zset), each carrying its own
expiry in epoch ms (0 = never): rows expire lazily, read as absent once past it, and a sweep
every few thousand writes deletes them, so no cron is needed. A user is named by the meta
key of its ``UserKeys`` (which holds the namespace and the user's tag).

    counter   day and week spend          key -> value, expires
    month     a user's month hash         key -> s (windowed spend), c (AI cost), k (paid by
                                                 credits), n (calls), ti / tout (tokens)
    hold      live holds                  (user, member "<hold id>:<estimate>") -> amount, expires
    settled   settled hold ids            (user, hold id) -> expires  (dedupes retried settles)
    meta      stored tier, lot sequence   user -> tier, lotseq, lim / bo (the user's own limits and
              and boosts                          boosts, JSON: ``_effective``), an (the billing-cycle
                                                 anchor spec: ``_windows.anchored_month``)
    lot       credit lots                 (user, lot id) -> seq, amounts, expiry, revoked, taken, floor
    config / config_version               the owner-editable config and its version
    marker    billing's keyed texts       key -> value, expires
    entry     billing's keyed sets        (key, name) -> value
    sub       subscriptions               (user, sub id) -> JSON record
    an_*      analytics per (namespace, YYYYMM): counters, users, steps, revenue
    store_id  the store's id per namespace (it keys the journal of deferred settles), as
              "<id> <device>:<inode>" of the file it was made in (``own_id``)

Indexes and tables added since layout 1 shipped are additive: an older file keeps its
version (an older release still reads it) and ``connect`` creates what it lacks.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from nasca_core._errors import ConfigurationError, StoreError
from nasca_core.stores._base import Lot

log = logging.getLogger("nasca")
LAYOUT_VERSION = 1  # PRAGMA user_version of a store this release writes

SCHEMA = """
CREATE TABLE IF NOT EXISTS counter (key TEXT PRIMARY KEY, value INTEGER NOT NULL,
  expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS month (key TEXT PRIMARY KEY, s INTEGER NOT NULL DEFAULT 0,
  c INTEGER NOT NULL DEFAULT 0, k INTEGER NOT NULL DEFAULT 0, n INTEGER NOT NULL DEFAULT 0,
  ti INTEGER NOT NULL DEFAULT 0, tout INTEGER NOT NULL DEFAULT 0, expires INTEGER NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hold (user TEXT NOT NULL, member TEXT NOT NULL, amount INTEGER NOT NULL,
  expires INTEGER NOT NULL, PRIMARY KEY (user, member)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS hold_expires ON hold (expires);
CREATE TABLE IF NOT EXISTS settled (user TEXT NOT NULL, hold_id TEXT NOT NULL, expires INTEGER NOT NULL,
  PRIMARY KEY (user, hold_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS settled_expires ON settled (expires);
CREATE TABLE IF NOT EXISTS meta (user TEXT PRIMARY KEY, tier TEXT, lotseq INTEGER NOT NULL DEFAULT 0,
  lim TEXT, bo TEXT, an TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lot (user TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
  pack TEXT NOT NULL, paid INTEGER NOT NULL, currency TEXT NOT NULL, granted INTEGER NOT NULL,
  remaining INTEGER NOT NULL, expires INTEGER NOT NULL, created INTEGER NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0, taken INTEGER NOT NULL DEFAULT 0,
  floor INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (user, id))
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS config (namespace TEXT NOT NULL, section TEXT NOT NULL, name TEXT NOT NULL,
  value TEXT NOT NULL, PRIMARY KEY (namespace, section, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS config_version (namespace TEXT PRIMARY KEY, version INTEGER NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marker (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires INTEGER NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sub (user TEXT NOT NULL, sub_id TEXT NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (user, sub_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS an_count (namespace TEXT NOT NULL, month TEXT NOT NULL, name TEXT NOT NULL,
  value INTEGER NOT NULL, PRIMARY KEY (namespace, month, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS an_user (namespace TEXT NOT NULL, month TEXT NOT NULL, user TEXT NOT NULL,
  blocked INTEGER NOT NULL DEFAULT 0, orders INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (namespace, month, user)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS an_revenue (namespace TEXT NOT NULL, month TEXT NOT NULL,
  currency TEXT NOT NULL, user TEXT NOT NULL, value INTEGER NOT NULL,
  PRIMARY KEY (namespace, month, currency, user)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS an_step (namespace TEXT NOT NULL, month TEXT NOT NULL, kind TEXT NOT NULL,
  prompt_id TEXT NOT NULL, PRIMARY KEY (namespace, month, kind, prompt_id)) WITHOUT ROWID;
"""

# Added to layout 1 after it shipped, by name: created at open where missing.
ADDED = {
    "counter_expires": "CREATE INDEX IF NOT EXISTS counter_expires ON counter (expires)",
    "month_expires": "CREATE INDEX IF NOT EXISTS month_expires ON month (expires)",
    "marker_expires": "CREATE INDEX IF NOT EXISTS marker_expires ON marker (expires)",
    "entry": "CREATE TABLE IF NOT EXISTS entry (key TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, "
             "PRIMARY KEY (key, name)) WITHOUT ROWID",
    "store_id": "CREATE TABLE IF NOT EXISTS store_id (namespace TEXT PRIMARY KEY, id TEXT NOT NULL) "
                "WITHOUT ROWID",
    # a data-protection request finds one user's analytics rows (``_user_data``)
    "an_user_by_user": "CREATE INDEX IF NOT EXISTS an_user_by_user ON an_user (namespace, user)",
    "an_revenue_by_user": "CREATE INDEX IF NOT EXISTS an_revenue_by_user ON an_revenue (namespace, user)",
}

# Every sweep finds its rows through an expiry index: a sweep costs what it deletes, not
# the table (tests/test_store_sqlite.py reads the query plans).
SWEEP = ("DELETE FROM counter WHERE expires <= ?", "DELETE FROM month WHERE expires <= ?",
         "DELETE FROM hold WHERE expires <= ?", "DELETE FROM settled WHERE expires <= ?",
         "DELETE FROM marker WHERE expires > 0 AND expires <= ?")


def connect(path: str, timeout: float) -> sqlite3.Connection:
    """Open (and on first use create) the store file. Raises ConfigurationError for a file
    another layout version wrote, or one that is not a database."""
    # Autocommit mode: each operation opens its own BEGIN IMMEDIATE transaction.
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        # WAL: readers never wait for the writer and a commit needs no fsync; with
        # synchronous=NORMAL a committed transaction survives a process crash (a power loss
        # may lose the last few, which the README says).
        _wal(conn, timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:  # a new file: two processes racing here both run idempotent DDL
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} {'; '.join(ADDED.values())}; "
                               f"PRAGMA user_version = {LAYOUT_VERSION}; COMMIT;")
        elif version == LAYOUT_VERSION:
            _add_missing(conn)
            _add_taken(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
            # Another process holds the file right now: a store fault (a settle is deferred,
            # not lost), not a bad configuration.
            raise StoreError(f"SQLite store {path!r} busy: {exc}") from None
        raise ConfigurationError(f"Can't open the SQLite store {path!r}: {exc}") from None
    if version not in (0, LAYOUT_VERSION):
        conn.close()
        raise ConfigurationError(
            f"The SQLite store {path!r} has layout version {version}; this Nasca reads version "
            f"{LAYOUT_VERSION}: {'upgrade Nasca' if version > LAYOUT_VERSION else 'run nasca migrate'}.")
    return conn


def own_id(c: sqlite3.Connection, namespace: str, path: str) -> str | None:
    """The file's id for ``namespace``, None when it has none yet or the one it has was made
    in another file: ``cp ledger.db backup.db`` copies the row, and the copy sharing the
    original's id would share its journal, replaying the original's deferred settles into
    the copy. A moved file (``mv``, a renamed directory) keeps its inode and its id."""
    row = c.execute("SELECT id FROM store_id WHERE namespace = ?", (namespace,)).fetchone()
    if row is None:
        return None
    found, _, made_in = str(row[0]).partition(" ")
    return found if made_in == _file(path) else None


def new_id(c: sqlite3.Connection, namespace: str, path: str) -> str:
    made = uuid.uuid4().hex
    c.execute("INSERT INTO store_id VALUES (?, ?) ON CONFLICT (namespace) DO UPDATE SET id = excluded.id",
              (namespace, f"{made} {_file(path)}"))
    return made


def _file(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def _wal(conn: sqlite3.Connection, timeout: float) -> None:
    # Switching a file to WAL takes a lock SQLite does not wait for (no busy handler): of
    # several processes opening a new or an old file at once, some got "database is locked".
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _add_missing(conn: sqlite3.Connection) -> None:
    # Read first: a file that has everything (every open but the first) takes no write lock.
    names = ", ".join("?" * len(ADDED))
    present = {row[0] for row in conn.execute(f"SELECT name FROM sqlite_master WHERE name IN ({names})",
                                               tuple(ADDED))}
    missing = [sql for name, sql in ADDED.items() if name not in present]
    if not missing:
        return
    try:  # IF NOT EXISTS: processes racing here wait for each other's lock, then no-op
        conn.executescript(f"BEGIN IMMEDIATE; {'; '.join(missing)}; COMMIT;")
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc):
            raise
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        # A read-only file or mount opens as it did before these were added (reports read
        # it; sweeps and data-protection lookups scan instead of using the indexes).
        log.warning("nasca: the SQLite store is read-only, so it is used without %s", ", ".join(
            name for name in ADDED if name not in present))


_COLUMNS = (("lot", "taken", "INTEGER NOT NULL DEFAULT 0"), ("lot", "floor", "INTEGER NOT NULL DEFAULT 0"),
            ("meta", "lim", "TEXT"), ("meta", "bo", "TEXT"), ("meta", "an", "TEXT"))


def _add_taken(conn: sqlite3.Connection) -> None:
    # lot.taken, lot.floor, meta.lim, meta.bo and meta.an came after layout 1 shipped; an older Nasca
    # ignores them. Checked again under the write lock: two processes opening an old file at
    # once add each once.
    def missing() -> list[tuple[str, str, str]]:
        have = {(table, col[1]) for table in ("lot", "meta")
                for col in conn.execute(f"PRAGMA table_info({table})")}
        return [c for c in _COLUMNS if c[:2] not in have]

    if missing():
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, name, kind in missing():
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


# What a reserve and a settle read, each in one statement (one statement costs about as much
# as the SQL it runs: 8 separate reads took 72-100 µs here, against 17-38 µs as one).
RESERVE_VIEW = (  # ?1 namespace, ?2 user, ?3 now, ?4 day, ?5 week, ?6 month, ?7 hold member
    "SELECT (SELECT version FROM config_version WHERE namespace = ?1), "
    "(SELECT tier FROM meta WHERE user = ?2), "
    "(SELECT lim FROM meta WHERE user = ?2), (SELECT bo FROM meta WHERE user = ?2), "
    "(SELECT COALESCE(SUM(amount), 0) FROM hold WHERE user = ?2 AND expires > ?3), "
    "(SELECT COUNT(*) FROM hold WHERE user = ?2 AND expires > ?3), "
    "(SELECT value FROM counter WHERE key = ?4 AND expires > ?3), "
    "(SELECT value FROM counter WHERE key = ?5 AND expires > ?3), "
    "(SELECT s FROM month WHERE key = ?6 AND expires > ?3), "
    "(SELECT 1 FROM hold WHERE user = ?2 AND member = ?7 AND expires > ?3), "
    "(SELECT an FROM meta WHERE user = ?2)")
SETTLE_VIEW = (  # ?1 user, ?2 hold id, ?3 now, ?4 day, ?5 week, ?6 month
    "SELECT (SELECT 1 FROM settled WHERE user = ?1 AND hold_id = ?2 AND expires > ?3), "
    "(SELECT tier FROM meta WHERE user = ?1), "
    "(SELECT lim FROM meta WHERE user = ?1), (SELECT bo FROM meta WHERE user = ?1), "
    "(SELECT value FROM counter WHERE key = ?4 AND expires > ?3), "
    "(SELECT value FROM counter WHERE key = ?5 AND expires > ?3), "
    "(SELECT s FROM month WHERE key = ?6 AND expires > ?3)")
LOT_COLUMNS = "id, pack, paid, currency, granted, remaining, expires, created, seq, revoked, taken, floor"


def lot_of(row: Sequence[Any]) -> Lot:
    return Lot(id=row[0], pack=row[1], paid=row[2], currency=row[3], granted=row[4], remaining=row[5],
               expires_ms=row[6], created_ms=row[7], seq=row[8], revoked=row[9] == 1, taken=row[10],
               floor=row[11])


@contextmanager
def errors() -> Iterator[None]:
    """A locked, full, read-only or damaged file is the store being unavailable, like an
    unreachable Redis (on_store_error decides); a programming error stays what it is."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreError(f"SQLite store unavailable: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            raise
        raise StoreError(f"SQLite store damaged: {exc}") from exc
