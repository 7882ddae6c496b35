"""`nasca prices refresh`: validate first, write atomically, report what changed."""

from __future__ import annotations

import importlib.util
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from nasca_core._errors import ConfigurationError
from nasca_core.cli import main
from nasca_core.pricing import PriceChange, PriceTable, main_prices, refresh_prices
from nasca_core.pricing._table import shipped_price_file


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


OURS: dict[str, Any] = {
    "source": "test",
    "as_of": "2026-11-01",
    "unit": "USD per 1M tokens",
    "models": {
        "a": {"input": 1, "output": 2},
        "b": {"input": 3, "output": 4, "cache_read": 0.3},
    },
    "aliases": {"alpha": "a"},
}


def test_refresh_reports_added_removed_changed(tmp_path: Path) -> None:
    target = _write(tmp_path / "prices.json", OURS)
    new = {
        **OURS,
        "models": {
            "a": {"input": 1.5, "output": 2},
            "c": {"input": 5, "output": 6},
            "b": {"input": 3, "output": 4, "cache_read": 0.3},
        },
        "aliases": {"alpha": "a", "gamma": "c"},
    }
    source = _write(tmp_path / "new.json", new)
    diff = refresh_prices(source, target)
    assert diff.added == ("c",)
    assert diff.removed == ()
    assert diff.changed == (PriceChange("a", "input", Decimal(1), Decimal("1.5")),)
    assert diff.aliases_added == ("gamma -> c",)
    assert diff.written_to == target
    report = diff.format()
    assert "+ c" in report and "~ a input: $1/1M -> $1.5/1M" in report
    written = PriceTable.from_file(target)
    assert written.models == ("a", "b", "c")
    assert written.resolve("alpha")[1].input == Decimal("1.5")

    # Removing a model, and a second identical refresh.
    source2 = _write(
        tmp_path / "new2.json", {**new, "models": {"a": new["models"]["a"]}, "aliases": {}}
    )
    diff2 = refresh_prices(source2, target)
    assert diff2.removed == ("b", "c")
    assert diff2.aliases_removed == ("alpha", "gamma")
    assert refresh_prices(source2, target).is_empty
    assert "No price changes." in refresh_prices(source2, target).format()


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    target = _write(tmp_path / "prices.json", OURS)
    before = target.read_bytes()
    source = _write(tmp_path / "new.json", {**OURS, "models": {"a": {"input": 9, "output": 9}}})
    diff = refresh_prices(source, target, dry_run=True)
    assert diff.removed == ("b",) and diff.written_to is None
    assert "dry run" in diff.format()
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    ("models", "fragments"),
    [
        ({"a": {"output": 2}}, ["'a'", "input"]),
        ({"a": {"input": 1}}, ["'a'", "output"]),
        ({"a": {"input": -1, "output": 1}}, ["'a'", "input"]),
        ({"a": {"input": "x", "output": 1}}, ["'a'", "input"]),
        ({"a": 5}, ["'a'"]),
    ],
)
def test_invalid_source_leaves_target_untouched(
    tmp_path: Path, models: dict[str, Any], fragments: list[str]
) -> None:
    target = _write(tmp_path / "prices.json", OURS)
    before = target.read_bytes()
    source = _write(tmp_path / "bad.json", {**OURS, "models": models, "aliases": {}})
    with pytest.raises(ConfigurationError) as info:
        refresh_prices(source, target)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "prices.json"]


def test_litellm_missing_field_is_an_error(tmp_path: Path) -> None:
    target = _write(tmp_path / "prices.json", OURS)
    before = target.read_bytes()
    source = _write(
        tmp_path / "litellm.json",
        {
            "gpt-x": {"input_cost_per_token": 1e-06, "litellm_provider": "openai", "mode": "chat"},
        },
    )
    with pytest.raises(ConfigurationError, match=r"'gpt-x'.*output_cost_per_token"):
        refresh_prices(source, target)
    assert target.read_bytes() == before


