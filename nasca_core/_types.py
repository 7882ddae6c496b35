"""The ledger's small result types, shared by the client and the call tracker."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from nasca_core._money import to_usd
from nasca_core.stores import UserKeys


@dataclass(frozen=True, slots=True)
class Reservation:
    """A hold on a user's budget for one call: settle it with the real cost, or release it."""

    user_id: str
    tier: str
    hold_id: str
    estimate_nanos: int
    keys: UserKeys
    degraded: bool = False  # admitted without the store (on_store_error="allow")

    @property
    def estimate(self) -> Decimal:
        return to_usd(self.estimate_nanos)


@dataclass(frozen=True, slots=True)
class Charge:
    """What a settled call cost and who paid: the tier's allowance or the user's credits."""

    cost_nanos: int
    tier_nanos: int
    credit_nanos: int
    deferred: bool = False  # the store was unreachable; the charge is queued for retry

    @property
    def cost(self) -> Decimal:
        return to_usd(self.cost_nanos)
