"""Which limits a reserve and a settle apply to a user, free of I/O: the memory and SQLite
stores call ``resolve``; ``lua/_lib.lua`` ``resolve_tier`` is the same rule in Redis, and the
contract suite (tests/test_boosts_contract.py) holds them to identical results.

1. The tier: the one stored for the user (``set_user_tier``, a subscription) when the config
   knows it, else the caller's (already resolved over the default).
2. The user's own limits (``set_user_limits``), when set, replace that tier's limits, hard
   flags and in-flight cap (an override without ``"f"`` keeps the tier's cap).
3. Each boost in force adds its amount to its window's limit, the sum capped at MAX_NANOS; a
   window without a limit stays without one (a boost there does nothing). In force means
   ``until`` later than the reserve's now, and at the settle no earlier than *that call's
   reserve* (``SettleOp.boosts_at``: the reserve's ms - 1): a boost that admitted a call pays
   for it even if it lapsed or was ended during the call, in the reserve's own millisecond too
   (a clear sets ``until`` to its ms). The other way, a boost that ended in the reserve's ms
   (cleared just before it, or lapsing then) also pays at that call's settle though the
   reserve didn't count it: a store can't tell the two orders within one ms apart, and paying
   is the side that takes nothing from the user; at most one ms of calls per boost.

The user's meta record holds the override as compiled JSON (``{"l": [d, w, m], "h": [d, w, m],
"f": cap}``, as ``Tier.compiled``) and the boosts as JSON ``[[id, window 0..2, nanos, until ms]]``.
A boost that ended (lapsed, or cleared: its ``until`` set to the clearing moment) stays in the
list for ENDED_KEEP_MS after its end, at most MAX_ENDED of them: a call reserved before its end
still settles on it, and a grant replaying its id (a retried script, a stale form) adds nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nasca_core._money import MAX_NANOS
from nasca_core.stores._base import StoredBoost

Limits = tuple[str, Sequence[int], Sequence[int], int]  # tier name, limits d/w/m, hard d/w/m, cap

_cache: dict[str, Any] = {}

ENDED_KEEP_MS = 30 * 86_400_000  # an ended boost's id is remembered this long after its end...
MAX_ENDED = 32  # ...for at most this many ended boosts per user (the earliest ended go first)


def decoded(text: str) -> Any:
    """``json.loads`` of a text seen before (the tiers JSON comes on every call until the
    config changes; a user's override and boosts until they change): decoded once."""
    value = _cache.get(text)
    if value is None:
        if len(_cache) > 256:
            _cache.clear()
        value = _cache[text] = json.loads(text)
    return value


def resolve(stored: str | None, override: str | None, boosts: str | None, tier: str,
            compiled: Sequence[int], tiers_json: str, now_ms: int) -> Limits:
    """The tier name and the limits in force for a call at ``now_ms`` (the module's rule; a
    settle passes its call's reserve time)."""
    name, limits, hard, cap = tier, compiled[:3], compiled[3:6], compiled[6] if len(compiled) > 6 else -1
    if stored is not None and stored != tier:
        tiers = decoded(tiers_json)
        if stored in tiers:
            t = tiers[stored]
            name, limits, hard, cap = stored, t["l"], t["h"], t.get("f", -1)
    if override:
        o = decoded(override)
        limits, hard, cap = o["l"], o["h"], o.get("f", cap)
    if boosts:
        out = list(limits)
        for _, w, amount, until in decoded(boosts):
            if until > now_ms and out[w] != -1:
                out[w] = min(out[w] + amount, MAX_NANOS)
        limits = out
    return name, limits, hard, cap


def encode(boosts: Sequence[StoredBoost]) -> str | None:
    return json.dumps([[b.id, b.window, b.amount, b.until_ms] for b in boosts],
                      separators=(",", ":")) if boosts else None


def in_force(text: str | None, now_ms: int) -> tuple[StoredBoost, ...]:
    """The boosts of a stored JSON text still in force at ``now_ms``."""
    return tuple(b for b in _all(text) if b.until_ms > now_ms)


def _all(text: str | None) -> tuple[StoredBoost, ...]:
    if not text:
        return ()
    return tuple(StoredBoost(str(i), int(w), int(a), int(u)) for i, w, a, u in json.loads(text))


def changed(text: str | None, now_ms: int, add: StoredBoost | None, clear: int | None,
            most: int) -> tuple[tuple[StoredBoost, ...], bool] | None:
    """(the boosts to store, whether ``add`` was added), or None when adding it would make more
    than ``most`` in force (then nothing changes). Window ``clear``'s boosts in force (3 = all)
    end now; ended boosts are kept as the module says; ``add`` is added unless its id is there,
    in force or ended."""
    kept = [b for b in _all(text) if b.until_ms + ENDED_KEEP_MS > now_ms]
    if clear is not None:
        kept = [StoredBoost(b.id, b.window, b.amount, now_ms)
                if b.until_ms > now_ms and (clear == 3 or b.window == clear) else b for b in kept]
    new = add is not None and all(b.id != add.id for b in kept)
    if new and add is not None:
        if sum(b.until_ms > now_ms for b in kept) >= most:
            return None
        kept.append(add)
    ended = sorted((b for b in kept if b.until_ms <= now_ms), key=lambda b: b.until_ms)
    gone = {id(b) for b in ended[:max(0, len(ended) - MAX_ENDED)]}
    return tuple(b for b in kept if id(b) not in gone), new
