"""Analytics on the ledger's store: a MemoryStore, or the redis-py client of a Redis store.

Each adapter records an event in one pipeline (one slot: the month's hash tag) and reads
a month back as a ``MonthRaw``. Ledger month hashes are found by SCAN over every primary
(redis-py's cluster ``scan_iter`` visits them all); that is for reports, never a call's path.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nasca_core._errors import StoreError
from nasca_core.analytics._events import (
    LEDGER_FIELDS,
    Event,
    LedgerMonth,
    MonthKeys,
    MonthRaw,
    commands,
    ledger_pattern,
    ledger_user,
    parse_counters,
    parse_user_revenue,
)
from nasca_core.stores import MemoryStore

_BATCH = 500


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _str_map(raw: Any) -> dict[str, int]:
    return {_s(k): int(v) for k, v in (raw or {}).items()}


def _ledger(values: Sequence[Any]) -> LedgerMonth:
    c, k, n, ti, to = (int(v) if v is not None else 0 for v in values)
    return LedgerMonth(c, k, n, ti, to)


def _store_error(exc: Exception) -> Exception:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return StoreError(f"Redis unavailable: {exc}")
    return exc


# -- memory ------------------------------------------------------------------------------
@dataclass
class _Month:
    counters: Counter[str] = field(default_factory=Counter)
    steps: dict[str, set[str]] = field(default_factory=dict)
    users: set[str] = field(default_factory=set)
    user_blocked: Counter[str] = field(default_factory=Counter)
    user_revenue: Counter[tuple[str, str]] = field(default_factory=Counter)
    user_orders: Counter[str] = field(default_factory=Counter)


class MemoryAnalytics:
    """Analytics kept beside a MemoryStore (same process, same lifetime)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._months: dict[tuple[str, str], _Month] = {}

    def record(self, namespace: str, event: Event) -> None:
        with self._lock:
            m = self._months.setdefault((namespace, event.month), _Month())
            m.counters[f"e:{event.kind}"] += 1
            m.users.add(event.user_id)
            if event.kind == "blocked":
                m.user_blocked[event.user_id] += 1
            elif event.prompt_id:
                m.steps.setdefault(event.kind, set()).add(event.prompt_id)
            if event.kind == "purchase_completed":
                m.counters[f"r:{event.currency}"] += event.amount_nanos
                m.counters[f"o:{event.currency}"] += 1
                m.user_revenue[(event.currency, event.user_id)] += event.amount_nanos
                m.user_orders[event.user_id] += 1

    def _counts(self, namespace: str, month: str) -> tuple[dict[str, int], dict[str, int]]:
        m = self._months.get((namespace, month)) or _Month()
        return dict(m.counters), {k: len(v) for k, v in m.steps.items()}

    def read(self, namespace: str, month: str, now_ms: int) -> MonthRaw:
        with self._lock:
            m = self._months.get((namespace, month)) or _Month()
            counters, steps = self._counts(namespace, month)
            raw = MonthRaw(counters=counters, steps=steps, users=set(m.users),
                           user_blocked=dict(m.user_blocked), user_revenue=dict(m.user_revenue),
                           user_orders=dict(m.user_orders))
        raw.ledger = self._ledger(namespace, month, now_ms)
        return raw

    def _ledger(self, namespace: str, month: str, now_ms: int) -> dict[str, LedgerMonth]:
        # The MemoryStore's month hashes, read under its lock (the same data model as Redis).
        out = {}
        for key, value in self.store.scan_hashes(f"{namespace}:{{", now_ms):
            user = ledger_user(key, namespace, month)
            if user is not None:
                out[user] = _ledger([value.get(f, 0) for f in LEDGER_FIELDS])
        return out

    def totals(self, namespace: str, months: Iterable[str]) -> list[tuple[dict[str, int], dict[str, int]]]:
        with self._lock:
            return [self._counts(namespace, month) for month in months]


# -- Redis -------------------------------------------------------------------------------
def _read_month_commands(keys: MonthKeys) -> list[tuple[str, ...]]:
    return [("HGETALL", keys.counters), *[("SCARD", k) for k in keys.steps.values()],
            ("SMEMBERS", keys.users), ("HGETALL", keys.user_blocked), ("HGETALL", keys.user_revenue),
            ("HGETALL", keys.user_orders)]


