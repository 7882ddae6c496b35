"""The upgrade page, overlay, Stripe webhook endpoint and owner dashboard (``nasca[server]``).

    from nasca_core.server import ServerSettings, create_app
    settings = ServerSettings(secret=os.environ["NASCA_SECRET"], public_url="https://app.example.com/nasca",
                              allowed_origins=["https://app.example.com"],
                              admin_token=os.environ["NASCA_ADMIN_TOKEN"])
    app.mount("/nasca", create_app(nasca, settings))     # or: nasca serve
    # the ledger API for remote clients too (``/v1``, see ``server/_v1.py``):
    app.mount("/nasca", create_app(nasca, settings, api_keys=ApiKeys.from_env(os.environ)))

``create_app`` and ``connect`` make every ``NascaBlockedError.checkout_url`` a signed link
to the upgrade page and record the conversion funnel (``nasca_core.analytics``).
Settings and links need no web framework; ``create_app`` imports Starlette.
"""

import typing

from nasca_core.server._config import ServeConfig, build_nasca, build_settings
from nasca_core.server._connect import connect
from nasca_core.server._links import UpgradeLinks, UpgradeToken
from nasca_core.server._settings import ServerSettings
from nasca_core.server._v1_keys import ApiKeys

if typing.TYPE_CHECKING:
    from nasca_core.server._app import create_app

__all__ = [
    "ApiKeys",
    "ServeConfig",
    "ServerSettings",
    "UpgradeLinks",
    "UpgradeToken",
    "build_nasca",
    "build_settings",
    "connect",
    "create_app",
]


def __getattr__(name: str) -> typing.Any:
    if name == "create_app":
        from nasca_core.server._app import create_app

        return create_app
    raise AttributeError(f"module 'nasca_core.server' has no attribute {name!r}")
