"""The public API is explicit: these names are the contract."""

import nasca_core
import nasca_core.pricing
import nasca_core.stores


def test_core_exports():
    assert set(nasca_core.__all__) == {
        "Charge", "ConfigurationError", "InvalidAmountError", "InvalidInputError",
        "InvalidUserError", "LLMCall", "LedgerStats", "Nasca", "NascaBlockedError", "NascaError",
        "PricingError", "Reservation", "SignatureError", "StoreError", "Tier", "UnknownModelError",
        "UnknownTierError", "Usage", "UsageParseError", "WebhookError", "WindowUsage",
    }
    for name in nasca_core.__all__:
        assert getattr(nasca_core, name) is not None


def test_subpackage_exports_are_sorted_and_resolve():
    for module in (nasca_core.pricing, nasca_core.stores):
        assert len(set(module.__all__)) == len(module.__all__)  # order: ruff's RUF022
        for name in module.__all__:
            assert hasattr(module, name), name


def test_error_tree():
    from nasca_core import _errors as e

    assert issubclass(e.NascaBlockedError, e.NascaError)
    assert issubclass(e.UnknownTierError, e.ConfigurationError)
    assert issubclass(e.InvalidAmountError, ValueError)
    assert issubclass(e.SignatureError, e.WebhookError)
    for name in ("ConfigurationError", "InvalidInputError", "PricingError", "StoreError",
                 "WebhookError", "NascaBlockedError"):
        assert name in e.__doc__
