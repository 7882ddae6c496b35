"""Redis and Redis Cluster stores: one Lua script per operation, one round trip each.

Every key of a user shares the hash tag ``{user id}``, so the same scripts run on a
cluster. On a single server the reserve script also checks the config version (the
key lives on the same server); a cluster keeps that key on another slot, so there the
check rides in the same pipeline and a stale reserve is released and retried.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nasca_core._errors import StoreError, UnknownTierError
from nasca_core.stores import _scripts
from nasca_core.stores._base import (
    Lot,
    ReserveOp,
    ReserveResult,
    SettleOp,
    SettleResult,
    Snapshot,
    StoredConfig,
    UserKeys,
)

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def config_keys(namespace: str) -> tuple[str, str]:
    return f"{{{namespace}:cfg}}", f"{{{namespace}:cfg}}:v"


# -- pure encoding shared by the sync and async stores ---------------------------------
def reserve_args(op: ReserveOp, check_version: bool) -> tuple[list[str], list[Any]]:
    k = op.keys
    keys = [k.meta, k.holds, k.day, k.week, k.month, k.credits, k.held]
    if check_version:
        keys.append(config_keys(_namespace(k))[1])
    args = [op.now_ms, f"{op.hold_id}:{op.estimate}", op.estimate, op.hold_expiry_ms,
            1 if op.strict else 0, op.tier, op.tiers_json,
            op.config_version if check_version else "", *op.tier_compiled]
    return keys, args


def reserve_result(raw: Sequence[Any]) -> ReserveResult:
    return ReserveResult(int(raw[0]), _s(raw[1]), int(raw[2]),
                         (int(raw[3]), int(raw[4]), int(raw[5])), int(raw[6]), int(raw[7]))


def settle_args(op: SettleOp) -> tuple[list[str], list[Any]]:
    k = op.keys
    return ([k.meta, k.holds, k.day, k.week, k.month, k.credits, k.settled, k.held],
            [op.now_ms, op.hold_id, op.estimate, op.cost, op.tier, op.tiers_json,
             *op.ttls_ms, op.marker_expiry_ms, op.input_tokens, op.output_tokens, *op.tier_compiled])


def settle_result(raw: Sequence[Any]) -> SettleResult:
    return SettleResult(int(raw[0]), int(raw[1]), int(raw[2]), (int(raw[3]), int(raw[4]), int(raw[5])))


def user_keys(k: UserKeys) -> list[str]:
    return [k.meta, k.holds, k.day, k.week, k.month, k.credits, k.held]


def snapshot_result(raw: Sequence[Any]) -> Snapshot:
    lots = tuple(Lot.from_json_dict(d) for d in json.loads(_s(raw[8])))
    lots = tuple(sorted(lots, key=lambda lot: lot.seq))
    tier = _s(raw[0])
    return Snapshot(tier or None, int(raw[1]), (int(raw[2]), int(raw[3]), int(raw[4])),
                    int(raw[5]), int(raw[6]), int(raw[7]), lots, int(raw[9]), int(raw[10]))


def config_result(raw: Sequence[Any]) -> StoredConfig:
    sections: dict[str, dict[str, str]] = {}
    flat = raw[1]
    for i in range(0, len(flat), 2):
        section, _, name = _s(flat[i]).partition("\0")
        sections.setdefault(section, {})[name] = _s(flat[i + 1])
    return StoredConfig(int(raw[0]), sections)


def lots_result(raw: dict[Any, Any]) -> tuple[Lot, ...]:
    lots = []
    for value in raw.values():
        d = json.loads(_s(value))
        lots.append(Lot.from_json_dict(d))
    return tuple(sorted(lots, key=lambda lot: lot.seq))


def _namespace(keys: UserKeys) -> str:
    return keys.meta.split(":{", 1)[0]


def _translate(exc: Exception, tier: str = "") -> Exception:
    if isinstance(exc, ResponseError) and "NASCA unknown tier" in str(exc):
        return UnknownTierError(tier)
    if isinstance(exc, _UNAVAILABLE):
        return StoreError(f"Redis unavailable: {exc}")
    return exc


class RedisStore:
    """A store on a redis-py client: ``redis.Redis`` or ``redis.cluster.RedisCluster``."""

    def __init__(self, client: redis.Redis | RedisCluster, *, owns_client: bool = False) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self._owns = owns_client
        self._scripts = {name: client.register_script(_scripts.source(name)) for name in _scripts.NAMES}

    def _run(self, name: str, keys: list[str], args: list[Any], tier: str = "") -> Any:
        # EVALSHA straight through execute_command: redis-py's Script wrapper costs more
        # per call than the script itself.
        script = self._scripts[name]
        try:
            try:
                return self.client.execute_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", script.sha, len(keys), *keys, *args
                )
            except NoScriptError:
                self.client.script_load(script.script)
                return self.client.execute_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", script.sha, len(keys), *keys, *args
                )
        except Exception as exc:
            raise _translate(exc, tier) from exc

    def reserve(self, op: ReserveOp) -> ReserveResult:
        if not self.cluster:
            keys, args = reserve_args(op, True)
            return reserve_result(self._run("reserve", keys, args, op.tier))
        keys, args = reserve_args(op, False)
        script = self._scripts["reserve"]
        try:
            pipe = self.client.pipeline()
            pipe.get(config_keys(_namespace(op.keys))[1])
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                version, raw = pipe.execute()
            except NoScriptError:
                self.client.script_load(script.script)
                return self.reserve(op)
        except Exception as exc:
            raise _translate(exc, op.tier) from exc
        result = reserve_result(raw)
        if int(version or 0) != op.config_version:
            if result.status == 1:
                self.release(op.keys, op.hold_id, op.estimate)
            return ReserveResult(-1, "", 0, (0, 0, 0), 0, -1)
        return result

    def settle(self, op: SettleOp) -> SettleResult:
        keys, args = settle_args(op)
        return settle_result(self._run("settle", keys, args, op.tier))

    def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        self._run("release", [keys.holds, keys.held], [f"{hold_id}:{estimate}"])

    def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        return snapshot_result(self._run("snapshot", user_keys(keys), [now_ms]))

    def set_user_tier(self, keys: UserKeys, tier: str | None) -> None:
        try:
            if tier is None:
                self.client.hdel(keys.meta, "tier")
            else:
                self.client.hset(keys.meta, "tier", tier)
        except Exception as exc:
            raise _translate(exc) from exc

    def grant(self, keys: UserKeys, lot: Lot) -> bool:
        raw = self._run("grant", [keys.meta, keys.credits], [lot.id, json.dumps(lot.to_json_dict())])
        return bool(int(raw))

    def revoke(self, keys: UserKeys, lot_id: str) -> int:
        return int(self._run("revoke", [keys.credits], [lot_id]))

    def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]:
        try:
            return lots_result(self.client.hgetall(keys.credits))  # type: ignore[arg-type]
        except Exception as exc:
            raise _translate(exc) from exc

    def load_config(self, namespace: str) -> StoredConfig:
        return config_result(self._run("load_config", list(config_keys(namespace)), []))

    def config_version(self, namespace: str) -> int:
        try:
            return int(self.client.get(config_keys(namespace)[1]) or 0)  # type: ignore[arg-type]
        except Exception as exc:
            raise _translate(exc) from exc

    def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int:
        args = [f"{section}\0{name}", "0" if value is None else "1", value or ""]
        return int(self._run("save_config", list(config_keys(namespace)), args))

    def close(self) -> None:
        if self._owns:
            self.client.close()
            pool = getattr(self.client, "connection_pool", None)
            if pool is not None:
                pool.disconnect()


class AsyncRedisStore:
    """The asyncio twin of RedisStore: same scripts, same encoding, awaited calls."""

    def __init__(self, client: redis.asyncio.Redis | AsyncRedisCluster, *, owns_client: bool = False) -> None:
        self.client = client
        self.cluster = isinstance(client, AsyncRedisCluster)
        self._owns = owns_client
        self._scripts = {name: client.register_script(_scripts.source(name)) for name in _scripts.NAMES}
        self._loaded = False
        self._load_lock = asyncio.Lock()

    async def _load_all(self) -> None:
        # Load every script once up front: many tasks racing through NOSCRIPT at once upset
        # redis-py's asyncio connections.
        async with self._load_lock:
            if not self._loaded:
                if self.cluster:
                    # A fresh asyncio RedisCluster fails concurrent first commands until its
                    # slot map is loaded.
                    await self.client.initialize()  # type: ignore[union-attr]
                for script in self._scripts.values():
                    await self.client.script_load(script.script)
                self._loaded = True

    async def _run(self, name: str, keys: list[str], args: list[Any], tier: str = "") -> Any:
        script = self._scripts[name]
        try:
            if not self._loaded:
                await self._load_all()
            try:
                return await self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.client.script_load(script.script)
                return await self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except Exception as exc:
            raise _translate(exc, tier) from exc

    async def reserve(self, op: ReserveOp) -> ReserveResult:
        if not self.cluster:
            keys, args = reserve_args(op, True)
            return reserve_result(await self._run("reserve", keys, args, op.tier))
        keys, args = reserve_args(op, False)
        script = self._scripts["reserve"]
        try:
            if not self._loaded:
                await self._load_all()
            pipe = self.client.pipeline()
            pipe.get(config_keys(_namespace(op.keys))[1])
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                version, raw = await pipe.execute()
            except NoScriptError:
                await self.client.script_load(script.script)
                return await self.reserve(op)
        except Exception as exc:
            raise _translate(exc, op.tier) from exc
        result = reserve_result(raw)
        if int(version or 0) != op.config_version:
            if result.status == 1:
                await self.release(op.keys, op.hold_id, op.estimate)
            return ReserveResult(-1, "", 0, (0, 0, 0), 0, -1)
        return result

    async def settle(self, op: SettleOp) -> SettleResult:
        keys, args = settle_args(op)
        return settle_result(await self._run("settle", keys, args, op.tier))

    async def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        await self._run("release", [keys.holds, keys.held], [f"{hold_id}:{estimate}"])

    async def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        return snapshot_result(await self._run("snapshot", user_keys(keys), [now_ms]))

    async def set_user_tier(self, keys: UserKeys, tier: str | None) -> None:
        try:
            if tier is None:
                await self.client.hdel(keys.meta, "tier")
            else:
                await self.client.hset(keys.meta, "tier", tier)
        except Exception as exc:
            raise _translate(exc) from exc

    async def grant(self, keys: UserKeys, lot: Lot) -> bool:
        raw = await self._run("grant", [keys.meta, keys.credits], [lot.id, json.dumps(lot.to_json_dict())])
        return bool(int(raw))

    async def revoke(self, keys: UserKeys, lot_id: str) -> int:
        return int(await self._run("revoke", [keys.credits], [lot_id]))

    async def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]:
        try:
            return lots_result(await self.client.hgetall(keys.credits))  # type: ignore[misc]
        except Exception as exc:
            raise _translate(exc) from exc

    async def load_config(self, namespace: str) -> StoredConfig:
        return config_result(await self._run("load_config", list(config_keys(namespace)), []))

    async def config_version(self, namespace: str) -> int:
        try:
            return int(await self.client.get(config_keys(namespace)[1]) or 0)
        except Exception as exc:
            raise _translate(exc) from exc

    async def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int:
        args = [f"{section}\0{name}", "0" if value is None else "1", value or ""]
        return int(await self._run("save_config", list(config_keys(namespace)), args))

    async def close(self) -> None:
        if self._owns:
            await self.client.aclose()
            pool = getattr(self.client, "connection_pool", None)
            if pool is not None:  # a pool we built and passed in is not closed by aclose()
                await pool.disconnect()

