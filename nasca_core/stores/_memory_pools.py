"""The memory store's pools (``_pools``): the rules of lua/pool_take.lua, pool_charge.lua and
pool_release.lua on the store's dicts. The caller holds the store's lock.

A pool's chunks are a ``Holds`` (lease id -> amount, expiry) at ``PoolKeys.holds``, its charged
hold ids an ordered dict (id -> marker expiry) at ``PoolKeys.settled``, its windows plain int
counters at ``PoolKeys.day``/``week``/``month``; every key expires as on Redis.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from nasca_core.stores._memory_holds import Holds
from nasca_core.stores._pools import (
    PoolKeys,
    PoolSnapshot,
    PoolTakeOp,
    PoolTakeResult,
    check_ref,
    check_take,
    chunk_of,
    grant,
)


def _live(data: dict[str, Any], expiry: dict[str, int], key: str, now_ms: int) -> Any:
    e = expiry.get(key)
    if e is not None and e <= now_ms:
        del expiry[key]
        data.pop(key, None)
        return None
    return data.get(key)


def spent_of(data: dict[str, Any], expiry: dict[str, int], keys: PoolKeys,
             now_ms: int) -> tuple[int, int, int]:
    return (_live(data, expiry, keys.day, now_ms) or 0, _live(data, expiry, keys.week, now_ms) or 0,
            _live(data, expiry, keys.month, now_ms) or 0)


def _chunks(data: dict[str, Any], expiry: dict[str, int], keys: PoolKeys, now_ms: int) -> Holds | None:
    holds: Holds | None = _live(data, expiry, keys.holds, now_ms)
    if holds is not None:
        holds.purge(now_ms)  # a lapsed chunk (its process died) is no longer held
    return holds


def take(data: dict[str, Any], expiry: dict[str, int], op: PoolTakeOp) -> tuple[PoolTakeResult, bool]:
    """The take's answer, and whether it wrote a new chunk (not a retried take's)."""
    check_take(op)
    keys, now_ms = op.keys, op.now_ms
    holds = _chunks(data, expiry, keys, now_ms)
    spent = spent_of(data, expiry, keys, now_ms)
    if holds is not None and (mine := holds.live.get(op.lease_id)) is not None:
        return PoolTakeResult(mine[1], 0, spent, holds.total), False  # a retried take: its first grant
    held = holds.total if holds is not None else 0
    granted, window = grant(op, spent, held)
    if granted:
        if holds is None:
            holds = data[keys.holds] = Holds()
        holds.add(op.lease_id, granted, op.expiry_ms)
        if expiry.get(keys.holds, 0) < op.expiry_ms:
            expiry[keys.holds] = op.expiry_ms
    return PoolTakeResult(granted, window, spent, held + granted), granted > 0


def release(data: dict[str, Any], expiry: dict[str, int], keys: PoolKeys, lease_id: str, now_ms: int) -> None:
    check_ref(keys, now_ms, lease_id)
    holds = _chunks(data, expiry, keys, now_ms)
    if holds is not None:
        holds.drop(lease_id)
        if not holds.live:
            data.pop(keys.holds, None)
            expiry.pop(keys.holds, None)


def snapshot(data: dict[str, Any], expiry: dict[str, int], keys: PoolKeys, now_ms: int) -> PoolSnapshot:
    check_ref(keys, now_ms)
    holds = _chunks(data, expiry, keys, now_ms)
    return PoolSnapshot(spent_of(data, expiry, keys, now_ms), holds.total if holds is not None else 0)


def charge(data: dict[str, Any], expiry: dict[str, int], pools: tuple[PoolKeys, ...],
           chunks: tuple[str, ...], hold_id: str, of: tuple[str, ...], cost: int,
           ttls_ms: tuple[int, int, int], marker_ms: int, now_ms: int) -> None:
    """Add ``cost`` to each pool's windows and take it off the chunk the call was drawn on
    (``chunks``, floored at 0: spent, no longer held) unless ``hold_id`` is marked there (a
    retried or replayed settle, or one folded before), and mark it and every id of ``of``: the
    user settle's rule (settle.lua), so the two parts of a settle always agree."""
    for i, keys in enumerate(pools):
        settled: OrderedDict[str, int] | None = _live(data, expiry, keys.settled, now_ms)
        if settled is None:
            settled = data[keys.settled] = OrderedDict()
        else:
            while settled and next(iter(settled.values())) <= now_ms:  # lapsed markers, oldest first
                settled.popitem(last=False)
        if settled.get(hold_id, 0) > now_ms:
            continue
        for key, ttl in zip((keys.day, keys.week, keys.month), ttls_ms, strict=True):
            data[key] = (_live(data, expiry, key, now_ms) or 0) + cost
            if expiry.get(key, 0) < now_ms + ttl:  # only lengthened: it must outlive its window
                expiry[key] = now_ms + ttl
        if (chunk := chunk_of(chunks, i)) and (holds := _chunks(data, expiry, keys, now_ms)) is not None:
            holds.lower(chunk, cost)
        for mark in (hold_id, *of):
            settled.pop(mark, None)  # re-added at the end, in time order
            settled[mark] = marker_ms
        if expiry.get(keys.settled, 0) < marker_ms:
            expiry[keys.settled] = marker_ms
