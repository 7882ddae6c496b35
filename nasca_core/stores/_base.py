"""The store contract: every operation the ledger, billing and analytics need, typed.

Three groups of operations, each atomic:

- the ledger's: reserve, settle, release, snapshot, tiers, credit lots, live config.
  Each touches the keys of one user only (one Redis Cluster slot).
- billing's: short keyed texts with an expiry (webhook event markers, payment-intent and
  customer indexes), keyed sets of texts (the orders held for review), counters over a
  window (the admin login throttle) and a user's subscriptions, which decide the user's
  stored tier.
- analytics': conversion events recorded per month, and a month read back with every
  user's AI cost from the ledger's month hashes (a scan: reports only, never a call's path).

Amounts are int nano-dollars (an event's amount: billionths of its currency), times int
epoch milliseconds. ``Store`` and ``AsyncStore`` have the same methods; ``AsyncStore``'s
are coroutines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Literal, Protocol, get_args

from nasca_core._identity import check_user_id

KEY_LAYOUT = 2  # how UserKeys spells keys; recorded in the store (``layout_key``)


def user_tag(user_id: str) -> str:
    """The user's Redis Cluster hash tag: 16 hex digits of a hash of the id. No brace, colon
    or other character of an id can reach the tag, so every key of a user is on one slot."""
    return blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class UserKeys:
    """Where one user's state lives: ``<namespace>:{<tag>}:<user id><suffix>``. Every key
    shares the user's hash tag (``user_tag``), and the id itself follows the tag, so two
    users' keys differ even if their tags ever did."""

    meta: str
    holds: str
    settled: str
    day: str
    week: str
    month: str
    credits: str
    held: str  # the running sum of the live holds

    @classmethod
    def build(cls, namespace: str, user_id: str, window_ids: tuple[str, str, str]) -> UserKeys:
        """Raises InvalidUserError for an id the validator refuses: it never reaches a key."""
        check_user_id(user_id)
        base = f"{namespace}:{{{user_tag(user_id)}}}:{user_id}"
        d, w, m = window_ids
        return cls(base, f"{base}:h", f"{base}:s", f"{base}:d:{d}", f"{base}:w:{w}", f"{base}:m:{m}",
                   f"{base}:c", f"{base}:hs")

    @property
    def namespace(self) -> str:
        return self.meta.split(":{", 1)[0]

    @property
    def subscriptions(self) -> str:
        return f"{self.meta}:subs"  # billing's, on the user's slot like the meta hash it writes


def month_owner(key: str, namespace: str, month: str) -> str | None:
    """The user id in a ledger month key (``UserKeys.month``), or None when the key is not one."""
    head, tail = f"{namespace}:{{", f":m:{month}"
    start = len(head) + 18  # the tag's 16 hex digits, then "}:"
    if not (key.startswith(head) and key.endswith(tail) and len(key) > start + len(tail)):
        return None
    user = key[start:-len(tail)]
    return user if key[len(head):start] == f"{user_tag(user)}}}:" else None


def layout_key(namespace: str) -> str:
    """Where a Redis store records the key layout of ``namespace`` (beside its config)."""
    return f"{{{namespace}:cfg}}:layout"


def store_id_key(namespace: str) -> str:
    """Where a Redis store keeps its id for ``namespace`` (``Store.store_id``)."""
    return f"{{{namespace}:cfg}}:id"


@dataclass(frozen=True, slots=True)
class ReserveOp:
    keys: UserKeys
    now_ms: int
    hold_id: str
    estimate: int
    hold_expiry_ms: int
    strict: bool
    tier: str
    tiers_json: str
    config_version: int
    tier_compiled: tuple[int, ...] = ()  # limits d, w, m (-1 = none), hard flags d, w, m, cap (-1 = none)
    # This process's deferred settles of the user: (how many, their holds, their costs). The
    # reserve counts them at their cost, not as holds in flight (``_policy.own_view``).
    owed: tuple[int, int, int] = (0, 0, 0)
    # The most the call may cost uncapped (``cap_output``; 0 = no cap asked): the reserve reads
    # the credits for ``ReserveResult.room`` when the allowance left is below it.
    ceiling: int = 0


@dataclass(frozen=True, slots=True)
class ReserveResult:
    status: int  # 1 admitted, 0 blocked, 2 busy (the tier's in-flight cap), -1 the caller's config is stale
    tier: str
    window: int  # blocking window 1..3 (daily, weekly, monthly), 0 = none
    spent: tuple[int, int, int]
    held: int
    credits: int  # -1 when the store did not need to read it
    # Admitted: what the user could still spend besides the other calls in flight
    # (``_policy.room``; credits counted when read, always when below the op's ceiling);
    # -1 = no limit, or not known.
    room: int = -1


