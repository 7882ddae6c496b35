"""The SQLite store: the ledger in one file on this machine, shared by every process on it.

``sqlite:///nasca.db`` (a path relative to the working directory) or
``sqlite:////var/lib/nasca.db`` (absolute). Each reserve and settle is one short write
transaction (``BEGIN IMMEDIATE``: one writer at a time across processes), applying the
rules of ``nasca_core._policy`` exactly as the memory store does; windows and holds
expire lazily (``_sqlite_schema``). Within a process one connection serves every thread
under a lock, so threads queue in Python instead of in SQLite's sleeping busy handler.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from nasca_core import _policy
from nasca_core._errors import StoreError
from nasca_core.stores._base import (
    AnalyticsEvent,
    LedgerMonth,
    Lot,
    MonthCounts,
    MonthRaw,
    ReserveOp,
    ReserveResult,
    SettleOp,
    SettleResult,
    Snapshot,
    StoredConfig,
    SubChange,
    SubscriptionResult,
    UserKeys,
    month_owner,
)
from nasca_core.stores._sqlite_schema import SWEEP, connect

P = ParamSpec("P")
R = TypeVar("R")
_SWEEP_EVERY = 5_000  # writes between deletes of expired rows
_STALE = ReserveResult(-1, "", 0, (0, 0, 0), 0, -1)
_LOT_COLUMNS = "id, pack, paid, currency, granted, remaining, expires, created, seq, revoked"


class SqliteStore:
    """A store on a SQLite file (created on first use)."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = connect(path, timeout)
        self._writes = 0
        self._tiers: tuple[str, dict[str, Any]] = ("", {})
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
        with self._lock, _errors():
            conn = self._connection()
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
        with self._lock, _errors():
            conn = self._connection()
            conn.execute("BEGIN")  # one snapshot of the file for every read in the block
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    # -- shared reads (inside a transaction) -------------------------------------------
    def _decode_tiers(self, text: str) -> dict[str, Any]:
        if self._tiers[0] != text:
            self._tiers = (text, json.loads(text))
        return self._tiers[1]

    def _resolve(self, c: sqlite3.Connection, keys: UserKeys, tier: str, compiled: Sequence[int],
                 tiers_json: str) -> tuple[str, Sequence[int], Sequence[int], int]:
        row = c.execute("SELECT tier FROM meta WHERE user = ?", (keys.meta,)).fetchone()
        stored = row[0] if row else None
        if stored is not None and stored != tier:
            tiers = self._decode_tiers(tiers_json)
            if stored in tiers:
                t = tiers[stored]
                return stored, t["l"], t["h"], t.get("f", -1)
        return tier, compiled[:3], compiled[3:6], compiled[6] if len(compiled) > 6 else -1

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
        rows = c.execute(f"SELECT {_LOT_COLUMNS} FROM lot WHERE user = ? AND remaining > 0 "
                         "AND (expires = 0 OR expires > ?) ORDER BY seq", (keys.meta, now_ms))
        return [_lot(row) for row in rows]

    # -- the ledger --------------------------------------------------------------------
    def reserve(self, op: ReserveOp) -> ReserveResult:
        keys, now = op.keys, op.now_ms
        member = f"{op.hold_id}:{op.estimate}"
        with self._write(now) as c:
            version = c.execute("SELECT version FROM config_version WHERE namespace = ?",
                                (keys.namespace,)).fetchone()
            if op.config_version != (version[0] if version else 0):
                return _STALE
            name, limits, hard, cap = self._resolve(c, keys, op.tier, op.tier_compiled, op.tiers_json)
            # Expired holds are not counted, and the sweep deletes them (a per-user delete would
            # scan the user's rows on every call).
            held, in_flight = self._held(c, keys, now)
            spent, held, in_flight = _policy.own_view(self._spent(c, keys, now), held, in_flight, op.owed)
            if c.execute("SELECT 1 FROM hold WHERE user = ? AND member = ? AND expires > ?",
                         (keys.meta, member, now)).fetchone():
                return ReserveResult(1, name, 0, spent, held, -1)  # a retried reserve holds once
            if _policy.over_cap(in_flight, cap):
                return ReserveResult(2, name, 0, spent, held, -1)
            credits = -1
            blocked = _policy.admit(limits, hard, spent, held, op.estimate, 0, op.strict)
            if blocked >= 0 and not hard[blocked]:
                credits = sum(lot.remaining for lot in self._live_lots(c, keys, now))
                blocked = _policy.admit(limits, hard, spent, held, op.estimate, credits, op.strict)
            if blocked >= 0:
                return ReserveResult(0, name, blocked + 1, spent, held, credits)
            c.execute("INSERT OR REPLACE INTO hold VALUES (?, ?, ?, ?)",
                      (keys.meta, member, op.estimate, op.hold_expiry_ms))
            return ReserveResult(1, name, 0, spent, held + op.estimate, credits)

    def settle(self, op: SettleOp) -> SettleResult:
        keys, now, ttls = op.keys, op.now_ms, op.ttls_ms
        with self._write(now) as c:
            if c.execute("SELECT 1 FROM settled WHERE user = ? AND hold_id = ? AND expires > ?",
                         (keys.meta, op.hold_id, now)).fetchone():
                return SettleResult(2, 0, 0, (0, 0, 0))
            c.execute("DELETE FROM hold WHERE user = ? AND member = ?",
                      (keys.meta, f"{op.hold_id}:{op.estimate}"))
            _, limits, hard, _ = self._resolve(c, keys, op.tier, op.tier_compiled, op.tiers_json)
            spent = self._spent(c, keys, now)
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
            c.execute("DELETE FROM month WHERE key = ? AND expires <= ?", (keys.month, now))
            m = c.execute(
                "INSERT INTO month VALUES (?, ?, ?, ?, 1, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "s = s + excluded.s, c = c + excluded.c, k = k + excluded.k, n = n + 1, "
                "ti = ti + excluded.ti, tout = tout + excluded.tout, expires = excluded.expires RETURNING s",
                (keys.month, charges[2], op.cost, credit_part, op.input_tokens, op.output_tokens,
                 now + ttls[2])).fetchone()[0]
            c.execute("INSERT OR REPLACE INTO settled VALUES (?, ?, ?)",
                      (keys.meta, op.hold_id, op.marker_expiry_ms))
            return SettleResult(1, op.cost - credit_part, credit_part, (d, w, m))

    def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        with self._write() as c:
            c.execute("DELETE FROM hold WHERE user = ? AND member = ?", (keys.meta, f"{hold_id}:{estimate}"))

    def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        with self._read() as c:
            meta = c.execute("SELECT tier FROM meta WHERE user = ?", (keys.meta,)).fetchone()
            month = c.execute("SELECT c, k, n, ti, tout FROM month WHERE key = ? AND expires > ?",
                              (keys.month, now_ms)).fetchone() or (0, 0, 0, 0, 0)
            return Snapshot(meta[0] if meta else None, self._held(c, keys, now_ms)[0],
                            self._spent(c, keys, now_ms), month[0], month[1], month[2],
                            tuple(self._live_lots(c, keys, now_ms)), month[3], month[4])

    def set_user_tier(self, keys: UserKeys, tier: str | None) -> None:
        with self._write() as c:
            c.execute("INSERT INTO meta (user, tier) VALUES (?, ?) ON CONFLICT (user) DO UPDATE "
                      "SET tier = excluded.tier", (keys.meta, tier))

    def grant(self, keys: UserKeys, lot: Lot) -> bool:
        with self._write() as c:
            if c.execute("SELECT 1 FROM lot WHERE user = ? AND id = ?", (keys.meta, lot.id)).fetchone():
                return False
            seq = c.execute("INSERT INTO meta (user, lotseq) VALUES (?, 1) ON CONFLICT (user) DO UPDATE "
                            "SET lotseq = lotseq + 1 RETURNING lotseq", (keys.meta,)).fetchone()[0]
            c.execute(f"INSERT INTO lot (user, {_LOT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                      (keys.meta, lot.id, lot.pack, lot.paid, lot.currency, lot.granted, lot.remaining,
                       lot.expires_ms, lot.created_ms, seq))
            return True

    def revoke(self, keys: UserKeys, lot_id: str, keep: int | None = None) -> int:
        with self._write() as c:
            row = c.execute("SELECT remaining, revoked FROM lot WHERE user = ? AND id = ?",
                            (keys.meta, lot_id)).fetchone()
            if row is None or (row[0] == 0 and row[1] == 1):
                return 0
            if keep is not None:  # a partial refund: the lot keeps at most ``keep`` (lua/revoke.lua)
                taken = max(0, int(row[0]) - keep)
                if taken:
                    c.execute("UPDATE lot SET remaining = ? WHERE user = ? AND id = ?",
                              (int(row[0]) - taken, keys.meta, lot_id))
                return taken
            c.execute("UPDATE lot SET remaining = 0, revoked = 1 WHERE user = ? AND id = ?",
                      (keys.meta, lot_id))
            return int(row[0])

    def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]:
        with self._read() as c:
            rows = c.execute(f"SELECT {_LOT_COLUMNS} FROM lot WHERE user = ? ORDER BY seq", (keys.meta,))
            return tuple(_lot(row) for row in rows)

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

    def claim_marker(self, key: str, ttl_ms: int, now_ms: int) -> bool:
        with self._write(now_ms) as c:
            if c.execute("SELECT 1 FROM marker WHERE key = ? AND (expires = 0 OR expires > ?)",
                         (key, now_ms)).fetchone():
                return False
            c.execute("INSERT OR REPLACE INTO marker VALUES (?, '1', ?)", (key, now_ms + ttl_ms))
            return True

    def apply_subscription(self, keys: UserKeys, change: SubChange, now_ms: int) -> SubscriptionResult:
        # The rules of lua/subscription.lua.
        with self._write(now_ms) as c:
            subs = {sub_id: json.loads(body) for sub_id, body in
                    c.execute("SELECT sub_id, body FROM sub WHERE user = ?", (keys.meta,))}
            meta = c.execute("SELECT tier FROM meta WHERE user = ?", (keys.meta,)).fetchone()
            old = subs.get(change.sub_id)
            if old is not None and (old["i"] == change.event_id or old["d"]
                                    or (not change.final and old["e"] > change.event_created)):
                return SubscriptionResult(2 if old["i"] == change.event_id else 0, meta[0] if meta else None)
            record = {"e": change.event_created, "i": change.event_id, "a": change.active,
                      "t": change.tier, "c": change.sub_created, "d": change.final}
            subs[change.sub_id] = record
            c.execute("INSERT OR REPLACE INTO sub VALUES (?, ?, ?)",
                      (keys.meta, change.sub_id, json.dumps(record)))
            active = [(s["c"], sub_id, s["t"]) for sub_id, s in subs.items() if s["a"]]
            best: str | None = max(active)[2] if active else None
            c.execute("INSERT INTO meta (user, tier) VALUES (?, ?) ON CONFLICT (user) DO UPDATE "
                      "SET tier = excluded.tier", (keys.meta, best))
            return SubscriptionResult(1, best)

    # -- analytics -------------------------------------------------------------------------
    def record_event(self, namespace: str, event: AnalyticsEvent) -> None:
        ns, month, user = namespace, event.month, event.user_id
        count = ("INSERT INTO an_count VALUES (?, ?, ?, ?) ON CONFLICT (namespace, month, name) "
                 "DO UPDATE SET value = value + excluded.value")
        with self._write() as c:
            c.execute(count, (ns, month, f"e:{event.kind}", 1))
            blocked = 1 if event.kind == "blocked" else 0
            orders = 1 if event.kind == "purchase_completed" else 0
            c.execute("INSERT INTO an_user VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, month, user) "
                      "DO UPDATE SET blocked = blocked + excluded.blocked, orders = orders + excluded.orders",
                      (ns, month, user, blocked, orders))
            if not blocked and event.prompt_id:
                c.execute("INSERT OR IGNORE INTO an_step VALUES (?, ?, ?, ?)",
                          (ns, month, event.kind, event.prompt_id))
            if orders:
                c.execute(count, (ns, month, f"r:{event.currency}", event.amount_nanos))
                c.execute(count, (ns, month, f"o:{event.currency}", 1))
                c.execute("INSERT INTO an_revenue VALUES (?, ?, ?, ?, ?) ON CONFLICT "
                          "(namespace, month, currency, user) DO UPDATE SET value = value + excluded.value",
                          (ns, month, event.currency, user, event.amount_nanos))

    @staticmethod
    def _counts(c: sqlite3.Connection, namespace: str, month: str) -> MonthCounts:
        counters = dict(c.execute("SELECT name, value FROM an_count WHERE namespace = ? AND month = ?",
                                  (namespace, month)))
        steps = dict(c.execute("SELECT kind, COUNT(*) FROM an_step WHERE namespace = ? AND month = ? "
                               "GROUP BY kind", (namespace, month)))
        return MonthCounts(counters, steps)

    def read_month(self, namespace: str, month: str, now_ms: int) -> MonthRaw:
        with self._read() as c:
            counts = self._counts(c, namespace, month)
            raw = MonthRaw(counters=counts.counters, steps=counts.steps)
            where = (namespace, month)
            for user, blocked, orders in c.execute(
                    "SELECT user, blocked, orders FROM an_user WHERE namespace = ? AND month = ?", where):
                raw.users.add(user)
                if blocked:
                    raw.user_blocked[user] = blocked
                if orders:
                    raw.user_orders[user] = orders
            for cur, user, value in c.execute(
                    "SELECT currency, user, value FROM an_revenue WHERE namespace = ? AND month = ?", where):
                raw.user_revenue[(cur, user)] = value
            # Every user's month row: keys run "<namespace>:{<user>}:m:<month>", so a range of
            # the primary key holds the namespace's users (a report's scan, never a call's path).
            head = f"{namespace}:{{"
            for key, *values in c.execute(
                    "SELECT key, c, k, n, ti, tout FROM month WHERE key >= ? AND key < ? AND expires > ?",
                    (head, head[:-1] + chr(ord("{") + 1), now_ms)):
                owner = month_owner(key, namespace, month)
                if owner is not None:
                    raw.ledger[owner] = LedgerMonth(*values)
            return raw

    def month_totals(self, namespace: str, months: Sequence[str]) -> list[MonthCounts]:
        with self._read() as c:
            return [self._counts(c, namespace, month) for month in months]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


