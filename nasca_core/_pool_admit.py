"""``Pools.admitted``: a call the user's limits admitted, drawn on this process's chunk of the
ceiling, or on a chunk taken alone (a call under a budget lease, or another thread drew the
chunk first). Whatever ends it before it is drawn (the ceiling's block, the store down under
``on_store_error="block"``, a cancellation or an interrupt at any await) releases the call
first: its user's hold is in the store, or it is counted on its lease, and nobody else could
settle it. And the sender's ``prefetch``. Uses only the pools' and the ledger's public port."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasca_core._errors import StoreError
from nasca_core._live import UNREADABLE_CEILING
from nasca_core._pool_book import unchecked

if TYPE_CHECKING:
    from nasca_core._live import ConfigSnapshot
    from nasca_core._pools import Pools
    from nasca_core._types import Reservation
    from nasca_core.stores._pools import PoolTakeOp, PoolTakeResult

_TAKES = 3  # a take alone whose chunk other threads drew first is tried again, this many times in all


def admitted(pools: Pools, reservation: Reservation) -> Reservation:
    """The call drawn on a chunk; raises NascaCeilingError, StoreError under "block", or
    whatever interrupted it, the call released first."""
    try:
        return _admitted(pools, reservation)
    except BaseException:
        pools.ledger.release(reservation)
        raise


async def aadmitted(pools: Pools, reservation: Reservation) -> Reservation:
    """Async twin of admitted()."""
    try:
        return await _aadmitted(pools, reservation)
    except BaseException:
        await pools.ledger.arelease(reservation)
        raise


async def aconfig(pools: Pools, reservation: Reservation) -> ConfigSnapshot:
    """The config for a call admitted under a lease when none is cached: a cancelled load
    releases the call."""
    try:
        return await pools.ledger.live.acurrent()
    except BaseException:
        await pools.ledger.arelease(reservation)
        raise


def _admitted(pools: Pools, reservation: Reservation) -> Reservation:
    ledger = pools.ledger
    pools.land_due()
    snap = ledger.live.current()
    if (got := pools.draw(snap, reservation)) is not None:
        return got
    result: PoolTakeResult | None = None
    op: PoolTakeOp | None = None
    for _ in range(_TAKES):
        try:  # One round trip: a take alone is not checked against the config version, and
            # needn't be. Under a stale ceiling its chunk ends at the next version check (a
            # reserve that reaches the store, within LEASE_S), the bound a chunk already has;
            # a refusal reads the version (``retry``), so a raised ceiling is taken under.
            if op is not None:
                if (snap := ledger.live.current()).ceiling is None:
                    return reservation  # the ceiling was lifted in another process
                if (got := pools.draw(snap, reservation)) is not None:
                    return got  # a chunk another thread here took since
            op = pools.take_op(snap, reservation.estimate_nanos, ledger.now())
            result = ledger.store.sync.pool_take(op)
        except StoreError as exc:
            return unchecked(ledger, reservation, exc)
        if pools.took(snap, op, result):
            if (got := pools.draw(snap, reservation)) is not None:
                return got
        elif not pools.retry(snap, op):
            break
    raise pools.blocked(reservation.user_id, reservation.tier, op, result)


async def _aadmitted(pools: Pools, reservation: Reservation) -> Reservation:
    ledger = pools.ledger
    pools.land_due()
    snap = await ledger.live.acurrent()
    if (got := pools.draw(snap, reservation)) is not None:
        return got
    result: PoolTakeResult | None = None
    op: PoolTakeOp | None = None
    for _ in range(_TAKES):
        try:  # one round trip, as in _admitted
            if op is not None:
                if (snap := await ledger.live.acurrent()).ceiling is None:
                    return reservation
                if (got := pools.draw(snap, reservation)) is not None:
                    return got
            op = pools.take_op(snap, reservation.estimate_nanos, ledger.now())
            result = await ledger.store.for_loop().pool_take(op)
        except StoreError as exc:
            return unchecked(ledger, reservation, exc)
        if pools.took(snap, op, result):
            if (got := pools.draw(snap, reservation)) is not None:
                return got
        elif not await pools.aretry(snap, op):
            break
    raise pools.blocked(reservation.user_id, reservation.tier, op, result)


def prefetch(pools: Pools) -> None:
    """On the sender's thread: the chunk that follows one past half used, so the callers' next
    calls find it here (no take on their path). A refusal changes nothing: near the limit the
    caller's own take decides, and blocks."""
    ledger = pools.ledger
    for estimate in pools.wanted().values():
        try:
            snap = ledger.live.fresh()  # a take is not checked against the config version
            if snap.ceiling is None or snap.ceiling is UNREADABLE_CEILING:
                continue
            op = pools.take_op(snap, estimate, ledger.now())
            result = ledger.store.sync.pool_take(op)
        except StoreError:  # a take sent may have landed: released as lost (``Pools._lost``)
            ledger.stats.store_errors += 1
            continue
        pools.took(snap, op, result)
