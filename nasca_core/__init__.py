"""Nasca: per-end-user AI spend limits, prepaid credits and upgrade prompts."""

from nasca_core._calls import LLMCall
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
    NascaError,
    PricingError,
    SignatureError,
    StoreError,
    UnknownModelError,
    UnknownPackError,
    UnknownPlanError,
    UnknownTierError,
    UsageParseError,
    WebhookError,
)
from nasca_core._ledger import Nasca
from nasca_core._types import Charge, LedgerStats, Reservation
from nasca_core._usage import Usage, WindowUsage

__all__ = [
    "Charge",
    "CheckoutError",
    "ConfigurationError",
    "CurrencyMismatchError",
    "InvalidAmountError",
    "InvalidInputError",
    "InvalidUserError",
    "LLMCall",
    "LedgerStats",
    "Nasca",
    "NascaBlockedError",
    "NascaBusyError",
    "NascaError",
    "PricingError",
    "Reservation",
    "SignatureError",
    "StoreError",
    "Tier",
    "UnknownModelError",
    "UnknownPackError",
    "UnknownPlanError",
    "UnknownTierError",
    "Usage",
    "UsageParseError",
    "WebhookError",
    "WindowUsage",
]

__version__ = "0.1.0"
