"""Nasca.from_env: the ledger's options from NASCA_* environment variables."""

from __future__ import annotations

import os

import pytest

from nasca_core import ConfigurationError, Nasca, NascaBlockedError, Tier


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NASCA_"):
            monkeypatch.delenv(name)


def test_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NASCA_STORE", "memory://from-env")
    monkeypatch.setenv("NASCA_TIERS", '{"free": {"daily": "0.01", "credits_cover": ["monthly"]}, '
                                      '"pro": {"monthly": 10}}')
    monkeypatch.setenv("NASCA_DEFAULT_TIER", "free")
    monkeypatch.setenv("NASCA_NAMESPACE", "envapp")
    monkeypatch.setenv("NASCA_TIMEZONE", "Europe/Paris")
    monkeypatch.setenv("NASCA_STRICT", "true")
    monkeypatch.setenv("NASCA_HOLD_TTL", "60")
    n = Nasca.from_env()
    assert (n.namespace, n.timezone, n.default_tier, n.strict, n.hold_ttl_ms) == (
        "envapp", "Europe/Paris", "free", True, 60_000)
    assert n.tiers["free"] == Tier(daily="0.01", credits_cover=frozenset({"monthly"}))
    assert n.tiers["pro"].monthly == 10
    n.settle(n.reserve("0.01", user="u1"), "0.01")
    with pytest.raises(NascaBlockedError) as info:
        n.reserve("0.001", user="u1")
    assert info.value.window == "daily"
    # the named memory store is the one the environment named
    assert Nasca("memory://from-env", tiers={"free": Tier()}, namespace="envapp",
                 default_tier="free").get_usage("u1").month_cost == n.get_usage("u1").month_cost


def test_keyword_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NASCA_TIERS", '{"free": {"monthly": 1}}')
    monkeypatch.setenv("NASCA_NAMESPACE", "fromenv")
    n = Nasca.from_env(namespace="given", tiers={"gold": Tier(monthly=5)}, default_tier="gold")
    assert n.namespace == "given" and set(n.tiers) == {"gold"}


@pytest.mark.parametrize(("name", "value", "words"), [
    ("NASCA_TIERS", "{not json", "TIERS"),
    ("NASCA_TIERS", '{"free": {"monthly": -1}}', "tiers"),
    ("NASCA_ON_STORE_ERROR", "maybe", "on_store_error"),
    ("NASCA_HOLD_TTL", "soon", "hold_ttl"),
])
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                      words: str) -> None:
    monkeypatch.setenv("NASCA_TIERS", '{"free": {"monthly": 1}}')
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        Nasca.from_env()
    assert words.lower() in str(info.value).lower()


def test_tiers_are_required() -> None:
    with pytest.raises(ConfigurationError, match="NASCA_TIERS"):
        Nasca.from_env()
