"""Credits and Stripe: credit packs and plans, credit lots, Checkout and webhooks.

The methods live on ``Nasca`` (``grant_credits``, ``create_checkout``,
``handle_stripe_webhook``, ...); this package holds the models and errors they use.
"""

from nasca_core.billing._errors import (
    CheckoutError,
    CurrencyMismatchError,
    UnknownPackError,
    UnknownPlanError,
)
from nasca_core.billing._mixin import BillingMixin
from nasca_core.billing._models import (
    BillingEvent,
    CreditGrant,
    CreditLot,
    CreditPack,
    Plan,
    StripeConfig,
    WebhookAction,
    WebhookResult,
)

__all__ = [
    "BillingEvent",
    "BillingMixin",
    "CheckoutError",
    "CreditGrant",
    "CreditLot",
    "CreditPack",
    "CurrencyMismatchError",
    "Plan",
    "StripeConfig",
    "UnknownPackError",
    "UnknownPlanError",
    "WebhookAction",
    "WebhookResult",
]
