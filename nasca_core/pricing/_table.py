"""The price table: genai-prices behind the project's own layer.

genai-prices (the Pydantic team's maintained price database) is the source of every
model's prices. On top of it the table keeps what only Nasca knows:

* owner prices (``prices=``, live ``set_price``): a ``ModelPrice`` per model, winning over
  the source for that exact name and for every name the source resolves to it;
* aliases (Azure deployment names) to a priced model;
* "never $0 by accident": a model priced at $0 input (from any source) is refused unless
  its owner price says ``free=True``;
* compilation: each model is compiled once per service tier into integer nano-dollar
  rates (``Rates``), so a cost is a few integer operations, exact, well under 5 µs.

Owner prices (``ModelPrice``) and their fallbacks are described in ``_owner.py``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from time import time as _time
from types import MappingProxyType
from typing import Any

from nasca_core._errors import ConfigurationError, UnknownModelError
from nasca_core.pricing import _genai
from nasca_core.pricing._owner import ModelPrice, owner_rates, parse_price, price_of, scaled
from nasca_core.pricing._rates import Rates
from nasca_core.pricing._usage import TokenUsage

_CACHE_LIMIT = 4096  # distinct model strings remembered; cleared when full (names can be user input)
# Where genai-prices' name matching lags what the provider serves under a name. Each entry
# is checked against LiteLLM's table in tests/test_pricing_parity.py; drop it once fixed upstream.
SOURCE_ALIASES = {
    # Mistral serves Mistral Large 3 (mistral-large-2512, $0.5/$1.5) as -latest; genai-prices
    # 0.2.3 still matches it to Large 2 ($2/$6), 4x the bill.
    "mistral-large-latest": "mistral-large-2512",
    "mistral-large-3": "mistral-large-2512",
    # xAI's grok-4.20 names beyond the two dated ones genai-prices 0.2.3 matches (same price).
    "grok-4.20-reasoning": "grok-4.20",
    "grok-4.20-non-reasoning": "grok-4.20",
    "grok-4.20-0309": "grok-4.20",
    "grok-4.20-reasoning-latest": "grok-4.20",
    "grok-4.20-non-reasoning-latest": "grok-4.20",
}
UNIT = "USD per 1M tokens (web_search, file_search: per 1,000 calls; code_container: per unit)"
SOURCE = "genai-prices"


# --------------------------------------------------------------------------- the source, cached


@functools.lru_cache(maxsize=_CACHE_LIMIT)
def _source_model(name: str) -> _genai.SourceModel | None:
    return _genai.find(name)


def _source_rates(model: _genai.SourceModel, tier: str | None, day: int | None = None) -> Rates:
    return _compiled_source(model, tier, _day() if day is None else day)


@functools.lru_cache(maxsize=_CACHE_LIMIT)
def _compiled_source(model: _genai.SourceModel, tier: str | None, day: int) -> Rates:
    # ``day`` (UTC days since the epoch) keys the cache so a dated price change recompiles.
    return _genai.compile_rates(model, tier)


def _day() -> int:
    return int(_time() // 86_400)


class _Entry:
    """What ``cost_nanos`` keeps per model string: rates by service tier, compiled on first
    use by ``make`` (the source's tier price, or the owner's price for that tier)."""

    __slots__ = ("by_tier", "make")

    def __init__(self, rates: Rates, make: Callable[[str | None], Rates]) -> None:
        self.by_tier: dict[str | None, Rates] = {None: rates}
        self.make = make

    def rates(self, tier: str | None) -> Rates:
        rates = self.by_tier.get(tier)
        if rates is None or rates.expires <= _time():
            rates = self.make(tier)
            if len(self.by_tier) < 32:  # tiers come from responses: a handful, never unbounded
                self.by_tier[tier] = rates
        return rates


class PriceTable:
    """Owner prices and aliases over genai-prices. Immutable; lookups are cached per table.

    Raises ConfigurationError on construction when a price or alias is unusable.
    """

    __slots__ = (
        "__weakref__",
        "_alias_targets",
        "_aliases",
        "_cost_cache",
        "_found",
        "_models",
        "_norm_cache",
        "_owner_rates",
        "_use_source",
    )

    def __init__(
        self,
        models: Mapping[str, ModelPrice] | None = None,
        aliases: Mapping[str, str] | None = None,
        *,
        use_source: bool = True,
    ) -> None:
        clean: dict[str, ModelPrice] = {}
        for name, price in (models or {}).items():
            key = _key(name, "model name")
            if key in clean:
                raise ConfigurationError(f"model {name!r} is listed twice (names are case-blind)")
            if not isinstance(price, ModelPrice):
                raise ConfigurationError(f"price of {name!r} must be a ModelPrice")
            clean[key] = price
        self._models: Mapping[str, ModelPrice] = MappingProxyType(clean)
        self._owner_rates: dict[str, Rates] = {}  # compiled on first use, over the source's rates
        self._use_source = use_source
        self._norm_cache: dict[str, str | None] = {}
        self._cost_cache: dict[str, _Entry] = {}
        self._found: dict[str, _genai.SourceModel] = {}  # canonical -> source model
        self._aliases: Mapping[str, str] = MappingProxyType({})
        self._alias_targets: dict[str, str] = {}  # alias -> the name it was given (re-resolvable)
        resolved: dict[str, str] = {}
        wanted = {**SOURCE_ALIASES, **(aliases or {})} if use_source else dict(aliases or {})
        for alias, target in wanted.items():
            key = _key(alias, "alias")
            if key in clean:
                raise ConfigurationError(f"alias {alias!r} is also a model name; override its price instead")
            target_key = _key(target, "alias target")
            canonical = self._lookup(target_key, aliases=False)
            if canonical is None:
                raise ConfigurationError(f"alias {alias!r} points to unknown model {target!r}")
            resolved[key] = canonical
            self._alias_targets[key] = target_key
        self._aliases = MappingProxyType(resolved)
        self._norm_cache.clear()
        _TABLES.add(self)

    def forget(self) -> None:
        """Drop cached lookups and compiled prices (the source's data changed)."""
        self._norm_cache.clear()
        self._owner_rates.clear()
        self._found.clear()
        self._cost_cache.clear()

    @classmethod
    def default(cls) -> PriceTable:
        """genai-prices with no owner prices (one shared instance)."""
        return _default()

    def with_overrides(
        self,
        prices: Mapping[str, ModelPrice | Mapping[str, Any]],
        aliases: Mapping[str, str] | None = None,
    ) -> PriceTable:
        """A new table with owner ``prices`` added or replacing existing ones, and more aliases.

        An override applies to its exact name and to every name the source resolves to it
        (``"gpt-4o"`` also prices ``gpt-4o-2024-08-06``). Raises ConfigurationError.
        """
        models = dict(self._models)
        for name, raw in prices.items():
            models[_key(name, "model name")] = parse_price(name, raw)
        merged = {k: v for k, v in self._alias_targets.items() if k not in models and k not in SOURCE_ALIASES}
        merged.update({_key(k, "alias"): v for k, v in (aliases or {}).items()})
        return PriceTable(models, merged, use_source=self._use_source)

    # ---------------------------------------------------------------- lookups

    @property
    def models(self) -> tuple[str, ...]:
        """Names with an owner price, sorted."""
        return tuple(sorted(self._models))

    @property
    def owner_prices(self) -> Mapping[str, ModelPrice]:
        return self._models

    @property
    def aliases(self) -> Mapping[str, str]:
        """Alias name -> canonical model name."""
        return self._aliases

    @property
    def source(self) -> str:
        """Where prices without an owner price come from, with the version."""
        return f"{SOURCE} {_genai.version()}" if self._use_source else "owner prices only"

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.normalize(model) is not None

    def normalize(self, model: str) -> str | None:
        """The canonical name ``model`` is priced as, or None if nothing prices it.

        Tries the owner's exact name, then aliases, then genai-prices' model matching (dated
        snapshots, ``-latest``, ``provider/`` prefixes, Bedrock and Vertex ids). A source
        model whose input is priced at $0 is not priced: it needs an owner price.
        """
        try:
            return self._norm_cache[model]
        except KeyError:
            pass
        result = self._lookup(model) if isinstance(model, str) else None
        if len(self._norm_cache) >= _CACHE_LIMIT:
            self._norm_cache.clear()
        self._norm_cache[model] = result
        return result

    def _lookup(self, model: str, *, aliases: bool = True) -> str | None:
        name = model.strip().lower()
        if not name:
            return None
        tail = name.rsplit("/", 1)[-1]  # azure/my-deployment: the owner's names, prefixed
        for key in (name, tail):
            if key in self._models:
                return key
            target = self._alias_targets.get(key) if aliases else None
            if target is not None:
                return self._lookup(target, aliases=False)
        found = self._source(name)
        if found is None:
            return None
        for canonical in (found.canonical, found.model_id):
            if canonical in self._models:
                return canonical
        if _source_rates(found, None).is_zero:
            return None
        self._found[found.canonical] = found
        return found.canonical

    def _source(self, name: str) -> _genai.SourceModel | None:
        return _source_model(name) if self._use_source else None

    def _owner_compiled(self, canonical: str) -> Rates:
        rates = self._owner_rates.get(canonical)
        if rates is None:
            price = self._models[canonical]
            found = None if price.free else self._source(canonical)
            rates = owner_rates(price, _source_rates(found, None) if found is not None else None)
            self._owner_rates[canonical] = rates
        return rates

    def _owner_tier(self, canonical: str, tier: str | None) -> Rates:
        # The rule is in _owner.py's docstring: the owner's price is standard; a tier it
        # names is its own; other tiers scale by the source's ratio for the model.
        standard = self._owner_compiled(canonical)
        price = self._models[canonical]
        if tier is None or price.free:
            return standard
        found = self._source(canonical)
        named = price.service_tiers.get(tier)
        if named is not None:
            return owner_rates(named, _source_rates(found, tier) if found is not None else None)
        if found is None:
            return standard
        return scaled(standard, _source_rates(found, None), _source_rates(found, tier))

    def _found_for(self, canonical: str) -> _genai.SourceModel:
        found = self._found.get(canonical)
        if found is None:
            found = self._source(canonical)
            if found is None:
                raise UnknownModelError(canonical)
            self._found[canonical] = found
        return found

    def resolve(self, model: str) -> tuple[str, ModelPrice]:
        """``(canonical_name, price)`` for ``model``; a source model's price shows its standard
        rates. Raises UnknownModelError."""
        canonical = self.normalize(model)
        if canonical is None:
            raise UnknownModelError(model)
        owner = self._models.get(canonical)
        if owner is not None:
            return canonical, owner
        found = self._found_for(canonical)
        return canonical, price_of(_source_rates(found, None), found.provider, self.source)

    def rates(self, model: str, service_tier: str | None = None) -> Rates:
        """The compiled rates ``model`` is charged at. Raises UnknownModelError."""
        entry = self._cost_cache.get(model)
        if entry is None:
            entry = self._entry(model)
        return entry.rates(service_tier)

    def cost_nanos(self, model: str, usage: TokenUsage) -> int:
        """Cost of ``usage`` on ``model`` in integer nano-dollars, rounded half-up once, at the
        prices of the service tier the usage reports. Raises UnknownModelError."""
        entry = self._cost_cache.get(model)
        if entry is None:
            entry = self._entry(model)
        rates = entry.by_tier.get(usage.service_tier)
        if rates is None or rates.expires <= _time():
            rates = entry.rates(usage.service_tier)
        return rates.cost(usage)

    def text_cost_nanos(self, model: str, input_tokens: int, output_tokens: int) -> int:
        """``cost_nanos`` of ``TokenUsage(input_tokens, output_tokens)``. Raises UnknownModelError."""
        entry = self._cost_cache.get(model)
        if entry is None:
            entry = self._entry(model)
        rates = entry.by_tier[None]
        if rates.expires <= _time():
            rates = entry.rates(None)
        return rates.text_cost(input_tokens, output_tokens)

    def _entry(self, model: str) -> _Entry:
        canonical = self.normalize(model)
        if canonical is None:
            raise UnknownModelError(model)
        if canonical in self._models:
            entry = _Entry(self._owner_compiled(canonical), functools.partial(self._owner_tier, canonical))
        else:
            found = self._found_for(canonical)
            entry = _Entry(_source_rates(found, None), functools.partial(_source_rates, found))
        if len(self._cost_cache) >= _CACHE_LIMIT:
            self._cost_cache.clear()
        self._cost_cache[model] = entry
        return entry

    def source_rates(self, model: str) -> Rates | None:
        """What genai-prices alone would charge ``model`` at (None: it doesn't price it)."""
        found = _source_model(model.strip().lower())
        return None if found is None else _source_rates(found, None)

    def __repr__(self) -> str:
        return f"PriceTable({self.source}, {len(self._models)} owner prices, {len(self._aliases)} aliases)"


def _key(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"{what} must be a non-empty string, got {name!r}")
    return name.strip().lower()


_TABLES: weakref.WeakSet[PriceTable] = weakref.WeakSet()


@functools.cache
def _default() -> PriceTable:
    return PriceTable()


def clear_source_cache() -> None:
    """Forget compiled source prices (after genai-prices' data changed in this process)."""
    _source_model.cache_clear()
    _compiled_source.cache_clear()
    for table in list(_TABLES):
        table.forget()


def source_date() -> datetime | None:
    """When genai-prices' data in use was fetched by its updater (None: the bundled data)."""
    snap = _genai.snapshot()
    return snap.timestamp if snap.from_auto_update else None


def start_price_updates(interval_seconds: float = 3600, *, url: str | None = None) -> Any:
    """Opt in to genai-prices' background updater for a long-running process.

    Off by default; never started at import or on a call's path. It fetches genai-prices'
    published data every ``interval_seconds`` in its own thread (so it needs the network to
    reach it; a failed fetch is logged by genai-prices and the prices in use stay). After
    each fetch every table forgets what it compiled, so the next call to a model compiles
    the new prices. Returns the updater: call ``.stop()`` to end it.
    """
    from nasca_core.pricing import _genai

    return _genai.start_updates(interval_seconds, clear_source_cache, url)
