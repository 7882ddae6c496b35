"""Model prices, the price table and the integer cost formula.

Prices are Decimal USD per 1M tokens (what providers publish). At load each model is
compiled once into integer nano-dollars per 1M tokens, so a cost is five integer
multiplications, one addition and one rounded division: exact, and a few hundred
nanoseconds.

    cost = (input - cache_read - cache_write) * input_price
         + cache_read * cache_read_price          (missing -> input_price)
         + cache_write * cache_write_price        (missing -> input_price)
         + (output - reasoning) * output_price
         + reasoning * reasoning_price            (missing -> output_price)

A long-context tier replaces the prices of the whole call when its input tokens are above
the tier's threshold (that is how Anthropic, Google and LiteLLM all bill it). A field a tier
leaves out takes the base model's explicit price, then the tier's own fallback.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nasca_core._errors import ConfigurationError, UnknownModelError
from nasca_core._money import NANOS_PER_USD
from nasca_core.pricing._names import candidates
from nasca_core.pricing._usage import TokenUsage

_PER_MILLION = 1_000_000
_HALF = _PER_MILLION // 2
_MAX_PRICE = Decimal(1_000_000)  # USD per 1M tokens; anything above is a typo (or per-token)
_SHIPPED = Path(__file__).with_name("prices.json")


def _decimal_price(value: object) -> object:
    # Floats arrive from JSON/YAML configs: take their shortest repr, not the binary expansion.
    if isinstance(value, bool):
        raise ValueError("a price must be a number, not a bool")
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int | str):
        try:
            return Decimal(value)
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
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

    @field_validator(
        "input",
        "output",
        "cache_read",
        "cache_write",
        "reasoning",
        mode="before",
        check_fields=False,
    )
    @classmethod
    def _coerce(cls, value: object) -> object:
        return _decimal_price(value)

    @field_validator(
        "input",
        "output",
        "cache_read",
        "cache_write",
        "reasoning",
        mode="after",
        check_fields=False,
    )
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
    reasoning: Decimal | None = None


class ModelPrice(_Prices):
    """Prices of one model in USD per 1M tokens (Decimal, finite, >= 0).

    ``cache_read``/``cache_write`` default to ``input`` and ``reasoning`` to ``output`` when
    absent. ``source`` says where a number came from when it is not the table's main source.
    """

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    long_context: tuple[LongContextPrice, ...] = ()
    provider: str | None = None
    source: str | None = None

    @field_validator("long_context", mode="after")
    @classmethod
    def _distinct_thresholds(cls, tiers: tuple[LongContextPrice, ...]) -> tuple[LongContextPrice, ...]:
        thresholds = [t.above_input_tokens for t in tiers]
        if len(set(thresholds)) != len(thresholds):
            raise ValueError("long_context tiers must have distinct above_input_tokens")
        return tuple(sorted(tiers, key=lambda t: t.above_input_tokens))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the price-file format."""
        data: dict[str, Any] = _plain(self.model_dump(exclude_none=True, exclude_defaults=True))
        return data


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Prices have <= 9 decimals and < 1e6: a float's shortest repr has the same digits,
        # and the reader parses them back with parse_float=Decimal, exactly.
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- compiled rates

_Rates = tuple[int, int, int, int, int]  # input, cache_read, cache_write, output, reasoning


def _nanos(price: Decimal) -> int:
    return int(price * NANOS_PER_USD)


class _Compiled:
    """Integer nano-dollars per 1M tokens, base first, tiers by descending threshold."""

    __slots__ = ("base", "tiers")

    def __init__(self, price: ModelPrice) -> None:
        self.base = _rates(price, None)
        self.tiers = tuple(
            (tier.above_input_tokens, _rates(tier, price)) for tier in reversed(price.long_context)
        )

    def cost(self, usage: TokenUsage) -> int:
        inp = usage.input_tokens
        rates = self.base
        for threshold, tier_rates in self.tiers:
            if inp > threshold:
                rates = tier_rates
                break
        p_in, p_cr, p_cw, p_out, p_rs = rates
        cr = usage.cache_read_tokens
        cw = usage.cache_write_tokens
        rs = usage.reasoning_tokens
        total = (
            (inp - cr - cw) * p_in + cr * p_cr + cw * p_cw + (usage.output_tokens - rs) * p_out + rs * p_rs
        )
        return (total + _HALF) // _PER_MILLION  # round half up, once


