"""Conversion events and where a month of them lives in the store, free of I/O.

A month's analytics keys share one hash tag, ``{<namespace>:an:<YYYYMM>}``, so a month
is one Redis Cluster slot and one pipeline writes an event:

    {ns:an:YYYYMM}:n         hash  e:<kind> -> events; r:<cur> -> revenue (currency nanos);
                                   o:<cur> -> orders
    {ns:an:YYYYMM}:p:<kind>  set   prompt ids that reached a step (the funnel counts prompts,
                                   so a reloaded page or a second click counts once)
    {ns:an:YYYYMM}:u         set   users with an event this month
    {ns:an:YYYYMM}:ub        hash  user -> blocked calls
    {ns:an:YYYYMM}:ur        hash  <cur>:<user> -> revenue (currency nanos)
    {ns:an:YYYYMM}:uo        hash  user -> orders

The ledger's own month hash (``{ns}:{user}:m:YYYYMM``: ``c`` AI cost, ``k`` paid from
credits, ``n`` calls, ``ti``/``to`` tokens) holds each user's AI cost; reports find those
keys by SCAN. Nothing here is on the reserve/settle path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal, get_args

from nasca_core._errors import InvalidInputError

EventKind = Literal["blocked", "prompt_shown", "checkout_started", "purchase_completed", "dismissed"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)
FUNNEL: tuple[EventKind, ...] = ("blocked", "prompt_shown", "checkout_started", "purchase_completed")
TTL_MS = 400 * 86_400_000  # as long as the ledger keeps its month counters
LEDGER_FIELDS = ("c", "k", "n", "ti", "to")

_MONTH = re.compile(r"^(\d{4})-?(\d{2})$")


@dataclass(frozen=True, slots=True)
class Event:
    """One conversion step. ``amount_nanos`` is in billionths of ``currency`` (purchases)."""

    kind: EventKind
    user_id: str
    month: str  # YYYYMM
    prompt_id: str | None = None
    amount_nanos: int = 0
    currency: str = "usd"


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


@dataclass
class LedgerMonth:
    """One user's month in the ledger: nanos of AI cost, of it paid by credits, calls, tokens."""

    cost: int = 0
    credit: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class MonthRaw:
    """What the store holds for one month, before any arithmetic."""

    counters: dict[str, int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    users: set[str] = field(default_factory=set)
    user_blocked: dict[str, int] = field(default_factory=dict)
    user_revenue: dict[tuple[str, str], int] = field(default_factory=dict)  # (currency, user)
    user_orders: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, LedgerMonth] = field(default_factory=dict)


def commands(keys: MonthKeys, event: Event) -> list[tuple[str | int, ...]]:
    """The Redis commands that record ``event`` (one pipeline, one slot)."""
    cmds: list[tuple[str | int, ...]] = [("HINCRBY", keys.counters, f"e:{event.kind}", 1),
                                         ("SADD", keys.users, event.user_id)]
    touched = [keys.counters, keys.users]
    if event.kind == "blocked":
        cmds.append(("HINCRBY", keys.user_blocked, event.user_id, 1))
        touched.append(keys.user_blocked)
    elif event.prompt_id:
        cmds.append(("SADD", keys.steps[event.kind], event.prompt_id))
        touched.append(keys.steps[event.kind])
    if event.kind == "purchase_completed":
        cur = event.currency
        cmds += [("HINCRBY", keys.counters, f"r:{cur}", event.amount_nanos),
                 ("HINCRBY", keys.counters, f"o:{cur}", 1),
                 ("HINCRBY", keys.user_revenue, f"{cur}:{event.user_id}", event.amount_nanos),
                 ("HINCRBY", keys.user_orders, event.user_id, 1)]
        touched += [keys.user_revenue, keys.user_orders]
    cmds += [("PEXPIRE", key, TTL_MS) for key in touched]
    return cmds


def month_id(value: str | date | datetime) -> str:
    """``"2026-11"``, ``"202611"``, a date or a datetime -> ``"202611"``.

    Raises InvalidInputError for anything else."""
    if isinstance(value, date):
        return f"{value.year:04d}{value.month:02d}"
    m = _MONTH.match(value) if isinstance(value, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 12:
        raise InvalidInputError(f"month must look like '2026-11', got {value!r}")
    return m.group(1) + m.group(2)


def month_label(month: str) -> str:
    return f"{month[:4]}-{month[4:]}"


def previous_months(month: str, count: int) -> list[str]:
    """``count`` months ending with ``month``, oldest first."""
    y, m = int(month[:4]), int(month[4:])
    out = []
    for _ in range(count):
        out.append(f"{y:04d}{m:02d}")
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
    return out[::-1]


def ledger_pattern(namespace: str, month: str) -> str:
    """The SCAN pattern of every user's ledger month hash (glob characters escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", namespace) + ":{*}:m:" + month


def ledger_user(key: str, namespace: str, month: str) -> str | None:
    """The user id in a ledger month key, or None when the key is not one."""
    head, tail = f"{namespace}:{{", f"}}:m:{month}"
    if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
        return key[len(head):-len(tail)]
    return None


def parse_counters(raw: dict[str, int]) -> dict[str, int]:
    return {k: int(v) for k, v in raw.items()}


def parse_user_revenue(raw: dict[str, int]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for name, value in raw.items():
        cur, _, user = name.partition(":")
        out[(cur, user)] = int(value)
    return out
