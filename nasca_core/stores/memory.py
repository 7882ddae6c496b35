"""The embedded store: the ledger in this process, no server.

It keeps the same data model as the Redis scripts (counters, a holds set scored by
expiry, a month hash, credit lots, billing's markers and subscriptions) and applies the
same rules through ``nasca_core._policy``, under one lock, so threads and asyncio tasks
see atomic operations. Analytics events live beside it (``_memory_analytics``).
``memory://`` gives a private store; ``memory://NAME`` a store shared by every Nasca in
the process that names it.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from nasca_core import _policy
from nasca_core.stores import _billing_rules as rules
from nasca_core.stores import _memory_pools as pools
from nasca_core.stores._base import (
    BATCH_MARKER_MS,
    LEDGER_FIELDS,
    MAX_BOOSTS,
    AnalyticsEvent,
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
    StoredBoost,
    StoredConfig,
    SubChange,
    SubscriptionResult,
    UserKeys,
    UserRecords,
    month_owner,
    settle_each,
    stale_reply,
    store_id_key,
)
from nasca_core.stores._effective import changed, encode, in_force, resolve
from nasca_core.stores._memory_analytics import MemoryAnalytics
from nasca_core.stores._memory_async import AsyncMemoryStore as AsyncMemoryStore  # where _open finds it
from nasca_core.stores._memory_holds import Holds as _Holds
from nasca_core.stores._pools import check_pools
from nasca_core.stores._user_data import memory_user_data

_SWEEP_EVERY = 10_000


class MemoryStore:
    """Sync and async at once: async methods run inline (there is no I/O to wait for)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}
        self._expiry: dict[str, int] = {}
        self._config: dict[str, dict[str, dict[str, str]]] = {}
        self._config_version: dict[str, int] = {}
        self._ops = 0
        self._analytics = MemoryAnalytics()

    # -- key helpers (caller holds the lock) -------------------------------------------
    def _get(self, key: str, now_ms: int) -> Any:
        exp = self._expiry.get(key)
        if exp is not None and exp <= now_ms:
            del self._expiry[key]
            self._data.pop(key, None)
            return None
        return self._data.get(key)

    def _expire(self, key: str, at_ms: int) -> None:
        self._expiry[key] = at_ms

    def _tick(self, now_ms: int) -> None:
        self._ops += 1
        if not self._ops % _SWEEP_EVERY:
            self._sweep(now_ms)

    def _sweep(self, now_ms: int) -> None:
        for key in [k for k, exp in self._expiry.items() if exp <= now_ms]:
            del self._expiry[key]
            self._data.pop(key, None)

    def _holds(self, key: str, now_ms: int) -> _Holds | None:
        # Created only when a hold is added, so a store asked about a million users keeps nothing
        # for them; a settle keeps it empty for the next call until its last hold would expire.
        holds: _Holds | None = self._get(key, now_ms)
        if holds is not None:
            holds.purge(now_ms)
        return holds

    def _forget(self, key: str) -> None:
        self._data.pop(key, None)
        self._expiry.pop(key, None)

    def _drop_hold(self, key: str, member: str) -> None:
        holds: _Holds | None = self._data.get(key)
        if holds is not None:
            holds.drop(member)
            if not holds.live:
                self._forget(key)

    def _live_lots(self, keys: UserKeys, now_ms: int) -> list[dict[str, Any]]:
        lots: dict[str, dict[str, Any]] = self._data.get(keys.credits) or {}
        live = [lot for lot in lots.values() if lot["r"] > 0 and (lot["x"] == 0 or lot["x"] > now_ms)]
        live.sort(key=lambda lot: lot["q"])
        return live

    # -- the contract ------------------------------------------------------------------
    # reserve and settle run on every call: straight-line code, each key read once, the three
    # counters in one call (``_counters``: a call of ``_get`` cost as much as its check), and
    # ``resolve`` skipped for a user with nothing stored (its answer is then the op's tier).
    def reserve(self, op: ReserveOp) -> ReserveResult:
        keys, now_ms = op.keys, op.now_ms
        data, expiry = self._data, self._expiry
        with self._lock:
            # The pool's chunk first, in the same step: a pool that grants nothing blocks the call
            # before the user's reserve writes anything.
            take = op.pool_take
            pool, fresh = (None, False) if take is None else pools.take(data, expiry, take)
            if pool is not None and not pool.granted:
                return ReserveResult(0, op.tier, 0, (0, 0, 0), 0, -1, pool=pool)
            try:
                meta = data.get(keys.meta)
                versions = self._config_version
                version = versions.get(keys.namespace, 0) if versions else 0
                anchor = meta.get("an") if meta is not None else None
                if (version != op.config_version or (anchor or "") != op.anchor) and \
                        (stale := stale_reply(op, version, anchor)) is not None:
                    stale.pool = pool
                    return stale
                self._ops += 1
                if not self._ops % _SWEEP_EVERY:
                    self._sweep(now_ms)
                limits: Sequence[int]
                hard: Sequence[int]
                if meta is None:  # resolve's answer with nothing stored, in a fraction of its time
                    c = op.tier_compiled
                    name, limits, hard, cap = op.tier, c[:3], c[3:6], c[6] if len(c) > 6 else -1
                    applied = c if len(c) == 7 else (*limits, *hard, cap)
                else:
                    name, limits, hard, cap = resolve(meta.get("tier"), meta.get("lim"), meta.get("bo"),
                                                      op.tier, op.tier_compiled, op.tiers_json, now_ms)
                    applied = (*limits, *hard, cap)
                holds: _Holds | None = data.get(keys.holds)
                if holds is not None and holds.heap and holds.heap[0][0] <= now_ms:
                    holds.purge(now_ms)
                day, week, month = _counters(data, expiry, keys, now_ms)
                spent = (day or 0, week or 0, month["s"] if month else 0)
                held, in_flight = (holds.total, len(holds.live)) if holds is not None else (0, 0)
                if op.owed[0] or op.owed[1] or op.owed[2]:  # a lease: (0, its free part, 0)
                    spent, held, in_flight = _policy.own_view(spent, held, in_flight, op.owed)
                member = f"{op.hold_id}:{op.estimate}"
                def lots() -> int: return sum(lot["r"] for lot in self._live_lots(keys, now_ms))
                if holds is not None and member in holds.live:  # a retried reserve: held once
                    left, credits = _policy.room_of(limits, hard, spent, held - op.estimate, -1, op.ceiling,
                                                    lots)  # its room as the first
                    return ReserveResult(1, name, 0, spent, held, credits, left, "", applied, pool)
                if _policy.over_cap(in_flight, cap):
                    return ReserveResult(2, name, 0, spent, held, -1, pool=pool)
                credits = -1
                blocked = _policy.admit(limits, hard, spent, held, op.estimate, 0, op.strict)
                if blocked >= 0 and not hard[blocked]:
                    credits = lots()
                    blocked = _policy.admit(limits, hard, spent, held, op.estimate, credits, op.strict)
                if blocked >= 0:
                    return ReserveResult(0, name, blocked + 1, spent, held, credits, pool=pool)
                if holds is None:
                    holds = data[keys.holds] = _Holds()
                holds.add(member, op.estimate, op.hold_expiry_ms)
                if expiry.get(keys.holds, 0) < op.hold_expiry_ms:
                    expiry[keys.holds] = op.hold_expiry_ms
                left, credits = _policy.room_of(limits, hard, spent, held, credits, op.ceiling, lots)
                return ReserveResult(1, name, 0, spent, held + op.estimate, credits, left, "", applied, pool)
            except BaseException:  # the user's part failed: the chunk this call took goes with it,
                if fresh and take is not None:  # as in SQLite's rolled-back transaction
                    pools.release(data, expiry, take.keys, take.lease_id, now_ms)
                raise

    def settle(self, op: SettleOp) -> SettleResult:
        keys, now_ms, cost = op.keys, op.now_ms, op.cost
        if op.pools:
            check_pools(op.pools, op.chunks)
        with self._lock:
            data, expiry = self._data, self._expiry
            settled: dict[str, int] | None = data.get(keys.settled)
            if settled is None:
                # Ordered: a plain dict's first live entry is found past every front deletion since
                # its last resize (10 µs at 50k markers), an OrderedDict's in O(1).
                settled = data[keys.settled] = OrderedDict()
            elif settled and next(iter(settled.values())) <= now_ms:
                _drop_expired(settled, now_ms)  # housekeeping: the check below is by expiry
            if (seen := settled.get(op.hold_id)) is not None:
                # settle.lua's rule, wherever the marker sits: it counts until its own expiry (a
                # marker set after a later-expiring one lapses behind it, not at the front).
                if seen > now_ms:
                    if op.pools:  # charged also when the user's part is a retried settle
                        pools.charge(data, expiry, op.pools, op.chunks, op.hold_id, op.of, cost, op.ttls_ms,
                                     op.marker_expiry_ms, now_ms)
                    return SettleResult(2, 0, 0, (0, 0, 0))
                del settled[op.hold_id]  # re-added at the end below
            holds: _Holds | None = data.get(keys.holds)
            if holds is not None:
                # Kept when it empties, for this user's next call (making one costs ~1 µs); the
                # sweep drops it with its last hold's expiry, as Redis would the key.
                holds.drop(f"{op.hold_id}:{op.estimate}")
            meta = data.get(keys.meta)
            limits: Sequence[int]
            hard: Sequence[int]
            if meta is None:
                stored, c = None, op.tier_compiled
                limits, hard = c[:3], c[3:6]
            else:
                stored = meta.get("tier")
                _, limits, hard, _ = resolve(stored, meta.get("lim"), meta.get("bo"), op.tier,
                                             op.tier_compiled, op.tiers_json, op.boosts_at)
            day, week, month = _counters(data, expiry, keys, now_ms)
            if month is None:
                month = data[keys.month] = {"s": 0, "c": 0, "k": 0, "n": 0, "ti": 0, "to": 0}
            day, week = day or 0, week or 0
            tier_part, credit_part = _policy.split(cost, limits, hard, (day, week, month["s"]), 1 << 62)
            if cost > tier_part:
                lots = self._live_lots(keys, now_ms)
                remaining = _policy.draw([(lot["q"], lot["r"]) for lot in lots], cost - tier_part)
                credit_part = 0
                for lot, left in zip(lots, remaining, strict=True):
                    credit_part += lot["r"] - left
                    lot["r"] = left
                charges: Sequence[int] = _policy.window_charges(cost, credit_part, limits, hard)
            else:  # nothing on credits: every window counts the whole cost
                charges = (cost, cost, cost)
            ttls = op.ttls_ms
            d = data[keys.day] = day + charges[0]
            w = data[keys.week] = week + charges[1]
            expiry[keys.day], expiry[keys.week], expiry[keys.month] = \
                now_ms + ttls[0], now_ms + ttls[1], now_ms + ttls[2]
            m = month["s"] = month["s"] + charges[2]
            month["c"] += cost
            month["k"] += credit_part
            month["n"] += op.calls
            month["ti"] += op.input_tokens
            month["to"] += op.output_tokens
            month["r"] = op.tier if stored != op.tier else ""  # get_usage's default, unless stored
            settled[op.hold_id] = marker = op.marker_expiry_ms
            for hold_id in op.of:  # a fold's settles with it: a later settle of one alone is a retry
                settled.pop(hold_id, None)  # at the end, as re-added in time order
                settled[hold_id] = marker
            if expiry.get(keys.settled, 0) < marker:  # only lengthened: it must outlive every marker
                expiry[keys.settled] = marker
            if op.pools:  # last: nothing above raises once it has written (there is no rollback here)
                pools.charge(data, expiry, op.pools, op.chunks, op.hold_id, op.of, cost, ttls, marker, now_ms)
            return SettleResult(1, cost - credit_part, credit_part, (d, w, m),
                                (limits[0], limits[1], limits[2]))

    def settle_many(self, ops: Sequence[SettleOp]) -> list[SettleResult]:
        return settle_each(self.settle, ops)

    def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        with self._lock:
            self._drop_hold(keys.holds, f"{hold_id}:{estimate}")

    def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot:
        with self._lock:
            holds = self._holds(keys.holds, now_ms)
            meta = self._data.get(keys.meta) or {}
            day, week, month = _counters(self._data, self._expiry, keys, now_ms)
            month = month or {}
            lots = tuple(_lot_from_dict(lot) for lot in self._live_lots(keys, now_ms))
            spent = (day or 0, week or 0, month.get("s", 0))
            return Snapshot(meta.get("tier"), holds.total if holds else 0, spent,
                            month.get("c", 0), month.get("k", 0), month.get("n", 0), lots,
                            month.get("ti", 0), month.get("to", 0), month.get("r") or None,
                            meta.get("lim"), in_force(meta.get("bo"), now_ms), meta.get("an", ""))

    def set_user_tier(self, keys: UserKeys, tier: str | None) -> None:
        with self._lock:
            self._put_meta(keys, "tier", tier)

    def set_user_limits(self, keys: UserKeys, compiled: str | None) -> None:
        with self._lock:
            self._put_meta(keys, "lim", compiled)

    def change_boosts(self, keys: UserKeys, now_ms: int, add: StoredBoost | None = None,
                      clear: int | None = None) -> tuple[tuple[StoredBoost, ...], bool] | None:
        with self._lock:  # the rules of lua/boosts.lua
            made = changed((self._data.get(keys.meta) or {}).get("bo"), now_ms, add, clear, MAX_BOOSTS)
            if made is not None:
                self._put_meta(keys, "bo", encode(made[0]))
                return tuple(b for b in made[0] if b.until_ms > now_ms), made[1]
            return None

    def _put_meta(self, keys: UserKeys, name: str, value: str | None) -> None:  # caller holds the lock
        if value is not None:
            self._data.setdefault(keys.meta, {})[name] = value
        elif (meta := self._data.get(keys.meta)) is not None:
            meta.pop(name, None)
            if not meta:
                self._forget(keys.meta)

    def grant(self, keys: UserKeys, lot: Lot) -> bool:
        with self._lock:
            lots = self._data.setdefault(keys.credits, {})
            if lot.id in lots:
                return False
            meta = self._data.setdefault(keys.meta, {})
            meta["lotseq"] = meta.get("lotseq", 0) + 1
            lots[lot.id] = {**lot.to_json_dict(), "q": meta["lotseq"]}
            return True

    def revoke_to(self, keys: UserKeys, lot_id: str, target: int, restore: bool = False, floor: int = 0,
                  ) -> int:
        with self._lock:
            return rules.revoke_lot((self._data.get(keys.credits) or {}).get(lot_id), target, restore, floor)

    def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]:
        with self._lock:
            lots = (self._data.get(keys.credits) or {}).values()
            return tuple(sorted((_lot_from_dict(x) for x in lots), key=lambda lot: lot.seq))

    def load_config(self, namespace: str) -> StoredConfig:
        with self._lock:
            sections = {k: dict(v) for k, v in self._config.get(namespace, {}).items()}
            return StoredConfig(self._config_version.get(namespace, 0), sections)

    def config_version(self, namespace: str) -> int:
        return self._config_version.get(namespace, 0)

    def store_id(self, namespace: str) -> str:
        return str(self._data.setdefault(store_id_key(namespace), uuid.uuid4().hex))  # atomic

    def user_data(self, namespace: str, user_id: str, forget: bool = False) -> UserRecords:
        analytics = self._analytics.user_months(namespace, user_id, forget)
        with self._lock:
            return memory_user_data(self._data, self._expiry, namespace, user_id, forget, analytics)

    def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int:
        with self._lock:
            entries = self._config.setdefault(namespace, {}).setdefault(section, {})
            if value is None:
                entries.pop(name, None)
            else:
                entries[name] = value
            version = self._config_version[namespace] = self._config_version.get(namespace, 0) + 1
            return version

    def add_samples(self, op: SampleOp) -> Samples:  # the rules of lua/samples.lua
        marker = f"{op.key}:b:{op.batch_id}"
        fresh = bool(op.samples) and self.claim_marker(marker, BATCH_MARKER_MS, op.now_ms)
        with self._lock:
            n, recent = self._get(op.key, op.now_ms) or (0, ())
            if fresh:
                n, recent = n + len(op.samples), (*recent, *op.samples)[-op.keep:]
                self._data[op.key] = (n, recent)
                self._expire(op.key, op.now_ms + op.ttl_ms)
            return Samples(n, recent)

    def pool_take(self, op: PoolTakeOp) -> PoolTakeResult:
        with self._lock:
            return pools.take(self._data, self._expiry, op)[0]

    def pool_release(self, keys: PoolKeys, lease_id: str, now_ms: int) -> None:
        with self._lock:
            pools.release(self._data, self._expiry, keys, lease_id, now_ms)

    def pool_snapshot(self, keys: PoolKeys, now_ms: int) -> PoolSnapshot:
        with self._lock:
            return pools.snapshot(self._data, self._expiry, keys, now_ms)

    # -- billing -------------------------------------------------------------------------
    def get_marker(self, key: str, now_ms: int) -> str | None:
        with self._lock:
            value: str | None = self._get(key, now_ms)
            return value

    def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None:
        with self._lock:
            self._tick(now_ms)
            self._data[key] = value
            if ttl_ms:
                self._expire(key, now_ms + ttl_ms)
            else:
                self._expiry.pop(key, None)

    def claim_marker(self, key: str, ttl_ms: int, now_ms: int, token: str | None = None) -> bool:
        with self._lock:
            self._tick(now_ms)
            if (held := self._get(key, now_ms)) is not None:
                return token is not None and held == token
            self._data[key] = "1" if token is None else token
            self._expire(key, now_ms + ttl_ms)
            return True

    def put_entry(self, key: str, name: str, value: str | None) -> None:
        with self._lock:
            rules.put_entry(self._data.setdefault(key, {}), name, value)

    def entries(self, key: str) -> dict[str, str]:
        with self._lock:
            return dict(self._data.get(key) or {})

    def tally(self, key: str, add: int, window_ms: int, now_ms: int) -> tuple[int, int]:
        with self._lock:  # swept: counters of clients long gone (random addresses) don't pile up
            self._tick(now_ms)
            return rules.tally(self._data, self._expiry, key, add, window_ms, now_ms)

    def apply_subscription(self, keys: UserKeys, change: SubChange, now_ms: int) -> SubscriptionResult:
        with self._lock:  # the rules of lua/subscription.lua
            return SubscriptionResult(*rules.apply_to(self._data, self._expiry, keys, change, now_ms))

    # -- analytics -------------------------------------------------------------------------
    def record_event(self, namespace: str, event: AnalyticsEvent) -> None:
        self._analytics.record(namespace, event)

    def read_month(self, namespace: str, month: str, now_ms: int) -> MonthRaw:
        raw = self._analytics.read(namespace, month)
        with self._lock:  # every user's month hash, as SCAN finds them on Redis
            for key, value in self._data.items():
                user = month_owner(key, namespace, month)
                if user is not None and self._expiry.get(key, now_ms + 1) > now_ms:
                    raw.add_ledger(user, LedgerMonth(*(value.get(f, 0) for f in LEDGER_FIELDS)))
        return raw

    def month_totals(self, namespace: str, months: Sequence[str]) -> list[MonthCounts]:
        return self._analytics.totals(namespace, months)

    def close(self) -> None:
        pass


