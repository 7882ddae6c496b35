"""Small frozen config models: tiers (and, later, credit packs and plans)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nasca_core._errors import ConfigurationError, InvalidAmountError, UnknownTierError
from nasca_core._fallback import ACCOUNT_SUFFIX, FallbackModel, check_fallback_model
from nasca_core._money import to_nanos
from nasca_core._thresholds import check_warn_at
from nasca_core._windows import WINDOWS, Window

DEFAULT_MAX_IN_FLIGHT = 64  # calls per user: far above one person, a bound on a runaway loop
_NOT_FOR_FALLBACK = ("credits_cover", "warn_at", "default_output_tokens")


class Tier(BaseModel):
    """A spend allowance per calendar window, in dollars of AI cost.

    ``Tier(monthly=10, weekly=5, daily=2)``; a window left as None is unlimited.
    ``credits_cover`` names the windows that prepaid credits may extend: the monthly
    window always; leave "daily" out to make the daily limit a hard cap against abuse.

    ``max_in_flight`` caps the calls one user may have in flight (default 64, None for no
    cap); a call over it raises NascaBusyError, which says to try again in a moment.

    ``on_exhausted="fallback"`` runs a call a spent window blocks on ``fallback_model``
    instead, within ``fallback_allowance`` (``nasca_core._fallback``; "block" is the default).

    Raises ConfigurationError for a limit <= 0, NaN or infinite, or a bad window name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    daily: Decimal | None = None
    weekly: Decimal | None = None
    monthly: Decimal | None = None
    credits_cover: frozenset[Window] = frozenset(WINDOWS)
    default_output_tokens: int | None = Field(default=None, gt=0)
    # Calls one user may have in flight at once (None: no cap). It bounds what wrong
    # estimates can overshoot: at most this many calls' (real - hold) past the limit.
    max_in_flight: int | None = Field(default=DEFAULT_MAX_IN_FLIGHT, gt=0, le=1_000_000)
    # Soft thresholds: fractions of any window's limit (0 < f < 1) at which a call carries a
    # warning and the owner's hooks run once per window (``_thresholds``, ``on_threshold``).
    warn_at: tuple[float, ...] = ()
    # Degrade instead of block (``_fallback``): a spent window (not a hard one) runs the call
    # on ``fallback_model`` (a name, or {model glob: name}, first match wins), charged to
    # ``fallback_allowance``, a Tier of its own limits and counters (one of them required).
    on_exhausted: Literal["block", "fallback"] = "block"
    fallback_model: FallbackModel | None = None
    fallback_allowance: Tier | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(f"Invalid Tier: {first_error(exc)}") from None

    @field_validator("daily", "weekly", "monthly", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            nanos = to_nanos(value, what="a tier limit", allow_zero=False)
        except InvalidAmountError as exc:  # pydantic reports only ValueErrors as validation errors
            raise ValueError(str(exc)) from None
        return Decimal(nanos) / Decimal(1_000_000_000)

    @field_validator("warn_at", mode="before")
    @classmethod
    def _fractions(cls, value: Any) -> tuple[float, ...]:
        return check_warn_at(value)

    @field_validator("fallback_model", mode="before")
    @classmethod
    def _fallback_model(cls, value: Any) -> FallbackModel | None:
        return check_fallback_model(value)

    @field_validator("fallback_allowance", mode="before")
    @classmethod
    def _allowance(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        try:  # a nested mapping's error names where it is
            return Tier(**value)
        except ConfigurationError as exc:
            raise ValueError(str(exc).removeprefix("Invalid Tier: ")) from None

    @model_validator(mode="after")
    def _monthly_covered(self) -> Tier:
        if "monthly" not in self.credits_cover:
            raise ValueError("credits always cover the monthly window: keep 'monthly' in credits_cover")
        return self

    @model_validator(mode="after")
    def _fallback_bounded(self) -> Tier:
        allowance = self.fallback_allowance
        if self.on_exhausted == "block":
            if self.fallback_model is not None or allowance is not None:
                raise ValueError("fallback_model and fallback_allowance need on_exhausted='fallback'")
        elif self.fallback_model is None or allowance is None or allowance.limits_nanos() == (None,) * 3:
            raise ValueError("on_exhausted='fallback' needs fallback_model and a fallback_allowance "
                             "with a limit, e.g. Tier(daily=0.05): the fallback has its own budget")
        if allowance is not None and allowance.on_exhausted != "block":
            raise ValueError("a fallback_allowance can't fall back again")
        if allowance is not None and (ignored := [f for f in _NOT_FOR_FALLBACK if getattr(allowance, f)
                                                  != Tier.model_fields[f].get_default()]):
            # No credits reach the fallback's counters, its calls carry no warnings, and its
            # estimate is the ledger's: settings that would do nothing are refused.
            raise ValueError(f"fallback_allowance can't set {', '.join(ignored)}: only its limits "
                             "(daily, weekly, monthly) and max_in_flight apply to the fallback")
        return self

    def limit(self, window: Window) -> Decimal | None:
        value: Decimal | None = getattr(self, window)
        return value

    def limits_nanos(self) -> tuple[int | None, int | None, int | None]:
        d, w, m = (None if (v := self.limit(x)) is None else to_nanos(v) for x in WINDOWS)
        return d, w, m

    def hard_windows(self) -> tuple[bool, bool, bool]:
        """Windows with a limit that credits may not extend."""
        d, w, m = (self.limit(x) is not None and x not in self.credits_cover for x in WINDOWS)
        return d, w, m

    def compiled(self) -> dict[str, Any]:
        """The form the store scripts read: limits in nanos (-1 = none), hard flags and the
        in-flight cap (-1 = none)."""
        return {
            "l": [-1 if v is None else v for v in self.limits_nanos()],
            "h": [int(h) for h in self.hard_windows()],
            "f": -1 if self.max_in_flight is None else self.max_in_flight,
        }


def check_tier_name(name: object, tier: Tier | None = None) -> str:
    """Raises ConfigurationError unless ``name`` can name a tier (``tier``, when it falls back:
    its fallback account's tier "<name>:fallback" too)."""
    if not isinstance(name, str) or not name or len(name) > 64 or "\0" in name:
        raise ConfigurationError(f"tier names must be non-empty strings up to 64 chars, got {name!r}")
    if name.endswith(ACCOUNT_SUFFIX):  # the name of a fallback account's tier
        raise ConfigurationError(f"tier names can't end in {ACCOUNT_SUFFIX!r}, got {name!r}")
    if tier is not None and tier.on_exhausted == "fallback" and len(name + ACCOUNT_SUFFIX) > 64:
        raise ConfigurationError(f"a tier that falls back names its fallback's tier {name!r} + "
                                 f"{ACCOUNT_SUFFIX!r}: up to {64 - len(ACCOUNT_SUFFIX)} chars")
    return name


_CEILING_FIELDS = frozenset({"daily", "weekly", "monthly", "warn_at"})


def check_ceiling(tier: object) -> Tier | None:
    """The app-wide ceiling (``Nasca(ceiling=...)``, ``set_ceiling``): None, or a Tier with at
    least one window limit whose other fields, but ``warn_at``, are left at their defaults (a
    ceiling has no credits, no in-flight cap, no fallback). Raises ConfigurationError."""
    if tier is None:
        return None
    if not isinstance(tier, Tier):
        raise ConfigurationError(f"the ceiling must be a Tier or None, got {type(tier).__name__}")
    odd = sorted(name for name, info in Tier.model_fields.items()
                 if name not in _CEILING_FIELDS and getattr(tier, name) != info.get_default())
    if odd:
        raise ConfigurationError(f"a ceiling takes only daily, weekly, monthly and warn_at; "
                                 f"{', '.join(odd)} can't apply to it")
    if all(v is None for v in tier.limits_nanos()):
        raise ConfigurationError("a ceiling needs a daily, weekly or monthly limit (None: no ceiling)")
    return tier


def check_ledger_args(tiers: Any, default_tier: str | None, namespace: Any, on_store_error: Any,
                      hold_ttl: Any, default_output_tokens: Any) -> None:
    """Nasca's constructor checks. Raises ConfigurationError, UnknownTierError."""
    if not isinstance(tiers, Mapping) or not tiers:
        raise ConfigurationError("tiers must be a non-empty mapping of name -> Tier(...)")
    for name, tier in tiers.items():
        if not isinstance(tier, Tier):
            raise ConfigurationError(f"tiers[{name!r}] must be a Tier, got {type(tier).__name__}")
        check_tier_name(name, tier)
    if default_tier is not None and default_tier not in tiers:
        raise UnknownTierError(default_tier, list(tiers))
    if not isinstance(namespace, str) or not namespace or "{" in namespace or "}" in namespace:
        raise ConfigurationError("namespace must be a non-empty string without braces")
    if on_store_error not in ("allow", "block"):
        raise ConfigurationError("on_store_error must be 'allow' or 'block'")
    if not (isinstance(hold_ttl, int | float) and 1 <= hold_ttl <= 86400):
        raise ConfigurationError("hold_ttl must be between 1 and 86400 seconds")
    if isinstance(default_output_tokens, bool) or not isinstance(default_output_tokens, int) \
            or default_output_tokens <= 0:
        raise ConfigurationError("default_output_tokens must be a positive int")


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = str(err.get("ctx", {}).get("error", err["msg"]))
    return f"{where}: {msg}" if where else msg