def _month_raw(keys: MonthKeys, results: Sequence[Any]) -> MonthRaw:
    n_steps = len(keys.steps)
    counters = parse_counters(_str_map(results[0]))
    steps = {kind: int(results[1 + i]) for i, kind in enumerate(keys.steps)}
    rest = results[1 + n_steps:]
    return MonthRaw(counters=counters, steps=steps, users={_s(u) for u in rest[0] or ()},
                    user_blocked=_str_map(rest[1]), user_revenue=parse_user_revenue(_str_map(rest[2])),
                    user_orders=_str_map(rest[3]))


def _totals_commands(keys: MonthKeys) -> list[tuple[str, ...]]:
    return [("HGETALL", keys.counters), *[("SCARD", k) for k in keys.steps.values()]]


def _totals(keys: MonthKeys, results: Sequence[Any]) -> tuple[dict[str, int], dict[str, int]]:
    return (parse_counters(_str_map(results[0])),
            {kind: int(results[1 + i]) for i, kind in enumerate(keys.steps)})


class RedisAnalytics:
    """Analytics on a sync redis-py client (``redis.Redis`` or ``RedisCluster``)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _pipeline(self, cmds: Iterable[tuple[Any, ...]]) -> list[Any]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for cmd in cmds:
                pipe.execute_command(*cmd)
            result: list[Any] = pipe.execute()
            return result
        except Exception as exc:
            raise _store_error(exc) from exc

    def record(self, namespace: str, event: Event) -> None:
        self._pipeline(commands(MonthKeys.build(namespace, event.month), event))

    def read(self, namespace: str, month: str, now_ms: int) -> MonthRaw:
        keys = MonthKeys.build(namespace, month)
        raw = _month_raw(keys, self._pipeline(_read_month_commands(keys)))
        try:
            found = [_s(k) for k in self.client.scan_iter(match=ledger_pattern(namespace, month), count=1000)]
        except Exception as exc:
            raise _store_error(exc) from exc
        for i in range(0, len(found), _BATCH):
            batch = [k for k in found[i:i + _BATCH] if ledger_user(k, namespace, month)]
            values = self._pipeline(("HMGET", k, *LEDGER_FIELDS) for k in batch)
            for key, row in zip(batch, values, strict=True):
                raw.ledger[str(ledger_user(key, namespace, month))] = _ledger(row)
        return raw

    def totals(self, namespace: str, months: Iterable[str]) -> list[tuple[dict[str, int], dict[str, int]]]:
        all_keys = [MonthKeys.build(namespace, m) for m in months]
        results = self._pipeline(c for k in all_keys for c in _totals_commands(k))
        width = 1 + len(all_keys[0].steps) if all_keys else 0
        return [_totals(k, results[i * width:(i + 1) * width]) for i, k in enumerate(all_keys)]


class AsyncRedisAnalytics:
    """The asyncio twin of RedisAnalytics (``redis.asyncio`` clients)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def _pipeline(self, cmds: Iterable[tuple[Any, ...]]) -> list[Any]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for cmd in cmds:
                pipe.execute_command(*cmd)
            result: list[Any] = await pipe.execute()
            return result
        except Exception as exc:
            raise _store_error(exc) from exc

    async def record(self, namespace: str, event: Event) -> None:
        await self._pipeline(commands(MonthKeys.build(namespace, event.month), event))

    async def read(self, namespace: str, month: str, now_ms: int) -> MonthRaw:
        keys = MonthKeys.build(namespace, month)
        raw = _month_raw(keys, await self._pipeline(_read_month_commands(keys)))
        try:
            found = [_s(k) async for k in self.client.scan_iter(match=ledger_pattern(namespace, month),
                                                                 count=1000)]
        except Exception as exc:
            raise _store_error(exc) from exc
        for i in range(0, len(found), _BATCH):
            batch = [k for k in found[i:i + _BATCH] if ledger_user(k, namespace, month)]
            values = await self._pipeline(("HMGET", k, *LEDGER_FIELDS) for k in batch)
            for key, row in zip(batch, values, strict=True):
                raw.ledger[str(ledger_user(key, namespace, month))] = _ledger(row)
        return raw

    async def totals(self, namespace: str,
                     months: Iterable[str]) -> list[tuple[dict[str, int], dict[str, int]]]:
        all_keys = [MonthKeys.build(namespace, m) for m in months]
        results = await self._pipeline(c for k in all_keys for c in _totals_commands(k))
        width = 1 + len(all_keys[0].steps) if all_keys else 0
        return [_totals(k, results[i * width:(i + 1) * width]) for i, k in enumerate(all_keys)]
