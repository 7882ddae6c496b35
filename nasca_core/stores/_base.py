"""The store contract: every operation the ledger, billing and analytics need, typed.

Four groups of operations, each atomic:

- the ledger's: reserve, settle, release, snapshot, tiers, credit lots, live config.
  Each touches the keys of one user only (one Redis Cluster slot).
- billing's: short keyed texts with an expiry (webhook event markers, payment-intent and
  customer indexes), keyed sets of texts (the orders held for review), counters over a
  window (the admin login throttle) and a user's subscriptions, which decide the user's
  stored tier.
- analytics': conversion events recorded per month, and a month read back with every
  user's AI cost from the ledger's month hashes (a scan: reports only, never a call's path).
- pools' (``_pools``): a chunk of an allowance many users share taken, dropped, read; each
  on the pool's keys only (a slot of its own). A call's charge to its pools rides on its settle
  (``SettleOp.pools``), its chunk on its reserve (``ReserveOp.pool_take``).

Amounts are int nano-dollars (an event's amount: billionths of its currency), times int
epoch milliseconds. ``Store`` and ``AsyncStore`` have the same methods; ``AsyncStore``'s
are coroutines (``settle_many`` is the sync store's only: the background sender's thread).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Protocol

from nasca_core._identity import check_user_id

# The analytics records live in _analytics_types; re-exported here for the stores.
from nasca_core.stores._analytics_types import EVENT_KINDS as EVENT_KINDS
from nasca_core.stores._analytics_types import LEDGER_FIELDS as LEDGER_FIELDS
from nasca_core.stores._analytics_types import AnalyticsEvent as AnalyticsEvent
from nasca_core.stores._analytics_types import EventKind as EventKind
from nasca_core.stores._analytics_types import LedgerMonth as LedgerMonth
from nasca_core.stores._analytics_types import MonthCounts as MonthCounts
from nasca_core.stores._analytics_types import MonthRaw as MonthRaw
from nasca_core.stores._billing_types import SubChange as SubChange
from nasca_core.stores._billing_types import SubscriptionResult as SubscriptionResult
from nasca_core.stores._pools import PoolKeys as PoolKeys
from nasca_core.stores._pools import PoolSnapshot as PoolSnapshot
from nasca_core.stores._pools import PoolTakeOp as PoolTakeOp
from nasca_core.stores._pools import PoolTakeResult as PoolTakeResult

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

    def month_of(self, month_id: str) -> str:
        """The counter key of another monthly window of this user (as ``build`` names it)."""
        return f"{self.meta}:m:{month_id}"

    @property
    def subscriptions(self) -> str:
        return f"{self.meta}:subs"  # billing's, on the user's slot like the meta hash it writes


def month_owner(key: str, namespace: str, month: str) -> str | None:
    """The user id in a ledger month key (``UserKeys.month``) of calendar month ``month``
    ("YYYYMM"), or of a billing-cycle month that starts in it ("YYYYMMDDhhmmss",
    ``_windows.anchored_month``); None when the key is not one."""
    head, tail = f"{namespace}:{{", f":m:{month}"
    if key[-8:].isdigit() and key[-9:-8].isdigit() and key[:-8].endswith(tail):
        key = key[:-8]  # an anchored month: counted in the calendar month it starts in
    start = len(head) + 18  # the tag's 16 hex digits, then "}:"
    if not (key.startswith(head) and key.endswith(tail) and len(key) > start + len(tail)):
        return None
    user, tag = key[start:-len(tail)], key[len(head):start]
    if tag == f"{user_tag(user)}}}:":
        return user
    # The user's fallback allowance (``_fallback.Account``): its spend is the user's too.
    own = user.removesuffix(FALLBACK_SUFFIX)
    return own if own != user and tag == f"{user_tag(own)}}}:" else None


FALLBACK_SUFFIX = ":fallback"  # ``_fallback.ACCOUNT_SUFFIX``: after the user's meta key


def layout_key(namespace: str) -> str:
    """Where a Redis store records the key layout of ``namespace`` (beside its config)."""
    return f"{{{namespace}:cfg}}:layout"


def store_id_key(namespace: str) -> str:
    """Where a Redis store keeps its id for ``namespace`` (``Store.store_id``)."""
    return f"{{{namespace}:cfg}}:id"


# The ops and their results are built on every call: plain slots classes, treated as immutable
# but not frozen, whose __init__ costs ~0.2 µs a field (object.__setattr__ each). The ledger builds
# the ops by position (a third of the keyword call's cost): a new field goes last, with a default.
@dataclass(slots=True)
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
    # The user's billing-cycle anchor spec the keys were named with (``_windows.anchored_month``;
    # "" = calendar months): the store answers status -2 with its own when they differ.
    anchor: str = ""
    # A chunk of a pool taken in the same step (``PoolTakeOp``), before the user's reserve: when
    # the pool grants nothing the user's reserve is not applied (status 0, ``ReserveResult.pool``
    # granted 0); whatever the user's outcome (blocked, busy, stale) a chunk granted stays: this
    # process's, for any call. A bad take raises InvalidAmountError with nothing written.
    pool_take: PoolTakeOp | None = None


@dataclass(slots=True)
class ReserveResult:
    status: int  # 1 admitted, 0 blocked, 2 busy (the tier's in-flight cap), -1 the caller's config is
    # stale, -2 the caller's anchor is (``anchor`` holds the stored one; nothing was written)
    tier: str
    window: int  # blocking window 1..3 (daily, weekly, monthly), 0 = none
    spent: tuple[int, int, int]
    held: int
    credits: int  # -1 when the store did not need to read it
    # Admitted: what the user could still spend besides the other calls in flight
    # (``_policy.room``; credits counted when read, always when below the op's ceiling);
    # -1 = no limit, or not known.
    room: int = -1
    anchor: str = ""
    # Admitted: what the store applied, as ``ReserveOp.tier_compiled`` (limits d, w, m, hard flags,
    # in-flight cap; -1 = none): the tier's or the user's own limits, plus their boosts in force
    # (``_effective``); None when the store did not say.
    applied: tuple[int, ...] | None = None
    # The answer of ``ReserveOp.pool_take``, on every outcome (None: there was none).
    pool: PoolTakeResult | None = None


def stale_reply(op: ReserveOp, version: int, anchor: str | None) -> ReserveResult | None:
    """The reserve's answer when the caller's config version or anchor spec is not the
    store's (checked first, before anything is written), or None when both are current."""
    if op.config_version != version:
        return ReserveResult(-1, "", 0, (0, 0, 0), 0, -1)
    if (anchor or "") != op.anchor:
        return ReserveResult(-2, "", 0, (0, 0, 0), 0, -1, anchor=anchor or "")
    return None