@dataclass(frozen=True, slots=True)
class SettleOp:
    keys: UserKeys
    now_ms: int
    hold_id: str
    estimate: int
    cost: int
    tier: str
    tiers_json: str
    tier_compiled: tuple[int, ...]
    ttls_ms: tuple[int, int, int]
    marker_expiry_ms: int
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class SettleResult:
    status: int  # 1 applied, 2 this hold was settled before (a retried settle)
    tier_part: int
    credit_part: int
    spent: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Lot:
    """A credit purchase: paid in its currency's nanos, granted and remaining in USD nanos."""

    id: str
    pack: str
    paid: int
    currency: str
    granted: int
    remaining: int
    expires_ms: int = 0
    created_ms: int = 0
    seq: int = 0
    revoked: bool = False
    taken: int = 0  # nanos taken back by refunds and disputes, in all (``revoke_to``)
    floor: int = 0  # what no restore gives back: refunds' share, an owner's revoke (``revoke_to``)

    def to_json_dict(self) -> dict[str, object]:
        return {"p": self.paid, "cur": self.currency, "g": self.granted, "r": self.remaining,
                "x": self.expires_ms, "pk": self.pack, "t": self.created_ms, "id": self.id, "tk": self.taken,
                **({"fl": self.floor} if self.floor else {})}

    @classmethod
    def from_json_dict(cls, d: Mapping[str, object]) -> Lot:
        def num(k: str) -> int:
            v = d.get(k, 0)
            return int(v) if isinstance(v, int | float | str) else 0

        return cls(id=str(d.get("id", "")), pack=str(d.get("pk", "")), paid=num("p"),
                   currency=str(d.get("cur", "usd")), granted=num("g"), remaining=num("r"),
                   expires_ms=num("x"), created_ms=num("t"), seq=num("q"),
                   revoked=d.get("v") == 1, taken=num("tk"), floor=num("fl"))


@dataclass(frozen=True, slots=True)
class Snapshot:
    stored_tier: str | None
    held: int
    spent: tuple[int, int, int]
    month_cost: int
    month_credit: int
    month_calls: int
    lots: tuple[Lot, ...] = field(default=())
    month_input_tokens: int = 0
    month_output_tokens: int = 0
    # The tier the caller gave this month's last settled call (metadata, nasca.user(), tier=): the
    # tier the user's calls run on, under a stored tier (which get_usage resolves over it).
    ran_tier: str | None = None


@dataclass(frozen=True, slots=True)
class SampleOp:
    """Observations added to a model's capped list of recent ones, and the list read back,
    in one atomic step (calibration's statistics, ``_calibration``). Empty ``samples``: read."""

    key: str  # the model's key (``_calibration.stats_key``), in a slot of its own
    batch_id: str  # a batch added twice (a retried write) is added once
    samples: tuple[tuple[int, int, int], ...]  # (counted prompt, reported input, output) tokens
    keep: int  # how many recent observations the store keeps
    ttl_ms: int  # the statistics' life after their last write
    now_ms: int


@dataclass(frozen=True, slots=True)
class Samples:
    n: int  # every observation ever added (until the statistics expired)
    recent: tuple[tuple[int, int, int], ...]  # the last ``keep``, oldest first


BATCH_MARKER_MS = 600_000  # how long a store remembers a sample batch it added (retries)


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """Owner-editable config kept in the store: {section: {name: JSON text}}."""

    version: int
    sections: Mapping[str, Mapping[str, str]]


# -- billing ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SubChange:
    """One subscription event, reduced to what decides the user's tier (times: epoch seconds)."""

    sub_id: str
    event_created: int
    event_id: str
    active: bool
    tier: str
    sub_created: int
    final: bool  # the subscription was deleted
    # The grace of a failing subscription, kept in its record and merged by the same atomic
    # step: None leaves it, 0 ends it (paid again, deleted), else the first failed payment
    # seen (the record keeps the earliest); ``active`` then also needs event_created <
    # grace start + ``grace_s``.
    grace_from: int | None = None
    grace_s: int = 0


@dataclass(frozen=True, slots=True)
class SubscriptionResult:
    status: int  # 1 applied, 0 stale (an older or post-deletion event), 2 this event was applied before
    tier: str | None  # the user's stored tier now


# -- analytics --------------------------------------------------------------------------
EventKind = Literal["blocked", "prompt_shown", "checkout_started", "purchase_completed", "dismissed",
                    "tier_set", "credits_granted"]  # the last two: the dashboard's audit trail
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)


@dataclass(frozen=True, slots=True)
class AnalyticsEvent:
    """One conversion step. ``amount_nanos`` is in billionths of ``currency`` (purchases)."""

    kind: EventKind
    user_id: str
    month: str  # YYYYMM
    prompt_id: str | None = None
    amount_nanos: int = 0
    currency: str = "usd"


LEDGER_FIELDS = ("c", "k", "n", "ti", "to")  # the ledger's month hash fields, in LedgerMonth's order


@dataclass
class LedgerMonth:
    """One user's month in the ledger: nanos of AI cost, of it paid by credits, calls, tokens."""

    cost: int = 0
    credit: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class MonthCounts:
    """A month's event counters (``e:<kind>``, ``r:<cur>`` revenue, ``o:<cur>`` orders) and
    how many prompts reached each funnel step."""

    counters: dict[str, int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)


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


