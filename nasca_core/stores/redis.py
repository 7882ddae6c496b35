"""Redis and Redis Cluster stores: one Lua script per atomic operation, one round trip each.

Every key of a user shares the user's hash tag (``UserKeys``: a hash of the id), so the
same scripts run on a cluster. On first use a store checks the key layout (``_layout``)
and whether the server can lose ledger keys (``_redis_safety``). On a single server the
reserve script also checks the config version (the key lives on the same server); a
cluster keeps that key on another slot, so there the check rides in the same pipeline and
a stale reserve is released and retried.

The two classes hold only the I/O: what to send and what a reply means is
``_redis_codec``, what an error means ``_redis_errors``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from nasca_core.stores._base import (
    AnalyticsEvent,
    Lot,
    MonthCounts,
    MonthRaw,
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
    store_id_key,
)
from nasca_core.stores._layout import acheck_layout, check_layout
from nasca_core.stores._redis_codec import (
    STALE,
    Command,
    MonthKeys,
    add_ledger_rows,
    boosts_args,
    boosts_result,
    claim_marker_command,
    config_keys,
    config_result,
    entries_result,
    entry_command,
    event_commands,
    grant_args,
    ledger_batches,
    ledger_pattern,
    lots_result,
    marker_result,
    month_raw,
    put_marker_command,
    read_month_commands,
    release_args,
    reserve_args,
    reserve_result,
    save_config_args,
    settle_args,
    settle_result,
    snapshot_keys,
    snapshot_result,
    subscription_args,
    subscription_result,
    tally_result,
    text,
    totals_commands,
    totals_result,
    user_limits_command,
)
from nasca_core.stores._redis_conns import Conns
from nasca_core.stores._redis_errors import REDIS_ERRORS, redis_errors
from nasca_core.stores._redis_lean import async_conns, settle_batch
from nasca_core.stores._redis_safety import acheck_durable, check_durable
from nasca_core.stores._samples import redis_args as samples_args
from nasca_core.stores._samples import redis_result as samples_result
from nasca_core.stores._scripts import NAMES, source
from nasca_core.stores._user_data import Scan, redis_user_data


class RedisStore:
    """A store on a redis-py client: ``redis.Redis`` or ``redis.cluster.RedisCluster``."""

    def __init__(self, client: redis.Redis | RedisCluster, *, owns_client: bool = False,
                 require_durable: bool = False) -> None:
        self.client = client
        self.require_durable = require_durable
        self._durable_checked = False
        self.cluster = isinstance(client, RedisCluster)
        self._owns = owns_client
        self._scripts = {name: client.register_script(source(name)) for name in NAMES}
        self._execute: Callable[..., Any] = client.execute_command
        self._conns = Conns(client) if isinstance(client, redis.Redis) else None
        self._eval: Callable[..., Any] = self._conns.call if self._conns else client.execute_command
        self._layouts: set[str] = set()  # namespaces whose key layout was checked

    # -- I/O -------------------------------------------------------------------------------
    def _run(self, name: str, keys: list[str], args: list[Any], tier: str = "") -> Any:
        # EVALSHA straight through execute_command: redis-py's Script wrapper costs more
        # per call than the script itself.
        script = self._scripts[name]
        with redis_errors(tier):
            try:
                return self._eval("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                self.client.script_load(script.script)
                return self._eval("EVALSHA", script.sha, len(keys), *keys, *args)

    def _command(self, *args: str | int) -> Any:
        with REDIS_ERRORS:
            return self._execute(*args)

    def _pipeline(self, cmds: Iterable[Command]) -> list[Any]:
        with REDIS_ERRORS:
            pipe = self.client.pipeline(transaction=False)
            for cmd in cmds:
                pipe.execute_command(*cmd)
            result: list[Any] = pipe.execute()
            return result

    # -- the ledger ------------------------------------------------------------------------
    def reserve(self, op: ReserveOp) -> ReserveResult:
        if not self.cluster:
            keys, args = reserve_args(op, True)
            return reserve_result(self._run("reserve", keys, args, op.tier))
        keys, args = reserve_args(op, False)
        script = self._scripts["reserve"]
        with redis_errors(op.tier):
            pipe = self.client.pipeline()
            pipe.get(config_keys(op.keys.namespace)[1])
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                version, raw = pipe.execute()
            except NoScriptError:
                self.client.script_load(script.script)
                return self.reserve(op)
        result = reserve_result(raw)
        if int(version or 0) != op.config_version:
            if result.status == 1:
                self.release(op.keys, op.hold_id, op.estimate)
            return STALE
        return result

    def settle(self, op: SettleOp) -> SettleResult:
        keys, args = settle_args(op)
        return settle_result(self._run("settle", keys, args, op.tier))

    def settle_many(self, ops: Sequence[SettleOp]) -> list[SettleResult | Exception]:
        return settle_batch(self._conns or self.client, self._scripts["settle"].sha, self.settle, ops)

    def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        self._run("release", *release_args(keys, hold_id, estimate))

    def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        return snapshot_result(self._run("snapshot", snapshot_keys(keys), [now_ms]), now_ms)

    def set_user_limits(self, keys: UserKeys, compiled: str | None) -> None:
        self._command(*user_limits_command(keys, compiled))

    def change_boosts(self, keys: UserKeys, now_ms: int, add: StoredBoost | None = None,
                      clear: int | None = None) -> tuple[tuple[StoredBoost, ...], bool] | None:
        return boosts_result(self._run("boosts", *boosts_args(keys, now_ms, add, clear)), now_ms)

    def set_user_tier(self, keys: UserKeys, tier: str | None) -> None:
        if tier is None:
            self._command("HDEL", keys.meta, "tier")
        else:
            self._command("HSET", keys.meta, "tier", tier)

    def grant(self, keys: UserKeys, lot: Lot) -> bool:
        return bool(int(self._run("grant", *grant_args(keys, lot))))

    def revoke_to(self, keys: UserKeys, lot_id: str, target: int, restore: bool = False, floor: int = 0,
                  ) -> int:
        return int(self._run("revoke_to", [keys.credits], [lot_id, target, int(restore), floor]))

    def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]:
        return lots_result(self._command("HGETALL", keys.credits))

    def _layout(self, namespace: str) -> None:
        # Every process reads the config before its first operation: check the key layout there.
        if namespace not in self._layouts:
            with REDIS_ERRORS:
                if not self._durable_checked:
                    check_durable(self.client, self.require_durable)
                    self._durable_checked = True
                check_layout(self.client, namespace)
            self._layouts.add(namespace)

    def load_config(self, namespace: str) -> StoredConfig:
        self._layout(namespace)
        return config_result(self._run("load_config", list(config_keys(namespace)), []))

    def config_version(self, namespace: str) -> int:
        self._layout(namespace)
        return int(self._command("GET", config_keys(namespace)[1]) or 0)

    def store_id(self, namespace: str) -> str:
        with REDIS_ERRORS:  # read first: a replica, an ACL or a proxy may refuse the write
            found = self.client.get(store_id_key(namespace))
            if found is None:  # made by the first process to ask; SET NX: one id wins
                self.client.set(store_id_key(namespace), uuid.uuid4().hex, nx=True)
                found = self.client.get(store_id_key(namespace))
            return text(found)

    def user_data(self, namespace: str, user_id: str, forget: bool = False) -> UserRecords:
        flow, reply = redis_user_data(namespace, user_id, forget), None
        while True:
            try:
                ask = flow.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            with REDIS_ERRORS:
                reply = (list(self.client.scan_iter(match=ask.pattern, count=1000)) if isinstance(ask, Scan)
                         else self._pipeline(ask.commands))

    def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int:
        args = save_config_args(section, name, value)
        return int(self._run("save_config", list(config_keys(namespace)), args))

    def add_samples(self, op: SampleOp) -> Samples:
        return samples_result(self._run("samples", *samples_args(op)))

    # -- billing ---------------------------------------------------------------------------
    def get_marker(self, key: str, now_ms: int) -> str | None:
        return marker_result(self._command("GET", key))

    def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        self._command(*put_marker_command(key, value, ttl_ms))

    def claim_marker(self, key: str, ttl_ms: int, now_ms: int, token: str | None = None) -> bool:
        return bool(self._run("claim", [key], [token, ttl_ms]) if token is not None else
                    self._command(*claim_marker_command(key, ttl_ms)))

    def put_entry(self, key: str, name: str, value: str | None) -> None:
        self._command(*entry_command(key, name, value))

    def entries(self, key: str) -> dict[str, str]:
        return entries_result(self._command("HGETALL", key))

    def tally(self, key: str, add: int, window_ms: int, now_ms: int) -> tuple[int, int]:
        return tally_result(self._run("tally", [key], [add, window_ms]), now_ms)

    def apply_subscription(self, keys: UserKeys, change: SubChange, now_ms: int) -> SubscriptionResult:
        return subscription_result(self._run("subscription", *subscription_args(keys, change)))

    # -- analytics -------------------------------------------------------------------------
    def record_event(self, namespace: str, event: AnalyticsEvent) -> None:
        self._pipeline(event_commands(MonthKeys.build(namespace, event.month), event))

    def read_month(self, namespace: str, month: str, now_ms: int) -> MonthRaw:
        keys = MonthKeys.build(namespace, month)
        raw = month_raw(keys, self._pipeline(read_month_commands(keys)))
        with REDIS_ERRORS:
            found = list(self.client.scan_iter(match=ledger_pattern(namespace, month), count=1000))
        for batch in ledger_batches(found, namespace, month):
            add_ledger_rows(raw, batch, self._pipeline(batch), namespace, month)
        return raw

    def month_totals(self, namespace: str, months: Sequence[str]) -> list[MonthCounts]:
        all_keys = [MonthKeys.build(namespace, m) for m in months]
        return totals_result(all_keys, self._pipeline(totals_commands(all_keys)))

    def close(self) -> None:
        if self._conns:
            self._conns.close()
        if self._owns:
            self.client.close()
            pool = getattr(self.client, "connection_pool", None)
            if pool is not None:
                pool.disconnect()


class AsyncRedisStore:
    """The asyncio twin of RedisStore: same scripts, same encoding, awaited calls."""

    def __init__(self, client: redis.asyncio.Redis | AsyncRedisCluster, *, owns_client: bool = False,
                 require_durable: bool = False) -> None:
        self.client = client
        self.require_durable = require_durable
        self._durable_checked = False
        self.cluster = isinstance(client, AsyncRedisCluster)
        self._owns = owns_client
        self._scripts = {name: client.register_script(source(name)) for name in NAMES}
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._conns = async_conns(client)
        self._eval: Callable[..., Any] = self._conns.call if self._conns else client.execute_command
        self._layouts: set[str] = set()

    # -- I/O -------------------------------------------------------------------------------
    async def _ready(self) -> None:
        # Load every script once up front: many tasks racing through NOSCRIPT at once upset
        # redis-py's asyncio connections.
        async with self._load_lock:
            if not self._loaded:
                if isinstance(self.client, AsyncRedisCluster):
                    # A fresh asyncio RedisCluster fails concurrent first commands until its
                    # slot map is loaded.
                    await self.client.initialize()
                for script in self._scripts.values():
                    await self.client.script_load(script.script)
                self._loaded = True

    async def _run(self, name: str, keys: list[str], args: list[Any], tier: str = "") -> Any:
        script = self._scripts[name]
        with redis_errors(tier):
            if not self._loaded:
                await self._ready()
            try:
                return await self._eval("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.client.script_load(script.script)
                return await self._eval("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _command(self, *args: str | int) -> Any:
        with REDIS_ERRORS:
            if not self._loaded:
                await self._ready()
            return await self.client.execute_command(*args)

    async def _pipeline(self, cmds: Iterable[Command]) -> list[Any]:
        with REDIS_ERRORS:
            if not self._loaded:
                await self._ready()
            pipe = self.client.pipeline(transaction=False)
            for cmd in cmds:
                pipe.execute_command(*cmd)
            result: list[Any] = await pipe.execute()
            return result

    # -- the ledger ------------------------------------------------------------------------
    async def reserve(self, op: ReserveOp) -> ReserveResult:
        if not self.cluster:
            keys, args = reserve_args(op, True)
            return reserve_result(await self._run("reserve", keys, args, op.tier))
        keys, args = reserve_args(op, False)
        script = self._scripts["reserve"]
        with redis_errors(op.tier):
            if not self._loaded:
                await self._ready()
            pipe = self.client.pipeline()
            pipe.get(config_keys(op.keys.namespace)[1])
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                version, raw = await pipe.execute()
            except NoScriptError:
                await self.client.script_load(script.script)
                return await self.reserve(op)
        result = reserve_result(raw)
        if int(version or 0) != op.config_version:
            if result.status == 1:
                await self.release(op.keys, op.hold_id, op.estimate)
            return STALE
        return result

    async def settle(self, op: SettleOp) -> SettleResult:
        keys, args = settle_args(op)
        return settle_result(await self._run("settle", keys, args, op.tier))

    async def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        await self._run("release", *release_args(keys, hold_id, estimate))

    async def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        return snapshot_result(await self._run("snapshot", snapshot_keys(keys), [now_ms]), now_ms)

    async def set_user_limits(self, keys: UserKeys, compiled: str | None) -> None:
        await self._command(*user_limits_command(keys, compiled))

    async def change_boosts(self, keys: UserKeys, now_ms: int, add: StoredBoost | None = None,
                            clear: int | None = None) -> tuple[tuple[StoredBoost, ...], bool] | None:
        return boosts_result(await self._run("boosts", *boosts_args(keys, now_ms, add, clear)), now_ms)

    async def set_user_tier(self, keys: UserKeys, tier: str | None) -> None:
        if tier is None:
            await self._command("HDEL", keys.meta, "tier")
        else:
            await self._command("HSET", keys.meta, "tier", tier)

    async def grant(self, keys: UserKeys, lot: Lot) -> bool:
        return bool(int(await self._run("grant", *grant_args(keys, lot))))

    async def revoke_to(self, keys: UserKeys, lot_id: str, target: int, restore: bool = False,
                        floor: int = 0) -> int:
        return int(await self._run("revoke_to", [keys.credits], [lot_id, target, int(restore), floor]))

    async def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]:
        return lots_result(await self._command("HGETALL", keys.credits))

    async def _layout(self, namespace: str) -> None:
        if namespace not in self._layouts:
            with REDIS_ERRORS:
                if not self._loaded:
                    await self._ready()
                if not self._durable_checked:
                    await acheck_durable(self.client, self.require_durable)
                    self._durable_checked = True
                await acheck_layout(self.client, namespace)
            self._layouts.add(namespace)

    async def load_config(self, namespace: str) -> StoredConfig:
        await self._layout(namespace)
        return config_result(await self._run("load_config", list(config_keys(namespace)), []))

    async def config_version(self, namespace: str) -> int:
        await self._layout(namespace)
        return int(await self._command("GET", config_keys(namespace)[1]) or 0)

    async def store_id(self, namespace: str) -> str:
        with REDIS_ERRORS:
            found = await self.client.get(store_id_key(namespace))
            if found is None:
                await self.client.set(store_id_key(namespace), uuid.uuid4().hex, nx=True)
                found = await self.client.get(store_id_key(namespace))
            return text(found)

    async def user_data(self, namespace: str, user_id: str, forget: bool = False) -> UserRecords:
        flow, reply = redis_user_data(namespace, user_id, forget), None
        while True:
            try:
                ask = flow.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            with REDIS_ERRORS:
                reply = ([k async for k in self.client.scan_iter(match=ask.pattern, count=1000)]
                         if isinstance(ask, Scan) else await self._pipeline(ask.commands))

    async def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int:
        args = save_config_args(section, name, value)
        return int(await self._run("save_config", list(config_keys(namespace)), args))

    # -- billing ---------------------------------------------------------------------------
    async def add_samples(self, op: SampleOp) -> Samples:
        return samples_result(await self._run("samples", *samples_args(op)))

    async def get_marker(self, key: str, now_ms: int) -> str | None:
        return marker_result(await self._command("GET", key))

    async def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        await self._command(*put_marker_command(key, value, ttl_ms))

    async def claim_marker(self, key: str, ttl_ms: int, now_ms: int, token: str | None = None) -> bool:
        return bool(await self._run("claim", [key], [token, ttl_ms]) if token is not None else
                    await self._command(*claim_marker_command(key, ttl_ms)))

    async def put_entry(self, key: str, name: str, value: str | None) -> None:
        await self._command(*entry_command(key, name, value))

    async def entries(self, key: str) -> dict[str, str]:
        return entries_result(await self._command("HGETALL", key))

    async def tally(self, key: str, add: int, window_ms: int, now_ms: int) -> tuple[int, int]:
        return tally_result(await self._run("tally", [key], [add, window_ms]), now_ms)

    async def apply_subscription(self, keys: UserKeys, change: SubChange,
                                 now_ms: int) -> SubscriptionResult:
        raw = await self._run("subscription", *subscription_args(keys, change))
        return subscription_result(raw)

    # -- analytics -------------------------------------------------------------------------
    async def record_event(self, namespace: str, event: AnalyticsEvent) -> None:
        await self._pipeline(event_commands(MonthKeys.build(namespace, event.month), event))

    async def read_month(self, namespace: str, month: str, now_ms: int) -> MonthRaw:
        keys = MonthKeys.build(namespace, month)
        raw = month_raw(keys, await self._pipeline(read_month_commands(keys)))
        with REDIS_ERRORS:
            pattern = ledger_pattern(namespace, month)
            found = [k async for k in self.client.scan_iter(match=pattern, count=1000)]
        for batch in ledger_batches(found, namespace, month):
            add_ledger_rows(raw, batch, await self._pipeline(batch), namespace, month)
        return raw

    async def month_totals(self, namespace: str, months: Sequence[str]) -> list[MonthCounts]:
        all_keys = [MonthKeys.build(namespace, m) for m in months]
        return totals_result(all_keys, await self._pipeline(totals_commands(all_keys)))

    async def close(self) -> None:
        if self._conns:
            await self._conns.close()
        if self._owns:
            await self.client.aclose()
            pool = getattr(self.client, "connection_pool", None)
            if pool is not None:  # a pool we built and passed in is not closed by aclose()
                await pool.disconnect()
