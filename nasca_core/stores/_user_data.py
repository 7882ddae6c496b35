"""One end user's data in a store, found and, for a data-protection request, forgotten
(``Store.user_data``): the rules, and each store's way of reading its own layout.

What a user has, in every store:

- their own records, named by suffix like the Redis keys of ``UserKeys``: ``""`` (stored
  tier, lot sequence), ``c`` (credit lots), ``h``/``hs`` (holds), ``s`` (settled hold ids),
  ``subs`` (subscriptions), ``d:``/``w:``/``m:`` windows and the month;
- analytics per month: seen, blocked, orders, revenue per currency;
- billing's records that name them (customer and payment indexes, webhook results, orders
  held for review).

Forgetting deletes the first two and the billing records that are only about the user;
a billing record that also serves the owner (a webhook's result, which keeps a retried
event from granting twice; an order held for review) keeps its place with the user's id
replaced by ``DELETED``. The month's counters (events, revenue and orders per currency)
hold no user and stay as they were, and each month's AI cost, calls and tokens move to
the ``DELETED`` pseudo-user's month (``fold``), so none of the owner's totals move.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from nasca_core._identity import DELETED_USER
from nasca_core.stores._base import FALLBACK_SUFFIX, LEDGER_FIELDS, UserKeys, UserRecords, user_tag
from nasca_core.stores._scripts import source

DELETED = DELETED_USER
log = logging.getLogger("nasca")
# Billing records a replayed or retried event reads back: anonymised, never removed.
_KEPT_KINDS = ("evt", "reviews")


def user_base(namespace: str, user_id: str) -> str:
    """The user's meta key, which every other key of theirs extends. Raises InvalidUserError."""
    return UserKeys.build(namespace, user_id, ("", "", "")).meta


def suffix_of(key: str, base: str) -> str | None:
    if key == base:
        return ""
    return key[len(base) + 1:] if key.startswith(base + ":") else None


def fold(namespace: str, suffix: str, month: dict[str, Any]) -> tuple[str, dict[str, int]] | None:
    """Where a forgotten user's month (``m:YYYYMM``) is added, and what: its AI cost, credit
    part, calls and tokens (``LEDGER_FIELDS``), kept for the owner's monthly totals under
    the ``DELETED`` pseudo-user. None for any other record."""
    # A billing-cycle month counts where it starts; the fallback allowance's month is the user's too.
    found = re.fullmatch(rf"(?:{FALLBACK_SUFFIX[1:]}:)?(m:[0-9]{{6}})(?:[0-9]{{8}})?", suffix)
    if found is None:
        return None
    fields = {f: int(month.get(f) or 0) for f in LEDGER_FIELDS}
    deleted = f"{namespace}:{{{user_tag(DELETED)}}}:{DELETED}"  # UserKeys refuses the id: no call reaches it
    return f"{deleted}:{found[1]}", {f: v for f, v in fields.items() if v}


def billing_prefix(namespace: str) -> str:
    return f"{namespace}:billing:"


def _anonymised(data: Any, user: str) -> Any:
    """``data`` (a webhook's result, an order held for review, or the list of orders held
    before the keyed set) with ``user_id`` replaced where it is ``user``; None if none was."""
    if isinstance(data, list):
        items = [_anonymised(x, user) for x in data]
        return None if all(x is None for x in items) else [
            new if new is not None else old for new, old in zip(items, data, strict=True)]
    if isinstance(data, dict) and data.get("user_id") == user:
        return {**data, "user_id": DELETED}
    return None


def scrub(key: str, value: str, prefix: str, user: str) -> str | None:
    """What a billing record becomes once ``user`` is forgotten: ``value`` itself when it
    doesn't name them, None when it is only about them, else anonymised. Only the field
    that holds a user id in each kind of record is read (``billing._webhook_flow``): a
    bystander's lot id, currency or plan equal to someone's id is not theirs."""
    kind, _, ident = key[len(prefix):].partition(":")
    if kind == "cus":  # cus:<customer> -> the user, as text (never parsed: "42" is a user)
        return None if value == user else value
    if kind == "portal":  # portal:<user> -> their customer
        return None if ident == user else value
    if kind not in ("pi", *_KEPT_KINDS):
        return value
    try:
        data = json.loads(value)
    except ValueError:
        return value
    if kind == "pi":  # pi:<payment intent> -> {"u": user, "l": lot, "g": granted}
        return None if isinstance(data, dict) and data.get("u") == user else value
    new = _anonymised(data, user)
    return value if new is None else json.dumps(new, separators=(",", ":"))


