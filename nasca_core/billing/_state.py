"""What billing keeps in the store beside the ledger: webhook event markers, small indexes
(payment intent -> lot, customer -> user) and each user's subscriptions.

The ledger's store contract stays as it is: these adapters sit on the same store (the
MemoryStore object, or the redis-py client of a Redis store), one per store, sync and async.
Every operation touches one key, or the keys of one user (one cluster slot), atomically.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any, Protocol

from nasca_core._errors import StoreError
from nasca_core.stores import MemoryStore, UserKeys


@dataclass(frozen=True, slots=True)
class SubChange:
    """One subscription event, reduced to what decides the user's tier."""

    sub_id: str
    event_created: int
    event_id: str
    active: bool
    tier: str
    sub_created: int
    final: bool


class BillingState(Protocol):
    def seen(self, key: str, now_ms: int) -> bool: ...
    def claim(self, key: str, ttl_ms: int, now_ms: int) -> bool: ...
    def put(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None: ...
    def get(self, key: str, now_ms: int) -> str | None: ...
    def subscription(self, keys: UserKeys, change: SubChange, now_ms: int) -> tuple[int, str | None]: ...


class AsyncBillingState(Protocol):
    async def seen(self, key: str, now_ms: int) -> bool: ...
    async def claim(self, key: str, ttl_ms: int, now_ms: int) -> bool: ...
    async def put(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None: ...
    async def get(self, key: str, now_ms: int) -> str | None: ...
    async def subscription(self, keys: UserKeys, change: SubChange,
                           now_ms: int) -> tuple[int, str | None]: ...


def subs_key(keys: UserKeys) -> str:
    return f"{keys.meta}:subs"  # shares the user's hash tag, so one slot with the meta hash


# -- memory ------------------------------------------------------------------------------
class MemoryBilling:
    """Billing state for a MemoryStore, expiring by the Nasca clock like the ledger."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._kv: dict[str, tuple[str, int]] = {}  # key -> (value, expiry ms; 0 = never)
        self._subs: dict[str, dict[str, dict[str, Any]]] = {}
        self._ops = 0

    def _live(self, key: str, now_ms: int) -> str | None:
        self._ops += 1
        if self._ops % 10_000 == 0:
            for k in [k for k, (_, x) in self._kv.items() if x and x <= now_ms]:
                del self._kv[k]
        item = self._kv.get(key)
        if item is None:
            return None
        if item[1] and item[1] <= now_ms:
            del self._kv[key]
            return None
        return item[0]

    def seen(self, key: str, now_ms: int) -> bool:
        with self._lock:
            return self._live(key, now_ms) is not None

    def claim(self, key: str, ttl_ms: int, now_ms: int) -> bool:
        with self._lock:
            if self._live(key, now_ms) is not None:
                return False
            self._kv[key] = ("1", now_ms + ttl_ms)
            return True

    def put(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        with self._lock:
            self._kv[key] = (value, now_ms + ttl_ms if ttl_ms else 0)

    def get(self, key: str, now_ms: int) -> str | None:
        with self._lock:
            return self._live(key, now_ms)

    def subscription(self, keys: UserKeys, change: SubChange, now_ms: int) -> tuple[int, str | None]:
        # The same rules as lua/subscription.lua; the lock also covers the tier write.
        with self._lock:
            subs = self._subs.setdefault(subs_key(keys), {})
            old = subs.get(change.sub_id)
            if old is not None and (old["i"] == change.event_id or old["d"]
                                    or (not change.final and old["e"] > change.event_created)):
                status = 2 if old["i"] == change.event_id else 0
                return status, self.store.snapshot(keys, now_ms).stored_tier
            subs[change.sub_id] = {"e": change.event_created, "i": change.event_id,
                                   "a": change.active, "t": change.tier, "c": change.sub_created,
                                   "d": change.final}
            best = _best_tier(subs)
            self.store.set_user_tier(keys, best)
            return 1, best


def _best_tier(subs: dict[str, dict[str, Any]]) -> str | None:
    active = [(s["c"], sub_id, s["t"]) for sub_id, s in subs.items() if s["a"]]
    return max(active)[2] if active else None


class AsyncMemoryBilling:
    def __init__(self, sync: MemoryBilling) -> None:
        self.sync = sync

    async def seen(self, key: str, now_ms: int) -> bool:
        return self.sync.seen(key, now_ms)

    async def claim(self, key: str, ttl_ms: int, now_ms: int) -> bool:
        return self.sync.claim(key, ttl_ms, now_ms)

    async def put(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        self.sync.put(key, value, ttl_ms, now_ms)

    async def get(self, key: str, now_ms: int) -> str | None:
        return self.sync.get(key, now_ms)

    async def subscription(self, keys: UserKeys, change: SubChange,
                           now_ms: int) -> tuple[int, str | None]:
        return self.sync.subscription(keys, change, now_ms)


# -- Redis -------------------------------------------------------------------------------
@cache
def _script() -> str:
    return (files("nasca_core.billing") / "lua" / "subscription.lua").read_text(encoding="utf-8")


def _sub_args(keys: UserKeys, c: SubChange) -> tuple[list[str], list[Any]]:
    return ([subs_key(keys), keys.meta],
            [c.sub_id, c.event_created, c.event_id, int(c.active), c.tier, c.sub_created, int(c.final)])


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _sub_result(raw: Any) -> tuple[int, str | None]:
    return int(raw[0]), _text(raw[1]) or None


def _store_error(exc: Exception) -> Exception:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return StoreError(f"Redis unavailable: {exc}")
    return exc


class RedisBilling:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._sub = client.register_script(_script())

    def seen(self, key: str, now_ms: int) -> bool:
        try:
            return bool(self.client.exists(key))
        except Exception as exc:
            raise _store_error(exc) from exc

    def claim(self, key: str, ttl_ms: int, now_ms: int) -> bool:
        try:
            return bool(self.client.set(key, "1", nx=True, px=ttl_ms))
        except Exception as exc:
            raise _store_error(exc) from exc

    def put(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        try:
            self.client.set(key, value, px=ttl_ms or None)
        except Exception as exc:
            raise _store_error(exc) from exc

    def get(self, key: str, now_ms: int) -> str | None:
        try:
            return _text(self.client.get(key))
        except Exception as exc:
            raise _store_error(exc) from exc

    def subscription(self, keys: UserKeys, change: SubChange, now_ms: int) -> tuple[int, str | None]:
        k, a = _sub_args(keys, change)
        try:
            return _sub_result(self._sub(keys=k, args=a))
        except Exception as exc:
            raise _store_error(exc) from exc


class AsyncRedisBilling:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._sub = client.register_script(_script())
        # redis-py's asyncio RedisCluster fails concurrent first commands on a cold client
        # (AttributeError in send_packed_command); awaiting initialize() first avoids it.
        self._ready = not hasattr(client, "nodes_manager")

    async def _init(self) -> None:
        if not self._ready:
            await self.client.initialize()  # locked inside redis-py: runs once
            self._ready = True

    async def seen(self, key: str, now_ms: int) -> bool:
        try:
            await self._init()
            return bool(await self.client.exists(key))
        except Exception as exc:
            raise _store_error(exc) from exc

    async def claim(self, key: str, ttl_ms: int, now_ms: int) -> bool:
        try:
            await self._init()
            return bool(await self.client.set(key, "1", nx=True, px=ttl_ms))
        except Exception as exc:
            raise _store_error(exc) from exc

    async def put(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        try:
            await self._init()
            await self.client.set(key, value, px=ttl_ms or None)
        except Exception as exc:
            raise _store_error(exc) from exc

    async def get(self, key: str, now_ms: int) -> str | None:
        try:
            await self._init()
            return _text(await self.client.get(key))
        except Exception as exc:
            raise _store_error(exc) from exc

    async def subscription(self, keys: UserKeys, change: SubChange,
                           now_ms: int) -> tuple[int, str | None]:
        k, a = _sub_args(keys, change)
        try:
            await self._init()
            return _sub_result(await self._sub(keys=k, args=a))
        except Exception as exc:
            raise _store_error(exc) from exc


# -- one adapter per store object ----------------------------------------------------------
_adapters: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_memory: weakref.WeakKeyDictionary[MemoryStore, MemoryBilling] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _memory_billing(store: MemoryStore) -> MemoryBilling:
    with _lock:
        state = _memory.get(store)
        if state is None:
            state = _memory[store] = MemoryBilling(store)
        return state


def billing_state(store: Any) -> BillingState:
    """The billing adapter of a sync ledger store (MemoryStore or RedisStore)."""
    if isinstance(store, MemoryStore):
        return _memory_billing(store)
    with _lock:
        state: BillingState | None = _adapters.get(store)
        if state is None:
            state = _adapters[store] = RedisBilling(store.client)
        return state


def async_billing_state(store: Any) -> AsyncBillingState:
    """The billing adapter of an async ledger store (AsyncMemoryStore or AsyncRedisStore)."""
    sync = getattr(store, "sync", None)
    if isinstance(sync, MemoryStore):
        return AsyncMemoryBilling(_memory_billing(sync))
    with _lock:
        state: AsyncBillingState | None = _adapters.get(store)
        if state is None:
            state = _adapters[store] = AsyncRedisBilling(store.client)
        return state