def _rates(p: ModelPrice | LongContextPrice, base: ModelPrice | None) -> _Rates:
    def pick(own: Decimal | None, inherited: Decimal | None, fallback: Decimal) -> int:
        if own is not None:
            return _nanos(own)
        if inherited is not None:
            return _nanos(inherited)
        return _nanos(fallback)

    return (
        _nanos(p.input),
        pick(p.cache_read, base.cache_read if base else None, p.input),
        pick(p.cache_write, base.cache_write if base else None, p.input),
        _nanos(p.output),
        pick(p.reasoning, base.reasoning if base else None, p.output),
    )


# --------------------------------------------------------------------------- the table

_CACHE_LIMIT = 4096  # distinct model strings remembered; cleared when full (names can be user input)


class PriceTable:
    """An immutable price table: canonical model names, their prices, and aliases.

    Lookups (``normalize``, ``resolve``, ``cost_nanos``) are cached per table.
    Raises ConfigurationError on construction when the data is invalid.
    """

    __slots__ = (
        "_aliases",
        "_as_of",
        "_compiled",
        "_cost_cache",
        "_models",
        "_norm_cache",
        "_source",
    )

    def __init__(
        self,
        models: Mapping[str, ModelPrice],
        aliases: Mapping[str, str] | None = None,
        *,
        source: str | None = None,
        as_of: str | None = None,
    ) -> None:
        clean: dict[str, ModelPrice] = {}
        for name, price in models.items():
            key = _key(name, "model name")
            if key in clean:
                raise ConfigurationError(f"model {name!r} is listed twice (names are case-blind)")
            if not isinstance(price, ModelPrice):
                raise ConfigurationError(f"price of {name!r} must be a ModelPrice")
            clean[key] = price
        self._models: Mapping[str, ModelPrice] = MappingProxyType(clean)
        self._compiled = {name: _Compiled(price) for name, price in clean.items()}
        self._source = source
        self._as_of = as_of
        self._norm_cache: dict[str, str | None] = {}
        self._cost_cache: dict[str, _Compiled] = {}
        self._aliases: Mapping[str, str] = MappingProxyType({})
        resolved: dict[str, str] = {}
        for alias, target in (aliases or {}).items():
            key = _key(alias, "alias")
            if key in clean:
                raise ConfigurationError(f"alias {alias!r} is also a model name; override its price instead")
            canonical = self._lookup(_key(target, "alias target"), {})
            if canonical is None:
                raise ConfigurationError(f"alias {alias!r} points to unknown model {target!r}")
            resolved[key] = canonical
        self._aliases = MappingProxyType(resolved)

    # ---------------------------------------------------------------- construction

    @classmethod
    def default(cls) -> PriceTable:
        """The table shipped with Nasca (loaded once). Raises ConfigurationError if corrupt."""
        return _default()

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        """Load a price file in Nasca's format. Raises ConfigurationError."""
        return cls.from_dict(read_json_file(Path(path)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceTable:
        """Build from the price-file structure ``{"models": {...}, "aliases": {...}, ...}``.

        Raises ConfigurationError naming the model and field that is wrong.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
            raise ConfigurationError("a price file needs a top-level 'models' object")
        aliases = data.get("aliases", {})
        if not isinstance(aliases, Mapping) or not all(isinstance(v, str) for v in aliases.values()):
            raise ConfigurationError("'aliases' must map alias names to model names")
        models = {name: parse_price(name, raw) for name, raw in data["models"].items()}
        source = data.get("source")
        as_of = data.get("as_of")
        return cls(
            models,
            aliases,
            source=source if isinstance(source, str) else None,
            as_of=as_of if isinstance(as_of, str) else None,
        )

    def with_overrides(
        self,
        prices: Mapping[str, ModelPrice | Mapping[str, Any]],
        aliases: Mapping[str, str] | None = None,
    ) -> PriceTable:
        """A new table with ``prices`` added or replacing existing models, and more aliases.

        An override key is taken as an exact canonical name (``"gpt-4o-2024-05-13"`` adds that
        snapshot beside ``gpt-4o``). Raises ConfigurationError.
        """
        models = dict(self._models)
        for name, raw in prices.items():
            models[_key(name, "model name")] = raw if isinstance(raw, ModelPrice) else parse_price(name, raw)
        merged = {k: v for k, v in self._aliases.items() if k not in models}
        merged.update({_key(k, "alias"): v for k, v in (aliases or {}).items()})
        return PriceTable(models, merged, source=self._source, as_of=self._as_of)

    # ---------------------------------------------------------------- lookups

    @property
    def models(self) -> tuple[str, ...]:
        """Canonical model names, sorted."""
        return tuple(sorted(self._models))

    @property
    def aliases(self) -> Mapping[str, str]:
        """Alias name -> canonical model name."""
        return self._aliases

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def as_of(self) -> str | None:
        return self._as_of

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.normalize(model) is not None

    def __len__(self) -> int:
        return len(self._models)

    def normalize(self, model: str) -> str | None:
        """The canonical name ``model`` stands for, or None if the table cannot price it.

        Tries the exact name, then aliases, then strips in turn: resource paths
        (``publishers/anthropic/models/``, ``models/``), provider prefixes (``openai/``,
        ``azure/``, ...), Bedrock region and vendor prefixes and ``-v2:0`` versions, Vertex
        ``@version``, then dated/versioned suffixes (``-2024-08-06``, ``-20241022``,
        ``-latest``, ``-2505``, ``-001``). Fine-tuned ``ft:`` models are never mapped to their
        base model: they are priced differently.
        """
        try:
            return self._norm_cache[model]
        except KeyError:
            pass
        if not isinstance(model, str):
            return None
        result = self._lookup(model.strip().lower(), self._aliases)
        if len(self._norm_cache) >= _CACHE_LIMIT:
            self._norm_cache.clear()
        self._norm_cache[model] = result
        return result

    def _lookup(self, name: str, aliases: Mapping[str, str]) -> str | None:
        if not name or name.startswith("ft:"):
            return None
        for candidate in candidates(name):
            if candidate in self._models:
                return candidate
            target = aliases.get(candidate)
            if target is not None:
                return target
        return None

    def resolve(self, model: str) -> tuple[str, ModelPrice]:
        """``(canonical_name, price)`` for ``model``. Raises UnknownModelError."""
        canonical = self.normalize(model)
        if canonical is None:
            raise UnknownModelError(model)
        return canonical, self._models[canonical]

    def cost_nanos(self, model: str, usage: TokenUsage) -> int:
        """Cost of ``usage`` on ``model`` in integer nano-dollars, rounded half-up once.

        Raises UnknownModelError.
        """
        compiled = self._cost_cache.get(model)
        if compiled is None:
            compiled = self._compiled_for(model)
        return compiled.cost(usage)

    def _compiled_for(self, model: str) -> _Compiled:
        canonical = self.normalize(model)
        if canonical is None:
            raise UnknownModelError(model)
        compiled = self._compiled[canonical]
        if len(self._cost_cache) >= _CACHE_LIMIT:
            self._cost_cache.clear()
        self._cost_cache[model] = compiled
        return compiled

    # ---------------------------------------------------------------- export

    def to_dict(self) -> dict[str, Any]:
        """The price-file structure, models and aliases sorted (stable diffs)."""
        out: dict[str, Any] = {}
        if self._source is not None:
            out["source"] = self._source
        if self._as_of is not None:
            out["as_of"] = self._as_of
        out["unit"] = UNIT
        out["models"] = {name: self._models[name].to_dict() for name in sorted(self._models)}
        out["aliases"] = {k: self._aliases[k] for k in sorted(self._aliases)}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def __repr__(self) -> str:
        return f"PriceTable({len(self._models)} models, {len(self._aliases)} aliases, as_of={self._as_of!r})"


UNIT = "USD per 1M tokens"


def _key(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"{what} must be a non-empty string, got {name!r}")
    return name.strip().lower()


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


def read_json_file(path: Path) -> Any:
    """A price file's JSON, numbers as Decimal. Raises ConfigurationError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read price file {str(path)!r}: {exc}") from None
    try:
        # parse_float=Decimal keeps 0.075 exactly 0.075, not 0.07499999999999999722...
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"price file {str(path)!r} is not valid JSON: {exc}") from None


@functools.cache
def _default() -> PriceTable:
    return PriceTable.from_file(_SHIPPED)


def shipped_price_file() -> Path:
    """Path of the price file shipped inside the package."""
    return _SHIPPED


def clear_default_cache() -> None:
    """Forget the loaded default table (after the shipped file was rewritten)."""
    _default.cache_clear()