_named: dict[str, MemoryStore] = {}
_named_lock = threading.Lock()


def named_memory_store(name: str) -> MemoryStore:
    if not name:
        return MemoryStore()
    with _named_lock:
        return _named.setdefault(name, MemoryStore())


def _counters(data: dict[str, Any], expiry: dict[str, int], keys: UserKeys,
              now_ms: int) -> tuple[Any, Any, Any]:
    """The day, week and month counters (None: none, or expired and then dropped): ``_get``'s
    rule for the three, in one call on every reserve and settle instead of three."""
    d, w, m = keys.day, keys.week, keys.month
    e = expiry.get(d)
    day = data.get(d) if e is None or e > now_ms else _dropped(data, expiry, d)
    e = expiry.get(w)
    week = data.get(w) if e is None or e > now_ms else _dropped(data, expiry, w)
    e = expiry.get(m)
    return day, week, data.get(m) if e is None or e > now_ms else _dropped(data, expiry, m)


def _dropped(data: dict[str, Any], expiry: dict[str, int], key: str) -> Any:
    del expiry[key]
    data.pop(key, None)
    return None


def _drop_expired(settled: dict[str, int], now_ms: int) -> None:
    # Markers come mostly in time order (not always: each op sets its own, a replayed one may be
    # shorter): drop expired ones from the front, O(expired); one behind a live marker waits.
    expired = []
    for member, exp in settled.items():
        if exp > now_ms:
            break
        expired.append(member)
    for member in expired:
        del settled[member]


def _lot_from_dict(d: dict[str, Any]) -> Lot:
    return replace(Lot.from_json_dict(d), seq=int(d.get("q", 0)))

