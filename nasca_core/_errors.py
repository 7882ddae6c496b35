"""Every exception Nasca raises.

    NascaError
    ├── ConfigurationError          bad setup: tier, limit, store URI, price file
    │   ├── UnknownTierError        a tier name that no config defines
    │   ├── UnknownPackError        a credit pack id that no config defines
    │   └── UnknownPlanError        a plan id that no config defines
    ├── InvalidInputError           bad call-time input: amount, user id, tokens
    │   ├── InvalidAmountError
    │   ├── InvalidUserError
    │   ├── UsageParseError         a provider usage payload that cannot be read
    │   └── CurrencyMismatchError   money in another currency than the pack's
    ├── PricingError
    │   └── UnknownModelError       a model missing from the price table under unknown_model="block"
    ├── NascaBlockedError           the end user may not spend now: show an upgrade prompt
    │   ├── NascaBusyError          only calls in flight stand in the way: try again in a moment
    │   └── NascaCeilingError       the app's own budget (its ceiling) is spent: the owner's limit
    ├── StoreError                  the store could not be reached and the policy says block
    ├── UnauthorizedError           a remote ledger refused the API key (``nasca_core.remote``)
    ├── CheckoutError               Stripe refused, or could not be reached, creating a session
    └── WebhookError                a Stripe webhook to answer with 400 (``__cause__`` says why)
        └── SignatureError

None of them is a ValueError or TypeError: frameworks catch those (LlamaIndex's response
synthesizers answer "Empty Response"), and a budget error must reach the app.

Every error is raised before anything is written: the ledger is unchanged (no spend
recorded, no lot granted, no tier changed).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from nasca_core._display import blocked_html

if TYPE_CHECKING:
    from nasca_core._usage import Usage


class NascaError(Exception):
    """Base class of every Nasca error."""


class ConfigurationError(NascaError):
    """The configuration is wrong; the message says what to fix."""


class UnknownTierError(ConfigurationError):
    def __init__(self, tier: str, known: list[str] | tuple[str, ...] = ()) -> None:
        self.tier = tier
        self.known = tuple(known)
        hint = f" Known tiers: {', '.join(sorted(self.known))}." if self.known else ""
        super().__init__(f"Unknown tier {tier!r}.{hint} Define it with Tier(...) or set_tier().")


class UnknownPackError(ConfigurationError):
    def __init__(self, pack: str, known: Iterable[str] = ()) -> None:
        self.pack = pack
        self.known = tuple(sorted(known))
        hint = f" Known packs: {', '.join(self.known)}." if self.known else " No packs are defined."
        super().__init__(f"Unknown credit pack {pack!r}.{hint} Define it with packs=[...] or set_pack().")


class UnknownPlanError(ConfigurationError):
    def __init__(self, plan: str, known: Iterable[str] = ()) -> None:
        self.plan = plan
        self.known = tuple(sorted(known))
        hint = f" Known plans: {', '.join(self.known)}." if self.known else " No plans are defined."
        super().__init__(f"Unknown plan {plan!r}.{hint} Define it with plans=[...] or set_plan().")


class InvalidInputError(NascaError):
    """A call-time argument is invalid; nothing was recorded."""


class InvalidAmountError(InvalidInputError):
    pass


class InvalidUserError(InvalidInputError):
    pass


class UsageParseError(InvalidInputError):
    pass


class CurrencyMismatchError(InvalidInputError):
    def __init__(self, pack: str, expected: str, got: str) -> None:
        self.pack = pack
        self.expected = expected
        self.got = got
        super().__init__(f"Credit pack {pack!r} is priced in {expected.upper()}, "
                         f"but the payment is in {got.upper()}: nothing was granted.")


class PricingError(NascaError):
    pass


class UnknownModelError(PricingError):
    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(
            f"No price for model {model!r}. Add it with prices={{...}} or set_price(), "
            "alias it, or choose unknown_model='warn' or 'price_as:<model>'."
        )


class StoreError(NascaError):
    """The store failed and on_store_error='block' refuses to guess."""


class UnauthorizedError(NascaError):
    """``nasca serve`` refused the API key (missing, wrong or revoked); nothing was changed."""


class CheckoutError(NascaError):
    """Stripe did not create the Checkout Session (the Stripe error is the ``__cause__``)."""

    def __init__(self, message: str, *, http_status: int | None = None, code: str | None = None,
                 request_id: str | None = None) -> None:
        self.http_status = http_status
        self.code = code
        self.request_id = request_id
        super().__init__(message)


class WebhookError(NascaError):
    """A webhook payload that must be rejected (HTTP 400); nothing was changed."""


class SignatureError(WebhookError):
    pass


class NascaBlockedError(NascaError):
    """The end user has spent their allowance for a window.

    Apps catch this and show ``upgrade_message`` (and ``checkout_url`` once the
    upgrade page is configured) instead of calling the model. ``spent`` and ``limit``
    are the blocked window's figures in USD, known even when ``usage`` is None.
    """

    def __init__(
        self,
        *,
        user_id: str,
        tier: str,
        window: str,
        usage: Usage | None,
        resets_at: datetime | None,
        upgrade_message: str,
        checkout_url: str | None = None,
        prompt_id: str | None = None,
        limit: Decimal | None = None,
        spent: Decimal | None = None,
    ) -> None:
        self.user_id = user_id
        self.tier = tier
        self.window = window
        self.usage = usage
        self.resets_at = resets_at
        self.upgrade_message = upgrade_message
        self.checkout_url = checkout_url
        self.prompt_id = prompt_id
        self.limit = limit
        self.spent = spent
        super().__init__(upgrade_message)

    def __repr__(self) -> str:
        return (f"NascaBlockedError(user_id={self.user_id!r}, tier={self.tier!r}, "
                f"window={self.window!r}, spent={self.spent!r}, limit={self.limit!r}, "
                f"resets_at={self.resets_at!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only __init__: teach pickle (multiprocessing, Celery) to rebuild it.
        return (_rebuild_blocked, (self.__dict__.copy(),))

    def _repr_html_(self) -> str:
        return blocked_html(self)


class NascaBusyError(NascaBlockedError):
    """The user has not spent their allowance, but calls in flight hold it (or the tier's
    ``max_in_flight`` cap is reached): retry after ``retry_after`` seconds.

    It is a NascaBlockedError, so existing handlers keep working; ``upgrade_message`` says
    to try again in a moment and ``checkout_url`` is None: there is nothing to buy.
    ``reason`` is "in_flight" (holds cover the allowance) or "cap" (``max_in_flight``).
    """

    def __init__(self, *, retry_after: float, reason: str, **fields: Any) -> None:
        self.retry_after = retry_after
        self.reason = reason
        super().__init__(**fields)

    def __repr__(self) -> str:
        return (f"NascaBusyError(user_id={self.user_id!r}, tier={self.tier!r}, reason={self.reason!r}, "
                f"retry_after={self.retry_after!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_blocked, (self.__dict__.copy(), NascaBusyError))


class NascaCeilingError(NascaBlockedError):
    """The app as a whole has spent its ceiling (``Nasca(ceiling=Tier(...))``, ``set_ceiling``)
    for a window: no call runs until it resets or the owner raises it.

    It is the owner's limit, not the end user's: ``upgrade_message`` says the app's budget is
    used up and when it resets (no upgrade prompt), ``checkout_url`` is None, and analytics do
    not count it as a prompt shown. ``reason`` is "ceiling"; ``window``, ``resets_at``,
    ``limit`` and ``spent`` are the ceiling's; ``user_id`` and ``tier`` the blocked call's.
    """

    def __init__(self, **fields: Any) -> None:
        self.reason = "ceiling"
        fields["checkout_url"] = None
        super().__init__(**fields)

    def __repr__(self) -> str:
        return (f"NascaCeilingError(window={self.window!r}, spent={self.spent!r}, limit={self.limit!r}, "
                f"resets_at={self.resets_at!r}, user_id={self.user_id!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_blocked, (self.__dict__.copy(), NascaCeilingError))


def _rebuild_blocked(state: dict[str, Any], cls: type[NascaBlockedError] = NascaBlockedError,
                     ) -> NascaBlockedError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, state.get("upgrade_message", ""))
    return err