@dataclass(slots=True)
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
    # When the call was reserved (epoch ms; 0 = not known: the settle's now): a boost counts at
    # the settle if it was in force then (``_effective``).
    reserved_ms: int = 0
    # How many model calls this settle counts (the month's call count): more than one when the
    # background sender folds calls admitted under one lease (``_leases``) into one settle, 0 for
    # the settle that only drops a lease's hold.
    calls: int = 1
    # The hold id of the lease the call was admitted under ("" = its own hold): such a call has
    # no hold of its own in the store (its ``estimate`` is 0), and the sender may fold the
    # settles of one lease into one.
    lease: str = ""
    # For a settle folding a lease's queued settles (``_fold``): their hold ids. The store marks
    # each settled with this one's marker, in the same step, so a later settle of one of them
    # under its own id (a retry the lease side no longer remembers) is a retried settle (status
    # 2), not a second charge. At most ``_fold.MAX_OF`` of them: the settle stays O(batch).
    of: tuple[str, ...] = ()
    # The pools the call drew from: ``cost`` is added to each pool's windows once per hold id
    # (``hold_id`` and every id of ``of`` marked in the pool's ``settled``; a settle whose
    # ``hold_id`` is marked charges nothing there: the user part's rule), also when the user's
    # part is a retried settle.
    pools: tuple[PoolKeys, ...] = ()
    # By position, the chunk (its lease id) of each pool the call was drawn on ("" or none: no
    # chunk): the charge lowers that chunk's hold by ``cost`` (floored at 0) in the same step,
    # so a pool's ``held`` is what was admitted against and not yet spent, never counted twice.
    chunks: tuple[str, ...] = ()

    @property
    def boosts_at(self) -> int:
        # One ms before: the settle counts until >= the reserve's ms, so a boost cleared in
        # that ms (its until set to it) after the reserve saw it still pays (``_effective``).
        return (self.reserved_ms or self.now_ms) - 1


@dataclass(slots=True)
class SettleResult:
    status: int  # 1 applied, 2 this hold was settled before (a retried settle)
    tier_part: int
    credit_part: int
    spent: tuple[int, int, int]  # each window's counter after this call (the window it landed in)
    limits: tuple[int, int, int] = (-1, -1, -1)  # the limits in force at the settle (-1 = none)


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
    # The user's own limits (``set_user_limits``: compiled JSON as ``Tier.compiled``, None = none)
    # and their boosts still in force at the snapshot's now.
    override: str | None = None
    boosts: tuple[StoredBoost, ...] = ()
    anchor: str = ""  # the user's billing-cycle anchor spec ("" = calendar months)


