"""Credit packs, plans, lots as the app sees them, and what a webhook did."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from nasca_core._config import first_error
from nasca_core._errors import ConfigurationError, InvalidAmountError
from nasca_core._money import MAX_OP_NANOS, NANOS_PER_USD, to_nanos
from nasca_core.stores import Lot

if TYPE_CHECKING:
    from stripe import StripeClient

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CURRENCY = re.compile(r"^[a-z]{3}$")
# Stripe amounts are integers of the currency's smallest unit: none for these, 1/1000 for those.
_ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf",
                           "ugx", "vnd", "vuv", "xaf", "xof", "xpf"})
_THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
Interval = Literal["day", "week", "month", "year"]


def minor_exponent(currency: str) -> int:
    """How many decimals Stripe's integer amounts carry in ``currency``."""
    c = currency.lower()
    return 0 if c in _ZERO_DECIMAL else 3 if c in _THREE_DECIMAL else 2


def to_minor(amount: Decimal, currency: str) -> int:
    """An amount in currency units to Stripe's integer amount. Raises ValueError if it doesn't fit."""
    scaled = amount.scaleb(minor_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency.upper()} has more decimals than {currency.upper()} allows")
    return int(scaled)


def from_minor(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-minor_exponent(currency))


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"{what} ids are 1-64 letters, digits, '_', '.' or '-', got {value!r}")
    return value


def _money(value: Any, what: str) -> Decimal:
    try:
        nanos = to_nanos(value, what=what, allow_zero=False)
    except InvalidAmountError as exc:  # pydantic reports only ValueErrors as validation errors
        raise ValueError(str(exc)) from None
    if nanos > MAX_OP_NANOS:
        raise ValueError(f"{what} {value!r} is above the ledger's maximum of $100,000 per lot")
    return Decimal(nanos) / Decimal(NANOS_PER_USD)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(f"Invalid {type(self).__name__}: {first_error(exc)}") from None


class CreditPack(_Frozen):
    """Prepaid credits the end user buys: pay ``price`` (in ``currency``), get ``spend``
    dollars of AI spend, e.g. ``CreditPack(id="p5", price=5, spend=3)``.

    ``stripe_price`` names a one-time Price on the owner's Stripe account; without it
    checkout describes the price inline. ``expires_in_days`` makes the credits lapse.

    Raises ConfigurationError for a bad id, a price or spend <= 0 (or above $100,000),
    a price with more decimals than its currency has, or a bad currency code.
    """

    id: str
    price: Decimal
    spend: Decimal
    currency: str = "usd"
    stripe_price: str | None = Field(default=None, min_length=1, max_length=255)
    expires_in_days: int | None = Field(default=None, gt=0, le=36500)
    name: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> str:
        return _check_id(value, "credit pack")

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: Any) -> str:
        return check_currency(value)

    @field_validator("price", mode="before")
    @classmethod
    def _price(cls, value: Any) -> Decimal:
        return _money(value, "a pack's price")

    @field_validator("spend", mode="before")
    @classmethod
    def _spend(cls, value: Any) -> Decimal:
        return _money(value, "a pack's spend")

    @model_validator(mode="after")
    def _fits_currency(self) -> CreditPack:
        to_minor(self.price, self.currency)
        return self

    @property
    def unit_amount(self) -> int:
        """The price as Stripe's integer amount (cents for USD)."""
        return to_minor(self.price, self.currency)

    @property
    def is_bonus(self) -> bool:
        """True when the pack grants more AI spend than it costs (judged for USD prices only:
        other currencies have no exchange rate here)."""
        return self.currency == "usd" and self.spend > self.price

    @property
    def label(self) -> str:
        return self.name or f"${self.spend} of AI credits"


class Plan(_Frozen):
    """A subscription that moves the user to ``tier`` while it is active, e.g.
    ``Plan(id="pro", tier="pro", price=20, interval="month", stripe_price="price_...")``.
    With ``stripe_price`` the tier follows that price: a subscription switched to another
    price (the Billing Portal) gets the plan of its new price, or none. ``trial_days``
    starts subscriptions with a free trial (a $0 checkout is then the plan's, not a
    mismatch). ``anchor="subscription"`` runs the subscriber's monthly window from their
    billing cycle's day and time (Stripe's ``billing_cycle_anchor``) instead of the 1st.

    Raises ConfigurationError for a bad id, price, interval or currency.
    """

    id: str
    tier: str = Field(min_length=1, max_length=64)
    price: Decimal
    interval: Interval = "month"
    stripe_price: str | None = Field(default=None, min_length=1, max_length=255)
    currency: str = "usd"
    name: str | None = Field(default=None, min_length=1, max_length=200)
    trial_days: int = Field(default=0, ge=0, le=730)  # Stripe's trial_period_days: may start at $0
    anchor: Literal["calendar", "subscription"] = "calendar"

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> str:
        return _check_id(value, "plan")

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: Any) -> str:
        return check_currency(value)

    @field_validator("price", mode="before")
    @classmethod
    def _price(cls, value: Any) -> Decimal:
        return _money(value, "a plan's price")

    @model_validator(mode="after")
    def _fits_currency(self) -> Plan:
        to_minor(self.price, self.currency)
        return self

    @property
    def unit_amount(self) -> int:
        return to_minor(self.price, self.currency)

    @property
    def label(self) -> str:
        return self.name or f"{self.tier} plan"


def check_currency(value: Any) -> str:
    """The ISO code in lower case. Raises ValueError for anything but three letters."""
    if not isinstance(value, str) or not _CURRENCY.match(value.lower()):
        raise ValueError(f"currency must be a 3-letter ISO code like 'usd', got {value!r}")
    return value.lower()


