"""The SQLite store's billing operations, each inside the caller's write transaction (one
``BEGIN IMMEDIATE``: atomic across processes), applying ``_billing_rules``."""

from __future__ import annotations

import json
import sqlite3

from nasca_core.stores._base import SubChange, SubscriptionResult, UserKeys
from nasca_core.stores._billing_rules import (
    anchor_spec,
    carried,
    new_anchor,
    recut,
    stale_spec,
    subscription_step,
    taken_to,
)

# tally(): add to a counter row, or start a new window once the row's has ended
_TALLY = ("INSERT INTO counter VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
          "value = CASE WHEN expires > ? THEN value ELSE 0 END + excluded.value, "
          "expires = CASE WHEN expires > ? AND value > 0 THEN expires ELSE excluded.expires END")


def revoke_to(c: sqlite3.Connection, keys: UserKeys, lot_id: str, target: int, restore: bool,
              floor: int) -> int:
    row = c.execute("SELECT remaining, taken, granted, revoked, floor FROM lot WHERE user = ? AND id = ?",
                    (keys.meta, lot_id)).fetchone()
    if row is None:
        return 0
    left, taken, granted, revoked, kept = row
    new, revoked, kept = taken_to(taken, left, granted, revoked == 1, target, restore, floor, kept)
    c.execute("UPDATE lot SET remaining = ?, taken = ?, revoked = ?, floor = ? WHERE user = ? AND id = ?",
              (left - (new - taken), new, int(revoked), kept, keys.meta, lot_id))
    return int(new - taken)


def put_entry(c: sqlite3.Connection, key: str, name: str, value: str | None) -> None:
    if value is None:
        c.execute("DELETE FROM entry WHERE key = ? AND name = ?", (key, name))
    else:
        c.execute("INSERT OR REPLACE INTO entry VALUES (?, ?, ?)", (key, name, value))


def tally(c: sqlite3.Connection, key: str, add: int, window_ms: int, now_ms: int) -> tuple[int, int]:
    """The rules of lua/tally.lua, on a counter row (swept with the others once past its window)."""
    if add:
        c.execute(_TALLY, (key, add, now_ms + window_ms, now_ms, now_ms))
    row = c.execute("SELECT value, expires FROM counter WHERE key = ? AND expires > ? AND value > 0",
                    (key, now_ms)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


# The new window's key holds now: it can't have expired, so its counts are kept as they are.
_CARRY = ("INSERT INTO month (key, s, expires) SELECT ?, s, expires FROM month WHERE key = ? AND expires > ? "
          "AND s > 0 ON CONFLICT (key) DO UPDATE SET s = max(month.s, excluded.s)")


def apply_subscription(c: sqlite3.Connection, keys: UserKeys, change: SubChange,
                       now_ms: int) -> SubscriptionResult:
    subs = {sub_id: json.loads(body) for sub_id, body in
            c.execute("SELECT sub_id, body FROM sub WHERE user = ?", (keys.meta,))}
    status, record, best = subscription_step(subs, change)
    row = c.execute("SELECT tier, an FROM meta WHERE user = ?", (keys.meta,)).fetchone()
    stored = (row[1] if row else None) or ""
    if record is None or stale_spec(stored, change):
        return SubscriptionResult(status if record is None else -3, row[0] if row else None)
    new = new_anchor({**subs, change.sub_id: record}, stored, change)
    if recut(change, new):
        return SubscriptionResult(-4, row[0] if row else None, int(new or 0))
    c.execute("INSERT OR REPLACE INTO sub VALUES (?, ?, ?)", (keys.meta, change.sub_id, json.dumps(record)))
    if carried(change, new):  # raised, not added: safe to run twice; it expires with the old one
        c.execute(_CARRY, (change.carry[1], change.carry[0], now_ms))
    spec = anchor_spec(stored, change, new)
    c.execute("INSERT INTO meta (user, tier, an) VALUES (?, ?, ?) ON CONFLICT (user) DO UPDATE "
              "SET tier = excluded.tier, an = excluded.an", (keys.meta, best, spec or None))
    return SubscriptionResult(1, best)
