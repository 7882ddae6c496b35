"""Credits and Stripe: credit packs and plans, credit lots, Checkout and webhooks.

``Billing`` is the service: every Nasca builds one from its billing arguments as
``nasca.billing`` (``nasca.billing.grant_credits``, ``.create_checkout``,
``.handle_stripe_webhook``, ...; the old spellings ``nasca.grant_credits`` ... still
work). It uses only the ledger's public port. This package also holds the models it
takes and returns, and re-exports its errors from ``nasca_core``.

    _service        Billing: configuration, packs and plans, the public methods
    _requests       flows written once, driven sync and async; the typed requests they yield
    _catalog        what is on offer (constructor + live config), pure
    _grants         a manual grant's lot, pure
    _checkout       Checkout Session parameters, pure
    _webhook        verify a Stripe event and decide what it asks, pure
    _webhook_flow   do what a webhook asks, as a flow
    _reconcile      rebuild purchases and refunds from Stripe's lists, as a flow
    _models         CreditPack, Plan, CreditLot, WebhookResult, BillingEvent, StripeConfig,
                    BillingPolicy, ReviewOrder
"""

from nasca_core._errors import (
    CheckoutError,
    CurrencyMismatchError,
    UnknownPackError,
    UnknownPlanError,
)
from nasca_core.billing._models import (
    BillingEvent,
    BillingPolicy,
    CreditGrant,
    CreditLot,
    CreditPack,
    Plan,
    ReviewOrder,
    StripeConfig,
    WebhookAction,
    WebhookResult,
)
from nasca_core.billing._reconcile import ReconcileChange, ReconcileReport
from nasca_core.billing._service import Billing

__all__ = [
    "Billing",
    "BillingEvent",
    "BillingPolicy",
    "CheckoutError",
    "CreditGrant",
    "CreditLot",
    "CreditPack",
    "CurrencyMismatchError",
    "Plan",
    "ReconcileChange",
    "ReconcileReport",
    "ReviewOrder",
    "StripeConfig",
    "UnknownPackError",
    "UnknownPlanError",
    "WebhookAction",
    "WebhookResult",
]
