"""``Nasca.release``: the end of a call that failed before costing anything (its pool draw
given back, then its hold dropped). Uses only the ledger's public port."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nasca_core._errors import StoreError

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._types import Reservation

log = logging.getLogger("nasca")


def release(ledger: Nasca, reservation: Reservation) -> None:
    """Drop the hold of a call that failed before costing anything. Store failures are
    logged, not raised: the hold expires by itself."""
    if ledger.pools.draws:
        ledger.pools.released(reservation)
    if ledger.leases.calls and ledger.leases.released(reservation):
        ledger.stats.released += 1  # under a lease: no hold of its own in the store
        return
    try:
        ledger.store.sync.release(reservation.keys, reservation.hold_id, reservation.estimate_nanos)
        ledger.stats.released += 1
    except StoreError as exc:
        ledger.stats.store_errors += 1
        log.warning("nasca: release failed, the hold will expire by itself: %s", exc)


async def arelease(ledger: Nasca, reservation: Reservation) -> None:
    """Async twin of release()."""
    if ledger.pools.draws:
        ledger.pools.released(reservation)
    if ledger.leases.calls and await ledger.leases.areleased(reservation):
        ledger.stats.released += 1
        return
    try:
        await ledger.store.for_loop().release(reservation.keys, reservation.hold_id,
                                              reservation.estimate_nanos)
        ledger.stats.released += 1
    except StoreError as exc:
        ledger.stats.store_errors += 1
        log.warning("nasca: release failed, the hold will expire by itself: %s", exc)