def names(key: str, value: str, prefix: str, user: str) -> bool:
    return scrub(key, value, prefix, user) != value


def _add(analytics: dict[str, dict[str, int]], month: str, name: str, value: int) -> None:
    if value:
        months = analytics.setdefault(month, {})
        months[name] = months.get(name, 0) + int(value)


# -- SQLite: one transaction over the tables ------------------------------------------------
_BY_USER = {"meta": "", "lot": "c", "hold": "h", "settled": "s", "sub": "subs"}  # their Redis suffixes


def _rows(c: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
    cur = c.execute(sql, args)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur]


def sqlite_user_data(c: sqlite3.Connection, namespace: str, user: str, forget: bool) -> UserRecords:
    """Inside a transaction of the SQLite store: a write one to forget, else a read one."""
    base, prefix = user_base(namespace, user), billing_prefix(namespace)
    if not forget:
        return _sqlite_user_data(c, namespace, user, forget, base, prefix)
    was = int(c.execute("PRAGMA secure_delete").fetchone()[0])
    c.execute("PRAGMA secure_delete = ON")  # deleted rows are overwritten: the id leaves the pages
    try:
        found = _sqlite_user_data(c, namespace, user, forget, base, prefix)
    finally:
        c.execute(f"PRAGMA secure_delete = {was}")
    c.execute("COMMIT")  # the delete lands; then the log's older frames, which hold the id, go
    try:
        busy = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        c.execute("BEGIN")  # the empty transaction the store's write block commits
    if busy:  # a reader's open transaction still needs those frames
        log.warning("nasca: the user's rows are deleted, but another connection is reading the SQLite "
                    "file, so its write-ahead log keeps older copies until the next checkpoint")
    return found