@dataclass(frozen=True, slots=True)
class UserRecords:
    """Everything a store holds about one end user (``Store.user_data``, ``_user_data``):
    their own records by key suffix, analytics per YYYYMM, billing's records naming them."""

    records: dict[str, Any]
    analytics: dict[str, dict[str, int]]
    billing: dict[str, Any]


# -- the protocol -------------------------------------------------------------------------
class Store(Protocol):
    # the ledger
    def reserve(self, op: ReserveOp) -> ReserveResult: ...
    def settle(self, op: SettleOp) -> SettleResult: ...
    def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None: ...
    def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot: ...
    def set_user_tier(self, keys: UserKeys, tier: str | None) -> None: ...
    def grant(self, keys: UserKeys, lot: Lot) -> bool: ...
    # Raise what refunds and disputes took back of a lot (``Lot.taken``) to ``target`` nanos,
    # never above what is left to take; ``restore``: lower it to ``target`` too, giving back
    # (a dispute won). Idempotent. Answers the nanos taken now (negative: given back).
    # ``target`` at or above the lot's grant marks it revoked; a restore below unmarks it.
    # ``floor`` (kept in the lot as the highest seen, never above what was taken): what no
    # restore gives back, however the policy changes later: the refunds' share, or all of
    # it for an owner's revoke.
    def revoke_to(self, keys: UserKeys, lot_id: str, target: int, restore: bool = False,
                  floor: int = 0) -> int: ...
    def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]: ...
    def load_config(self, namespace: str) -> StoredConfig: ...
    def config_version(self, namespace: str) -> int: ...
    def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int: ...
    # A random id made once per store and namespace, the same for every process and however
    # the store's address is written: it keys the journal of deferred settles (``_journal_home``).
    def store_id(self, namespace: str) -> str: ...
    # Everything about one end user, and with ``forget`` deleted (the month's totals kept):
    # a data-protection request (``_user_data``). A scan: the owner's tools, never a call's path.
    def user_data(self, namespace: str, user_id: str, forget: bool = False) -> UserRecords: ...
    def add_samples(self, op: SampleOp) -> Samples: ...
    # billing: markers (ttl None = kept), subscriptions
    def get_marker(self, key: str, now_ms: int) -> str | None: ...
    def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None: ...
    def claim_marker(self, key: str, ttl_ms: int, now_ms: int) -> bool: ...
    # a keyed set of texts (one Redis hash): set or (value None) delete one entry, read all
    def put_entry(self, key: str, name: str, value: str | None) -> None: ...
    def entries(self, key: str) -> dict[str, str]: ...
    # a counter over a fixed window that starts at its first count: add ``add`` (0: read);
    # answers (the count, epoch ms when the window ends; 0 when nothing is counted)
    def tally(self, key: str, add: int, window_ms: int, now_ms: int) -> tuple[int, int]: ...
    def apply_subscription(self, keys: UserKeys, change: SubChange, now_ms: int) -> SubscriptionResult: ...
    # analytics
    def record_event(self, namespace: str, event: AnalyticsEvent) -> None: ...
    def read_month(self, namespace: str, month: str, now_ms: int) -> MonthRaw: ...
    def month_totals(self, namespace: str, months: Sequence[str]) -> list[MonthCounts]: ...
    def close(self) -> None: ...


class AsyncStore(Protocol):
    # the ledger
    async def reserve(self, op: ReserveOp) -> ReserveResult: ...
    async def settle(self, op: SettleOp) -> SettleResult: ...
    async def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None: ...
    async def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot: ...
    async def set_user_tier(self, keys: UserKeys, tier: str | None) -> None: ...
    async def grant(self, keys: UserKeys, lot: Lot) -> bool: ...
    async def revoke_to(self, keys: UserKeys, lot_id: str, target: int, restore: bool = False,
                        floor: int = 0) -> int: ...
    async def all_lots(self, keys: UserKeys) -> tuple[Lot, ...]: ...
    async def load_config(self, namespace: str) -> StoredConfig: ...
    async def config_version(self, namespace: str) -> int: ...
    async def save_config(self, namespace: str, section: str, name: str, value: str | None) -> int: ...
    async def store_id(self, namespace: str) -> str: ...
    async def user_data(self, namespace: str, user_id: str, forget: bool = False) -> UserRecords: ...
    async def add_samples(self, op: SampleOp) -> Samples: ...
    # billing
    async def get_marker(self, key: str, now_ms: int) -> str | None: ...
    async def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None: ...
    async def claim_marker(self, key: str, ttl_ms: int, now_ms: int) -> bool: ...
    async def put_entry(self, key: str, name: str, value: str | None) -> None: ...
    async def entries(self, key: str) -> dict[str, str]: ...
    async def tally(self, key: str, add: int, window_ms: int, now_ms: int) -> tuple[int, int]: ...
    async def apply_subscription(self, keys: UserKeys, change: SubChange,
                                 now_ms: int) -> SubscriptionResult: ...
    # analytics
    async def record_event(self, namespace: str, event: AnalyticsEvent) -> None: ...
    async def read_month(self, namespace: str, month: str, now_ms: int) -> MonthRaw: ...
    async def month_totals(self, namespace: str, months: Sequence[str]) -> list[MonthCounts]: ...
    async def close(self) -> None: ...