def test_litellm_import(tmp_path: Path) -> None:
    target = _write(
        tmp_path / "prices.json",
        {
            **OURS,
            "models": {**OURS["models"], "gpt-x": {"input": 1, "output": 1}},
            "aliases": {"alpha": "a", "house": "gpt-x"},
        },
    )
    source = _write(
        tmp_path / "litellm.json",
        {
            "sample_spec": {"input_cost_per_token": 0},
            "gpt-x": {
                "input_cost_per_token": 1.25e-06,
                "output_cost_per_token": 1e-05,
                "cache_read_input_token_cost": 1.25e-07,
                "litellm_provider": "openai",
                "mode": "chat",
            },
            "gemini-z": {
                "input_cost_per_token": 9e-06,
                "output_cost_per_token": 9e-06,
                "litellm_provider": "vertex_ai-language-models",
                "mode": "chat",
            },
            "gemini/gemini-z": {
                "input_cost_per_token": 1.25e-06,
                "input_cost_per_token_above_200k_tokens": 2.5e-06,
                "output_cost_per_token": 1e-05,
                "output_cost_per_token_above_200k_tokens": 1.5e-05,
                "output_cost_per_reasoning_token": 1e-05,
                "litellm_provider": "gemini",
                "mode": "chat",
            },
            "azure/gpt-x": {
                "input_cost_per_token": 9,
                "output_cost_per_token": 9,
                "litellm_provider": "azure",
            },
            "embed": {
                "input_cost_per_token": 1e-07,
                "litellm_provider": "openai",
                "mode": "embedding",
            },
            "image": {"output_cost_per_image": 0.04, "litellm_provider": "openai", "mode": "chat"},
        },
    )
    diff = refresh_prices(source, target)
    assert diff.added == ("gemini-z",)
    assert diff.removed == ("a", "b")
    assert diff.aliases_removed == ("alpha",)  # its model is gone; "house" survives
    table = PriceTable.from_file(target)
    assert table.models == ("gemini-z", "gpt-x")
    assert table.normalize("house") == "gpt-x"
    _, gpt = table.resolve("gpt-x")
    assert (gpt.input, gpt.output, gpt.cache_read) == (
        Decimal("1.25"),
        Decimal(10),
        Decimal("0.125"),
    )
    _, gem = table.resolve("gemini-z")
    assert gem.input == Decimal("1.25")  # the Gemini API entry wins over Vertex's
    assert gem.reasoning is None  # same as output: not priced apart
    assert gem.long_context[0].above_input_tokens == 200_000
    assert gem.long_context[0].output == Decimal(15)


def test_tokencost_file_imports(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("tokencost")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tokencost is not installed")
    source = Path(next(iter(spec.submodule_search_locations))) / "model_prices.json"
    target = tmp_path / "prices.json"
    diff = refresh_prices(source, target)
    assert diff.model_count > 200
    table = PriceTable.from_file(target)
    assert table.normalize("gpt-4o-2024-08-06") == "gpt-4o-2024-08-06"
    assert table.normalize("gemini/gemini-2.5-pro") == "gemini-2.5-pro"


def test_corrupt_target_can_be_replaced(tmp_path: Path) -> None:
    target = tmp_path / "prices.json"
    target.write_text("{oops", encoding="utf-8")
    diff = refresh_prices(_write(tmp_path / "new.json", OURS), target)
    assert diff.added == ("a", "b")
    assert PriceTable.from_file(target).models == ("a", "b")


def test_default_target_is_the_shipped_file(tmp_path: Path) -> None:
    # Dry run only: never rewrite the shipped table from a test.
    diff = refresh_prices(shipped_price_file(), dry_run=True)
    assert diff.is_empty
    assert diff.model_count == len(PriceTable.default().models)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = _write(tmp_path / "prices.json", OURS)
    source = _write(
        tmp_path / "new.json",
        {**OURS, "models": {**OURS["models"], "z": {"input": 1, "output": 1}}},
    )
    assert main_prices(["refresh", str(source), "--output", str(target), "--dry-run"]) == 0
    assert "+ z" in capsys.readouterr().out
    assert "z" not in PriceTable.from_file(target).models
    assert main(["prices", "refresh", str(source), "--output", str(target)]) == 0
    out = capsys.readouterr().out
    assert "1 added" in out and str(target) in out
    assert "z" in PriceTable.from_file(target).models

    bad = _write(tmp_path / "bad.json", {"models": {"q": {"input": 1}}})
    assert main(["prices", "refresh", str(bad), "--output", str(target)]) == 2
    assert "'q'" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["prices"])
    with pytest.raises(SystemExit):
        main([])
