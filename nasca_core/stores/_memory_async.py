"""The async face of the embedded store (``memory.MemoryStore``): the same state, each method
run inline (there is no I/O to wait for)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

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
    from nasca_core.stores.memory import MemoryStore


class AsyncMemoryStore:
    """The async face of a MemoryStore (same state)."""

    def __init__(self, store: MemoryStore) -> None:
        self.sync = store

    async def reserve(self, op: ReserveOp) -> ReserveResult:
        return self.sync.reserve(op)

    async def settle(self, op: SettleOp) -> SettleResult:
        return self.sync.settle(op)

    async def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        self.sync.release(keys, hold_id, estimate)

    async def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        return self.sync.snapshot(keys, now_ms)

    async def set_user_tier(self, keys: UserKeys, tier: str | None) -> None:
        self.sync.set_user_tier(keys, tier)

    async def set_user_limits(self, keys: UserKeys, compiled: str | None) -> None:
        self.sync.set_user_limits(keys, compiled)

    async def change_boosts(self, keys: UserKeys, now_ms: int, add: StoredBoost | None = None,
                            clear: int | None = None) -> tuple[tuple[StoredBoost, ...], bool] | None:
        return self.sync.change_boosts(keys, now_ms, add, clear)

    async def grant(self, keys: UserKeys, lot: Lot) -> bool:
        return self.sync.grant(keys, lot)

    async def revoke_to(self, keys: UserKeys, lot_id: str, target: int, restore: bool = False, floor: int = 0,
                        ) -> int:
        return self.sync.revoke_to(keys, lot_id, target, restore, floor)

    async def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]:
        return self.sync.all_lots(keys)

    async def load_config(self, namespace: str) -> StoredConfig:
        return self.sync.load_config(namespace)

    async def config_version(self, namespace: str) -> int:
        return self.sync.config_version(namespace)

    async def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int:
        return self.sync.save_config(namespace, section, name, value)

    async def store_id(self, namespace: str) -> str:
        return self.sync.store_id(namespace)

    async def user_data(self, namespace: str, user_id: str, forget: bool = False) -> UserRecords:
        return self.sync.user_data(namespace, user_id, forget)

    async def add_samples(self, op: SampleOp) -> Samples:
        return self.sync.add_samples(op)

    async def pool_take(self, op: PoolTakeOp) -> PoolTakeResult:
        return self.sync.pool_take(op)

    async def pool_release(self, keys: PoolKeys, lease_id: str, now_ms: int) -> None:
        self.sync.pool_release(keys, lease_id, now_ms)

    async def pool_snapshot(self, keys: PoolKeys, now_ms: int) -> PoolSnapshot:
        return self.sync.pool_snapshot(keys, now_ms)

    async def get_marker(self, key: str, now_ms: int) -> str | None:
        return self.sync.get_marker(key, now_ms)

    async def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        self.sync.put_marker(key, value, ttl_ms, now_ms)

    async def claim_marker(self, key: str, ttl_ms: int, now_ms: int, token: str | None = None) -> bool:
        return self.sync.claim_marker(key, ttl_ms, now_ms, token)

    async def put_entry(self, key: str, name: str, value: str | None) -> None:
        self.sync.put_entry(key, name, value)

    async def entries(self, key: str) -> dict[str, str]:
        return self.sync.entries(key)

    async def tally(self, key: str, add: int, window_ms: int, now_ms: int) -> tuple[int, int]:
        return self.sync.tally(key, add, window_ms, now_ms)

    async def apply_subscription(self, keys: UserKeys, change: SubChange,
                                 now_ms: int) -> SubscriptionResult:
        return self.sync.apply_subscription(keys, change, now_ms)

    async def record_event(self, namespace: str, event: AnalyticsEvent) -> None:
        self.sync.record_event(namespace, event)

    async def read_month(self, namespace: str, month: str, now_ms: int) -> MonthRaw:
        return self.sync.read_month(namespace, month, now_ms)

    async def month_totals(self, namespace: str, months: Sequence[str]) -> list[MonthCounts]:
        return self.sync.month_totals(namespace, months)

    async def close(self) -> None:
        pass
