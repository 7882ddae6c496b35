"""Budget leases: a user far from every limit has calls admitted in this process, no store call.

A lease: an ordinary hold of ``size`` nanos (``_lease_policy``), taken strictly by one process
for one (user, tier, strict), one call in flight to others. A call under it is carved out of its
free part in O(1) and settles as a settle of a hold the store never had (``SettleOp.lease``,
estimate 0). A closing settle (``_lease_land``) drops the hold once it is retired and every
call's settle is queued or landed. It retires when a call does not fit, at ``until`` (the
sender's ``reap``), on a change here (``drop``), on a reserve of the user under another key
(``_others``) or blocked (``give_back``), at ``close`` and in a forked child. Bound: ARCHITECTURE.md.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING

from nasca_core._errors import StoreError
from nasca_core._lease_book import Aging, Lease, Settled
from nasca_core._lease_land import MARKER_MS, LeaseSettles, aland, closing, land, unreserved
from nasca_core._lease_policy import LEASE_S, clear_of_marks, lease_size, leases_allowed
from nasca_core._types import Charge, Reservation, next_hold_id
from nasca_core.stores import ReserveOp, ReserveResult, SettleOp, Snapshot, UserKeys

if TYPE_CHECKING:
    from collections.abc import Callable

    from nasca_core._ledger import Nasca
    from nasca_core._live import ConfigSnapshot

MAX_HINTS = 4_096  # users remembered as far from their limits (LRU)
MAX_LEASES = 4_096  # live leases per ledger: past it, no new one until some end
_NONE = (0, 0, 0)


class Leases:
    """The lease table of one ledger: thread-safe, bounded, fork-safe."""

    def __init__(self, ledger: Nasca, anchor: Callable[[str], str], on: bool | None = None) -> None:
        self._ledger, self._anchor = ledger, anchor
        self._now, self._config, self._stats = ledger.now, ledger.live.current, ledger.stats  # fast path
        # By default on exactly when the background sender is (off on memory://, whose reserve is
        # in-process already, and with settle_in_background=False, the serverless advice); never
        # with holds too short-lived for a lease's settles (``_lease_policy.MIN_HOLD_TTL_S``).
        self.on = (ledger.deferred.sender is not None if on is None else bool(on)) and leases_allowed(
            ledger.hold_ttl_ms / 1000)
        self._lock = threading.Lock()
        self._live: dict[tuple[str, str, bool], Lease] = {}  # not retired
        self._by_user: dict[str, list[Lease]] = {}  # whose hold is still in the store
        self._by_meta: dict[str, list[Lease]] = {}  # the same lists, by ``UserKeys.meta``
        self.calls: dict[str, Lease] = {}  # hold id of a call under a lease -> the lease
        self._hints: OrderedDict[tuple[str, str, bool], tuple[int, int]] = OrderedDict()  # -> (size, until)
        self.settled = Settled()  # settled leased calls: a retry of their settle sends nothing
        self._landing: dict[str, tuple[Lease, int]] = {}  # a call's settle built, not yet queued or landed
        self._young, self._aging = Aging(), Aging()  # by ``until_ms`` (idle reaper), by ``expiry_ms``
        self._generation = 0  # bumped by drop(): a lease whose reserve was in flight across one ends
        self._due: list[SettleOp] = []  # closing settles ``retire`` could not hand to the sender
        _all.add(self)
        ledger.deferred.leased = self.unbacked  # read in a reserve's turn (``DeferredSettles.reserve``)
        ledger.deferred.on_idle = self.reap  # the sender's thread ends idle leases
        self.settles = LeaseSettles(ledger, self)  # the ledger's settle steps (``_lease_land``)

    # -- admission -------------------------------------------------------------------------
    def admit(self, amount: int, user: str, tier: str, strict: bool | None, ceil: int,
              other: object) -> Reservation | None:
        """The call admitted under the user's lease (taking one when the user was hinted), or
        None: the ledger reserves it as usual. ``other``: a fallback account or degrade callback
        (never leased). Raises nothing the plain reserve would not raise itself."""
        if not self.on:
            return None
        if self._due:
            self._land_due()
        key = (user, tier, self._ledger.strict if strict is None else strict)
        if (lease := self._live.get(key)) is not None and not ceil and other is None and (
                got := self._carve(lease, amount, self._close_now, self._config())) is not None:
            return got
        if user in self._by_user:
            for lease in self._others(key, bool(ceil) or other is not None):
                self._close_now(lease)
        if ceil or other is not None:
            return None
        generation = self._generation  # before the snapshot: a drop() after it ends the lease at once
        if key not in self._hints or (op := self._opening(key, amount, config := self._config())) is None:
            return None
        try:
            result = self._ledger.deferred.reserve(op)
        except StoreError:
            self.queue(unreserved(self._ledger, op, user))  # the store may have applied it
            return self._missed(key)
        return self._opened(key, op, result, amount, self._close_now, config, generation)

    async def aadmit(self, amount: int, user: str, tier: str, strict: bool | None, ceil: int,
                     other: object) -> Reservation | None:
        """Async twin of admit()."""
        if not self.on:
            return None
        if self._due:
            for closing_op in self._take_due():
                await aland(self._ledger, closing_op)
        key = (user, tier, self._ledger.strict if strict is None else strict)
        due: list[Lease] = []
        if (lease := self._live.get(key)) is not None and not ceil and other is None and (
                got := self._carve(lease, amount, due.append, await self._ledger.live.acurrent())):
            return got
        if user in self._by_user:
            due += self._others(key, bool(ceil) or other is not None)
        for lease in due:
            await aland(self._ledger, closing(self._ledger, lease))
        due.clear()
        if ceil or other is not None:
            return None
        generation = self._generation
        if key not in self._hints or (
                op := self._opening(key, amount, config := await self._ledger.live.acurrent())) is None:
            return None
        try:
            result = await self._ledger.deferred.areserve(op)
        except BaseException as exc:  # a StoreError or a cancellation: the store may have applied it
            self.queue(unreserved(self._ledger, op, user))
            if not isinstance(exc, StoreError):
                raise
            return self._missed(key)
        got = self._opened(key, op, result, amount, due.append, config, generation)
        for lease in due:
            await aland(self._ledger, closing(self._ledger, lease))
        return got

    def _carve(self, lease: Lease, amount: int, close: Callable[[Lease], object],
               config: ConfigSnapshot) -> Reservation | None:
        now_ms = int(self._now() * 1000)
        with self._lock:
            if lease.retired or (lease.cap >= 0 and lease.n):
                return None  # a capped tier's lease: one call at a time, as the store counts a lease
            if (now_ms >= lease.until_ms or config is not lease.config or amount > lease.size - lease.out
                    - lease.used or self._anchor(lease.user) != lease.anchor):
                hold = ""
                due = self._retire(lease)
            else:
                lease.out += amount
                lease.n += 1
                self.calls[hold := next_hold_id()] = lease
                lease.holds.add(hold)
                room, due = lease.room_left(amount), False
        if not hold:
            if due:
                close(lease)
            return None
        stats = self._stats
        stats.reserved += 1
        stats.leased += 1
        return Reservation(lease.user, lease.tier, hold, amount, lease.keys, False, room, None,
                           lease.reserved_ms, lease.anchor)

    def _opening(self, key: tuple[str, str, bool], amount: int, config: ConfigSnapshot) -> ReserveOp | None:
        # The lease's reserve, when the user is hinted: strict, so the store admits all of it or nothing.
        ledger = self._ledger
        now = ledger.now()
        now_ms = int(now * 1000)
        with self._lock:
            hint = self._hints.pop(key, None)
            self._reap(now_ms)
        if hint is None or hint[1] <= now_ms or len(self._live) >= MAX_LEASES or hint[0] < amount:
            return None
        if key[1] not in config.tiers:
            return None
        anchor = self._anchor(key[0])
        return ReserveOp(ledger.user_keys(key[0], now), now_ms, next_hold_id(), hint[0],
                         now_ms + ledger.hold_ttl_ms, True, key[1], config.tiers_json, config.version,
                         config.compiled[key[1]], self.owed(key[0]), 0, anchor)

    def _opened(self, key: tuple[str, str, bool], op: ReserveOp, result: ReserveResult, amount: int,
                close: Callable[[Lease], object], config: ConfigSnapshot,
                generation: int) -> Reservation | None:
        # ``config``: the snapshot the lease's op was built from; a change made here while the
        # reserve was in flight (a new snapshot, a drop()) ends the lease at once.
        if result.status != 1:
            return self._missed(key)
        ws = self._ledger.windows_at(op.now_ms / 1000, key[0])
        lease = Lease(key, op, result, config,
                      min(op.now_ms + int(LEASE_S * 1000), int(min(ws.ends) * 1000), op.hold_expiry_ms))
        tier = config.tiers.get(result.tier)
        # Fresher than the hint: the lease's own reply (its hold counted) must still be clear of every mark.
        clear = clear_of_marks(result.applied, result.spent, result.held, tier.warn_at if tier else ())
        clear = clear and self._config() is config
        with self._lock:
            if clear and key not in self._live and generation == self._generation:
                self._by_meta[lease.keys.meta] = leases = self._by_user.setdefault(key[0], [])
                leases.append(lease)  # not a retired one's: its closing settle is about to be queued
                self._live[key] = lease
                if (sender := self._ledger.deferred.sender) is not None:  # its thread reaps them
                    self._young.add(lease)
                    sender.wake()  # started if no settle has started it (``reap``)
                self._aging.add(lease)
                lease.out, lease.n = amount, 1
                self.calls[hold := next_hold_id()] = lease
                lease.holds.add(hold)
            else:
                lease.retired = True
        self._ledger.stats.leases += 1
        if lease.retired:
            close(lease)
            return self._missed(key)
        self._ledger.stats.reserved += 1
        self._ledger.stats.leased += 1
        return Reservation(key[0], lease.tier, hold, amount, lease.keys, False, lease.room_left(amount), None,
                           lease.reserved_ms, lease.anchor)

    def _missed(self, key: tuple[str, str, bool]) -> Reservation | None:
        self._ledger.stats.lease_misses += 1
        with self._lock:
            self._hints.pop(key, None)
        return None

    def admitted(self, user: str, tier: str, op: ReserveOp, result: ReserveResult,
                 other: object) -> Reservation:
        """A plain admitted reserve's Reservation; a user far from every mark is hinted (leased next)."""
        reservation = self._ledger.thresholds.admitted(user, op, result)
        if self.on and not op.ceiling and other is None and reservation.warning is None:
            config = self._ledger.live.current()
            warned = config.tiers[result.tier].warn_at if result.tier in config.warned else ()
            if size := lease_size(result.applied, result.spent, result.held, op.estimate, warned):
                key = (user, tier, op.strict)
                with self._lock:
                    if key not in self._live:
                        self._hints[key] = (size, op.now_ms + int(LEASE_S * 1000))
                        self._hints.move_to_end(key)
                        if len(self._hints) > MAX_HINTS:
                            self._hints.popitem(last=False)
        return reservation

    # -- the end of a call -----------------------------------------------------------------
    def settle_of(self, op: SettleOp) -> SettleOp:
        """A call's settle as its lease needs it: no hold of its own, the lease named; the lease
        counts it at its cost until its settle is queued or landed (``done``), its hold kept."""
        with self._lock:
            if (lease := self.calls.pop(op.hold_id, None)) is not None:
                lease.out += op.cost - op.estimate
                self._landing[op.hold_id] = (lease, op.estimate)
                op.estimate, op.lease = 0, lease.id
        return op

    @property
    def settling(self) -> bool:  # a settle may be a retry of a leased call's (``retried``)
        return bool(self.settled or self._landing)

    def retried(self, op: SettleOp) -> Charge | None:
        """A retried leased call's settle: the first one's Charge once queued or landed, else (on
        the caller's path, it may yet fail) None: sent as the lease's, the store settles it once."""
        with self._lock:
            if (charge := self.settled.get(op.hold_id)) is None and (got := self._landing.get(op.hold_id)):
                op.estimate, op.lease = 0, got[0].id
        return charge

    def undo(self, op: SettleOp) -> None:
        """A leased call's settle that was neither queued nor landed: the call is out again."""
        with self._lock:
            if (landing := self._landing.pop(op.hold_id, None)) is not None:
                landing[0].out += landing[1] - op.cost
                self.calls[op.hold_id] = landing[0]

    def done(self, op: SettleOp, charge: Charge) -> Lease | None:
        """The call's settle is queued or landed: the lease whose hold it lets drop now, if any."""
        now_ms = int(self._now() * 1000)
        with self._lock:
            if (landing := self._landing.pop(op.hold_id, None)) is None:
                return None
            self.settled.add(op.hold_id, charge, now_ms + MARKER_MS, now_ms)
            lease = landing[0]
            lease.out -= op.cost
            lease.used += op.cost
            lease.n -= 1
            lease.holds.discard(op.hold_id)
            if lease.retired and lease.n == 0 and lease in self._by_user.get(lease.user, ()):
                self._forget(lease)
                return lease
        return None

    def released(self, reservation: Reservation) -> bool:
        """True when the call was under a lease: only the lease's outstanding part changes."""
        if (lease := self._released(reservation)) is None:
            return reservation.hold_id in self.settled or reservation.hold_id in self._landing
        if isinstance(lease, Lease):
            self._close_now(lease)
        return True

    async def areleased(self, reservation: Reservation) -> bool:
        """Async twin of released()."""
        if (lease := self._released(reservation)) is None:
            return reservation.hold_id in self.settled or reservation.hold_id in self._landing
        if isinstance(lease, Lease):
            await aland(self._ledger, closing(self._ledger, lease))
        return True

    def _released(self, reservation: Reservation) -> Lease | bool | None:
        # None: not a leased call; True: released; a Lease: released, and that lease must close now.
        with self._lock:
            if (lease := self.calls.pop(reservation.hold_id, None)) is None:
                return None
            lease.out -= reservation.estimate_nanos
            lease.n -= 1
            lease.holds.discard(reservation.hold_id)
            if lease.retired and lease.n == 0:
                self._forget(lease)
                return lease
        return True

    # -- reads, changes, close -------------------------------------------------------------
    def owed(self, user: str, account: object = None) -> tuple[int, int, int]:
        """For a reserve's ``owed``: the part of this process's lease holds of ``user`` no call
        backs (``_policy.own_view`` unholds it; none on a fallback ``account``). A live lease's
        free part stays held; the count: each lease is one call in the store, here its calls."""
        if account is not None or user not in self._by_user:
            return _NONE
        with self._lock:
            return self._unbacked(self._by_user.get(user, []))

    def unbacked(self, meta: str) -> tuple[int, int, int]:
        """owed() by ``UserKeys.meta``, for ``DeferredSettles`` under its lock (no lease counted twice)."""
        if meta not in self._by_meta:
            return _NONE
        with self._lock:
            return self._unbacked(self._by_meta.get(meta, []))

    def _unbacked(self, leases: list[Lease]) -> tuple[int, int, int]:
        now_ms = int(self._now() * 1000)
        for lease in [x for x in leases if x.expiry_ms <= now_ms]:  # its hold is gone from the store
            self._expired(lease)
        if not leases:
            return _NONE
        return (len(leases) - sum(x.n for x in leases), sum(x.unbacked() for x in leases), 0)

    def seen(self, user: str, snap: Snapshot) -> Snapshot:
        """``get_usage``'s snapshot of ``user`` here: a lease counts its calls' estimates only."""
        if user not in self._by_user:
            return snap
        with self._lock:
            free = sum(max(0, x.size - x.out) for x in self._by_user.get(user, ()))
        return replace(snap, held=max(0, snap.held - free))

    def drop(self, user: str | None = None) -> None:
        """Retire ``user``'s leases (all, for None), forget their hints: a change here."""
        for lease in self._drop(user):
            self._close_now(lease)

    async def adrop(self, user: str | None = None) -> None:
        """Async twin of drop()."""
        for lease in self._drop(user):
            await aland(self._ledger, closing(self._ledger, lease))

    def give_back(self, user: str) -> bool:
        """A blocked reserve of ``user``: drop() their live leases here (a free part may be what
        blocked it). True: retry, as per-call holds would admit."""
        if live := any(not x.retired for x in tuple(self._by_user.get(user, ()))):
            self.drop(user)
        return live

    async def agive_back(self, user: str) -> bool:
        """Async twin of give_back()."""
        if live := any(not x.retired for x in tuple(self._by_user.get(user, ()))):
            await self.adrop(user)
        return live

    def retire(self, keys: UserKeys) -> None:
        """drop() for code that must not wait on the store (billing's subscription steps): the
        closing settles go to the sender, or to the next admission here when it is off."""
        with self._lock:
            users = [u for u, leases in self._by_user.items() if leases and leases[0].keys.meta == keys.meta]
        for user in users:
            for lease in self._drop(user):
                self.queue(closing(self._ledger, lease))

    def queue(self, op: SettleOp) -> None:
        """A closing settle for the sender, or for the next admission here when it is off."""
        if self._ledger.deferred.send(op) is None:
            with self._lock:
                self._due.append(op)

    def reap(self, _monotonic: float = 0.0) -> float | None:
        """``DeferredSettles.on_idle``, on the sender's thread: retire idle leases past their
        ``until`` (others stop counting them within ``LEASE_S``); the seconds to the next one."""
        now_ms = int(self._now() * 1000)
        with self._lock:
            self._reap(now_ms)
            due = [x for x in self._young.due(now_ms, "until_ms") if not x.retired and self._retire(x)]
            after = self._young.next_ms("until_ms")
        for lease in due:
            self.queue(closing(self._ledger, lease))
        return None if after is None else max(0.0, (after - now_ms) / 1000)

    def close(self) -> None:
        """Retire every lease; the holds of those with nothing outstanding dropped now."""
        self.drop()
        self._land_due()

    async def aclose(self) -> None:
        """Async twin of close()."""
        await self.adrop()
        for op in self._take_due():
            await aland(self._ledger, op)

    def flush(self) -> int:
        """``Nasca.flush()``: end every lease, then land the queued settles (how many landed); a
        serverless request ending with it leaves no lease hold (the ledger's own flushes keep them)."""
        self.close()
        return self._ledger.deferred.flush()

    async def aflush(self) -> int:
        """Async twin of flush()."""
        await self.aclose()
        return await self._ledger.deferred.aflush()

    def _drop(self, user: str | None) -> list[Lease]:
        with self._lock:
            self._generation += 1  # any user's: a rare change; a lease being taken meanwhile ends at once
            self._reap(int(self._now() * 1000))
            if user is None:
                self._hints.clear()
                leases = list(self._live.values())
            else:
                for key in [k for k in self._hints if k[0] == user]:
                    del self._hints[key]
                leases = [x for x in self._by_user.get(user, ()) if not x.retired]
            return [x for x in leases if self._retire(x)]

    def _others(self, key: tuple[str, str, bool], every: bool) -> list[Lease]:
        # A reserve of the user under another key (or a capped/fallback one: ``every``) sees the
        # user as per-call holds would: their live leases retire, their unused part unheld.
        with self._lock:
            return [x for x in self._by_user.get(key[0], ()) if not x.retired and (every or x.key != key)
                    and self._retire(x)]

    # -- under the lock --------------------------------------------------------------------
    def _retire(self, lease: Lease) -> bool:
        # True when nothing is outstanding: the caller sends its closing settle.
        lease.retired = True
        if self._live.get(lease.key) is lease:
            del self._live[lease.key]
        if lease.n == 0:
            self._forget(lease)
            return True
        return False

    def _reap(self, now_ms: int) -> None:
        # Amortised O(1): each lease is taken once and forgotten here once, its hold expired
        # (one call never settled here pins a retired lease's hold in the store until then).
        for lease in self._aging.due(now_ms, "expiry_ms"):
            if lease.holds or lease in self._by_user.get(lease.user, ()):
                self._expired(lease)

    def _expired(self, lease: Lease) -> None:
        # The store dropped its hold: calls still out under it settle as plain settles (charged in full).
        lease.retired = True
        if self._live.get(lease.key) is lease:
            del self._live[lease.key]
        self._forget(lease)
        for hold in lease.holds:
            self.calls.pop(hold, None)
            self._landing.pop(hold, None)
        lease.holds.clear()

    def _forget(self, lease: Lease) -> None:
        leases = self._by_user.get(lease.user, [])
        if lease in leases:
            leases.remove(lease)
        if not leases:
            self._by_user.pop(lease.user, None)
            self._by_meta.pop(lease.keys.meta, None)

    # -- the closing settle (``_lease_land``) ------------------------------------------------
    def _take_due(self) -> list[SettleOp]:
        with self._lock:
            due, self._due = self._due, []
            return due

    def _land_due(self) -> None:
        for op in self._take_due():
            land(self._ledger, op)

    def _close_now(self, lease: Lease) -> None:
        land(self._ledger, closing(self._ledger, lease))

    def _forked(self) -> None:
        self._lock, self._due = threading.Lock(), []
        for book in (self._live, self._by_user, self._by_meta, self.calls, self._hints, self.settled,
                     self._landing, self._young, self._aging):
            book.clear()


_all: weakref.WeakSet[Leases] = weakref.WeakSet()


def _after_fork() -> None:  # a child never uses its parent's leases; the parent keeps them
    for leases in list(_all):
        leases._forked()


os.register_at_fork(after_in_child=_after_fork)
