"""Stores chosen by URI: ``memory://[name]``, ``sqlite:///path``, ``redis://``, ``rediss://``,
``unix://``, ``redis+cluster://host:port[,host:port...]``, or an existing redis-py client.

Every store implements one typed protocol (``Store``, and ``AsyncStore`` for asyncio)
holding each operation the ledger, billing and analytics need:

    _base            the records and the Store / AsyncStore protocols
    _open            open_store(): URI or client -> StoreHandle
    _billing_rules   billing's rules (revoke_to, subscriptions) for the memory and SQLite stores
    _pools           a pool's keys and ops (chunks of an allowance many users share: the ceiling)
    memory           MemoryStore, in this process (+ _memory_analytics, _memory_pools, _memory_async)
    sqlite           SqliteStore, AsyncSqliteStore: one file, every process on the machine
                     (+ _sqlite_schema: the tables, the layout version; _sqlite_billing,
                     _sqlite_pools, _sqlite_async)
    redis            RedisStore, AsyncRedisStore: single server and Cluster, I/O only (+ _redis_async)
    _redis_codec     what each operation sends and what its reply means, sync and async alike
                     (+ _redis_pools: the pools' scripts, pipelined with the user's)
    _redis_errors    the one translation of redis-py's errors into Nasca's
    _scripts, lua/   one Lua script per atomic operation, as package data
"""

from nasca_core.stores._base import (
    EVENT_KINDS,
    AnalyticsEvent,
    AsyncStore,
    EventKind,
    LedgerMonth,
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
    Store,
    StoredConfig,
    SubChange,
    SubscriptionResult,
    UserKeys,
)
from nasca_core.stores._open import StoreHandle, open_store
from nasca_core.stores.memory import MemoryStore

__all__ = [
    "EVENT_KINDS",
    "AnalyticsEvent",
    "AsyncStore",
    "EventKind",
    "LedgerMonth",
    "Lot",
    "MemoryStore",
    "MonthCounts",
    "MonthRaw",
    "PoolKeys",
    "PoolSnapshot",
    "PoolTakeOp",
    "PoolTakeResult",
    "ReserveOp",
    "ReserveResult",
    "SampleOp",
    "Samples",
    "SettleOp",
    "SettleResult",
    "Snapshot",
    "Store",
    "StoreHandle",
    "StoredConfig",
    "SubChange",
    "SubscriptionResult",
    "UserKeys",
    "open_store",
]
