"""The SQLite store's pools (``_pools``): the rules of lua/pool_take.lua and pool_charge.lua in
the store's own tables, inside the caller's transaction. A pool's chunks are ``hold`` rows named
by ``PoolKeys.holds`` (member: the lease id), its charged hold ids ``settled`` rows named by
``PoolKeys.settled``, its windows ``counter`` rows: they expire and are swept as a user's are.
"""

from __future__ import annotations

import sqlite3

from nasca_core.stores._pools import (
    PoolKeys,
    PoolSnapshot,
    PoolTakeOp,
    PoolTakeResult,
    check_pools,
    check_ref,
    chunk_of,
    grant,
)

_VIEW = (  # ?1 holds, ?2 now, ?3 day, ?4 week, ?5 month, ?6 lease id
    "SELECT (SELECT value FROM counter WHERE key = ?3 AND expires > ?2), "
    "(SELECT value FROM counter WHERE key = ?4 AND expires > ?2), "
    "(SELECT value FROM counter WHERE key = ?5 AND expires > ?2), "
    "(SELECT COALESCE(SUM(amount), 0) FROM hold WHERE user = ?1 AND expires > ?2), "
    "(SELECT amount FROM hold WHERE user = ?1 AND member = ?6 AND expires > ?2)")
# A counter past its expiry (not swept yet) starts again; a live one's expiry is only lengthened.
_ADD = ("INSERT INTO counter VALUES (?1, ?2, ?3) ON CONFLICT (key) DO UPDATE SET "
        "value = iif(expires > ?4, value, 0) + excluded.value, "
        "expires = iif(expires > ?4, max(expires, excluded.expires), excluded.expires)")


def _view(c: sqlite3.Connection, keys: PoolKeys, now_ms: int,
          lease_id: str) -> tuple[tuple[int, int, int], int, int | None]:
    d, w, m, held, mine = c.execute(_VIEW, (keys.holds, now_ms, keys.day, keys.week, keys.month,
                                            lease_id)).fetchone()
    return (d or 0, w or 0, m or 0), int(held), mine


def take(c: sqlite3.Connection, op: PoolTakeOp) -> PoolTakeResult:
    keys = op.keys
    spent, held, mine = _view(c, keys, op.now_ms, op.lease_id)
    if mine is not None:
        return PoolTakeResult(mine, 0, spent, held)  # a retried take: its first grant
    granted, window = grant(op, spent, held)
    if granted:  # a lapsed row of the same lease id (not swept yet) is replaced
        c.execute("INSERT OR REPLACE INTO hold VALUES (?, ?, ?, ?)", (keys.holds, op.lease_id, granted,
                                                                     op.expiry_ms))
    return PoolTakeResult(granted, window, spent, held + granted)


def release(c: sqlite3.Connection, keys: PoolKeys, lease_id: str, now_ms: int) -> None:
    check_ref(keys, now_ms, lease_id)
    c.execute("DELETE FROM hold WHERE user = ? AND member = ?", (keys.holds, lease_id))


def snapshot(c: sqlite3.Connection, keys: PoolKeys, now_ms: int) -> PoolSnapshot:
    check_ref(keys, now_ms)
    spent, held, _ = _view(c, keys, now_ms, "")
    return PoolSnapshot(spent, held)


def charge(c: sqlite3.Connection, pools: tuple[PoolKeys, ...], chunks: tuple[str, ...],
           ids: tuple[str, ...], cost: int, ttls_ms: tuple[int, int, int], marker_ms: int,
           now_ms: int) -> None:
    """Add ``cost`` to each pool's windows and take it off the chunk the call was drawn on
    (``chunks``, floored at 0: spent, no longer held) unless ``ids[0]`` (the settle's hold id)
    is marked there already, and mark every id (its ``of`` too): the user settle's rule."""
    check_pools(pools, chunks)
    for i, keys in enumerate(pools):
        if c.execute("SELECT 1 FROM settled WHERE user = ? AND hold_id = ? AND expires > ?",
                     (keys.settled, ids[0], now_ms)).fetchone():
            continue
        c.executemany(_ADD, [(key, cost, now_ms + ttl, now_ms) for key, ttl in
                             zip((keys.day, keys.week, keys.month), ttls_ms, strict=True)])
        if chunk := chunk_of(chunks, i):
            c.execute("UPDATE hold SET amount = max(0, amount - ?) WHERE user = ? AND member = ?",
                      (cost, keys.holds, chunk))
        c.executemany("INSERT OR REPLACE INTO settled VALUES (?, ?, ?)",
                      [(keys.settled, i, marker_ms) for i in ids])

