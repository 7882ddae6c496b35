"""genai-prices as the default price source: model lookup and compilation to ``Rates``.

``genai_prices`` is imported on the first lookup, never at ``import nasca_core`` (its data
snapshot costs ~250 ms to import). Its ``calc_price`` (~250 µs) never runs per call: each
model is compiled once per price context by probing the library's own price calculation
with one unit of each dimension, so whatever genai-prices decides (which price key a
token falls back to, tiers, variants) is what the integer rates say.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from nasca_core.pricing._fees import code_container_usd
from nasca_core.pricing._rates import PER_MILLION, RATE_FIELDS, Rates, RateTuple, TimedRates

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo, ModelPrice

# Tried in turn for a name no provider's model pattern claims (embeddings, codex-mini...).
_FALLBACK_PROVIDERS = ("openai", "anthropic", "google", "mistral", "deepseek", "x-ai")
# ``vendor/model`` prefixes people write, to genai-prices' provider ids.
_PREFIXES = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "google": "google",
    "vertex_ai": "google",
    "vertex": "google",
    "bedrock": "aws",
    "aws": "aws",
    "mistral": "mistral",
    "mistralai": "mistral",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "groq": "groq",
    "openrouter": "openrouter",
    "together": "together",
    "fireworks": "fireworks",
}
# Bedrock model ids (optionally behind a cross-region profile): priced as AWS bills them.
_BEDROCK = re.compile(
    r"^(?:(?:us|eu|apac|ap|au|ca|jp|us-gov|global)\.)?"
    r"(?:anthropic|amazon|meta|mistral|cohere|ai21|deepseek|openai|qwen|writer)\."
)
_PER_TOKEN = Decimal(10**9) * PER_MILLION  # USD per unit -> nano-dollars per 1M units
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class SourceModel:
    """A model genai-prices prices: its provider, id and the library's model record."""

    provider: str
    model_id: str
    info: ModelInfo = field(compare=False, repr=False)

    @property
    def canonical(self) -> str:
        return self.model_id if self.provider in _FALLBACK_PROVIDERS else f"{self.provider}/{self.model_id}"


def snapshot() -> DataSnapshot:
    """genai-prices' current data (bundled, or the one its background updater fetched)."""
    from genai_prices import data_snapshot

    return data_snapshot.get_snapshot()


@functools.cache
def version() -> str:
    import genai_prices

    return str(genai_prices.__version__)


def find(name: str) -> SourceModel | None:
    """The genai-prices model ``name`` stands for (lower-case, stripped), or None."""
    snap = snapshot()
    ref = name
    if "models/" in ref:  # Gemini / Vertex resource names: publishers/x/models/NAME, models/NAME
        ref = ref.rsplit("models/", 1)[1]
    hint: str | None = None
    if "/" in ref:
        prefix, _, rest = ref.partition("/")
        hint = _PREFIXES.get(prefix)
        if hint is not None:
            ref = rest
    if "@" in ref:  # Vertex partner models: claude-sonnet-4-5@20250929
        ref = ref.split("@", 1)[0]
    if hint is None and _BEDROCK.match(ref):
        hint = "aws"
    tries = (hint,) if hint else (None, *_FALLBACK_PROVIDERS, "aws")
    for provider_id in tries:
        try:
            provider, info = snap.find_provider_model(ref, None, provider_id, None)
        except LookupError:
            continue
        return SourceModel(provider.id, info.id, info)
    return None


def _context(tier: str | None) -> dict[str, str] | None:
    if tier is None:
        return None
    if tier == "batch":
        return {"processing": "batch"}
    return {"service_tier": tier}


def compile_rates(model: SourceModel, tier: str | None, when: datetime | None = None) -> Rates:
    """``model``'s prices under service tier ``tier`` (None: standard), compiled as of ``when``
    (now): dated price changes set ``expires``, daily peak/off-peak windows give TimedRates."""
    from genai_prices.types import StartDateConstraint, TimeOfDateConstraint

    when = when or datetime.now(tz=UTC)
    info = model.info
    constraints = [c.constraint for c in info.prices] if isinstance(info.prices, list) else []
    constraints += [v.constraint for v in info.price_variants or ()]
    starts = [
        datetime.combine(c.start_date, time(0), tzinfo=UTC).timestamp()
        for c in constraints
        if isinstance(c, StartDateConstraint) and c.start_date > when.date()
    ]
    expires = min(starts, default=math.inf)
    daily = [c for c in constraints if isinstance(c, TimeOfDateConstraint)]
    windows = sorted({_seconds(t) for c in daily for t in (c.start_time, c.end_time)} | {0})
    with _lock:  # get_prices copies; compiles run one at a time
        if len(windows) == 1:
            return _compile(_prices_for(info, tier, when), expires, model.provider)
        midnight = datetime.combine(when.date(), time(0), tzinfo=UTC)
        segments = [
            (start, _compile(_prices_for(info, tier, midnight + timedelta(seconds=start)), expires,
                             model.provider))
            for start in windows
        ]
    return TimedRates(segments, when.timestamp(), expires=expires)


