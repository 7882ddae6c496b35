"""The async face of the SQLite store (``sqlite.SqliteStore``): each operation runs in a worker
thread, so a wait for another process's write lock never stalls the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ParamSpec, TypeVar

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
)

if TYPE_CHECKING:
    from nasca_core.stores.sqlite import SqliteStore

P = ParamSpec("P")
R = TypeVar("R")


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

    async def set_user_limits(self, keys: UserKeys, compiled: str | None) -> None:
        await self._run(self.sync.set_user_limits, keys, compiled)

    async def change_boosts(self, keys: UserKeys, now_ms: int, add: StoredBoost | None = None,
                            clear: int | None = None) -> tuple[tuple[StoredBoost, ...], bool] | None:
        return await self._run(self.sync.change_boosts, keys, now_ms, add, clear)

    async def set_user_tier(self, keys: UserKeys, tier: str | None) -> None:
        await self._run(self.sync.set_user_tier, keys, tier)

    async def grant(self, keys: UserKeys, lot: Lot) -> bool:
        return await self._run(self.sync.grant, keys, lot)

    async def revoke_to(self, keys: UserKeys, lot_id: str, target: int, restore: bool = False,
                        floor: int = 0) -> int:
        return await self._run(self.sync.revoke_to, keys, lot_id, target, restore, floor)

    async def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]:
        return await self._run(self.sync.all_lots, keys)

    async def load_config(self, namespace: str) -> StoredConfig:
        return await self._run(self.sync.load_config, namespace)

    async def config_version(self, namespace: str) -> int:
        return await self._run(self.sync.config_version, namespace)

    async def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int:
        return await self._run(self.sync.save_config, namespace, section, name, value)

    async def store_id(self, namespace: str) -> str:
        return await self._run(self.sync.store_id, namespace)

    async def user_data(self, namespace: str, user_id: str, forget: bool = False) -> UserRecords:
        return await self._run(self.sync.user_data, namespace, user_id, forget)

    async def add_samples(self, op: SampleOp) -> Samples:
        return await self._run(self.sync.add_samples, op)

    async def pool_take(self, op: PoolTakeOp) -> PoolTakeResult:
        return await self._run(self.sync.pool_take, op)

    async def pool_release(self, keys: PoolKeys, lease_id: str, now_ms: int) -> None:
        await self._run(self.sync.pool_release, keys, lease_id, now_ms)

    async def pool_snapshot(self, keys: PoolKeys, now_ms: int) -> PoolSnapshot:
        return await self._run(self.sync.pool_snapshot, keys, now_ms)

    async def get_marker(self, key: str, now_ms: int) -> str | None:
        return await self._run(self.sync.get_marker, key, now_ms)

    async def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        await self._run(self.sync.put_marker, key, value, ttl_ms, now_ms)

    async def claim_marker(self, key: str, ttl_ms: int, now_ms: int, token: str | None = None) -> bool:
        return await self._run(self.sync.claim_marker, key, ttl_ms, now_ms, token)

    async def put_entry(self, key: str, name: str, value: str | None) -> None:
        await self._run(self.sync.put_entry, key, name, value)

    async def entries(self, key: str) -> dict[str, str]:
        return await self._run(self.sync.entries, key)

    async def tally(self, key: str, add: int, window_ms: int, now_ms: int) -> tuple[int, int]:
        return await self._run(self.sync.tally, key, add, window_ms, now_ms)

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
