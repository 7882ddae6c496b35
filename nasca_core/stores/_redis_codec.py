"""What goes over the wire to Redis, free of I/O: the keys and arguments of each operation
and what its reply means. The sync and async Redis stores share every line of it.

The ledger's keys are ``UserKeys`` (one hash tag per user). Billing's markers are plain
keys; a user's subscriptions hash shares the user's tag. A month's analytics keys share
one tag, ``{<namespace>:an:<YYYYMM>}``, so a month is one cluster slot and one pipeline
records an event:

    {ns:an:YYYYMM}:n         hash  e:<kind> -> events; r:<cur> -> revenue (currency nanos);
                                   o:<cur> -> orders
    {ns:an:YYYYMM}:p:<kind>  set   prompt ids that reached a step (the funnel counts prompts,
                                   so a reloaded page or a second click counts once)
    {ns:an:YYYYMM}:u         set   users with an event this month
    {ns:an:YYYYMM}:ub        hash  user -> blocked calls
    {ns:an:YYYYMM}:ur        hash  <cur>:<user> -> revenue (currency nanos)
    {ns:an:YYYYMM}:uo        hash  user -> orders

Reports find each user's AI cost in the ledger's month hashes (``c`` AI cost, ``k`` paid
from credits, ``n`` calls, ``ti``/``to`` tokens) by SCAN; nothing here is on a call's path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nasca_core.stores._base import (
    EVENT_KINDS,
    LEDGER_FIELDS,
    MAX_BOOSTS,
    AnalyticsEvent,
    LedgerMonth,
    Lot,
    MonthCounts,
    MonthRaw,
    ReserveOp,
    ReserveResult,
    SettleOp,
    SettleResult,
    Snapshot,
    StoredBoost,
    StoredConfig,
    SubChange,
    SubscriptionResult,
    UserKeys,
    month_owner,
)
from nasca_core.stores._effective import ENDED_KEEP_MS, MAX_ENDED, in_force

Command = tuple[str | int, ...]
ANALYTICS_TTL_MS = 400 * 86_400_000  # as long as the ledger keeps its month counters
SCAN_BATCH = 500  # ledger month hashes read per pipeline


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the ledger ----------------------------------------------------------------------------
def config_keys(namespace: str) -> tuple[str, str]:
    return f"{{{namespace}:cfg}}", f"{{{namespace}:cfg}}:v"


def reserve_args(op: ReserveOp, check_version: bool) -> tuple[list[str], list[Any]]:
    k = op.keys
    keys = [k.meta, k.holds, k.day, k.week, k.month, k.credits, k.held]
    if check_version:
        keys.append(config_keys(k.namespace)[1])
    # The script reads a missing owed count, ceiling or anchor (ARGV 16..20) as its default:
    # each argument costs the server about 0.15 µs to take in, and most calls have none.
    tail: list[Any] = [*op.owed, op.ceiling, op.anchor]
    while tail and (tail[-1] == 0 or tail[-1] == ""):
        tail.pop()
    args = [op.now_ms, f"{op.hold_id}:{op.estimate}", op.estimate, op.hold_expiry_ms,
            1 if op.strict else 0, op.tier, op.tiers_json,
            op.config_version if check_version else "", *op.tier_compiled, *tail]
    return keys, args


def reserve_result(raw: Sequence[Any]) -> ReserveResult:
    if int(raw[0]) == -2:  # a stale anchor: the stored spec comes where the tier would
        return ReserveResult(-2, "", 0, (0, 0, 0), 0, -1, anchor=text(raw[1]))
    return ReserveResult(int(raw[0]), text(raw[1]), int(raw[2]),
                         (int(raw[3]), int(raw[4]), int(raw[5])), int(raw[6]), int(raw[7]),
                         int(raw[8]) if len(raw) > 8 else -1,
                         applied=tuple(int(v) for v in raw[9:16]) if len(raw) > 15 else None)


STALE = ReserveResult(-1, "", 0, (0, 0, 0), 0, -1)


def settle_args(op: SettleOp) -> tuple[list[str], list[Any]]:
    k = op.keys
    # Not the in-flight cap: a settle has no use for it. ARGV 20, the calls, only when not 1
    # (the script's default) or a fold's ids follow it (ARGV 21..): each argument costs the
    # server about 0.15 µs to take in.
    return ([k.meta, k.holds, k.day, k.week, k.month, k.credits, k.settled, k.held],
            [op.now_ms, op.hold_id, op.estimate, op.cost, op.tier, op.tiers_json,
             *op.ttls_ms, op.marker_expiry_ms, op.input_tokens, op.output_tokens, op.boosts_at,
             *op.tier_compiled[:6], *((op.calls, *op.of) if op.calls != 1 or op.of else ())])


def settle_result(raw: Sequence[Any]) -> SettleResult:
    limits = (int(raw[6]), int(raw[7]), int(raw[8])) if len(raw) > 8 else (-1, -1, -1)
    spent = (int(raw[3]), int(raw[4]), int(raw[5]))
    return SettleResult(int(raw[0]), int(raw[1]), int(raw[2]), spent, limits)


def release_args(keys: UserKeys, hold_id: str, estimate: int) -> tuple[list[str], list[Any]]:
    return [keys.holds, keys.held], [f"{hold_id}:{estimate}"]


def snapshot_keys(k: UserKeys) -> list[str]:
    return [k.meta, k.holds, k.day, k.week, k.month, k.credits, k.held]


def snapshot_result(raw: Sequence[Any], now_ms: int) -> Snapshot:
    lots = tuple(sorted((Lot.from_json_dict(d) for d in json.loads(text(raw[8]))), key=lambda lot: lot.seq))
    tier = text(raw[0])
    return Snapshot(tier or None, int(raw[1]), (int(raw[2]), int(raw[3]), int(raw[4])),
                    int(raw[5]), int(raw[6]), int(raw[7]), lots, int(raw[9]), int(raw[10]),
                    text(raw[11]) or None, text(raw[12]) or None, in_force(text(raw[13]) or None, now_ms),
                    text(raw[14]) if len(raw) > 14 else "")


def user_limits_command(keys: UserKeys, compiled: str | None) -> Command:
    return ("HDEL", keys.meta, "lim") if compiled is None else ("HSET", keys.meta, "lim", compiled)


def boosts_args(keys: UserKeys, now_ms: int, add: StoredBoost | None,
                clear: int | None) -> tuple[list[str], list[Any]]:
    return [keys.meta], [now_ms, add.id if add else "", add.window if add else 0, add.amount if add else 0,
                         add.until_ms if add else 0, "" if clear is None else clear, MAX_BOOSTS,
                         ENDED_KEEP_MS, MAX_ENDED]


def boosts_result(raw: Sequence[Any], now_ms: int) -> tuple[tuple[StoredBoost, ...], bool] | None:
    return (in_force(text(raw[1]), now_ms), int(raw[2]) == 1) if int(raw[0]) == 1 else None


def grant_args(keys: UserKeys, lot: Lot) -> tuple[list[str], list[Any]]:
    return [keys.meta, keys.credits], [lot.id, json.dumps(lot.to_json_dict())]


def lots_result(raw: dict[Any, Any]) -> tuple[Lot, ...]:
    lots = (Lot.from_json_dict(json.loads(text(value))) for value in raw.values())
    return tuple(sorted(lots, key=lambda lot: lot.seq))


def config_result(raw: Sequence[Any]) -> StoredConfig:
    sections: dict[str, dict[str, str]] = {}
    flat = raw[1]
    for i in range(0, len(flat), 2):
        section, _, name = text(flat[i]).partition("\0")
        sections.setdefault(section, {})[name] = text(flat[i + 1])
    return StoredConfig(int(raw[0]), sections)


def save_config_args(section: str, name: str, value: str | None) -> list[Any]:
    return [f"{section}\0{name}", "0" if value is None else "1", value or ""]


# -- billing -------------------------------------------------------------------------------
def put_marker_command(key: str, value: str, ttl_ms: int | None) -> Command:
    return ("SET", key, value, "PX", ttl_ms) if ttl_ms else ("SET", key, value)


def claim_marker_command(key: str, ttl_ms: int) -> Command:
    return "SET", key, "1", "NX", "PX", ttl_ms


def marker_result(raw: Any) -> str | None:
    return None if raw is None else text(raw)


def entry_command(key: str, name: str, value: str | None) -> Command:
    return ("HDEL", key, name) if value is None else ("HSET", key, name, value)


def entries_result(raw: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def tally_result(raw: Sequence[Any], now_ms: int) -> tuple[int, int]:
    count, left = int(raw[0]), int(raw[1])
    return count, now_ms + left if count else 0


def subscription_args(keys: UserKeys, c: SubChange) -> tuple[list[str], list[Any]]:
    return ([keys.subscriptions, keys.meta, *(c.carry if c.carry[0] else ())],
            [c.sub_id, c.event_created, c.event_id, int(c.active), c.tier, c.sub_created, int(c.final),
             "" if c.grace_from is None else c.grace_from, c.grace_s, "" if c.anchor is None else c.anchor,
             int(c.seen is not None), c.seen or "", *c.window, c.cut_for])


def subscription_result(raw: Sequence[Any]) -> SubscriptionResult:
    return SubscriptionResult(int(raw[0]), text(raw[1]) or None, int(raw[2]) if len(raw) > 2 else 0)


# -- analytics -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MonthKeys:
    counters: str
    users: str
    user_blocked: str
    user_revenue: str
    user_orders: str
    steps: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, namespace: str, month: str) -> MonthKeys:
        tag = f"{{{namespace}:an:{month}}}"
        return cls(f"{tag}:n", f"{tag}:u", f"{tag}:ub", f"{tag}:ur", f"{tag}:uo",
                   {kind: f"{tag}:p:{kind}" for kind in EVENT_KINDS if kind != "blocked"})

    def all(self) -> list[str]:
        return [self.counters, self.users, self.user_blocked, self.user_revenue, self.user_orders,
                *self.steps.values()]


def event_commands(keys: MonthKeys, event: AnalyticsEvent) -> list[Command]:
    """The commands that record ``event`` (one pipeline, one slot)."""
    cmds: list[Command] = [("HINCRBY", keys.counters, f"e:{event.kind}", 1),
                           ("SADD", keys.users, event.user_id)]
    touched = [keys.counters, keys.users]
    if event.kind == "blocked":
        cmds.append(("HINCRBY", keys.user_blocked, event.user_id, 1))
        touched.append(keys.user_blocked)
    elif event.prompt_id:
        for kind in (event.kind, event.warning_step) if event.warning_step else (event.kind,):
            cmds.append(("SADD", keys.steps[kind], event.prompt_id))
            touched.append(keys.steps[kind])
    if event.kind == "purchase_completed":
        cur = event.currency
        cmds += [("HINCRBY", keys.counters, f"r:{cur}", event.amount_nanos),
                 ("HINCRBY", keys.counters, f"o:{cur}", 1),
                 ("HINCRBY", keys.user_revenue, f"{cur}:{event.user_id}", event.amount_nanos),
                 ("HINCRBY", keys.user_orders, event.user_id, 1)]
        touched += [keys.user_revenue, keys.user_orders]
    cmds += [("PEXPIRE", key, ANALYTICS_TTL_MS) for key in touched]
    return cmds


def _int_map(raw: Any) -> dict[str, int]:
    return {text(k): int(v) for k, v in (raw or {}).items()}


def _user_revenue(raw: dict[str, int]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for name, value in raw.items():
        cur, _, user = name.partition(":")
        out[(cur, user)] = value
    return out


def _counts_commands(keys: MonthKeys) -> list[Command]:
    return [("HGETALL", keys.counters), *[("SCARD", k) for k in keys.steps.values()]]


def _counts(keys: MonthKeys, results: Sequence[Any]) -> MonthCounts:
    return MonthCounts(_int_map(results[0]), {kind: int(results[1 + i]) for i, kind in enumerate(keys.steps)})


def read_month_commands(keys: MonthKeys) -> list[Command]:
    return [*_counts_commands(keys), ("SMEMBERS", keys.users), ("HGETALL", keys.user_blocked),
            ("HGETALL", keys.user_revenue), ("HGETALL", keys.user_orders)]


def month_raw(keys: MonthKeys, results: Sequence[Any]) -> MonthRaw:
    counts = _counts(keys, results)
    rest = results[1 + len(keys.steps):]
    return MonthRaw(counters=counts.counters, steps=counts.steps, users={text(u) for u in rest[0] or ()},
                    user_blocked=_int_map(rest[1]), user_revenue=_user_revenue(_int_map(rest[2])),
                    user_orders=_int_map(rest[3]))


def ledger_pattern(namespace: str, month: str) -> str:
    """The SCAN pattern of every user's ledger month hash (glob characters escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", namespace) + ":{*}:*:m:" + month + "*"  # anchored too


