"""Bounded local load on a real ``nasca serve`` process (benchmarks/load_server.py): upgrade
pages, status polls and every Stripe webhook delivered four times, concurrently; no errors
and no double grants, checked over HTTP afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "load_server.py"


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_upgrade_pages_and_webhooks_under_load(store, request):
    extra = ["--redis-url", request.getfixturevalue("redis_url")] if store == "redis" else []
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--store", store, *extra, "--pages", "1600", "--sessions", "150",
         "--deliveries", "4", "--concurrency", "32", "--json"],
        capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["requests"] == 1600 + 400 + 150 * 4
    assert result["errors"] == 0 and result["double_grants"] == 0
    assert result["dropped"] <= 3  # keep-alive connections closed as reused, each sent again once
    assert result["orders"] == 150 and result["revenue_matches"] and result["funnel_purchases"] == 100
    assert result["statuses"] == {"page": {"200": 1600}, "status": {"200": 400}, "webhook": {"200": 600}}
    print(f"\n{store}: {result['requests']} requests, {result['requests_per_second']}/s, "
          f"latency {result['latency_ms']}")
