"""Redis and Redis Cluster stores: one Lua script per atomic operation, one round trip each.

Every key of a user shares the user's hash tag (``UserKeys``: a hash of the id), so the
same scripts run on a cluster. On first use a store checks the key layout (``_layout``)
and whether the server can lose ledger keys (``_redis_safety``). On a single server the
reserve script also checks the config version (the key lives on the same server); a
cluster keeps that key on another slot, so there the check rides in the same pipeline and
a stale reserve is released and retried.

A pool's keys (``_pools``: the app-wide ceiling) are a slot of their own: a pool's script goes
in the same round trip as the user's, first (``_redis_pools``).

The two classes hold only the I/O: what to send and what a reply means is
``_redis_codec``, what an error means ``_redis_errors``. ``AsyncRedisStore`` is in
``_redis_async``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
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
from nasca_core.stores._layout import check_layout
from nasca_core.stores._redis_async import AsyncRedisStore as AsyncRedisStore  # where _open finds it
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
from nasca_core.stores._redis_lean import settle_batch
from nasca_core.stores._redis_safety import check_durable
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

    def _load(self) -> None:  # every script (a restarted server lost them all)
        for script in self._scripts.values():
            self.client.script_load(script.script)

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

    def _together(self, cmds: list[Command], tier: str, loaded: bool = False) -> list[Any]:
        # A pool's script and a user's in one round trip (``_redis_pools``): every reply, or
        # the first error; those that met NOSCRIPT sent again once the scripts are loaded.
        with redis_errors(tier):
            if self._conns is not None:
                replies = self._conns.call_many(cmds)
            else:
                pipe = self.client.pipeline(transaction=False)
                for cmd in cmds:
                    pipe.execute_command(*cmd)
                replies = pipe.execute(raise_on_error=False)
        if (lost := pools.noscript(replies)) and not loaded:
            with redis_errors(tier):
                self._load()
            for i, reply in zip(lost, self._together([cmds[i] for i in lost], tier, True), strict=True):
                replies[i] = reply
        return pools.checked(replies, len(cmds), tier)

    # -- the ledger ------------------------------------------------------------------------
    def reserve(self, op: ReserveOp) -> ReserveResult:
        if op.pool_take is not None:
            return self._reserve_pooled(op, op.pool_take)
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

    def _reserve_pooled(self, op: ReserveOp, take: PoolTakeOp) -> ReserveResult:
        cmds = [pools.evalsha(self._scripts["pool_take"].sha, *pools.take_args(take))]
        if self.cluster:  # the config version is on another slot: checked beside the script
            cmds.append(("GET", config_keys(op.keys.namespace)[1]))
        cmds.append(pools.evalsha(self._scripts["reserve"].sha, *reserve_args(op, not self.cluster)))
        try:
            replies = self._together(cmds, op.tier)
        except BaseException as exc:  # the take may have landed without the reserve: it keeps no chunk
            if pools.answered(exc):
                with contextlib.suppress(Exception):
                    self.pool_release(take.keys, take.lease_id, take.now_ms)
            raise
        version = int(replies[1] or 0) if self.cluster else None
        result, undo = pools.reserve_outcome(op, pools.take_result(replies[0]), reserve_result(replies[-1]),
                                             version)
        if undo:  # only on the blocked (or stale) path: one more command
            self.release(op.keys, op.hold_id, op.estimate)
        return result

    def settle(self, op: SettleOp) -> SettleResult:
        keys, args = settle_args(op)
        if op.pools:  # the pools' charges first, in the same round trip
            cmds = [*pools.charge_commands(op, self._scripts["pool_charge"].sha),
                    pools.evalsha(self._scripts["settle"].sha, keys, args)]
            return settle_result(self._together(cmds, op.tier)[-1])
        return settle_result(self._run("settle", keys, args, op.tier))

    def settle_many(self, ops: Sequence[SettleOp]) -> list[SettleResult | Exception]:
        return settle_batch(self._conns or self.client, self._scripts["settle"].sha, self.settle, ops,
                            self._scripts["pool_charge"].sha, self._load)

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

    def pool_take(self, op: PoolTakeOp) -> PoolTakeResult:
        return pools.take_result(self._run("pool_take", *pools.take_args(op)))

    def pool_release(self, keys: PoolKeys, lease_id: str, now_ms: int) -> None:
        self._run("pool_release", *pools.release_args(keys, lease_id, now_ms))

    def pool_snapshot(self, keys: PoolKeys, now_ms: int) -> PoolSnapshot:
        return pools.snapshot_result(self._run("pool_snapshot", *pools.snapshot_args(keys, now_ms)))

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
