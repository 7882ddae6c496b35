"""Calibration's sample lists (``SampleOp``) as Redis and SQLite hold them (the memory store
keeps them as tuples; one observation is ``"<counted>:<reported>:<output>"``), and the
SQLite store's record of the tier a user's calls run on (``Snapshot.ran_tier``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from nasca_core.stores._base import BATCH_MARKER_MS, SampleOp, Samples, UserKeys


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(item: str) -> tuple[int, int, int]:
    c, r, o = item.split(":")
    return int(c), int(r), int(o)


def redis_args(op: SampleOp) -> tuple[list[str], list[Any]]:
    keys = [op.key, f"{op.key}:n", f"{op.key}:b:{op.batch_id}"]
    return keys, [op.keep, op.ttl_ms, BATCH_MARKER_MS, *(f"{c}:{r}:{o}" for c, r, o in op.samples)]


def redis_result(raw: Sequence[Any]) -> Samples:
    return Samples(int(raw[0]), tuple(_parse(_text(item)) for item in raw[1]))


def sqlite_add(c: sqlite3.Connection, op: SampleOp) -> Samples:
    """lua/samples.lua's rules, inside the caller's write transaction (markers table rows)."""
    alive = "SELECT value FROM marker WHERE key = ? AND (expires = 0 OR expires > ?)"
    row = c.execute(alive, (op.key, op.now_ms)).fetchone()
    n, recent = json.loads(row[0]) if row else (0, [])
    marker = f"{op.key}:b:{op.batch_id}"
    if op.samples and not c.execute(alive, (marker, op.now_ms)).fetchone():
        c.execute("INSERT OR REPLACE INTO marker VALUES (?, '1', ?)", (marker, op.now_ms + BATCH_MARKER_MS))
        n, recent = n + len(op.samples), [*recent, *map(list, op.samples)][-op.keep:]
        c.execute("INSERT OR REPLACE INTO marker VALUES (?, ?, ?)",
                  (op.key, json.dumps([n, recent]), op.now_ms + op.ttl_ms))
    return Samples(n, tuple((int(x), int(y), int(z)) for x, y, z in recent))


# Beside the user's month row, in the marker table; written only when it changes.
_RAN_TIER = ("INSERT INTO marker VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
             "expires = excluded.expires WHERE value != excluded.value OR expires != excluded.expires")


def record_tier(c: sqlite3.Connection, keys: UserKeys, tier: str, expires: int) -> None:
    """A settle's record of the tier its call ran on, unless it was the user's stored tier
    ('' then: get_usage resolves the stored one first), as settle.lua's ``r`` field."""
    stored = c.execute("SELECT tier FROM meta WHERE user = ?", (keys.meta,)).fetchone()
    c.execute(_RAN_TIER, (f"{keys.month}:r", tier if not stored or stored[0] != tier else "", expires))


def ran_tier(c: sqlite3.Connection, keys: UserKeys, now_ms: int) -> str | None:
    row = c.execute("SELECT value FROM marker WHERE key = ? AND expires > ?",
                    (f"{keys.month}:r", now_ms)).fetchone()
    return str(row[0]) or None if row else None
