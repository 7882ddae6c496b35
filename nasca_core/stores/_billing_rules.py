"""Billing's store rules, pure, for the stores that apply them in Python (memory, SQLite);
each Lua script named beside a rule mirrors it line for line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nasca_core.stores._base import SubChange


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
    active = [(s["c"], sub_id, s["t"]) for sub_id, s in {**subs, change.sub_id: record}.items() if s["a"]]
    return 1, record, max(active)[2] if active else None


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


def apply_to(subs: dict[str, dict[str, Any]], meta: dict[str, Any],
             change: SubChange) -> tuple[int, str | None]:
    """``apply_subscription`` on a user's subscription records and meta hash: (status, tier)."""
    status, record, best = subscription_step(subs, change)
    if record is None:
        return status, meta.get("tier")
    subs[change.sub_id] = record
    if best is None:
        meta.pop("tier", None)
    else:
        meta["tier"] = best
    return 1, best


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
