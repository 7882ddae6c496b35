"""Which ledger a ``Nasca(...)`` call builds: an ``http(s)://`` store is a remote ledger
(``nasca_core.remote``, imported only then: httpx stays off ``import nasca_core``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from nasca_core._errors import ConfigurationError

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca


def remote_ledger(store: Any, kwargs: dict[str, Any]) -> Nasca | None:
    """A RemoteNasca for an ``http://`` or ``https://`` URL, else None (a local ledger).
    Raises ConfigurationError for ``api_key=`` with a local store."""
    if not (isinstance(store, str) and store[:8].lower().startswith(("http://", "https://"))):
        if kwargs.get("api_key") is not None:
            raise ConfigurationError(f"api_key= is for a remote ledger (https://...), not store={store!r}")
        return None
    from nasca_core.remote import RemoteNasca

    return cast("Nasca", RemoteNasca(store, **kwargs))
