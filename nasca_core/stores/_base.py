"""The store contract: the handful of atomic per-user operations the ledger needs.

Every operation touches the keys of one user only (one Redis Cluster slot) and is
atomic. Amounts are int nano-dollars, times int epoch milliseconds. Sync and async
stores expose the same method names; `AsyncStore` methods are coroutines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class UserKeys:
    """Where one user's state lives; every key shares the user's hash tag."""

    meta: str
    holds: str
    settled: str
    day: str
    week: str
    month: str
    credits: str
    held: str  # the running sum of the live holds

    @classmethod
    def build(cls, namespace: str, user_id: str, window_ids: tuple[str, str, str]) -> UserKeys:
        base = f"{namespace}:{{{user_id}}}"
        d, w, m = window_ids
        return cls(base, f"{base}:h", f"{base}:s", f"{base}:d:{d}", f"{base}:w:{w}", f"{base}:m:{m}",
                   f"{base}:c", f"{base}:hs")


@dataclass(frozen=True, slots=True)
class ReserveOp:
    keys: UserKeys
    now_ms: int
    hold_id: str
    estimate: int
    hold_expiry_ms: int
    strict: bool
    tier: str
    tiers_json: str
    config_version: int
    tier_compiled: tuple[int, ...] = ()  # limits d, w, m (-1 = none) then hard flags d, w, m


@dataclass(frozen=True, slots=True)
class ReserveResult:
    status: int  # 1 admitted, 0 blocked, -1 the caller's config is stale
    tier: str
    window: int  # blocking window 1..3 (daily, weekly, monthly), 0 = none
    spent: tuple[int, int, int]
    held: int
    credits: int  # -1 when the store did not need to read it


@dataclass(frozen=True, slots=True)
class SettleOp:
    keys: UserKeys
    now_ms: int
    hold_id: str
    estimate: int
    cost: int
    tier: str
    tiers_json: str
    tier_compiled: tuple[int, ...]
    ttls_ms: tuple[int, int, int]
    marker_expiry_ms: int
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class SettleResult:
    status: int  # 1 applied, 2 this hold was settled before (a retried settle)
    tier_part: int
    credit_part: int
    spent: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Lot:
    """A credit purchase: paid in its currency's nanos, granted and remaining in USD nanos."""

    id: str
    pack: str
    paid: int
    currency: str
    granted: int
    remaining: int
    expires_ms: int = 0
    created_ms: int = 0
    seq: int = 0
    revoked: bool = False

    def to_json_dict(self) -> dict[str, object]:
        return {"p": self.paid, "cur": self.currency, "g": self.granted, "r": self.remaining,
                "x": self.expires_ms, "pk": self.pack, "t": self.created_ms, "id": self.id}

    @classmethod
    def from_json_dict(cls, d: Mapping[str, object]) -> Lot:
        def num(k: str) -> int:
            v = d.get(k, 0)
            return int(v) if isinstance(v, int | float | str) else 0

        return cls(id=str(d.get("id", "")), pack=str(d.get("pk", "")), paid=num("p"),
                   currency=str(d.get("cur", "usd")), granted=num("g"), remaining=num("r"),
                   expires_ms=num("x"), created_ms=num("t"), seq=num("q"),
                   revoked=d.get("v") == 1)


@dataclass(frozen=True, slots=True)
class Snapshot:
    stored_tier: str | None
    held: int
    spent: tuple[int, int, int]
    month_cost: int
    month_credit: int
    month_calls: int
    lots: tuple[Lot, ...] = field(default=())
    month_input_tokens: int = 0
    month_output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """Owner-editable config kept in the store: {section: {name: JSON text}}."""

    version: int
    sections: Mapping[str, Mapping[str, str]]


class Store(Protocol):
    def reserve(self, op: ReserveOp) -> ReserveResult: ...
    def settle(self, op: SettleOp) -> SettleResult: ...
    def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None: ...
    def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot: ...
    def set_user_tier(self, keys: UserKeys, tier: str | None) -> None: ...
    def grant(self, keys: UserKeys, lot: Lot) -> bool: ...
    def revoke(self, keys: UserKeys, lot_id: str) -> int: ...
    def load_config(self, namespace: str) -> StoredConfig: ...
    def config_version(self, namespace: str) -> int: ...
    def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int: ...
    def close(self) -> None: ...


class AsyncStore(Protocol):
    async def reserve(self, op: ReserveOp) -> ReserveResult: ...
    async def settle(self, op: SettleOp) -> SettleResult: ...
    async def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None: ...
    async def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot: ...
    async def set_user_tier(self, keys: UserKeys, tier: str | None) -> None: ...
    async def grant(self, keys: UserKeys, lot: Lot) -> bool: ...
    async def revoke(self, keys: UserKeys, lot_id: str) -> int: ...
    async def load_config(self, namespace: str) -> StoredConfig: ...
    async def config_version(self, namespace: str) -> int: ...
    async def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int: ...
    async def close(self) -> None: ...
