"""The public API is explicit: these names are the contract."""

import pickle
from decimal import Decimal

import nasca_core
import nasca_core.billing
import nasca_core.pricing
import nasca_core.stores


def test_core_exports() -> None:
    assert set(nasca_core.__all__) == {
        "Boost", "Charge", "CheckoutError", "ConfigurationError", "CurrencyMismatchError",
        "InvalidAmountError", "InvalidInputError",
        "InvalidUserError", "LLMCall", "LedgerStats", "Nasca", "NascaBlockedError", "NascaBusyError",
        "NascaError",
        "PricingError", "Reservation", "SignatureError", "StoreError", "Tier", "UnknownModelError",
        "UnknownPackError", "UnknownPlanError",
        "UnknownTierError", "Usage", "UsageParseError", "WebhookError", "WindowUsage",
        "ThresholdEvent", "ThresholdWarning", "verify_owner_webhook", "warning_of",  # soft thresholds
        "Fallback", "astart_with_fallback", "fallback_of", "start_with_fallback",  # degrade, not block
        "UnauthorizedError",  # a remote ledger refused the API key
        "CeilingStatus", "CeilingWindow", "NascaCeilingError",  # the app-wide ceiling
    }
    for name in nasca_core.__all__:
        assert getattr(nasca_core, name) is not None


def test_subpackage_exports_are_sorted_and_resolve() -> None:
    for module in (nasca_core.pricing, nasca_core.stores):
        assert len(set(module.__all__)) == len(module.__all__)  # order: ruff's RUF022
        for name in module.__all__:
            assert hasattr(module, name), name


def test_error_tree() -> None:
    from nasca_core import _errors as e

    assert issubclass(e.NascaBlockedError, e.NascaError)
    assert issubclass(e.UnknownTierError, e.ConfigurationError)
    assert issubclass(e.InvalidAmountError, e.InvalidInputError)
    # Deliberately not ValueError/TypeError (issue 17): frameworks catch those and swallow them.
    for name in dir(e):
        error = getattr(e, name)
        if isinstance(error, type) and issubclass(error, e.NascaError):
            assert not issubclass(error, ValueError | TypeError), name
    assert issubclass(e.SignatureError, e.WebhookError)
    assert issubclass(e.UnknownPackError, e.ConfigurationError)
    assert issubclass(e.UnknownPlanError, e.ConfigurationError)
    assert issubclass(e.CurrencyMismatchError, e.InvalidInputError)
    assert issubclass(e.CheckoutError, e.NascaError)
    assert e.__doc__ is not None
    for name in ("ConfigurationError", "InvalidInputError", "PricingError", "StoreError",
                 "WebhookError", "NascaBlockedError", "UnknownPackError", "UnknownPlanError",
                 "CurrencyMismatchError", "CheckoutError"):
        assert name in e.__doc__


def test_billing_errors_are_the_core_errors() -> None:
    for name in ("CheckoutError", "CurrencyMismatchError", "UnknownPackError", "UnknownPlanError"):
        assert getattr(nasca_core.billing, name) is getattr(nasca_core, name)


def test_blocked_error_carries_its_limit_and_spend() -> None:
    err = nasca_core.NascaBlockedError(
        user_id="u1", tier="free", window="daily", usage=None, resets_at=None,
        upgrade_message="Daily limit reached.", limit=Decimal("0.50"), spent=Decimal("0.52"),
    )
    assert (err.limit, err.spent, str(err)) == (Decimal("0.50"), Decimal("0.52"), "Daily limit reached.")
    assert "spent=Decimal('0.52')" in repr(err) and "limit=Decimal('0.50')" in repr(err)
    html = err._repr_html_()
    assert "data-spent='0.52'" in html and "data-limit='0.50'" in html and "$0.52" in html
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.limit, copy.spent, copy.user_id) == (err.limit, err.spent, "u1")
    bare = nasca_core.NascaBlockedError(user_id="u1", tier="free", window="daily", usage=None,
                                        resets_at=None, upgrade_message="m")
    assert bare.limit is None and bare.spent is None and "data-spent=''" in bare._repr_html_()
