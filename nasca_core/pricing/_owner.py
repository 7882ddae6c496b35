"""Owner prices: ``ModelPrice`` (what ``prices=`` and ``set_price`` take), validated and
compiled to ``Rates``; and a source model's rates shown back as a ``ModelPrice``.

Owner prices are Decimal USD per 1M tokens (``web_search`` and ``file_search`` per 1,000
calls, ``code_container`` per container unit: see ``_fees.py``), as the providers publish
them. A field left out falls back: cache prices and input audio/image to ``input``
(1-hour writes to ``cache_write`` first), reasoning and output audio/image to ``output``;
tool fees to $0. A $0 input price needs ``free=True``.

Service tiers: an owner price is the **standard** tier's price. A call the provider served
on another tier (``flex``, ``priority``, ``batch``...) is charged the owner's price scaled,
rate by rate, by genai-prices' ratio of that tier to standard for the same model (OpenAI
flex and batch are half of standard); a model genai-prices has no tier price for, or
doesn't know, is charged the owner's price on every tier. To set a tier's price yourself,
name it: ``ModelPrice(input=2, output=8, service_tiers={"flex": {"input": 1, "output": 4}})``
(its missing fields fall back as above, to genai-prices' price of that tier first).
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
    "file_search",
    "code_container",
)
# Owner units -> the compiled unit (nano-dollars per 1M units): tool fees are per 1,000
# calls, containers per unit.
_SCALE = {"web_search": 1000, "file_search": 1000, "code_container": 1_000_000}
_NANO = Decimal("1e-9")


_STANDARD_TIERS = ("", "default", "standard", "auto")  # how providers spell the standard price


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

    ``web_search`` and ``file_search`` are USD per 1,000 calls, ``code_container`` USD per
    container unit. Absent fields fall back as the module docstring
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
    file_search: Decimal | None = None
    code_container: Decimal | None = None
    long_context: tuple[LongContextPrice, ...] = ()
    service_tiers: Mapping[str, ModelPrice] = Field(default_factory=dict)
    free: bool = False
    provider: str | None = None
    source: str | None = None

    @field_validator("service_tiers", mode="after")
    @classmethod
    def _named_tiers(cls, tiers: Mapping[str, ModelPrice]) -> Mapping[str, ModelPrice]:
        out: dict[str, ModelPrice] = {}
        for name, price in tiers.items():
            key = name.strip().lower()
            if key in _STANDARD_TIERS:
                raise ValueError(f"{name!r}: the standard tier's price is the override itself")
            if price.service_tiers:
                raise ValueError(f"{name!r}: a tier's price cannot name tiers of its own")
            out[key] = price
        return out

    def __hash__(self) -> int:  # frozen and hashable, like every config model; tiers by name
        return hash(tuple(
            (k, tuple(sorted(v.items())) if isinstance(v, Mapping) else v) for k, v in self.__dict__.items()
        ))

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
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        # Prices have <= 9 decimals and < 1e6: a float's shortest repr has the same digits.
        return int(value) if value == value.to_integral_value() else float(value)
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
                return _n(value) * _SCALE.get(name, 1)
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
        pick("web_search", 0),  # owner's: per 1,000 calls, scaled to per 1M above
        pick("file_search", 0),
        pick("code_container", 0),
        inherited[RATE_FIELDS.index("request")] if inherited is not None else 0,
    )


def price_of(rates: Rates, provider: str | None, source: str) -> ModelPrice:
    """A source model's standard prices as a ModelPrice (for display and ``resolve``)."""

    def usd(nanos: int) -> Decimal:
        return Decimal(nanos) / NANOS_PER_USD

    def shown(name: str, nanos: int) -> Decimal:
        # per-unit fees can be finer than a nano-dollar (Anthropic's 5 container minutes)
        return (usd(nanos) / _SCALE.get(name, 1)).quantize(_NANO)

    base = rates.as_dict()
    fields: dict[str, Any] = {name: shown(name, base[name]) for name in RATE_FIELDS if name in _PRICE_FIELDS}
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


def scaled(owner: Rates, standard: Rates, tier: Rates) -> Rates:
    """``owner``'s rates moved to a service tier: each rate times the source's ratio of
    ``tier`` to ``standard`` for that dimension (rounded half up to a nano-dollar per 1M).
    A dimension the source leaves unpriced on the tier (0) keeps the owner's rate: a missing
    source price never makes the owner's price $0."""

    def move(rates: RateTuple) -> RateTuple:
        return tuple(  # type: ignore[return-value]
            v if s == t or s == 0 or t == 0 else (v * t + s // 2) // s
            for v, s, t in zip(rates, standard.base, tier.base, strict=True)
        )

    return Rates(move(owner.base), tuple((th, move(r)) for th, r in owner.tiers),
                 expires=min(standard.expires, tier.expires))