class StripeConfig(_Frozen):
    """Stripe settings when you'd rather not build the ``StripeClient`` yourself.

    ``api_base`` points the client elsewhere (the local test server); secrets are kept
    out of reprs.
    """

    api_key: SecretStr
    webhook_secret: SecretStr | None = None
    api_base: str | None = None
    max_network_retries: int = Field(default=2, ge=0, le=10)

    def client(self) -> StripeClient:
        """Build the StripeClient (needs ``pip install nasca[stripe]``)."""
        from stripe import StripeClient

        base = {"api": self.api_base} if self.api_base else None
        return StripeClient(self.api_key.get_secret_value(), base_addresses=base,  # type: ignore[arg-type]
                            max_network_retries=self.max_network_retries)


class CreditLot(BaseModel):
    """One grant of credits: what was paid (in ``currency``), the AI spend granted and left
    (in USD), and ``display_remaining``: what is left in terms of what was paid."""

    model_config = ConfigDict(frozen=True)

    id: str
    pack: str | None
    paid: Decimal
    currency: str
    granted: Decimal
    remaining: Decimal
    display_remaining: Decimal
    created_at: datetime | None
    expires_at: datetime | None
    revoked: bool
    expired: bool

    @classmethod
    def from_lot(cls, lot: Lot, now_ms: int) -> CreditLot:
        n = Decimal(NANOS_PER_USD)
        display = Decimal(lot.remaining) * Decimal(lot.paid) / Decimal(lot.granted) if lot.granted else 0
        return cls(
            id=lot.id, pack=lot.pack or None, paid=Decimal(lot.paid) / n, currency=lot.currency,
            granted=Decimal(lot.granted) / n, remaining=Decimal(lot.remaining) / n,
            display_remaining=(Decimal(display) / n).quantize(Decimal("0.000001")),
            created_at=_dt(lot.created_ms), expires_at=_dt(lot.expires_ms), revoked=lot.revoked,
            expired=bool(lot.expires_ms) and lot.expires_ms <= now_ms,
        )


class CreditGrant(BaseModel):
    """What ``grant_credits`` did: ``granted`` is False when the idempotency key was used
    before, and ``lot`` is then the lot granted that first time."""

    model_config = ConfigDict(frozen=True)

    granted: bool
    lot: CreditLot


WebhookAction = Literal[
    "granted", "plan_applied", "tier_set", "tier_cleared", "revoked", "restored", "awaiting_payment",
    "stale", "ignored", "needs_review", "refund_recorded", "renewal_recorded",
]
AmountMismatch = Literal["review", "grant", "proportional"]
PartialRefund = Literal["proportional", "keep", "revoke"]


class BillingPolicy(_Frozen):
    """What billing does when Stripe's figures and the offer disagree.

    ``on_amount_mismatch``: a paid Checkout Session whose currency, ``amount_total`` or
    Stripe price is not the pack's (a discount, a wrong price, $0). ``"review"`` (default)
    grants nothing and records a review order (``Billing.review_orders()``, the dashboard,
    ``nasca report``); ``"grant"`` grants the whole pack; ``"proportional"`` grants the
    share of the pack that was paid, never more than the pack. A plan's checkout is checked
    the same way (a 100%-off coupon, a price not the plan's; $0 is fine for a plan with
    ``trial_days``): ``"grant"`` gives the tier, any other policy holds it for review and
    gives no tier.

    ``on_partial_refund``: ``"proportional"`` (default) takes back the refunded share of
    the lot's credits, counting what was spent already: of a $3 lot with $1 spent, a 50%
    refund takes $1.50 of the $2 left (the user keeps what brings used + left to $1.50),
    never more than is left; ``"keep"`` keeps them, ``"revoke"`` takes back all that remains.

    ``past_due_grace_days``: a ``past_due`` or ``unpaid`` subscription keeps its tier this
    many days after the period it paid for ended (the start of the unpaid period), then
    loses it; the grace runs once from the first failed payment, however many periods
    stay unpaid, and starts afresh only after the subscription is paid again. No event
    may come when it ends: run ``nasca billing reconcile`` daily.

    Raises ConfigurationError.
    """

    on_amount_mismatch: AmountMismatch = "review"
    on_partial_refund: PartialRefund = "proportional"
    past_due_grace_days: int = Field(default=7, ge=0, le=90)


class ReviewOrder(BaseModel):
    """A paid checkout that granted nothing because Stripe's figures did not match the offer
    (``BillingPolicy.on_amount_mismatch="review"``): grant it by hand with
    ``grant_credits(user, pack, idempotency_key=session_id, paid=...)`` or refund it. For a
    plan's checkout ``pack`` is the plan id: give the tier by hand (``set_user_tier``)."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    user_id: str
    pack: str
    reason: str
    paid: Decimal  # what Stripe says was paid, in ``currency``
    currency: str
    expected: Decimal
    expected_currency: str
    at: datetime


class WebhookResult(BaseModel):
    """What ``handle_stripe_webhook`` did with one event (answer Stripe with 200).

    ``duplicate`` is True when this event, or the purchase it reports, was handled before:
    nothing changed the second time. ``detail`` says why an event was ignored.
    """

    model_config = ConfigDict(frozen=True)

    event_id: str
    type: str
    action: WebhookAction
    duplicate: bool = False
    user_id: str | None = None
    lot_id: str | None = None
    tier: str | None = None
    detail: str | None = None
    revoked: Decimal | None = None  # AI spend taken back by this event (refunds, disputes)
    restored: Decimal | None = None  # AI spend given back by this event (a dispute won)


@dataclass(frozen=True, slots=True)
class BillingEvent:
    """A conversion step for analytics: "checkout_started" or "purchase_completed"."""

    kind: str
    user_id: str
    at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


def _dt(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None
