"""Budgets above the user (issue 20): a pool is one allowance many users' calls draw from —
the app-wide ceiling (pool ``"app"``) and, later, a team's allowance (``"team:<id>"``).

A process never reserves a call on a pool: it takes a *chunk* (``pool_take``), a hold on the
pool with an expiry, and admits calls against the chunk in-process (``nasca_core._pools``).
Every call's real cost is charged to the pool with the call's own settle
(``SettleOp.pools``), idempotently by the settle's hold id (its ``of`` marked with it: the
user settle's rule), so a retried or replayed settle charges a pool once. The chunk's hold is
dropped by ``pool_release`` when the process is done with it, or expires. A pool's keys have
a hash tag of their own: every key of a pool is on one Cluster slot (a user's keys may share
that slot; no script mixes a pool's keys with a user's).

Amounts are int nano-dollars, times int epoch milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import blake2b

from nasca_core._errors import InvalidAmountError
from nasca_core._money import MAX_NANOS

APP_POOL = "app"  # the app-wide ceiling's pool id
_MAX_MS = MAX_NANOS  # epoch ms and ttls: exact in Lua doubles too


def pool_tag(namespace: str, pool: str) -> str:
    """A pool's Redis Cluster hash tag (16 hex digits of a hash of namespace and id)."""
    return blake2b(f"{namespace}\0{pool}".encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class PoolKeys:
    """Where one pool's state lives for one day, ISO week and month (the app's calendar
    windows in the ledger's timezone): ``<namespace>:pool:{<tag>}:<pool id><suffix>``."""

    pool: str
    holds: str  # the chunks: lease id -> expiry (Redis: a zset)
    held: str  # the chunks: lease id -> amount admitted and not yet spent (Redis: a hash; the
    # sum of the live ones is read; a call's charge lowers its chunk's by its cost, floored at 0)
    settled: str  # hold ids already charged (a retried settle charges once)
    day: str
    week: str
    month: str

    @classmethod
    def build(cls, namespace: str, pool: str, window_ids: tuple[str, str, str]) -> PoolKeys:
        base = f"{namespace}:pool:{{{pool_tag(namespace, pool)}}}:{pool}"
        d, w, m = window_ids
        return cls(pool, f"{base}:h", f"{base}:hs", f"{base}:s", f"{base}:d:{d}", f"{base}:w:{w}",
                   f"{base}:m:{m}")


@dataclass(slots=True)
class PoolTakeOp:
    keys: PoolKeys
    now_ms: int
    lease_id: str  # the chunk's id, unique per take
    want: int  # the chunk asked for
    least: int  # the smallest chunk worth having (the call's estimate); 0 < least <= want
    limits: tuple[int, int, int]  # the pool's limits d, w, m (-1 = none)
    expiry_ms: int  # when the chunk's hold lapses if never released
    ttls_ms: tuple[int, int, int]  # how long each window's counter is kept


@dataclass(slots=True)
class PoolTakeResult:
    # The chunk granted: min(want, the room left in the tightest window), or 0 when that room
    # is below ``least`` (nothing written: the pool blocks). room = limit - spent - held.
    granted: int
    window: int  # when granted == 0: the blocking window 1..3 (daily, weekly, monthly)
    spent: tuple[int, int, int]  # each window's spend
    held: int  # every live chunk's sum, after this take


@dataclass(slots=True)
class PoolSnapshot:
    spent: tuple[int, int, int]
    held: int  # live chunks only (expired ones are not counted)


def _whole(x: object, top: int = MAX_NANOS) -> bool:
    # A plain int (not a bool, a float or an int subclass) of at most ``top``: a float's
    # rounding (1.5), inf or a number past 2^53 would read differently in each store (Lua
    # doubles, SQLite's int64, Python's ints).
    return type(x) is int and x <= top


def check_take(op: PoolTakeOp) -> None:
    """Raises InvalidAmountError for a take no store may apply (before anything is read)."""
    limits, ttls = op.limits, op.ttls_ms
    typed = (isinstance(op.keys, PoolKeys) and type(op.lease_id) is str and _whole(op.now_ms, _MAX_MS)
             and _whole(op.want) and _whole(op.least) and _whole(op.expiry_ms, _MAX_MS)
             and type(limits) is tuple and len(limits) == 3 and all(_whole(x) for x in limits)
             and type(ttls) is tuple and len(ttls) == 3 and all(_whole(t, _MAX_MS) for t in ttls))
    if not typed or not op.lease_id or not 0 < op.least <= op.want or op.expiry_ms <= op.now_ms \
            or any(limit < -1 for limit in limits) or any(t <= 0 for t in ttls):
        raise InvalidAmountError(
            f"Invalid pool take on {getattr(op.keys, 'pool', op.keys)!r}: need a lease id, int "
            f"nanos with 0 < least <= want <= {MAX_NANOS} (got least={op.least!r}, want={op.want!r}), "
            f"int limits from -1 to {MAX_NANOS}, int ms with an expiry after now and positive ttls; "
            "nothing was taken.")


def check_ref(keys: PoolKeys, now_ms: int, lease_id: str = "") -> None:
    """Raises InvalidAmountError for a release's or a snapshot's arguments no store may use."""
    if not (isinstance(keys, PoolKeys) and _whole(now_ms, _MAX_MS) and type(lease_id) is str):
        raise InvalidAmountError(f"Invalid pool reference: need PoolKeys, an int now_ms and a lease id "
                                 f"(got now_ms={now_ms!r}, lease_id={lease_id!r}); nothing was changed.")


def check_pools(pools: tuple[PoolKeys, ...], chunks: tuple[str, ...] = ()) -> None:
    """Raises InvalidAmountError for a settle's ``pools`` and ``chunks`` no store may charge
    (before the settle writes anything: the memory store charges its pools last, with no
    rollback)."""
    if type(pools) is not tuple or not all(isinstance(k, PoolKeys) for k in pools) \
            or type(chunks) is not tuple or not all(type(c) is str for c in chunks) \
            or len(chunks) > len(pools):
        raise InvalidAmountError(f"Invalid settle pools {pools!r} / chunks {chunks!r}: need a tuple of "
                                 "PoolKeys and at most as many chunk lease ids (str); nothing was settled.")


def chunk_of(chunks: tuple[str, ...], i: int) -> str:
    """The chunk the settle's ``i``-th pool was drawn on ("" = none)."""
    return chunks[i] if i < len(chunks) else ""


def grant(op: PoolTakeOp, spent: tuple[int, int, int], held: int) -> tuple[int, int]:
    """(granted, blocking window 1..3 or 0): ``PoolTakeResult``'s rule, as the Lua script's."""
    room, window = -1, 0
    for i in range(3):
        limit = op.limits[i]
        if limit >= 0 and (room < 0 or limit - spent[i] - held < room):
            room, window = max(0, limit - spent[i] - held), i + 1
    if room < 0:
        return op.want, 0
    return (min(op.want, room), 0) if room >= op.least else (0, window)
