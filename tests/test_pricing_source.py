"""genai-prices as the source: flagships priced by default, published prices, lazy import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nasca_core.pricing import PriceTable, TokenUsage
from tests._flagships import FLAGSHIPS

MILLION = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)


@pytest.mark.parametrize("model", FLAGSHIPS)
def test_every_current_flagship_is_priced_by_default(model: str) -> None:
    table = PriceTable.default()
    assert model in table
    assert table.cost_nanos(model, MILLION) > 0


# Each provider's published standard price (USD per 1M input / output tokens), fixed here:
# a genai-prices update that changes one fails this test, the signal to review.
PUBLISHED = [
    ("gpt-5", 1.25, 10),
    ("gpt-5.4", 2.5, 15),
    ("gpt-4o", 2.5, 10),
    ("gpt-4o-mini", 0.15, 0.6),
    ("claude-sonnet-4-5", 3, 15),
    ("claude-opus-4-8", 5, 25),
    ("claude-haiku-4-5", 1, 5),
    ("gemini-2.5-pro", 1.25, 10),
    ("gemini-2.5-flash", 0.3, 2.5),
    ("gemini-3.1-pro-preview", 2, 12),
    ("deepseek-v4-pro", 0.66, 1.98),  # at noon UTC; 1.32 / 3.96 in its peak hours (01-04, 06-10 UTC)
]


@pytest.mark.parametrize(("model", "inp", "out"), PUBLISHED)
def test_published_standard_prices(model: str, inp: float, out: float,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import nasca_core.pricing._rates as rates_module

    # DeepSeek's prices follow the UTC time of day: ask at noon, whenever CI runs.
    monkeypatch.setattr(rates_module.time, "time", lambda: 20_000 * 86_400 + 12 * 3600)
    table = PriceTable.default()
    # 100k tokens: below every long-context tier.
    assert table.cost_nanos(model, TokenUsage(input_tokens=100_000)) == round(inp * 10**8)
    assert table.cost_nanos(model, TokenUsage(output_tokens=100_000)) == round(out * 10**8)


def test_latest_aliases_map_to_the_served_model() -> None:
    # The hand-written suffix stripping priced these 4.0x, 3.3x and 0.27x the bill.
    table = PriceTable.default()
    assert table.normalize("mistral-large-latest") == "mistral-large-2512"
    assert table.normalize("codestral-latest") == "codestral"
    assert table.normalize("mistral-medium-latest") == "mistral-medium-latest"


def test_source_and_version_are_reported() -> None:
    import genai_prices

    assert PriceTable.default().source == f"genai-prices {genai_prices.__version__}"


def test_import_nasca_core_does_not_import_genai_prices() -> None:
    code = "import sys, nasca_core, nasca_core.pricing; print('genai_prices' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_compiled_once_per_model_and_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    from nasca_core.pricing import _genai, clear_source_cache

    clear_source_cache()
    calls: list[tuple[str, str | None]] = []
    real = _genai.compile_rates

    def counting(model: _genai.SourceModel, tier: str | None) -> object:
        calls.append((model.model_id, tier))
        return real(model, tier)

    monkeypatch.setattr(_genai, "compile_rates", counting)
    table = PriceTable.default().with_overrides({})
    for _ in range(100):
        table.cost_nanos("gpt-5-2025-08-07", MILLION)
        table.cost_nanos("gpt-5", TokenUsage(10, 10, service_tier="flex"))
    assert [c for c in calls if c[0] == "gpt-5"] == [("gpt-5", None), ("gpt-5", "flex")]
    clear_source_cache()


def test_deepseek_peak_and_off_peak_follow_the_utc_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    import nasca_core.pricing._rates as rates_module
    from nasca_core.pricing._rates import TimedRates

    rates = PriceTable.default().rates("deepseek-chat")
    assert isinstance(rates, TimedRates)
    million = TokenUsage(input_tokens=1_000_000)
    day = 20_000 * 86_400  # a UTC midnight
    # genai-prices: $0.27 from 00:30 to 16:30 UTC, $0.135 otherwise (DeepSeek's off-peak).
    for hour, nanos in ((0, 135_000_000), (1, 270_000_000), (16, 270_000_000), (17, 135_000_000)):
        monkeypatch.setattr(rates_module.time, "time", lambda h=hour: day + h * 3600 + 60)
        assert rates.cost(million) == nanos, hour


def test_deepseek_v4_peak_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    import nasca_core.pricing._rates as rates_module

    table = PriceTable.default()
    for hour, inp in ((2, 1.32), (8, 1.32), (5, 0.66), (12, 0.66)):
        monkeypatch.setattr(rates_module.time, "time", lambda h=hour: 20_000 * 86_400 + h * 3600 + 60)
        assert table.cost_nanos("deepseek-v4-pro", TokenUsage(input_tokens=100_000)) == round(inp * 10**8)
