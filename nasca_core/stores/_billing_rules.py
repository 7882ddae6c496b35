"""Billing's store rules, pure, for the stores that apply them in Python (memory, SQLite);
each Lua script named beside a rule mirrors it line for line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nasca_core.stores._base import SubChange, UserKeys


def taken_to(taken: int, remaining: int, granted: int, revoked: bool, target: int, restore: bool,
             floor: int = 0, kept: int = 0) -> tuple[int, bool, int]:
    """``revoke_to`` on one lot (lua/revoke_to.lua): what is taken back in all after raising
    it to ``target`` (with ``restore``: setting it, but never below the lot's floor), never
    above what is left to take; whether the lot is marked revoked; the floor kept (``kept``,
    raised to ``floor``). The floor makes an owner's revoke sticky and keeps what refunds took
    whatever ``on_partial_refund`` says when a dispute is won later."""
    whole = taken + remaining
    kept = max(kept, min(max(floor, 0), whole))
    new = max(min(max(target, 0), whole), kept)
    if new < taken and not restore:
        new = taken
    return new, target >= granted or (revoked and (not restore or kept >= whole)), kept


def subscription_step(subs: Mapping[str, Mapping[str, Any]],
                      change: SubChange) -> tuple[int, dict[str, Any] | None, str | None]:
    """``apply_subscription`` (lua/subscription.lua): (1 applied, 0 stale, 2 seen before; the
    record to store for the subscription, None when nothing changes; the user's tier when
    applied: the newest active subscription's). The record keeps the earliest grace start
    (``g``) of the failing subscription, so a grace is counted once whatever the order."""
    old = subs.get(change.sub_id)
    if old is not None and (old["i"] == change.event_id or old["d"]
                            or (not change.final and old["e"] > change.event_created)):
        return (2 if old["i"] == change.event_id else 0), None, None
    began = int(old.get("g", 0)) if old is not None else 0
    if change.grace_from is not None:
        began = min(began, change.grace_from) if began and change.grace_from else change.grace_from
    ended = bool(change.grace_from) and change.event_created >= began + change.grace_s
    record = {"e": change.event_created, "i": change.event_id, "a": change.active and not ended,
              "t": change.tier, "c": change.sub_created, "d": change.final, **({"g": began} if began else {})}
    anchor = (int(old.get("n", 0)) if old is not None else 0) if change.anchor is None else change.anchor
    if anchor:
        record["n"] = anchor
    active = [(s["c"], sub_id, s["t"]) for sub_id, s in {**subs, change.sub_id: record}.items() if s["a"]]
    return 1, record, max(active)[2] if active else None


def new_anchor(subs: Mapping[str, Mapping[str, Any]], spec: str, change: SubChange) -> int | None:
    """The anchor a subscription step moves the spec to (``subs``: the records after it), None
    when the spec stays: what takes over at the end of the window in force becomes the anchor
    of the subscription the tier comes from (0: calendar months). A checkout (anchor None)
    leaves the spec as it is."""
    if change.anchor is None or change.seen is None:
        return None
    active = [(s["c"], sub_id, int(s.get("n", 0))) for sub_id, s in subs.items() if s["a"]]
    new = max(active)[2] if active else 0
    if new == (int(spec.rpartition(",")[2]) if spec else 0) or not (new or change.window[1]):
        return None
    return new


def anchor_spec(spec: str, change: SubChange, new: int | None) -> str:
    """The user's anchor spec (``_windows.month_span``) after a step moving it to ``new``
    (``new_anchor``). The window in force, and what was spent in it, is never replaced
    mid-period: it ends on a boundary of the new cycle (``change.window``, made for it, see
    ``_windows.cycle_end``). Only when no billing-cycle window is in force (calendar months)
    does the new cycle start at once ("0,0,N"), its first window taking on the calendar
    month's spend (``change.carry``)."""
    if new is None:
        return spec
    start, end = change.window
    return f"{start},{end},{new}" if end else f"0,0,{new}"


def recut(change: SubChange, new: int | None) -> bool:
    """The window's end and the carried keys were made for another anchor than ``new``: the
    step writes nothing (status -4) and the flow makes them again for ``new``."""
    return new is not None and new != change.cut_for


def carried(change: SubChange, new: int | None) -> bool:
    """The step switches to a cycle at once: the calendar month's spend goes along."""
    return new is not None and not change.window[1] and bool(change.carry[0])


def stale_spec(spec: str, change: SubChange) -> bool:
    """The flow read another spec than the stored one: the step writes nothing (status -3)."""
    return change.anchor is not None and change.seen is not None and change.seen != spec


# -- the memory store's records (plain dicts, under its lock) -------------------------------
def revoke_lot(lot: dict[str, Any] | None, target: int, restore: bool, floor: int) -> int:
    """``revoke_to`` on a lot's JSON record (``Lot.to_json_dict`` + ``tk``, ``v``, ``fl``)."""
    if lot is None:
        return 0
    taken = lot.get("tk", 0)
    new, revoked, kept = taken_to(taken, lot["r"], lot["g"], lot.get("v") == 1, target, restore,
                                  floor, lot.get("fl", 0))
    lot["r"], lot["tk"], lot["v"], lot["fl"] = lot["r"] - (new - taken), new, int(revoked), kept
    return int(new - taken)


def apply_to(data: dict[str, Any], expiry: dict[str, int], keys: UserKeys, change: SubChange,
             now_ms: int) -> tuple[int, str | None, int]:
    """``apply_subscription`` on the memory store's dicts: (status, tier, anchor with -4)."""
    subs: dict[str, dict[str, Any]] = data.setdefault(keys.subscriptions, {})
    meta: dict[str, Any] = data.setdefault(keys.meta, {})
    status, record, best = subscription_step(subs, change)
    if record is None or stale_spec(meta.get("an", ""), change):
        return (status if record is None else -3), meta.get("tier"), 0
    new = new_anchor({**subs, change.sub_id: record}, meta.get("an", ""), change)
    if recut(change, new):
        return -4, meta.get("tier"), int(new or 0)
    subs[change.sub_id] = record
    if carried(change, new):
        _carry(data, expiry, change.carry, now_ms)
    if spec := anchor_spec(meta.get("an", ""), change, new):
        meta["an"] = spec
    else:
        meta.pop("an", None)
    if best is None:
        meta.pop("tier", None)
    else:
        meta["tier"] = best
    return 1, best, 0


def _carry(data: dict[str, Any], expiry: dict[str, int], carry: tuple[str, str], now_ms: int) -> None:
    def live(key: str) -> dict[str, int] | None:
        return data.get(key) if expiry.get(key, now_ms + 1) > now_ms else None

    old_key, new_key = carry
    if not (old := live(old_key)) or not old.get("s"):
        return
    if (new := live(new_key)) is None:
        new = data[new_key] = {"s": 0, "c": 0, "k": 0, "n": 0, "ti": 0, "to": 0}
        if old_key in expiry:  # a counter outlives its window: the calendar month's is long enough
            expiry[new_key] = expiry[old_key]
    new["s"] = max(new["s"], old["s"])  # raised, not added: safe to run twice


def put_entry(entries: dict[str, str], name: str, value: str | None) -> None:
    if value is None:
        entries.pop(name, None)
    else:
        entries[name] = value


def tally(data: dict[str, Any], expiry: dict[str, int], key: str, add: int, window_ms: int,
          now_ms: int) -> tuple[int, int]:
    """``tally`` on the memory store's dicts (lua/tally.lua): (the count, when its window ends)."""
    if expiry.get(key, now_ms + 1) <= now_ms:
        data.pop(key, None)
        expiry.pop(key, None)
    count: int = data.get(key) or 0
    if add:
        expiry[key] = expiry[key] if count else now_ms + window_ms
        count = data[key] = count + add
    return count, expiry[key] if count else 0
