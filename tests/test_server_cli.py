"""``nasca serve`` and ``nasca report``: nasca.toml with secrets from the environment, the
report as text and JSON on a real store, and ``nasca serve --demo`` as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from nasca_core import ConfigurationError
from nasca_core.analytics import analytics_for
from nasca_core.cli import build_parser, main
from nasca_core.server._config import ServeConfig, build_nasca, build_settings
from nasca_core.testing.stripe import completed_session_event
from tests._webapp import billed, block, free_port

TOML = """
store = "memory://cli-test"
namespace = "shop"
timezone = "Europe/Paris"
default_tier = "free"

[tiers.free]
daily = "0.10"
monthly = 1
credits_cover = ["monthly"]

[tiers.pro]
monthly = 20

[packs.p5]
price = 5
spend = 3

[plans.pro]
tier = "pro"
price = 20
interval = "year"

[server]
port = 9999
public_url = "https://app.example.com/nasca"
allowed_origins = ["https://app.example.com"]
app_name = "Acme AI"
"""


def test_config_builds_the_nasca_and_settings(tmp_path):
    path = tmp_path / "nasca.toml"
    path.write_text(TOML)
    config = ServeConfig.load(path)
    env = {"NASCA_SECRET": "s" * 32, "NASCA_ADMIN_TOKEN": "tok-Xq3vR9kLm2Zp7Wd4",
           "STRIPE_WEBHOOK_SECRET": "whsec_env"}
    n = build_nasca(config, env)
    try:
        assert (n.namespace, n.timezone, n.default_tier) == ("shop", "Europe/Paris", "free")
        assert n.tiers["free"].credits_cover == frozenset({"monthly"}) and n.tiers["pro"].monthly == 20
        assert n.packs["p5"].spend == 3 and n.plans["pro"].interval == "year"
        assert n.billing.webhook_secret == "whsec_env" and n.billing.stripe is None  # no STRIPE_API_KEY
    finally:
        n.close()
    s = build_settings(config, env)
    assert s.public_url == "https://app.example.com/nasca" and s.app_name == "Acme AI"
    assert s.allowed_origins == ("https://app.example.com",) and s.admin_token is not None
    with pytest.raises(ConfigurationError, match="NASCA_SECRET"):
        build_settings(config, {})


@pytest.mark.parametrize("line", ['secret = "abc"', '[server]\nadmin_token = "x"',
                                  '[stripe]\napi_key = "sk_live"'])
def test_secrets_in_the_file_are_refused(tmp_path, line):
    path = tmp_path / "nasca.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigurationError, match="environment variables"):
        ServeConfig.load(path)


def test_bad_files_say_what_is_wrong(tmp_path, capsys):
    for text, words in (("store = ", "nasca.toml"), ("[tiers.free]\ndaily = -1\n", "tier limit"),
                        ("colour = 'blue'\n", "colour")):
        path = tmp_path / "nasca.toml"
        path.write_text(text)
        with pytest.raises(ConfigurationError, match=words):
            build_nasca(ServeConfig.load(path), {})
    assert main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_server_takes_no_budget_lease(tmp_path):
    # A hold reserved through one worker may be settled through another: a lease never learns it.
    path = tmp_path / "nasca.toml"
    path.write_text(TOML)
    n = build_nasca(ServeConfig.load(path), {}, store=f"sqlite:///{tmp_path}/ledger.db")
    try:
        assert n.deferred.sender is not None and not n.leases.on  # on by default with the sender
    finally:
        n.close()


def test_the_cli_registry_keeps_prices():
    parser = build_parser()
    assert parser.parse_args(["prices", "gpt-5", "--prices", "x.json"]).command == "prices"
    assert parser.parse_args(["serve", "--demo", "--port", "0"]).demo
    assert parser.parse_args(["report", "--json", "--month", "2026-11"]).json


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_report_prints_the_month_from_the_store(make_nasca, store_uri, capsys, clock):
    n = billed(make_nasca)
    a = analytics_for(n)
    err = block(n, "ann")
    a.record("prompt_shown", "ann", err.prompt_id)
    signed = completed_session_event(n, "ann", "p10", prompt_id=err.prompt_id)
    n.handle_stripe_webhook(signed.payload, signed.signature)
    for user in ("bo", "cy"):
        r = n.reserve(Decimal("0.01"), user=user)
        n.settle(r, Decimal("0.03"), tokens=(900, 100))
    args = ["report", "--store", store_uri, "--namespace", n.namespace, "--month", "2026-11"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"Nasca report · {n.namespace} · 2026-11 (UTC)" in text
    assert "purchase completed" in text and "Revenue   $10.00  (1 orders, average $10.00)" in text
    assert "Top users by AI cost" in text and "ann" in text and "bo" in text
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["funnel"] == {"blocked": 1, "prompt_shown": 1, "checkout_started": 0,
                              "purchase_completed": 1, "dismissed": 0}
    assert {u["user_id"] for u in data["users"]} == {"ann", "bo", "cy"}
    assert main(["report", "--store", store_uri, "--month", "nope"]) == 2
    assert "month must look like" in capsys.readouterr().err


def test_serve_demo_runs_and_shows_the_dashboard_and_an_upgrade_page(tmp_path):
    port = free_port()
    env = {**os.environ, "NASCA_ADMIN_TOKEN": "demo-admin-token-123456", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nasca_core.cli", "serve", "--demo", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        lines = []
        deadline = time.monotonic() + 30
        while not any("Stripe:" in line for line in lines):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "".join(lines)
        out = "".join(lines)
        assert f"dashboard:     http://127.0.0.1:{port}/admin" in out
        upgrade = next(line.split()[-1] for line in lines if "upgrade page:" in line)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10) as c:
            for _ in range(100):
                try:
                    c.get(f"{base}/healthz")
                    break
                except httpx.ConnectError:
                    time.sleep(0.1)
            page = c.get(upgrade)
            assert page.status_code == 200 and "You've reached your daily limit" in page.text
            assert c.get(f"{base}/admin").status_code == 401
            dash = c.get(f"{base}/admin", headers={"Authorization": "Bearer demo-admin-token-123456"})
            assert dash.status_code == 200
            revenue = Decimal(dash.text.split('id="kpi-revenue">$', 1)[1].split("<", 1)[0])
            assert revenue > 0 and "carol" in dash.text and "frank" in dash.text
            assert c.get(f"{base}/demo").status_code == 200
            r = c.post(f"{base}/demo/ask", data={"user": "carol"})
            assert r.status_code == 402 and r.json()["checkout_url"].startswith(f"{base}/u/")
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    assert not list(Path(tmp_path).iterdir())  # the demo writes nothing


def test_report_refuses_to_guess_a_store(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./nasca.toml
    assert main(["report"]) == 2
    assert "nasca.toml" in capsys.readouterr().err
    assert not (tmp_path / "nasca.db").exists()  # nothing was created on the way
