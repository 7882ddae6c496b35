"""Nasca: per-end-user AI spend limits, prepaid credits and upgrade prompts."""

from nasca_core._calls import LLMCall
from nasca_core._ceiling import CeilingStatus, CeilingWindow
from nasca_core._config import Tier
from nasca_core._errors import (
    CheckoutError,
    ConfigurationError,
    CurrencyMismatchError,
    InvalidAmountError,
    InvalidInputError,
    InvalidUserError,
    NascaBlockedError,
    NascaBusyError,
    NascaCeilingError,
    NascaError,
    PricingError,
    SignatureError,
    StoreError,
    UnauthorizedError,
    UnknownModelError,
    UnknownPackError,
    UnknownPlanError,
    UnknownTierError,
    UsageParseError,
    WebhookError,
)
from nasca_core._fallback import Fallback, fallback_of
from nasca_core._fallback_calls import astart_with_fallback, start_with_fallback
from nasca_core._ledger import Nasca
from nasca_core._owner_webhook import verify_owner_webhook
from nasca_core._thresholds import ThresholdEvent, ThresholdWarning
from nasca_core._types import Charge, LedgerStats, Reservation
from nasca_core._usage import Boost, Usage, WindowUsage
from nasca_core._warned import warning_of

__all__ = [
    "Boost",
    "CeilingStatus",
    "CeilingWindow",
    "Charge",
    "CheckoutError",
    "ConfigurationError",
    "CurrencyMismatchError",
    "Fallback",
    "InvalidAmountError",
    "InvalidInputError",
    "InvalidUserError",
    "LLMCall",
    "LedgerStats",
    "Nasca",
    "NascaBlockedError",
    "NascaBusyError",
    "NascaCeilingError",
    "NascaError",
    "PricingError",
    "Reservation",
    "SignatureError",
    "StoreError",
    "ThresholdEvent",
    "ThresholdWarning",
    "Tier",
    "UnauthorizedError",
    "UnknownModelError",
    "UnknownPackError",
    "UnknownPlanError",
    "UnknownTierError",
    "Usage",
    "UsageParseError",
    "WebhookError",
    "WindowUsage",
    "astart_with_fallback",
    "fallback_of",
    "start_with_fallback",
    "verify_owner_webhook",
    "warning_of",
]

__version__ = "0.1.0"