def _sqlite_user_data(c: sqlite3.Connection, namespace: str, user: str, forget: bool, base: str,
                      prefix: str) -> UserRecords:
    records: dict[str, Any] = {}
    # Every table, as other operations add them: rows of the user's (by their meta key) and
    # rows under the user's keys (windows, the month, what hangs off it).
    for (table,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        columns = {row[1] for row in c.execute(f"PRAGMA table_info({table})")}
        if "user" in columns and "namespace" not in columns:
            rows = _rows(c, f"SELECT * FROM {table} WHERE user = ?", (base,))
            if rows:
                records[_BY_USER.get(table, table)] = [{k: v for k, v in r.items() if k != "user"}
                                                       for r in rows]
                if forget:
                    c.execute(f"DELETE FROM {table} WHERE user = ?", (base,))
        if "key" in columns:
            mine = (base + ":", base + ";")
            for row in _rows(c, f"SELECT * FROM {table} WHERE key > ? AND key < ?", mine):
                suffix = str(row.pop("key"))[len(base) + 1:]
                records[suffix] = row
                folded = fold(namespace, suffix, {**row, "to": row.get("tout")}) if table == "month" else None
                if forget and folded:
                    _sqlite_fold(c, *folded, int(row["expires"]))
            if forget:
                c.execute(f"DELETE FROM {table} WHERE key > ? AND key < ?", mine)
    analytics: dict[str, dict[str, int]] = {}
    for month, blocked, orders in c.execute(
            "SELECT month, blocked, orders FROM an_user WHERE namespace = ? AND user = ?", (namespace, user)):
        _add(analytics, month, "seen", 1)
        _add(analytics, month, "blocked", blocked)
        _add(analytics, month, "orders", orders)
    for month, currency, value in c.execute("SELECT month, currency, value FROM an_revenue "
                                            "WHERE namespace = ? AND user = ?", (namespace, user)):
        _add(analytics, month, f"revenue:{currency}", value)
    if forget:
        for table in ("an_user", "an_revenue"):
            c.execute(f"DELETE FROM {table} WHERE namespace = ? AND user = ?", (namespace, user))
    billing: dict[str, Any] = {}
    for key, value in c.execute("SELECT key, value FROM marker WHERE key > ? AND key < ?",
                                (prefix, prefix[:-1] + ";")).fetchall():
        if names(key, value, prefix, user):
            billing[key] = value
            if forget:
                _sqlite_scrub(c, "marker", key, None, scrub(key, value, prefix, user))
    for key, name, value in c.execute("SELECT key, name, value FROM entry WHERE key > ? AND key < ?",
                                      (prefix, prefix[:-1] + ";")).fetchall():
        if names(key, value, prefix, user):
            billing.setdefault(key, {})[name] = value
            if forget:
                _sqlite_scrub(c, "entry", key, name, scrub(key, value, prefix, user))
    return UserRecords(records, analytics, billing)


def _sqlite_fold(c: sqlite3.Connection, key: str, fields: dict[str, int], expires: int) -> None:
    v = [fields.get(f, 0) for f in LEDGER_FIELDS]
    c.execute("INSERT INTO month (key, c, k, n, ti, tout, expires) VALUES (?, ?, ?, ?, ?, ?, ?) "
              "ON CONFLICT (key) DO UPDATE SET c = c + excluded.c, k = k + excluded.k, n = n + excluded.n, "
              "ti = ti + excluded.ti, tout = tout + excluded.tout, expires = MAX(expires, excluded.expires)",
              (key, *v, expires))


def _sqlite_scrub(c: sqlite3.Connection, table: str, key: str, name: str | None, new: str | None) -> None:
    where, args = ("key = ?", (key,)) if name is None else ("key = ? AND name = ?", (key, name))
    if new is None:
        c.execute(f"DELETE FROM {table} WHERE {where}", args)
    else:
        c.execute(f"UPDATE {table} SET value = ? WHERE {where}", (new, *args))


# -- memory: the store's dict of keys ---------------------------------------------------------
def plain(value: Any) -> Any:
    """A memory store's value as JSON-able data."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if hasattr(value, "live"):  # the holds: member -> (expiry ms, amount)
        return plain(value.live)
    return value


def _emptied_holds(value: Any) -> bool:
    return hasattr(value, "live") and not value.live


def memory_user_data(data: dict[str, Any], expiry: dict[str, int], namespace: str, user: str,
                     forget: bool, analytics: dict[str, dict[str, int]]) -> UserRecords:
    """Under the memory store's lock."""
    base, prefix = user_base(namespace, user), billing_prefix(namespace)
    records: dict[str, Any] = {}
    billing: dict[str, Any] = {}
    for key in list(data):
        suffix = suffix_of(key, base)
        if suffix is not None:
            if not _emptied_holds(data[key]):  # kept for the next call; on Redis the key is gone
                records[suffix] = plain(data[key])
            folded = fold(namespace, suffix, data[key]) if isinstance(data[key], dict) else None
            if forget and folded:
                into = data.setdefault(folded[0], {"s": 0, **dict.fromkeys(LEDGER_FIELDS, 0)})
                for f, v in folded[1].items():
                    into[f] = into.get(f, 0) + v
                if key in expiry:
                    expiry[folded[0]] = max(expiry.get(folded[0], 0), expiry[key])
            if forget:
                data.pop(key, None)
                expiry.pop(key, None)
        elif key.startswith(prefix) and isinstance(data[key], str):
            if names(key, data[key], prefix, user):
                billing[key] = data[key]
                if forget:
                    _memory_scrub(data, expiry, key, scrub(key, data[key], prefix, user))
        elif key.startswith(prefix) and isinstance(data[key], dict):  # entries
            entries = data[key]
            for name, value in list(entries.items()):
                if names(key, value, prefix, user):
                    billing.setdefault(key, {})[name] = value
                    if forget:
                        new = scrub(key, value, prefix, user)
                        if new is None:
                            del entries[name]
                        else:
                            entries[name] = new
    return UserRecords(records, analytics, billing)


def _memory_scrub(data: dict[str, Any], expiry: dict[str, int], key: str, new: str | None) -> None:
    if new is None:
        data.pop(key, None)
        expiry.pop(key, None)
    else:
        data[key] = new  # its expiry stays


# -- Redis: one flow of scans and pipelines, driven by the sync or the async store ------------
@dataclass(frozen=True, slots=True)
class Scan:
    pattern: str


@dataclass(frozen=True, slots=True)
class Pipe:
    commands: list[tuple[Any, ...]]


RedisFlow = Generator[Scan | Pipe, Any, UserRecords]


def _glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _read(kind: str, key: str) -> tuple[Any, ...]:
    return {"string": ("GET", key), "hash": ("HGETALL", key), "set": ("SMEMBERS", key),
            "zset": ("ZRANGE", key, 0, -1, "WITHSCORES")}.get(kind, ("TYPE", key))


def _decoded(value: Any) -> Any:
    if isinstance(value, dict):
        return {_text(k): _decoded(v) for k, v in value.items()}
    if isinstance(value, list | set | tuple):
        return [_decoded(v) for v in value]
    return _text(value) if isinstance(value, bytes) else value


def redis_user_data(namespace: str, user: str, forget: bool) -> RedisFlow:
    """The flow behind ``RedisStore.user_data``: ``Scan`` answers the keys that match
    (every node of a cluster), ``Pipe`` the replies of its commands."""
    base, prefix = user_base(namespace, user), billing_prefix(namespace)
    own = [k for k in map(_text, (yield Scan(_glob(base) + "*"))) if suffix_of(k, base) is not None]
    kinds = [_text(t) for t in (yield Pipe([("TYPE", k) for k in own]))]
    values = yield Pipe([_read(kind, k) for kind, k in zip(kinds, own, strict=True)])
    records = {suffix_of(k, base) or "": _decoded(v) for k, v in zip(own, values, strict=True)}
    months_of = [k for k in own if fold(namespace, suffix_of(k, base) or "", {}) is not None]
    analytics: dict[str, dict[str, int]] = {}
    heads = [k for k in map(_text, (yield Scan("{" + _glob(f"{namespace}:an:") + "*}:u")))]
    months = [h[len(namespace) + 5:-3] for h in heads]
    replies = yield Pipe([cmd for m in months for cmd in _month_reads(namespace, m, user)])
    undo: list[tuple[Any, ...]] = []
    for i, month in enumerate(months):
        seen, blocked, orders, revenue = replies[4 * i:4 * i + 4]
        tag = f"{{{namespace}:an:{month}}}"
        if seen:
            _add(analytics, month, "seen", 1)
        _add(analytics, month, "blocked", int(blocked or 0))
        _add(analytics, month, "orders", int(orders or 0))
        mine = [f for f in map(_text, revenue or {}) if f.partition(":")[2] == user]
        for f in mine:
            _add(analytics, month, f"revenue:{f.partition(':')[0]}", int(_decoded(revenue)[f]))
        undo += [("SREM", f"{tag}:u", user), ("HDEL", f"{tag}:ub", user), ("HDEL", f"{tag}:uo", user)]
        undo += [("HDEL", f"{tag}:ur", f) for f in mine]
    billing: dict[str, Any] = {}
    everything = [_text(k) for k in (yield Scan(_glob(prefix) + "*"))]
    for i in range(0, len(everything), _BATCH):  # a pipeline's worth at a time: billing grows
        found = everything[i:i + _BATCH]
        kinds = [_text(t) for t in (yield Pipe([("TYPE", k) for k in found]))]
        values = yield Pipe([_read(kind, k) for kind, k in zip(kinds, found, strict=True)])
        _scrub_billing(found, kinds, values, prefix, user, billing, undo)
    if forget:  # the month's totals first, once each (tokens): a delete cut short and retried
        taken = yield Pipe([("EVAL", source("fold_take"), 1, k, uuid.uuid4().hex) for k in months_of])
        adds: list[tuple[Any, ...]] = []
        for key, reply in zip(months_of, taken, strict=True):
            token, ttl, *flat = map(_text, reply or ["", ""])
            read = dict(zip(flat[::2], flat[1::2], strict=True))
            folded = fold(namespace, suffix_of(key, base) or "", read)
            if token and folded is not None:  # never loses them nor counts them twice
                pairs = [x for f, v in folded[1].items() for x in (f, v)]
                adds.append(("EVAL", source("fold_add"), 1, folded[0], token, int(ttl), *pairs))
        yield Pipe(adds)
        yield Pipe([("DEL", k) for k in own] + undo)
    return UserRecords(records, analytics, billing)


_BATCH = 500


def _scrub_billing(found: list[str], kinds: list[str], values: list[Any], prefix: str, user: str,
                   billing: dict[str, Any], undo: list[tuple[Any, ...]]) -> None:
    for key, kind, value in zip(found, kinds, values, strict=True):
        if kind == "string" and names(key, _text(value), prefix, user):
            billing[key] = _text(value)
            new = scrub(key, _text(value), prefix, user)
            undo.append(("DEL", key) if new is None else ("SET", key, new, "XX", "KEEPTTL"))
        elif kind == "hash":
            for name, v in _decoded(value).items():
                if names(key, v, prefix, user):
                    billing.setdefault(key, {})[name] = v
                    new = scrub(key, v, prefix, user)
                    undo.append(("HDEL", key, name) if new is None else ("HSET", key, name, new))


def _month_reads(namespace: str, month: str, user: str) -> list[tuple[Any, ...]]:
    tag = f"{{{namespace}:an:{month}}}"
    return [("SISMEMBER", f"{tag}:u", user), ("HGET", f"{tag}:ub", user), ("HGET", f"{tag}:uo", user),
            ("HGETALL", f"{tag}:ur")]
