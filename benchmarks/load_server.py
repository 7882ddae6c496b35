"""Bounded local load on ``nasca serve``: upgrade pages, status polls and Stripe webhooks
(every completed checkout delivered several times, concurrently), then a black-box check
over HTTP that nothing failed and nothing was granted twice.

    .venv/bin/python benchmarks/load_server.py [--store memory|redis] [--redis-url URL]
        [--pages 2000] [--sessions 200] [--deliveries 3] [--concurrency 32] [--json]

The server is a real ``nasca serve`` process (one uvicorn worker) on a loopback port; the
load comes from this process (httpx, asyncio). It stops by itself; exit code 1 on any
error or double grant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _util import free_port, redis_server

from nasca_core.server import UpgradeLinks
from nasca_core.server._config import ServeConfig, build_nasca, build_settings
from nasca_core.testing.stripe import completed_session_event

ENV = {"NASCA_SECRET": "load-test-secret-0123456789abcdef",
       "NASCA_ADMIN_TOKEN": "load-admin-token-0123456789",
       "STRIPE_WEBHOOK_SECRET": "whsec_load_test_0123456789"}
USERS = 100
PACKS = {"p5": Decimal(5), "p10": Decimal(10)}


def config_text(store: str, port: int) -> str:
    return f"""
store = "{store}"
namespace = "load{random.randrange(10**6)}"
default_tier = "free"
[tiers.free]
daily = "0.10"
[packs.p5]
price = 5
spend = 3
[packs.p10]
price = 10
spend = 9
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


async def run(args: argparse.Namespace, store: str) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nasca.toml"
        path.write_text(config_text(store, port))
        config = ServeConfig.load(path)
        ephemeral = ["--ephemeral"] if store.startswith("memory:") else []  # a throwaway ledger
        proc = subprocess.Popen([sys.executable, "-m", "nasca_core.cli", "serve", "--config", str(path),
                                 *ephemeral],
                                env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            return await load(args, config, port, proc)
        finally:
            proc.terminate()
            proc.wait(10)
            err = ""
            if proc.stderr:
                err = proc.stderr.read().decode()
                proc.stderr.close()
            if "Traceback" in err:
                print(err, file=sys.stderr)


async def load(args: argparse.Namespace, config: ServeConfig, port: int,
               proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    signer = build_nasca(config.model_copy(update={"store": "memory://"}), ENV)  # signs like Stripe would
    links = UpgradeLinks(build_settings(config, ENV))
    rng = random.Random(1)
    users = [f"load-user-{i}" for i in range(USERS)]
    urls = {u: links.url(u, "free", f"prompt-{u}") for u in users}
    jobs: list[tuple[str, str, Any]] = [("page", urls[rng.choice(users)], None) for _ in range(args.pages)]
    jobs += [("status", urls[rng.choice(users)] + "/status", None) for _ in range(args.pages // 4)]
    expected: dict[str, Decimal] = defaultdict(Decimal)
    for i in range(args.sessions):
        user, pack = users[i % USERS], ("p5", "p10")[i % 2]
        signed = completed_session_event(signer, user, pack, prompt_id=f"prompt-{user}")
        expected[user] += PACKS[pack]
        jobs += [("webhook", signed, None)] * args.deliveries
    rng.shuffle(jobs)
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    dropped: list[str] = []
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        for _ in range(200):
            if proc.poll() is not None:
                raise SystemExit("nasca serve exited at start")
            try:
                await c.get(f"{base}/healthz")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        sem = asyncio.Semaphore(args.concurrency)

        async def one(kind: str, target: Any) -> None:
            async with sem:
                t0 = time.perf_counter()
                for attempt in (1, 2):
                    # A keep-alive connection the server closes as it is reused drops the request;
                    # a browser or Stripe sends it again (both requests are idempotent): so do we, once.
                    try:
                        if kind == "webhook":
                            r = await c.post(f"{base}/stripe/webhook", content=target.payload,
                                             headers=target.headers)
                        else:
                            r = await c.get(target)
                        break
                    except (httpx.ReadError, httpx.RemoteProtocolError):
                        if attempt == 2:
                            raise
                        dropped.append(kind)
                latencies[kind].append((time.perf_counter() - t0) * 1000)
                statuses[kind][r.status_code] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(kind, target) for kind, target, _ in jobs))
        elapsed = time.perf_counter() - started
        # Black-box checks: each user's credits and the month's orders, as the server sees them.
        double = 0
        for user in users:
            s = (await c.get(urls[user] + "/status")).json()
            paid = Decimal(s["credits"].lstrip("$").replace(",", ""))
            sessions = sum(1 for i in range(args.sessions) if users[i % USERS] == user)
            if s["lots"] != sessions or paid != expected[user]:
                double += 1
        report = (await c.get(f"{base}/admin/report.json",
                              headers={"Authorization": f"Bearer {ENV['NASCA_ADMIN_TOKEN']}"})).json()
    errors = sum(n for kind in statuses for code, n in statuses[kind].items() if code != 200)
    revenue_ok = (Decimal(report["revenue_usd"]) == sum(expected.values())
                  and report["orders"] == args.sessions)
    return {
        "store": config.store.split(":")[0], "requests": len(jobs), "seconds": round(elapsed, 2),
        "requests_per_second": round(len(jobs) / elapsed), "errors": errors, "dropped": len(dropped),
        "double_grants": double,
        "orders": report["orders"], "revenue_usd": report["revenue_usd"], "revenue_matches": revenue_ok,
        "funnel_purchases": report["funnel"]["purchase_completed"],
        "statuses": {k: dict(v) for k, v in statuses.items()},
        "latency_ms": {k: {"p50": round(statistics.median(v), 1), "p95": round(pct(v, 0.95), 1),
                           "p99": round(pct(v, 0.99), 1)} for k, v in latencies.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    parser.add_argument("--redis-url")
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--deliveries", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.store == "memory":
        result = asyncio.run(run(args, "memory://"))
    else:
        with redis_server(args.redis_url) as url:
            result = asyncio.run(run(args, url))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['requests']} requests on {result['store']} in {result['seconds']}s "
              f"({result['requests_per_second']}/s): {result['errors']} errors, "
              f"{result['double_grants']} double grants, {result['orders']} orders, "
              f"revenue ${result['revenue_usd']} "
              f"({'matches' if result['revenue_matches'] else 'MISMATCH'})")
        for kind, lat in result["latency_ms"].items():
            print(f"  {kind:<8} p50 {lat['p50']:>6} ms  p95 {lat['p95']:>6} ms  p99 {lat['p99']:>6} ms  "
                  f"{result['statuses'][kind]}")
    ok = not result["errors"] and not result["double_grants"] and result["revenue_matches"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
