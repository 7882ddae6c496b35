"""Where a lease's settles go: the ledger's settle steps for a call under a lease, and the
lease's closing settle (cost 0, ``calls`` 0: it drops the lease's hold), landed by the path
the calls' settles take (the background sender when on, else the store), after them.

Uses only the ledger's and the lease table's public ports (``_leases.Leases``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nasca_core._errors import StoreError
from nasca_core.stores import ReserveOp, SettleOp, SettleResult

if TYPE_CHECKING:
    from nasca_core._lease_book import Lease
    from nasca_core._leases import Leases
    from nasca_core._ledger import Nasca
    from nasca_core._types import Charge

log = logging.getLogger("nasca")

MARKER_MS = 3_600_000  # a settled hold id is remembered this long (as the ledger's settles)
_NO_TIER = (-1, -1, -1, 0, 0, 0, -1)


def closing(ledger: Nasca, lease: Lease) -> SettleOp:
    """The settle that drops ``lease``'s hold: its hold id, estimate its size, cost 0, calls 0.
    Never raises: with the config unreadable (the store down), the lease's own snapshot serves
    (a settle of cost 0), so a reaped or dropped lease's hold is never left behind."""
    now = ledger.now()
    try:
        config = ledger.live.current()
    except StoreError:
        config = lease.config
    now_ms = int(now * 1000)
    ws = ledger.windows_at(now, lease.user)
    return SettleOp(ledger.user_keys(lease.user, now), now_ms, lease.id, lease.size, 0, lease.tier,
                    config.tiers_json, config.compiled.get(lease.tier, _NO_TIER), ws.ttls_from(now),
                    now_ms + MARKER_MS, 0, 0, lease.reserved_ms, 0, lease.id)


def unreserved(ledger: Nasca, op: ReserveOp, user: str) -> SettleOp:
    """The closing settle of a lease whose reserve's reply was lost (a StoreError after the
    store may have applied it, a cancellation): harmless if the hold never reached the store."""
    config, now = ledger.live.current(), op.now_ms / 1000
    return SettleOp(op.keys, op.now_ms, op.hold_id, op.estimate, 0, op.tier, config.tiers_json,
                    config.compiled.get(op.tier, _NO_TIER), ledger.windows_at(now, user).ttls_from(now),
                    op.now_ms + MARKER_MS, 0, 0, op.now_ms, 0, op.hold_id)


def land(ledger: Nasca, op: SettleOp) -> None:
    """The sender's queue when it is on (after the calls' settles queued there), else the store."""
    deferred = ledger.deferred
    if deferred.send(op) is not None:
        return
    if deferred:
        deferred.flush()
    try:
        ledger.store.sync.settle(op)
    except StoreError as exc:
        _deferred(ledger, op, exc)


async def aland(ledger: Nasca, op: SettleOp) -> None:
    """Async twin of land()."""
    deferred = ledger.deferred
    if deferred.send(op) is not None:
        return
    if deferred:
        await deferred.aflush()
    try:
        await ledger.store.for_loop().settle(op)
    except StoreError as exc:
        _deferred(ledger, op, exc)


def _deferred(ledger: Nasca, op: SettleOp, exc: StoreError) -> None:
    try:
        ledger.deferred.defer(op, exc)
    except StoreError as err:  # nothing is charged by it: the hold expires by itself
        log.warning("nasca: a lease's hold could not be dropped, it expires by itself: %s", err)


class LeaseSettles:
    """``Nasca.settle``'s steps around the store (``Nasca.lease_settles``). A retried settle of
    a leased call is answered with the first one's Charge and sends nothing (the store's marker
    may be under a folded settle's id); a call's lease may drop its hold only once the call's
    settle is queued or landed (``Leases.done``)."""

    def __init__(self, ledger: Nasca, leases: Leases) -> None:
        self._ledger, self._leases = ledger, leases

    def before_settle(self, op: SettleOp, background: bool) -> Charge | None:
        """``DeferredSettles.before_settle``, a retry answered first."""
        leases = self._leases
        if not op.lease and leases.settling and (got := leases.retried(op)) is not None:
            return got
        queued = self._ledger.deferred.before_settle(op, background)
        if queued is not None and op.lease and (lease := leases.done(op, queued)):
            land(self._ledger, closing(self._ledger, lease))
        return queued

    async def asent(self, op: SettleOp, background: bool) -> Charge | None:
        """Async twin of before_settle(), without its flush (``Nasca.asettle`` awaits that)."""
        leases = self._leases
        if not op.lease and leases.settling and (got := leases.retried(op)) is not None:
            return got
        if background and (queued := self._ledger.deferred.send(op)) is not None:
            if op.lease and (lease := leases.done(op, queued)):
                await aland(self._ledger, closing(self._ledger, lease))
            return queued
        return None

    def settle(self, op: SettleOp) -> Charge:
        """``Nasca.settle``'s store step: a leased call's settle not landed (a cancellation, any
        error the sender does not take) is out again, so the caller's retry sends it."""
        try:
            result = self._ledger.store.sync.settle(op)
        except StoreError as exc:
            return self.defer(op, exc)
        except BaseException:
            self._leases.undo(op)
            raise
        self._ledger.stats.settled += 1
        return self.landed(op, result)  # Tier.warn_at's events, off the caller's path

    async def asettle(self, op: SettleOp) -> Charge:
        """Async twin of settle(), after the queued settles land."""
        try:
            if self._ledger.deferred:
                await self._ledger.deferred.aflush()
            result = await self._ledger.store.for_loop().settle(op)
        except StoreError as exc:
            return self.defer(op, exc)
        except BaseException:
            self._leases.undo(op)
            raise
        self._ledger.stats.settled += 1
        return await self.alanded(op, result)

    def landed(self, op: SettleOp, result: SettleResult) -> Charge:
        """``Thresholds.landed`` for a settle that landed on the caller's path."""
        charge = self._ledger.thresholds.landed(op, result)
        if op.lease and (lease := self._leases.done(op, charge)):
            land(self._ledger, closing(self._ledger, lease))
        return charge

    async def alanded(self, op: SettleOp, result: SettleResult) -> Charge:
        """Async twin of landed()."""
        charge = self._ledger.thresholds.landed(op, result)
        if op.lease and (lease := self._leases.done(op, charge)):
            await aland(self._ledger, closing(self._ledger, lease))
        return charge

    def defer(self, op: SettleOp, exc: StoreError) -> Charge:
        """``DeferredSettles.defer`` for a settle the store refused (sync or async: a closing
        settle it leaves goes to the sender, or to the next admission here when it is off)."""
        try:
            charge = self._ledger.deferred.defer(op, exc)
        except BaseException:
            self._leases.undo(op)  # not kept: the caller's retry settles the call again
            raise
        if op.lease and (lease := self._leases.done(op, charge)):
            self._leases.queue(closing(self._ledger, lease))
        return charge
