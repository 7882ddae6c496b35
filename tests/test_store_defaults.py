"""Which store when: ``nasca serve`` runs on a durable SQLite file by default and refuses
``memory://`` unless told ``--ephemeral``; ``Nasca()`` with no store stays in memory."""

from __future__ import annotations

from decimal import Decimal

import pytest

import nasca_core.server._cli as cli
from nasca_core import Nasca, Tier
from nasca_core.cli import main
from nasca_core.server._config import ServeConfig, build_nasca


def test_nasca_without_a_store_is_in_memory():
    n = Nasca(tiers={"t": Tier(daily=1)}, default_tier="t")
    assert n.store.is_memory and "memory" in repr(n)


def test_serve_defaults_to_a_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ServeConfig().store == "sqlite:///./nasca.db"
    n = build_nasca(ServeConfig(), {})
    n.settle(n.reserve("0.25", user="u"), "0.25")
    n.close()
    again = build_nasca(ServeConfig(), {})  # a restart: the spend is still there
    assert again.get_usage("u").month_cost == Decimal("0.25") and (tmp_path / "nasca.db").exists()
    again.close()


def _served(monkeypatch) -> list[object]:
    served: list[object] = []
    monkeypatch.setattr(cli, "_uvicorn", lambda app, host, port: served.append(app))
    monkeypatch.setenv("NASCA_SECRET", "s" * 32)
    return served


def test_serve_refuses_memory_unless_ephemeral(tmp_path, monkeypatch, capsys):
    served = _served(monkeypatch)
    path = tmp_path / "nasca.toml"
    path.write_text('store = "memory://"\n')
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "gone when the server stops" in err and "--ephemeral" in err and not served
    assert main(["serve", "--config", str(path), "--ephemeral"]) == 0
    assert len(served) == 1


def test_serve_runs_on_the_default_file(tmp_path, monkeypatch):
    served = _served(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nasca.toml").write_text('[tiers.free]\ndaily = "0.10"\n')
    assert main(["serve"]) == 0
    assert len(served) == 1 and (tmp_path / "nasca.db").exists()


@pytest.mark.parametrize("store", ["MEMORY://", "memory://named"])
def test_every_spelling_of_memory_is_refused(tmp_path, monkeypatch, store):
    served = _served(monkeypatch)
    path = tmp_path / "nasca.toml"
    path.write_text(f'store = "{store}"\n')
    assert main(["serve", "--config", str(path)]) == 2 and not served
