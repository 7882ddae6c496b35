"""A reserve the store could not answer (``Nasca(on_store_error=...)``): "block" raises its
StoreError, "allow" admits the call unchecked, logged, its hold on the keys it named."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nasca_core._errors import StoreError
from nasca_core._types import Reservation

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core.stores import ReserveOp

log = logging.getLogger("nasca")


def store_failed(nasca: Nasca, user_id: str, op: ReserveOp, exc: StoreError) -> Reservation:
    """The Reservation of a reserve ``exc`` stopped under "allow". Raises ``exc`` under "block"."""
    nasca.stats.store_errors += 1
    if nasca.on_store_error == "block":
        raise exc
    log.warning("nasca: store unreachable, admitting %s unchecked (on_store_error='allow'): %s",
                op.keys.meta, exc)
    return Reservation(user_id, op.tier, op.hold_id, op.estimate, op.keys, True, anchor=op.anchor)
