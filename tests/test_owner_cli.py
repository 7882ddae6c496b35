"""The owner's CLI verbs (nasca user / credits / tiers), against a real Redis."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nasca_core import Nasca, Tier
from nasca_core.cli import main

pytestmark = pytest.mark.redis

TOML = """
namespace = "{namespace}"
store = "{store}"
default_tier = "free"

[tiers.free]
daily = "0.10"
monthly = "1"

[tiers.pro]
monthly = 20
"""


@pytest.fixture
def config(tmp_path: Path, redis_url: str, request: pytest.FixtureRequest) -> Path:
    path = tmp_path / "nasca.toml"
    path.write_text(TOML.format(namespace=f"cli{abs(hash(request.node.name)) % 10**8}", store=redis_url))
    return path


def app(config: Path) -> Nasca:
    # What the app itself runs with: the same store, namespace and tiers.
    data = tomllib.loads(config.read_text())
    return Nasca(data["store"], namespace=data["namespace"], default_tier="free",
                 tiers={"free": Tier(daily="0.10", monthly=1), "pro": Tier(monthly=20)})


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def as_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_user_show_and_set_tier(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = app(config)
    n.settle(n.reserve("0.01", user="u_42"), "0.04")
    shown = as_json(capsys, "user", "show", "u_42", "--config", str(config))
    assert shown["tier"] == "free" and shown["month_calls"] == 1
    assert shown["daily"].startswith("$0.04 of $0.1")
    code, out, _ = run(capsys, "user", "show", "u_42", "--config", str(config))
    assert code == 0 and "daily: $0.04 of $0.1" in out
    assert as_json(capsys, "user", "set-tier", "u_42", "pro", "--config", str(config))["stored_tier"] == "pro"
    assert n.get_usage("u_42").tier == "pro"  # the app sees it at once
    as_json(capsys, "user", "set-tier", "u_42", "--clear", "--config", str(config))
    assert n.get_usage("u_42").tier == "free"
    code, _, err = run(capsys, "user", "set-tier", "u_42", "platinum", "--config", str(config))
    assert code == 2 and "platinum" in err
    n.close()


def test_credits_grant_is_idempotent_and_listed(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["credits", "grant", "u_7", "--spend", "2", "--paid", "0", "--key", "support-981",
            "--config", str(config)]
    first = as_json(capsys, *argv)
    again = as_json(capsys, *argv)
    assert first["granted"] is True and again["granted"] is False and first["lot"] == "support-981"
    lots = as_json(capsys, "credits", "list", "u_7", "--config", str(config))
    assert [(x["lot"], x["remaining"]) for x in lots] == [("support-981", "2")]
    n = app(config)
    assert n.get_usage("u_7").credit_balance == 2
    code, _, err = run(capsys, "credits", "grant", "u_7", "--spend", "-1", "--key", "k", "--config",
                       str(config))
    assert code == 2 and "spend" in err
    assert n.get_usage("u_7").credit_balance == 2
    n.close()


def test_tiers_list_set_unset(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listed = {t["tier"]: t for t in as_json(capsys, "tiers", "list", "--config", str(config))}
    assert listed["free"]["daily"] == "0.1" and listed["free"]["source"] == "config"
    as_json(capsys, "tiers", "set", "free", "--daily", "0.02", "--monthly", "2", "--hard", "daily",
            "--config", str(config))
    n = app(config)
    assert n.tiers["free"] == Tier(daily="0.02", monthly=2, credits_cover=frozenset({"weekly", "monthly"}))
    listed = {t["tier"]: t for t in as_json(capsys, "tiers", "list", "--config", str(config))}
    assert listed["free"]["source"] == "store" and listed["free"]["hard"] == "daily"
    as_json(capsys, "tiers", "unset", "free", "--config", str(config))
    assert n.tiers["free"].daily == Tier(daily="0.10").daily
    code, _, err = run(capsys, "tiers", "set", "free", "--daily", "0", "--config", str(config))
    assert code == 2 and "tier" in err.lower()
    n.close()


def test_a_store_without_a_config(redis_url: str, capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./nasca.toml here
    code, _, err = run(capsys, "tiers", "list")
    assert code == 2 and "--config" in err
    as_json(capsys, "tiers", "set", "gold", "--monthly", "50", "--store", redis_url,
            "--namespace", "cli-bare")
    listed = as_json(capsys, "tiers", "list", "--store", redis_url, "--namespace", "cli-bare")
    assert {t["tier"]: t["source"] for t in listed}["gold"] == "store"


def _fill(n: Nasca, user: str) -> None:
    n.settle(n.reserve("0.01", user=user), "0.03")
    n.set_user_tier(user, "pro")
    n.billing.grant_credits(user, spend="1", paid="1", idempotency_key="k-" + user)
    n.analytics.record("purchase_completed", user, "p1", amount="1")


def test_user_export_and_delete(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = app(config)
    _fill(n, "u_del")
    _fill(n, "u_keep")
    revenue = n.analytics.month().revenue_usd
    exported = as_json(capsys, "user", "export", "u_del", "--config", str(config))
    assert exported["user_id"] == "u_del" and exported["deleted"] is False
    assert "k-u_del" in json.dumps(exported["records"]["c"]) and "pro" in json.dumps(exported["records"][""])
    assert list(exported["analytics"].values()) == [{"seen": 1, "orders": 1, "revenue:usd": 1_000_000_000}]
    code, out, _ = run(capsys, "user", "export", "u_del", "--config", str(config))
    assert code == 0 and "stored about 'u_del'" in out and "records c:" in out
    code, _, err = run(capsys, "user", "delete", "u_del", "--config", str(config))
    assert code == 2 and "--yes" in err and "Nothing was deleted" in err
    assert n.get_usage("u_del").credit_balance == 1  # without --yes, nothing changed
    code, out, _ = run(capsys, "user", "delete", "u_del", "--yes", "--config", str(config))
    assert code == 0 and "deleted about 'u_del'" in out
    u = n.get_usage("u_del")
    assert (u.tier, u.credit_balance, u.month_cost, u.month_calls) == ("free", 0, 0, 0)
    assert n.get_usage("u_keep").credit_balance == 1
    assert n.analytics.month().revenue_usd == revenue == 2
    code, out, _ = run(capsys, "user", "export", "u_del", "--config", str(config))
    assert "nothing stored about 'u_del'" in out
    n.close()


@pytest.mark.parametrize("where", ["sqlite", "cluster"])
def test_user_export_and_delete_with_store(where: str, tmp_path: Path, request: pytest.FixtureRequest,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path}/cli.db" if where == "sqlite" else request.getfixturevalue("cluster_url")
    namespace = f"cli{abs(hash(request.node.name)) % 10**8}"
    n = Nasca(uri, namespace=namespace, default_tier="free",
              tiers={"free": Tier(daily="0.10", monthly=1), "pro": Tier(monthly=20)})
    _fill(n, "u_del")
    store = ["--store", uri, "--namespace", namespace]
    assert as_json(capsys, "user", "export", "u_del", *store)["records"]
    deleted = as_json(capsys, "user", "delete", "u_del", "--yes", *store)
    assert deleted["deleted"] is True and deleted["records"]
    assert as_json(capsys, "user", "export", "u_del", *store)["records"] == {}
    assert n.get_usage("u_del").month_calls == 0 and n.analytics.month().revenue_usd == 1
    n.close()