@dataclass(frozen=True, slots=True)
class StoredBoost:
    """More allowance for one user in one window (index 0 daily, 1 weekly, 2 monthly) until
    ``until_ms``, kept in the user's meta record (``_effective``); an id added twice counts once."""

    id: str
    window: int
    amount: int
    until_ms: int


MAX_BOOSTS = 32  # boosts in force at once per user: the reserve sums them on every call


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


@dataclass(frozen=True, slots=True)
class UserRecords:
    """Everything a store holds about one end user (``Store.user_data``, ``_user_data``):
    their own records by key suffix, analytics per YYYYMM, billing's records naming them."""

    records: dict[str, Any]
    analytics: dict[str, dict[str, int]]
    billing: dict[str, Any]


def settle_each(settle: Callable[[SettleOp], SettleResult],
                ops: Sequence[SettleOp]) -> list[SettleResult]:
    """``Store.settle_many`` as one ``settle`` after another: stops at the first that fails,
    answering those before it (raising only when it is the first)."""
    results: list[SettleResult] = []
    for op in ops:
        try:
            results.append(settle(op))
        except Exception:
            if not results:
                raise
            break
    return results


# -- the protocol -------------------------------------------------------------------------
class Store(Protocol):
    # the ledger
    def reserve(self, op: ReserveOp) -> ReserveResult: ...
    def settle(self, op: SettleOp) -> SettleResult: ...
    # The settles applied in order, as many ``settle`` calls, in fewer round trips (the
    # background sender's batches): the outcomes of a prefix of ``ops``, each its result or
    # the error it raised (the store took those after it all the same); the rest did not land,
    # or may have (retrying is safe: a hold is charged once). Raises what ``settle`` raises
    # when none is known to have landed.
    def settle_many(self, ops: Sequence[SettleOp]) -> Sequence[SettleResult | Exception]: ...
    def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None: ...
    def snapshot(self, keys: UserKeys, now_ms: int) -> Snapshot: ...
    def set_user_tier(self, keys: UserKeys, tier: str | None) -> None: ...
    # The user's own limits, replacing their tier's (compiled JSON, ``Tier.compiled``; None clears).
    def set_user_limits(self, keys: UserKeys, compiled: str | None) -> None: ...
    # Add ``add`` (unless its id is there, in force or ended) or end the boosts of window ``clear``
    # (3 = all) now, as ``_effective.changed``; answers (the boosts in force, whether ``add`` was
    # added), or None when ``add`` would make more than MAX_BOOSTS (then nothing changed). Idempotent.
    def change_boosts(self, keys: UserKeys, now_ms: int, add: StoredBoost | None = None,
                      clear: int | None = None) -> tuple[tuple[StoredBoost, ...], bool] | None: ...
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
    # pools (``_pools``): take a chunk (a retried take answers its first grant), drop one
    # (idempotent; an unknown or lapsed id is a no-op), read a pool's spend and live chunks
    def pool_take(self, op: PoolTakeOp) -> PoolTakeResult: ...
    def pool_release(self, keys: PoolKeys, lease_id: str, now_ms: int) -> None: ...
    def pool_snapshot(self, keys: PoolKeys, now_ms: int) -> PoolSnapshot: ...
    # billing: markers (ttl None = kept), subscriptions
    def get_marker(self, key: str, now_ms: int) -> str | None: ...
    def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None: ...
    # Set ``key`` if it is not set; True when it was. With a ``token``, also True when the key holds
    # that token: a claim retried after its reply was lost is still its claimant's (thresholds).
    def claim_marker(self, key: str, ttl_ms: int, now_ms: int, token: str | None = None) -> bool: ...
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
    async def set_user_limits(self, keys: UserKeys, compiled: str | None) -> None: ...
    async def change_boosts(self, keys: UserKeys, now_ms: int, add: StoredBoost | None = None,
                            clear: int | None = None) -> tuple[tuple[StoredBoost, ...], bool] | None: ...
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
    async def pool_take(self, op: PoolTakeOp) -> PoolTakeResult: ...
    async def pool_release(self, keys: PoolKeys, lease_id: str, now_ms: int) -> None: ...
    async def pool_snapshot(self, keys: PoolKeys, now_ms: int) -> PoolSnapshot: ...
    # billing
    async def get_marker(self, key: str, now_ms: int) -> str | None: ...
    async def put_marker(self, key: str, value: str, ttl_ms: int | None, now_ms: int) -> None: ...
    async def claim_marker(self, key: str, ttl_ms: int, now_ms: int, token: str | None = None) -> bool: ...
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
