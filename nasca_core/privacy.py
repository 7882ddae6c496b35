"""Data-protection requests: everything Nasca stores about one end user, exported or deleted.

    from nasca_core.privacy import UserData

    data = UserData(nasca)
    print(data.export("u_42").model_dump_json(indent=2))
    data.delete("u_42")  # what was removed; the owner's monthly totals stay

The same as ``nasca user export USER [--json]`` and ``nasca user delete USER --yes``.
What a store holds about a user, and what deleting does to each part, is
``nasca_core.stores._user_data``: their windows, month, holds, settled calls, stored tier,
credit lots and subscriptions go (each month's AI cost, calls and tokens move to the
``"(deleted user)"`` row, so the month's totals stay); their analytics per month go while
the month's counters (events, revenue, orders) stay; billing's indexes of them go, and
the records billing still needs (a webhook's result, an order held for review) keep their
place with the id replaced by ``"(deleted user)"``.

Run it when the user has no call in flight: a call that settles after the delete writes
a fresh record. Deleting twice is harmless. Not in the store, so neither exported nor
deleted: the journals of deferred settles under ``state_dir`` (and their ``.refused``
files, kept until removed) name the user's keys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from nasca_core.stores._base import UserRecords

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca

__all__ = ["UserData", "UserExport"]


class UserExport(BaseModel):
    """What the store held about one user (``records``: their own records by key suffix;
    ``analytics``: their counts per YYYYMM; ``billing``: billing's records naming them)."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    namespace: str
    exported_at: datetime
    deleted: bool = False
    records: dict[str, Any]
    analytics: dict[str, dict[str, int]]
    billing: dict[str, Any]

    @property
    def empty(self) -> bool:
        """Nothing was stored about the user."""
        return not (self.records or self.analytics or self.billing)


class UserData:
    """Export or delete one end user's data, over the ledger's store."""

    def __init__(self, ledger: Nasca) -> None:
        self._ledger = ledger

    def _export(self, user_id: str, found: UserRecords, deleted: bool) -> UserExport:
        return UserExport(user_id=user_id, namespace=self._ledger.namespace,
                          exported_at=datetime.fromtimestamp(self._ledger.now(), UTC), deleted=deleted,
                          records=found.records, analytics=found.analytics, billing=found.billing)

    def export(self, user_id: str) -> UserExport:
        """Everything stored about ``user_id``. Raises InvalidUserError, StoreError."""
        found = self._ledger.store.sync.user_data(self._ledger.namespace, user_id)
        return self._export(user_id, found, False)

    def delete(self, user_id: str) -> UserExport:
        """Delete (or, where billing still needs the record, anonymise) everything stored
        about ``user_id``; returns what there was. Raises InvalidUserError (also for the
        deleted users' own row), StoreError."""
        found = self._ledger.store.sync.user_data(self._ledger.namespace, user_id, forget=True)
        return self._export(user_id, found, True)

    async def aexport(self, user_id: str) -> UserExport:
        """Async twin of export()."""
        found = await self._ledger.store.for_loop().user_data(self._ledger.namespace, user_id)
        return self._export(user_id, found, False)

    async def adelete(self, user_id: str) -> UserExport:
        """Async twin of delete()."""
        found = await self._ledger.store.for_loop().user_data(self._ledger.namespace, user_id,
                                                              forget=True)
        return self._export(user_id, found, True)