class AsyncSqliteStore:
    """The async face of a SqliteStore: each operation runs in a worker thread, so a wait
    for another process's write lock never stalls the event loop."""

    def __init__(self, store: SqliteStore) -> None:
        self.sync = store

    async def _run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def reserve(self, op: ReserveOp) -> ReserveResult:
        return await self._run(self.sync.reserve, op)

    async def settle(self, op: SettleOp) -> SettleResult:
        return await self._run(self.sync.settle, op)

    async def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        await self._run(self.sync.release, keys, hold_id, estimate)

    async def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        return await self._run(self.sync.snapshot, keys, now_ms)

    async def set_user_tier(self, keys: UserKeys, tier: str | None) -> None:
        await self._run(self.sync.set_user_tier, keys, tier)

    async def grant(self, keys: UserKeys, lot: Lot) -> bool:
        return await self._run(self.sync.grant, keys, lot)

    async def revoke(self, keys: UserKeys, lot_id: str, keep: int | None = None) -> int:
        return await self._run(self.sync.revoke, keys, lot_id, keep)

    async def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]:
        return await self._run(self.sync.all_lots, keys)

    async def load_config(self, namespace: str) -> StoredConfig:
        return await self._run(self.sync.load_config, namespace)

    async def config_version(self, namespace: str) -> int:
        return await self._run(self.sync.config_version, namespace)

    async def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int:
        return await self._run(self.sync.save_config, namespace, section, name, value)

    async def get_marker(self, key: str, now_ms: int) -> str | None:
        return await self._run(self.sync.get_marker, key, now_ms)

    async def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        await self._run(self.sync.put_marker, key, value, ttl_ms, now_ms)

    async def claim_marker(self, key: str, ttl_ms: int, now_ms: int) -> bool:
        return await self._run(self.sync.claim_marker, key, ttl_ms, now_ms)

    async def apply_subscription(self, keys: UserKeys, change: SubChange,
                                 now_ms: int) -> SubscriptionResult:
        return await self._run(self.sync.apply_subscription, keys, change, now_ms)

    async def record_event(self, namespace: str, event: AnalyticsEvent) -> None:
        await self._run(self.sync.record_event, namespace, event)

    async def read_month(self, namespace: str, month: str, now_ms: int) -> MonthRaw:
        return await self._run(self.sync.read_month, namespace, month, now_ms)

    async def month_totals(self, namespace: str, months: Sequence[str]) -> list[MonthCounts]:
        return await self._run(self.sync.month_totals, namespace, months)

    async def close(self) -> None:
        pass  # the connection is the sync store's, closed with it


_open_stores: weakref.WeakSet[SqliteStore] = weakref.WeakSet()


def _after_fork() -> None:
    # A thread of the parent may have held a store's lock at the fork: the child's copy
    # would stay locked forever. The child also opens its own connection (``_connection``).
    for store in list(_open_stores):
        store._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def _lot(row: Sequence[Any]) -> Lot:
    return Lot(id=row[0], pack=row[1], paid=row[2], currency=row[3], granted=row[4], remaining=row[5],
               expires_ms=row[6], created_ms=row[7], seq=row[8], revoked=row[9] == 1)


@contextmanager
def _errors() -> Iterator[None]:
    # A locked, full, read-only or damaged file is the store being unavailable, like an
    # unreachable Redis (on_store_error decides); a programming error stays what it is.
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreError(f"SQLite store unavailable: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            raise
        raise StoreError(f"SQLite store damaged: {exc}") from exc
