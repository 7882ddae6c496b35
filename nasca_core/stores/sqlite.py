"""The SQLite store: the ledger in one file on this machine, shared by every process on it.

``sqlite:///nasca.db`` (a path relative to the working directory) or
``sqlite:////var/lib/nasca.db`` (absolute). Each reserve and settle is one short write
transaction (``BEGIN IMMEDIATE``: one writer at a time across processes), applying the
rules of ``nasca_core._policy`` exactly as the memory store does; windows and holds
expire lazily (``_sqlite_schema``). Within a process one connection serves every thread
under a lock, so threads queue in Python instead of in SQLite's sleeping busy handler.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

from nasca_core import _policy
from nasca_core.stores import _sqlite_analytics as analytics
from nasca_core.stores import _sqlite_billing as billing
from nasca_core.stores import _sqlite_pools as pools
from nasca_core.stores import _sqlite_schema as schema
from nasca_core.stores._base import (
    AnalyticsEvent,
    Lot,
    MonthCounts,
    MonthRaw,
    PoolKeys,
    PoolSnapshot,
    PoolTakeOp,
    PoolTakeResult,
    ReserveOp,
    ReserveResult,
    SampleOp,
    Samples,
    SettleOp,
    SettleResult,
    Snapshot,
    StoredBoost,
    StoredConfig,
    SubChange,
    SubscriptionResult,
    UserKeys,
    UserRecords,
    stale_reply,
)
from nasca_core.stores._effective import in_force, resolve
from nasca_core.stores._pools import check_take
from nasca_core.stores._samples import ran_tier, record_tier, sqlite_add
from nasca_core.stores._sqlite_async import AsyncSqliteStore as AsyncSqliteStore  # where _open finds it
from nasca_core.stores._sqlite_meta import change_boosts, put_meta
from nasca_core.stores._sqlite_schema import LOT_COLUMNS, SWEEP, connect, errors, lot_of
from nasca_core.stores._user_data import sqlite_user_data

_SWEEP_EVERY = 5_000  # writes between deletes of expired rows
class SqliteStore:
    """A store on a SQLite file (created on first use)."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.path = path
        self._timeout = timeout
        self._lock = threading.RLock()  # re-entered by settle_many's settles, in its transaction
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = connect(path, timeout)
        self._writes = 0
        self._batch = False  # settle_many's transaction is open (under ``_lock``)
        _open_stores.add(self)

    # -- transactions ------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # a forked child must not use its parent's connection
            self._pid, self._conn = os.getpid(), None
        if self._conn is None:
            self._conn = connect(self.path, self._timeout)
        return self._conn

    @contextmanager
    def _write(self, now_ms: int = 0) -> Iterator[sqlite3.Connection]:
        with self._lock, errors():
            conn = self._connection()
            if self._batch:  # a settle of settle_many's batch: its one transaction
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                self._writes += 1
                if now_ms and self._writes % _SWEEP_EVERY == 0:
                    for sql in SWEEP:
                        conn.execute(sql, (now_ms,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, errors():
            conn = self._connection()
            conn.execute("BEGIN")  # one snapshot of the file for every read in the block
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    # -- shared reads (inside a transaction) -------------------------------------------
    @staticmethod
    def _spent(c: sqlite3.Connection, keys: UserKeys, now_ms: int) -> tuple[int, int, int]:
        q = "SELECT value FROM counter WHERE key = ? AND expires > ?"
        d = c.execute(q, (keys.day, now_ms)).fetchone()
        w = c.execute(q, (keys.week, now_ms)).fetchone()
        m = c.execute("SELECT s FROM month WHERE key = ? AND expires > ?", (keys.month, now_ms)).fetchone()
        return (d[0] if d else 0, w[0] if w else 0, m[0] if m else 0)

    @staticmethod
    def _held(c: sqlite3.Connection, keys: UserKeys, now_ms: int) -> tuple[int, int]:
        total, count = c.execute("SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM hold WHERE user = ? "
                                 "AND expires > ?", (keys.meta, now_ms)).fetchone()
        return int(total), int(count)

    @staticmethod
    def _live_lots(c: sqlite3.Connection, keys: UserKeys, now_ms: int) -> list[Lot]:
        rows = c.execute(f"SELECT {LOT_COLUMNS} FROM lot WHERE user = ? AND remaining > 0 "
                         "AND (expires = 0 OR expires > ?) ORDER BY seq", (keys.meta, now_ms))
        return [lot_of(row) for row in rows]

    # -- the ledger --------------------------------------------------------------------
    def reserve(self, op: ReserveOp) -> ReserveResult:
        if op.pool_take is not None:
            return self._reserve_pooled(op, op.pool_take)
        keys, now = op.keys, op.now_ms
        member = f"{op.hold_id}:{op.estimate}"
        with self._write(now) as c:
            # Expired holds are not counted, and the sweep deletes them (a per-user delete would
            # scan the user's rows on every call).
            version, stored, lim, bo, held, in_flight, d, w, m, retried, an = c.execute(schema.RESERVE_VIEW, (
                keys.namespace, keys.meta, now, keys.day, keys.week, keys.month, member)).fetchone()
            if (stale := stale_reply(op, version or 0, an)) is not None:
                return stale
            name, limits, hard, cap = resolve(stored, lim, bo, op.tier, op.tier_compiled, op.tiers_json, now)
            spent, held, in_flight = _policy.own_view((d or 0, w or 0, m or 0), held, in_flight, op.owed)
            def lots() -> int: return sum(lot.remaining for lot in self._live_lots(c, keys, now))
            if retried:  # a retried reserve holds once, its room as the first
                left, credits = _policy.room_of(limits, hard, spent, held - op.estimate, -1, op.ceiling, lots)
                return ReserveResult(1, name, 0, spent, held, credits, left,
                                     applied=(*limits, *hard, cap))
            if _policy.over_cap(in_flight, cap):
                return ReserveResult(2, name, 0, spent, held, -1)
            credits = -1
            blocked = _policy.admit(limits, hard, spent, held, op.estimate, 0, op.strict)
            if blocked >= 0 and not hard[blocked]:
                credits = lots()
                blocked = _policy.admit(limits, hard, spent, held, op.estimate, credits, op.strict)
            if blocked >= 0:
                return ReserveResult(0, name, blocked + 1, spent, held, credits)
            c.execute("INSERT OR REPLACE INTO hold VALUES (?, ?, ?, ?)",
                      (keys.meta, member, op.estimate, op.hold_expiry_ms))
            left, credits = _policy.room_of(limits, hard, spent, held, credits, op.ceiling, lots)
            return ReserveResult(1, name, 0, spent, held + op.estimate, credits, left,
                                 applied=(*limits, *hard, cap))

    def _reserve_pooled(self, op: ReserveOp, take: PoolTakeOp) -> ReserveResult:
        # The pool's chunk, then the user's reserve, in one transaction (as settle_many's).
        check_take(take)
        with self._write(op.now_ms) as c:
            pool = pools.take(c, take)
            if not pool.granted:  # the pool blocks: the user's reserve is not applied
                return ReserveResult(0, op.tier, 0, (0, 0, 0), 0, -1, pool=pool)
            batch, self._batch = self._batch, True
            try:
                result = self.reserve(replace(op, pool_take=None))
            finally:
                self._batch = batch
            result.pool = pool
            return result

    def settle(self, op: SettleOp) -> SettleResult:
        keys, now, ttls = op.keys, op.now_ms, op.ttls_ms
        with self._write(now) as c:
            if op.pools:  # first: charged also when the user's part is a retried settle
                pools.charge(c, op.pools, op.chunks, (op.hold_id, *op.of), op.cost, ttls, op.marker_expiry_ms,
                             now)
            done, stored, lim, bo, d, w, m = c.execute(schema.SETTLE_VIEW, (
                keys.meta, op.hold_id, now, keys.day, keys.week, keys.month)).fetchone()
            if done:
                return SettleResult(2, 0, 0, (0, 0, 0))
            c.execute("DELETE FROM hold WHERE user = ? AND member = ?",
                      (keys.meta, f"{op.hold_id}:{op.estimate}"))
            _, limits, hard, _ = resolve(stored, lim, bo, op.tier, op.tier_compiled, op.tiers_json,
                                         op.boosts_at)
            spent = (d or 0, w or 0, m or 0)
            tier_part, credit_part = _policy.split(op.cost, limits, hard, spent, 1 << 62)
            if op.cost > tier_part:
                lots = self._live_lots(c, keys, now)
                remaining = _policy.draw([(lot.seq, lot.remaining) for lot in lots], op.cost - tier_part)
                credit_part = 0
                for lot, left in zip(lots, remaining, strict=True):
                    if left != lot.remaining:
                        credit_part += lot.remaining - left
                        c.execute("UPDATE lot SET remaining = ? WHERE user = ? AND id = ?",
                                  (left, keys.meta, lot.id))
            charges = _policy.window_charges(op.cost, credit_part, limits, hard)
            add = ("INSERT INTO counter VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                   "value = CASE WHEN expires > ? THEN value ELSE 0 END + excluded.value, "
                   "expires = excluded.expires RETURNING value")
            d = c.execute(add, (keys.day, charges[0], now + ttls[0], now)).fetchone()[0]
            w = c.execute(add, (keys.week, charges[1], now + ttls[1], now)).fetchone()[0]
            m = c.execute(  # a month row past its expiry (not swept yet) starts again
                "INSERT INTO month VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "s = iif(expires > ?9, s, 0) + excluded.s, c = iif(expires > ?9, c, 0) + excluded.c, "
                "k = iif(expires > ?9, k, 0) + excluded.k, n = iif(expires > ?9, n, 0) + excluded.n, "
                "ti = iif(expires > ?9, ti, 0) + excluded.ti, "
                "tout = iif(expires > ?9, tout, 0) + excluded.tout, expires = excluded.expires RETURNING s",
                (keys.month, charges[2], op.cost, credit_part, op.calls, op.input_tokens, op.output_tokens,
                 now + ttls[2], now)).fetchone()[0]
            # A fold's settles with it (``SettleOp.of``): a later settle of one alone is a retry.
            c.executemany("INSERT OR REPLACE INTO settled VALUES (?, ?, ?)",
                          [(keys.meta, h, op.marker_expiry_ms) for h in (op.hold_id, *op.of)])
            record_tier(c, keys, op.tier, now + ttls[2])
            return SettleResult(1, op.cost - credit_part, credit_part, (d, w, m),
                                (limits[0], limits[1], limits[2]))

    def settle_many(self, ops: Sequence[SettleOp]) -> list[SettleResult]:
        # One transaction: all land, or none. Flagged, not read from ``in_transaction``: a
        # transaction left open by accident must fail the next BEGIN, not swallow later writes.
        with self._write(ops[0].now_ms if ops else 0):
            self._batch = True
            try:
                return [self.settle(op) for op in ops]
            finally:
                self._batch = False

    def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        with self._write() as c:
            c.execute("DELETE FROM hold WHERE user = ? AND member = ?", (keys.meta, f"{hold_id}:{estimate}"))

    def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        with self._read() as c:
            meta = c.execute("SELECT tier, lim, bo, an FROM meta WHERE user = ?", (keys.meta,)).fetchone()
            month = c.execute("SELECT c, k, n, ti, tout FROM month WHERE key = ? AND expires > ?",
                              (keys.month, now_ms)).fetchone() or (0, 0, 0, 0, 0)
            return Snapshot(meta[0] if meta else None, self._held(c, keys, now_ms)[0],
                            self._spent(c, keys, now_ms), month[0], month[1], month[2],
                            tuple(self._live_lots(c, keys, now_ms)), month[3], month[4],
                            ran_tier(c, keys, now_ms), meta[1] if meta else None,
                            in_force(meta[2] if meta else None, now_ms), (meta[3] if meta else None) or "")

    def set_user_tier(self, keys: UserKeys, tier: str | None) -> None:
        with self._write() as c:
            put_meta(c, keys, "tier", tier)

    def set_user_limits(self, keys: UserKeys, compiled: str | None) -> None:
        with self._write() as c:
            put_meta(c, keys, "lim", compiled)

    def change_boosts(self, keys: UserKeys, now_ms: int, add: StoredBoost | None = None,
                      clear: int | None = None) -> tuple[tuple[StoredBoost, ...], bool] | None:
        with self._write() as c:
            return change_boosts(c, keys, now_ms, add, clear)

    def grant(self, keys: UserKeys, lot: Lot) -> bool:
        with self._write() as c:
            if c.execute("SELECT 1 FROM lot WHERE user = ? AND id = ?", (keys.meta, lot.id)).fetchone():
                return False
            seq = c.execute("INSERT INTO meta (user, lotseq) VALUES (?, 1) ON CONFLICT (user) DO UPDATE "
                            "SET lotseq = lotseq + 1 RETURNING lotseq", (keys.meta,)).fetchone()[0]
            c.execute(f"INSERT INTO lot (user, {LOT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                      (keys.meta, lot.id, lot.pack, lot.paid, lot.currency, lot.granted, lot.remaining,
                       lot.expires_ms, lot.created_ms, seq, lot.taken, lot.floor))
            return True

    def revoke_to(self, keys: UserKeys, lot_id: str, target: int, restore: bool = False, floor: int = 0,
                  ) -> int:
        with self._write() as c:
            return billing.revoke_to(c, keys, lot_id, target, restore, floor)

    def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]:
        with self._read() as c:
            rows = c.execute(f"SELECT {LOT_COLUMNS} FROM lot WHERE user = ? ORDER BY seq", (keys.meta,))
            return tuple(lot_of(row) for row in rows)

    def load_config(self, namespace: str) -> StoredConfig:
        with self._read() as c:
            sections: dict[str, dict[str, str]] = {}
            for section, name, value in c.execute(
                    "SELECT section, name, value FROM config WHERE namespace = ?", (namespace,)):
                sections.setdefault(section, {})[name] = value
            return StoredConfig(self._version(c, namespace), sections)

    @staticmethod
    def _version(c: sqlite3.Connection, namespace: str) -> int:
        row = c.execute("SELECT version FROM config_version WHERE namespace = ?", (namespace,)).fetchone()
        return int(row[0]) if row else 0

    def config_version(self, namespace: str) -> int:
        with self._read() as c:
            return self._version(c, namespace)

    def store_id(self, namespace: str) -> str:
        with self._read() as c:  # a read never waits for another process's write lock
            found = schema.own_id(c, namespace, self.path)
        if found is None:
            with self._write() as c:  # the first process to ask makes it; a copied file, its own
                found = schema.own_id(c, namespace, self.path) or schema.new_id(c, namespace, self.path)
        return found

    def user_data(self, namespace: str, user_id: str, forget: bool = False) -> UserRecords:
        with self._write() if forget else self._read() as c:  # an export never takes the write lock
            return sqlite_user_data(c, namespace, user_id, forget)

    def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int:
        with self._write() as c:
            if value is None:
                c.execute("DELETE FROM config WHERE namespace = ? AND section = ? AND name = ?",
                          (namespace, section, name))
            else:
                c.execute("INSERT OR REPLACE INTO config VALUES (?, ?, ?, ?)",
                          (namespace, section, name, value))
            return int(c.execute(
                "INSERT INTO config_version VALUES (?, 1) ON CONFLICT (namespace) DO UPDATE "
                "SET version = version + 1 RETURNING version", (namespace,)).fetchone()[0])

    def add_samples(self, op: SampleOp) -> Samples:
        with self._write(op.now_ms) as c:
            return sqlite_add(c, op)

    def pool_take(self, op: PoolTakeOp) -> PoolTakeResult:
        check_take(op)
        with self._write(op.now_ms) as c:
            return pools.take(c, op)

    def pool_release(self, keys: PoolKeys, lease_id: str, now_ms: int) -> None:
        with self._write(now_ms) as c:
            pools.release(c, keys, lease_id, now_ms)

    def pool_snapshot(self, keys: PoolKeys, now_ms: int) -> PoolSnapshot:
        with self._read() as c:
            return pools.snapshot(c, keys, now_ms)

    # -- billing -------------------------------------------------------------------------
    def get_marker(self, key: str, now_ms: int) -> str | None:
        with self._read() as c:
            row = c.execute("SELECT value FROM marker WHERE key = ? AND (expires = 0 OR expires > ?)",
                            (key, now_ms)).fetchone()
            return None if row is None else str(row[0])

    def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        with self._write(now_ms) as c:
            c.execute("INSERT OR REPLACE INTO marker VALUES (?, ?, ?)",
                      (key, value, now_ms + ttl_ms if ttl_ms else 0))

    def claim_marker(self, key: str, ttl_ms: int, now_ms: int, token: str | None = None) -> bool:
        with self._write(now_ms) as c:
            if held := c.execute("SELECT value FROM marker WHERE key = ? AND (expires = 0 OR expires > ?)",
                                 (key, now_ms)).fetchone():
                return token is not None and held[0] == token
            c.execute("INSERT OR REPLACE INTO marker VALUES (?, ?, ?)", (key, token or "1", now_ms + ttl_ms))
            return True

    def put_entry(self, key: str, name: str, value: str | None) -> None:
        with self._write() as c:
            billing.put_entry(c, key, name, value)

    def entries(self, key: str) -> dict[str, str]:
        with self._read() as c:
            return dict(c.execute("SELECT name, value FROM entry WHERE key = ?", (key,)))

    def tally(self, key: str, add: int, window_ms: int, now_ms: int) -> tuple[int, int]:
        with self._write(now_ms) if add else self._read() as c:  # a read takes no write lock
            return billing.tally(c, key, add, window_ms, now_ms)

    def apply_subscription(self, keys: UserKeys, change: SubChange, now_ms: int) -> SubscriptionResult:
        with self._write(now_ms) as c:  # the rules of lua/subscription.lua
            return billing.apply_subscription(c, keys, change, now_ms)

    # -- analytics -------------------------------------------------------------------------
    def record_event(self, namespace: str, event: AnalyticsEvent) -> None:
        with self._write() as c:
            analytics.record_event(c, namespace, event)

    def read_month(self, namespace: str, month: str, now_ms: int) -> MonthRaw:
        with self._read() as c:
            return analytics.read_month(c, namespace, month, now_ms)

    def month_totals(self, namespace: str, months: Sequence[str]) -> list[MonthCounts]:
        with self._read() as c:
            return [analytics.counts(c, namespace, month) for month in months]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


_open_stores: weakref.WeakSet[SqliteStore] = weakref.WeakSet()


def _after_fork() -> None:
    # A thread of the parent may have held a store's lock at the fork: the child's copy
    # would stay locked forever. The child also opens its own connection (``_connection``).
    for store in list(_open_stores):
        store._lock = threading.RLock()
        store._batch = False  # the parent's batch, not the child's (whose connection is new)


os.register_at_fork(after_in_child=_after_fork)
