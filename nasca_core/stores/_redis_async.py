"""The asyncio twin of the Redis store (``redis.RedisStore``): the same scripts and encoding
(``_redis_codec``, ``_redis_pools``), awaited calls; its scripts' round trips share one pipelined
connection where it can (``_redis_lean``)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoScriptError

from nasca_core.stores import _redis_pools as pools
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
    store_id_key,
)
from nasca_core.stores._layout import acheck_layout
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
from nasca_core.stores._redis_errors import REDIS_ERRORS, redis_errors
from nasca_core.stores._redis_lean import async_conns
from nasca_core.stores._redis_safety import acheck_durable
from nasca_core.stores._samples import redis_args as samples_args
from nasca_core.stores._samples import redis_result as samples_result
from nasca_core.stores._scripts import NAMES, source
from nasca_core.stores._user_data import Scan, redis_user_data


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

    async def _together(self, cmds: list[Command], tier: str, loaded: bool = False) -> list[Any]:
        # RedisStore._together's twin. On one server the commands go out together on the lean
        # link (what the loop queues in one iteration is one write: one round trip); on a cluster
        # on the client's pipeline (per node).
        with redis_errors(tier):
            if not self._loaded:
                await self._ready()
            replies: list[Any]
            if self._conns is not None:
                calls = (self._conns.call(*cmd) for cmd in cmds)
                replies = await asyncio.gather(*calls, return_exceptions=True)
            else:
                pipe = self.client.pipeline(transaction=False)
                for cmd in cmds:
                    pipe.execute_command(*cmd)
                replies = await pipe.execute(raise_on_error=False)
        if (lost := pools.noscript(replies)) and not loaded:
            with redis_errors(tier):
                for script in self._scripts.values():
                    await self.client.script_load(script.script)
            for i, reply in zip(lost, await self._together([cmds[i] for i in lost], tier, True), strict=True):
                replies[i] = reply
        return pools.checked(replies, len(cmds), tier)

    # -- the ledger ------------------------------------------------------------------------
    async def reserve(self, op: ReserveOp) -> ReserveResult:
        if op.pool_take is not None:
            return await self._reserve_pooled(op, op.pool_take)
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

    async def _reserve_pooled(self, op: ReserveOp, take: PoolTakeOp) -> ReserveResult:
        cmds = [pools.evalsha(self._scripts["pool_take"].sha, *pools.take_args(take))]
        if self.cluster:
            cmds.append(("GET", config_keys(op.keys.namespace)[1]))
        cmds.append(pools.evalsha(self._scripts["reserve"].sha, *reserve_args(op, not self.cluster)))
        try:
            replies = await self._together(cmds, op.tier)
        except BaseException as exc:  # the take may have landed without the reserve: it keeps no chunk
            if pools.answered(exc):
                with contextlib.suppress(Exception):
                    await self.pool_release(take.keys, take.lease_id, take.now_ms)
            raise
        version = int(replies[1] or 0) if self.cluster else None
        result, undo = pools.reserve_outcome(op, pools.take_result(replies[0]), reserve_result(replies[-1]),
                                             version)
        if undo:
            await self.release(op.keys, op.hold_id, op.estimate)
        return result

    async def settle(self, op: SettleOp) -> SettleResult:
        keys, args = settle_args(op)
        if op.pools:
            cmds = [*pools.charge_commands(op, self._scripts["pool_charge"].sha),
                    pools.evalsha(self._scripts["settle"].sha, keys, args)]
            return settle_result((await self._together(cmds, op.tier))[-1])
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

    async def pool_take(self, op: PoolTakeOp) -> PoolTakeResult:
        return pools.take_result(await self._run("pool_take", *pools.take_args(op)))

    async def pool_release(self, keys: PoolKeys, lease_id: str, now_ms: int) -> None:
        await self._run("pool_release", *pools.release_args(keys, lease_id, now_ms))

    async def pool_snapshot(self, keys: PoolKeys, now_ms: int) -> PoolSnapshot:
        return pools.snapshot_result(await self._run("pool_snapshot", *pools.snapshot_args(keys, now_ms)))

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
