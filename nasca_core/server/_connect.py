"""``connect``: wire a Nasca to the upgrade page (links and analytics), no web framework."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasca_core._errors import ConfigurationError
from nasca_core.analytics import analytics_for
from nasca_core.server._links import UpgradeLinks
from nasca_core.server._settings import ServerSettings

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca


def connect(nasca: Nasca, settings: ServerSettings) -> UpgradeLinks | None:
    """Wire ``nasca`` to the upgrade page in any process that serves model calls:
    ``NascaBlockedError.checkout_url`` becomes a signed upgrade link (unless the Nasca
    already has a ``checkout_url`` factory, or ``settings.public_url`` is unset) and
    blocks, checkouts and purchases are recorded for analytics. Returns the link maker.

    Raises ConfigurationError when ``settings.stripe_webhook_secret`` contradicts the Nasca's.
    """
    if not isinstance(settings, ServerSettings):
        raise ConfigurationError(f"settings must be a ServerSettings, got {type(settings).__name__}")
    analytics_for(nasca)
    _webhook_secret(nasca, settings)
    if settings.public_url is None:
        return None
    links = UpgradeLinks(settings, clock=nasca.now)
    if nasca.checkout_url_factory is None:
        nasca.checkout_url_factory = links
    return links


def _webhook_secret(nasca: Nasca, settings: ServerSettings) -> None:
    if settings.stripe_webhook_secret is None:
        return
    value = settings.stripe_webhook_secret.get_secret_value()
    billing = nasca.billing
    if billing.webhook_secret is None:
        billing.webhook_secret = value
    elif billing.webhook_secret != value:
        raise ConfigurationError(
            "ServerSettings.stripe_webhook_secret differs from the Nasca's webhook_secret")
