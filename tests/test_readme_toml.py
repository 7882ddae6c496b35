"""The README's nasca.toml example is a config nasca serve accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from nasca_core.server import ServeConfig, build_nasca, build_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_builds_the_nasca_and_settings() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### `nasca.toml`"):]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    data = tomllib.loads(example.group(1))
    assert data["store"] == "sqlite:///./nasca.db"
    config = ServeConfig.parse({**data, "store": "memory://"}, "README.md")
    nasca = build_nasca(config, {})
    try:
        assert set(nasca.tiers) == {"free", "pro"} and nasca.tiers["free"].hard_windows()[0]
        assert set(nasca.billing.packs) == {"p5"} and nasca.billing.plans["pro"].tier == "pro"
        assert nasca.billing.plans["pro"].anchor == "subscription"
        assert nasca.billing.policy.on_amount_mismatch == "review"
    finally:
        nasca.close()
    settings = build_settings(config, {"NASCA_SECRET": "s" * 40})
    assert settings.app_name == "Acme AI" and settings.allowed_origins == ("https://app.example.com",)
    units = {**data["server"], "display_unit": "messages", "unit_cost": "0.002"}
    priced = build_settings(ServeConfig.parse({**data, "store": "memory://", "server": units}), {
        "NASCA_SECRET": "s" * 40})
    assert (priced.display_unit, str(priced.unit_cost)) == ("messages", "0.002")