def _seconds(t: time) -> int:
    if t.tzinfo is not None:
        t = datetime.combine(datetime(1970, 1, 1).date(), t).astimezone(UTC).time()
    return t.hour * 3600 + t.minute * 60 + t.second


def _compile(prices: ModelPrice, expires: float, provider: str) -> Rates:
    from genai_prices.types import TieredPrices

    tiered = [v for v in vars(prices).values() if isinstance(v, TieredPrices)]
    thresholds = sorted({t.start for v in tiered for t in v.tiers})
    container = _nanos_per_million(code_container_usd(provider))
    base = _probe(prices, 0, container)
    tiers = tuple((t, _probe(prices, t + 1, container)) for t in thresholds)
    return Rates(base, tiers, expires=expires)


def _prices_for(info: ModelInfo, tier: str | None, when: datetime) -> ModelPrice:
    return info.get_prices(when, _context(tier))


# Each dimension's probe: the usage that adds exactly one unit of it (ancestors included,
# as genai-prices requires), on top of an input of ``m`` tokens.
def _probes(m: int) -> dict[str, dict[str, int]]:
    one_in = m + 1
    return {
        "input": {"input_tokens": one_in},
        "cache_read": {"input_tokens": one_in, "cache_read_tokens": 1},
        "cache_write": {"input_tokens": one_in, "cache_write_tokens": 1, "cache_write_5m_tokens": 1},
        "cache_write_1h": {"input_tokens": one_in, "cache_write_tokens": 1, "cache_write_1h_tokens": 1},
        "input_audio": {"input_tokens": one_in, "input_audio_tokens": 1},
        "input_image": {"input_tokens": one_in, "input_image_tokens": 1},
        "output": {"input_tokens": m, "output_tokens": 1},
        "reasoning": {"input_tokens": m, "output_tokens": 1, "output_reasoning_tokens": 1},
        "output_audio": {"input_tokens": m, "output_tokens": 1, "output_audio_tokens": 1},
        "output_image": {"input_tokens": m, "output_tokens": 1, "output_image_tokens": 1},
        "web_search": {"input_tokens": m, "web_searches": 1},
        "file_search": {"input_tokens": m, "storage_searches": 1},
    }


def _probe(prices: ModelPrice, m: int, container: int) -> RateTuple:
    from genai_prices import Usage

    def total(counts: dict[str, int]) -> Decimal:
        return Decimal(prices.calc_price(Usage(**counts))["total_price"])

    baseline = total({"input_tokens": m})
    rates: dict[str, int] = {
        name: _nanos_per_million(total(counts) - baseline) for name, counts in _probes(m).items()
    }
    # What the baseline costs beyond its input tokens is the per-request fee.
    fee = baseline - Decimal(m) * (Decimal(rates["input"]) / _PER_TOKEN)
    rates["request"] = _nanos_per_million(fee)
    # genai-prices' code_executions are priced per 1,000 executions, not per container
    # session: a different unit, so never read as one (the fee table in _fees.py is).
    rates["code_container"] = container
    return tuple(rates[f] for f in RATE_FIELDS)  # type: ignore[return-value]


def _nanos_per_million(usd: Decimal) -> int:
    return int((usd * _PER_TOKEN).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def describe(model: SourceModel) -> dict[str, Any]:
    """What ``nasca prices`` shows of a source model."""
    return {"provider": model.provider, "id": model.model_id, "name": model.info.name}


def start_updates(interval_seconds: float, on_update: Callable[[], None], url: str | None = None) -> Any:
    """Start genai-prices' own background updater (it needs the network to reach its data);
    ``on_update`` runs in its thread after each new snapshot is in place. Returns the
    updater (``.stop()`` ends it)."""
    from genai_prices import UpdatePrices, data_snapshot

    class _Updates(UpdatePrices):
        def fetch(self) -> DataSnapshot | None:
            fresh = super().fetch()
            if fresh is not None:
                # Put it in place before forgetting what was compiled from the old one.
                data_snapshot.set_custom_snapshot(fresh)
                on_update()
            return fresh

    updater = _Updates(update_interval=interval_seconds) if url is None else _Updates(interval_seconds, url)
    updater.start()
    return updater
