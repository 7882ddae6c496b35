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
    meta      stored tier, lot sequence   user -> tier, lotseq
    lot       credit lots                 (user, lot id) -> seq, amounts, expiry, revoked
    config / config_version               the owner-editable config and its version
    marker    billing's keyed texts       key -> value, expires
    sub       subscriptions               (user, sub id) -> JSON record
    an_*      analytics per (namespace, YYYYMM): counters, users, steps, revenue
"""

from __future__ import annotations

import sqlite3

from nasca_core._errors import ConfigurationError, StoreError

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
CREATE TABLE IF NOT EXISTS meta (user TEXT PRIMARY KEY, tier TEXT, lotseq INTEGER NOT NULL DEFAULT 0)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lot (user TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
  pack TEXT NOT NULL, paid INTEGER NOT NULL, currency TEXT NOT NULL, granted INTEGER NOT NULL,
  remaining INTEGER NOT NULL, expires INTEGER NOT NULL, created INTEGER NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (user, id)) WITHOUT ROWID;
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

# Counters and month rows (a few per user) are swept by a scan; holds and settled markers
# (one per call) through their expiry index.
SWEEP = ("DELETE FROM counter WHERE expires <= ?", "DELETE FROM month WHERE expires <= ?",
         "DELETE FROM hold WHERE expires <= ?", "DELETE FROM settled WHERE expires <= ?",
         "DELETE FROM marker WHERE expires != 0 AND expires <= ?")


def connect(path: str, timeout: float) -> sqlite3.Connection:
    """Open (and on first use create) the store file. Raises ConfigurationError for a file
    another layout version wrote, or one that is not a database."""
    # Autocommit mode: each operation opens its own BEGIN IMMEDIATE transaction.
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        # WAL: readers never wait for the writer and a commit needs no fsync; with
        # synchronous=NORMAL a committed transaction survives a process crash (a power loss
        # may lose the last few, which the README says).
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:  # a new file: two processes racing here both run idempotent DDL
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {LAYOUT_VERSION}; COMMIT;")
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
