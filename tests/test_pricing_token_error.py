"""The measured error of the local token count for Anthropic and Gemini prompts.

No tokenizer of theirs runs offline, so Nasca counts their prompts with tiktoken
(cl100k_base) plus OpenAI's per-message overhead, and the calibration (``_calibration.py``)
corrects the count from the usage the provider reports. ``tests/data/token_corpus.json``
pairs prompts with the input tokens the provider reported for them, each entry citing the
recorded response it comes from. This test measures the count's error over that corpus,
raw and after the real calibration (``_calibration.stats_of``: the median clamped ratio,
applied by ``prompt_hold`` once ``MIN_CALLS`` calls were seen) learned from the other
entries of the same provider (leave one out; the calibration is per model, and the
provider's other prompts stand in for one model's history: no model here has
``MIN_CALLS`` entries of its own), and checks the figures the README states ("Counting"
under "Prices"). Most prompts are short (25 of the 27 report 41 tokens or fewer), where
a fixed per-message overhead weighs most.

    .venv/bin/python -m tests.test_pricing_token_error     # prints the figures
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest

from nasca_core._calibration import stats_of
from nasca_core.pricing import count_message_tokens

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "token_corpus.json"
PROVIDERS = ("anthropic", "google")


@dataclass(frozen=True)
class Figures:
    provider: str
    prompts: int
    raw_mean: float  # mean |counted - reported| / reported
    raw_low: float  # lowest and highest counted / reported
    raw_high: float
    calibrated_mean: float  # the same, after the real calibration learned from the others

    def line(self) -> str:
        return (f"{self.provider}: {self.prompts} prompts, counted/reported "
                f"{self.raw_low:.2f}-{self.raw_high:.2f}, mean error {self.raw_mean:.0%} raw, "
                f"{self.calibrated_mean:.0%} calibrated")


def _entries() -> list[dict[str, object]]:
    entries: list[dict[str, object]] = json.loads(CORPUS.read_text())["entries"]
    return entries


def _counted(entry: dict[str, object]) -> int:
    system = entry["system"]
    messages = [{"role": "system", "content": system}] if system else []
    messages += entry["messages"]  # type: ignore[arg-type]
    return count_message_tokens(messages, str(entry["model"]))


def measure(provider: str) -> Figures:
    pairs = [(_counted(e), int(e["reported_input_tokens"]))  # type: ignore[call-overload]
             for e in _entries() if e["provider"] == provider]
    ratios = [c / r for c, r in pairs]
    calibrated = []
    for i, (counted, reported) in enumerate(pairs):
        # What the calibration holds for this prompt after settling the others; fewer than
        # MIN_CALLS of them: not warm, the raw count.
        others = [(c, r, 0) for j, (c, r) in enumerate(pairs) if j != i]
        stats = stats_of(len(others), others)
        held = stats.prompt_hold(counted) if stats.warm else counted
        calibrated.append(abs(held - reported) / reported)
    return Figures(
        provider, len(pairs),
        raw_mean=statistics.fmean(abs(c - r) / r for c, r in pairs),
        raw_low=min(ratios), raw_high=max(ratios),
        calibrated_mean=statistics.fmean(calibrated),
    )


def test_every_entry_cites_its_source_and_is_plain_text() -> None:
    entries = _entries()
    assert {e["provider"] for e in entries} == set(PROVIDERS)
    for e in entries:
        assert str(e["source"]).startswith("https://github.com/") and "cassettes" in str(e["source"])
        assert isinstance(e["reported_input_tokens"], int) and e["reported_input_tokens"] > 0
        assert all(set(m) == {"role", "content"} for m in e["messages"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_readme_states_the_measured_error(provider: str) -> None:
    figures = measure(provider)
    readme = (ROOT / "README.md").read_text()
    name = {"anthropic": "Anthropic", "google": "Gemini"}[provider]
    pattern = (rf"- {name} \((\d+) prompts\): counted/reported ([\d.]+)[–-]([\d.]+), mean error "
               rf"(\d+)% raw, (\d+)% calibrated")
    found = re.search(pattern, readme.replace("\n  ", " "))
    assert found, f"README does not state {name}'s figures; measured: {figures.line()}"
    prompts, low, high, raw, calibrated = found.groups()
    assert int(prompts) == figures.prompts
    assert (float(low), float(high)) == (round(figures.raw_low, 2), round(figures.raw_high, 2))
    assert int(raw) == round(figures.raw_mean * 100)
    assert int(calibrated) == round(figures.calibrated_mean * 100)


def test_calibration_removes_a_bias() -> None:
    # Gemini's prompts count high (OpenAI's per-message overhead is more than Gemini adds):
    # a bias the learned ratio takes out. Anthropic's count has none to take out here.
    gemini = measure("google")
    assert gemini.raw_low > 1 and gemini.calibrated_mean < gemini.raw_mean / 2


if __name__ == "__main__":
    for p in PROVIDERS:
        print(measure(p).line())