def ledger_batches(found: Sequence[Any], namespace: str, month: str) -> Iterator[list[Command]]:
    """The HMGETs reading the ledger month hashes SCAN found, a pipeline's worth at a time."""
    keys = [k for k in map(text, found) if month_owner(k, namespace, month)]
    for i in range(0, len(keys), SCAN_BATCH):
        yield [("HMGET", k, *LEDGER_FIELDS) for k in keys[i:i + SCAN_BATCH]]


def add_ledger_rows(raw: MonthRaw, batch: Sequence[Command], rows: Sequence[Sequence[Any]],
                    namespace: str, month: str) -> None:
    for cmd, row in zip(batch, rows, strict=True):
        c, k, n, ti, to = (0 if v is None else int(v) for v in row)
        raw.add_ledger(str(month_owner(str(cmd[1]), namespace, month)), LedgerMonth(c, k, n, ti, to))


def totals_commands(all_keys: Sequence[MonthKeys]) -> list[Command]:
    return [c for keys in all_keys for c in _counts_commands(keys)]


def totals_result(all_keys: Sequence[MonthKeys], results: Sequence[Any]) -> list[MonthCounts]:
    out, start = [], 0
    for keys in all_keys:
        end = start + 1 + len(keys.steps)
        out.append(_counts(keys, results[start:end]))
        start = end
    return out
