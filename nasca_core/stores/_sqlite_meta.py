"""The SQLite store's writes of a user's meta row (stored tier, own limits, boosts), each
inside the caller's write transaction, applying ``_effective``'s rules as lua/boosts.lua does."""

from __future__ import annotations

import sqlite3
from typing import Literal

from nasca_core.stores._base import MAX_BOOSTS, StoredBoost, UserKeys
from nasca_core.stores._effective import changed, encode


def put_meta(c: sqlite3.Connection, keys: UserKeys, column: Literal["tier", "lim", "bo"],
             value: str | None) -> None:
    c.execute(f"INSERT INTO meta (user, {column}) VALUES (?, ?) ON CONFLICT (user) DO UPDATE "
              f"SET {column} = excluded.{column}", (keys.meta, value))


def change_boosts(c: sqlite3.Connection, keys: UserKeys, now_ms: int, add: StoredBoost | None,
                  clear: int | None) -> tuple[tuple[StoredBoost, ...], bool] | None:
    row = c.execute("SELECT bo FROM meta WHERE user = ?", (keys.meta,)).fetchone()
    made = changed(row[0] if row else None, now_ms, add, clear, MAX_BOOSTS)
    if made is None:
        return None
    put_meta(c, keys, "bo", encode(made[0]))
    return tuple(b for b in made[0] if b.until_ms > now_ms), made[1]
