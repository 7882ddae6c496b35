"""Owner prices: ``ModelPrice`` (what ``prices=`` and ``set_price`` take), validated and
compiled to ``Rates``; and a source model's rates shown back as a ``ModelPrice``.

Owner prices are Decimal USD per 1M tokens (``web_search`` per 1,000 searches), as the
providers publish them. A field left out falls back: cache prices and input audio/image to
``input`` (1-hour writes to ``cache_write`` first), reasoning and output audio/image to
``output``; web searches to $0. A $0 input price needs ``free=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nasca_core._errors import ConfigurationError, InvalidAmountError
from nasca_core._money import NANOS_PER_USD, parse_amount
from nasca_core.pricing._rates import RATE_FIELDS, Rates, RateTuple

_MAX_PRICE = Decimal(1_000_000)  # USD per 1M tokens; anything above is a typo (or per-token)
_PRICE_FIELDS = (
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "reasoning",
    "input_audio",
    "input_image",
    "output_audio",
    "output_image",
    "web_search",
)


def _decimal_price(value: object) -> object:
    # The project's one O(1) amount parser (floats by their shortest repr); pydantic reports
    # only ValueErrors as validation errors.
    if isinstance(value, bool | int | float | str | Decimal):
        try:
            return parse_amount(value, what="a price")
        except InvalidAmountError as exc:
            raise ValueError(str(exc)) from None
    return value


def _check_price(value: Decimal | None) -> Decimal | None:
    if value is None:
        return None
    if not value.is_finite():
        raise ValueError(f"price must be finite, got {value}")
    if value < 0:
        raise ValueError(f"price must be >= 0, got {value}")
    if value > _MAX_PRICE:
        raise ValueError(f"price {value} USD per 1M tokens is implausible")
    if (value * NANOS_PER_USD) % 1 != 0:
        # Our integer unit is nano-dollars per 1M tokens (1e-15 USD per token).
        raise ValueError(f"price {value} has more than 9 decimal places (USD per 1M tokens)")
    return value


class _Prices(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator(*_PRICE_FIELDS, mode="before", check_fields=False)
    @classmethod
    def _coerce(cls, value: object) -> object:
        return _decimal_price(value)

    @field_validator(*_PRICE_FIELDS, mode="after", check_fields=False)
    @classmethod
    def _validate(cls, value: Decimal | None) -> Decimal | None:
        return _check_price(value)


class LongContextPrice(_Prices):
    """Prices that apply to a whole call whose input tokens are above ``above_input_tokens``."""

    above_input_tokens: int = Field(gt=0, strict=True)
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    reasoning: Decimal | None = None


class ModelPrice(_Prices):
    """An owner's prices of one model in USD per 1M tokens (Decimal, finite, >= 0).

    ``web_search`` is USD per 1,000 searches. Absent fields fall back as the module docstring
    says. ``free=True`` declares the model free (all prices may then be left out); without
    it a $0 input price is refused. ``source`` says where the numbers came from.

    Raises pydantic's ValidationError (``parse_price`` turns it into ConfigurationError).
    """

    input: Decimal | None = None
    output: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    reasoning: Decimal | None = None
    input_audio: Decimal | None = None
    input_image: Decimal | None = None
    output_audio: Decimal | None = None
    output_image: Decimal | None = None
    web_search: Decimal | None = None
    long_context: tuple[LongContextPrice, ...] = ()
    free: bool = False
    provider: str | None = None
    source: str | None = None

    @field_validator("long_context", mode="after")
    @classmethod
    def _distinct_thresholds(cls, tiers: tuple[LongContextPrice, ...]) -> tuple[LongContextPrice, ...]:
        thresholds = [t.above_input_tokens for t in tiers]
        if len(set(thresholds)) != len(thresholds):
            raise ValueError("long_context tiers must have distinct above_input_tokens")
        return tuple(sorted(tiers, key=lambda t: t.above_input_tokens))

    @model_validator(mode="after")
    def _never_free_by_accident(self) -> ModelPrice:
        if self.free:
            return self
        for name in ("input", "output"):
            if getattr(self, name) is None:
                raise ValueError(f"{name}: field required (or free=True for a free model)")
        if self.input == 0:
            raise ValueError("input: a $0 price needs free=True (a model is never free by accident)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the override format."""
        data: dict[str, Any] = _plain(self.model_dump(exclude_none=True, exclude_defaults=True))
        return data


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Prices have <= 9 decimals and < 1e6: a float's shortest repr has the same digits.
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def parse_price(model: str, raw: object) -> ModelPrice:
    """Validate one model's price entry. Raises ConfigurationError naming model and field."""
    if isinstance(raw, ModelPrice):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"price of model {model!r} must be an object, got {raw!r}")
    try:
        return ModelPrice.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid price for model {model!r}: {problems}") from None


# --------------------------------------------------------------------------- owner prices compiled


def _n(price: Decimal | None) -> int:
    return 0 if price is None else int(price * NANOS_PER_USD)


def owner_rates(p: ModelPrice, source: Rates | None = None) -> Rates:
    """``p`` compiled. Fields it leaves out take ``source``'s standard rates when the source
    prices the model too (an owner who sets input and output keeps the provider's cache
    discount and tool fees), else the fallbacks above. Long-context tiers come from ``p``
    only: an owner's price holds for the whole range unless it says otherwise."""
    inherited = None if p.free or source is None else source.base
    base = _rate_tuple(p, p, inherited)
    tiers = tuple((t.above_input_tokens, _rate_tuple(t, p, None)) for t in p.long_context)
    return Rates(base, tiers)


def _rate_tuple(
    p: ModelPrice | LongContextPrice, base: ModelPrice, inherited: RateTuple | None
) -> RateTuple:
    # A tier's missing field takes the base model's explicit price, then its own fallback.
    def pick(name: str, fallback: int) -> int:
        for source in (p, base):
            value = getattr(source, name, None)
            if value is not None:
                return _n(value) * (1000 if name == "web_search" else 1)
        if inherited is not None:
            return inherited[RATE_FIELDS.index(name)]
        return fallback

    inp = _n(p.input)
    out = _n(p.output)
    cache_write = pick("cache_write", inp)
    return (
        inp,
        pick("cache_read", inp),
        cache_write,
        pick("cache_write_1h", cache_write),
        pick("input_audio", inp),
        pick("input_image", inp),
        out,
        pick("reasoning", out),
        pick("output_audio", out),
        pick("output_image", out),
        pick("web_search", 0),  # owner's: per 1,000 searches, scaled to per 1M above
        inherited[RATE_FIELDS.index("request")] if inherited is not None else 0,
    )


def price_of(rates: Rates, provider: str | None, source: str) -> ModelPrice:
    """A source model's standard prices as a ModelPrice (for display and ``resolve``)."""

    def usd(nanos: int) -> Decimal:
        return Decimal(nanos) / NANOS_PER_USD

    base = rates.as_dict()
    fields: dict[str, Any] = {name: usd(base[name]) for name in RATE_FIELDS if name in _PRICE_FIELDS}
    fields["web_search"] = usd(base["web_search"]) / 1000
    tiers = [
        LongContextPrice(
            above_input_tokens=threshold,
            input=usd(r[0]),
            cache_read=usd(r[1]),
            cache_write=usd(r[2]),
            cache_write_1h=usd(r[3]),
            output=usd(r[6]),
            reasoning=usd(r[7]),
        )
        for threshold, r in sorted(rates.tiers)
        if threshold > 0
    ]
    return ModelPrice(
        **fields, long_context=tuple(tiers), provider=provider, source=source, free=rates.is_zero
    )
