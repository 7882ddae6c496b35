"""Remote mode: reserve+settle through ``Nasca("http://...", api_key=...)`` against a real
``nasca serve`` process on Redis, and what one server process sustains.

    .venv/bin/python benchmarks/bench_remote.py [--redis-url redis://...] [-n 2000] [--seconds 5]

1. p50 of a remote reserve+settle (two POSTs: /v1/reserve, /v1/settle) against two bare
   httpx GETs of the same server's /healthz on a pooled client, sampled interleaved in one
   run: the ratio is what the ledger API costs over the HTTP round trips. Goal: ≤ 3×.
2. reserve+settle per second that one ``nasca serve`` process sustains on Redis, driven by
   ``--workers`` caller processes for ``--seconds`` (reported).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _util import free_port, interleaved, redis_server

from nasca_core import Nasca

KEY = "bench-remote-key-0123456789abcdef"
CONFIG = """store = "{store}"
namespace = "bench{suffix}"
default_tier = "big"

[tiers.big]
monthly = 1000000
max_in_flight = 100000
"""


def start_server(store: str, directory: str) -> tuple[subprocess.Popen[bytes], str]:
    config = Path(directory) / "nasca.toml"
    config.write_text(CONFIG.format(store=store, suffix=os.getpid()), encoding="utf-8")
    port = free_port()
    env = {**os.environ, "NASCA_SECRET": "bench-secret-0123456789abcdef", "NASCA_API_KEYS": KEY,
           "NASCA_API_RATE": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "nasca_core.cli", "serve", "--config", str(config),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("nasca serve did not start")


def _drive(url: str, seconds: float, worker: int) -> tuple[int, int]:
    n = Nasca(url, api_key=KEY, state_dir=tempfile.mkdtemp(prefix="bench-remote-"))
    done = errors = 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        try:
            n.settle(n.reserve(nanos=1000, user=f"load-{worker}-{done % 20}"), nanos=1000)
            done += 1
        except Exception:
            errors += 1
    n.close()
    return done, errors


def sustained(url: str, seconds: float, workers: int) -> tuple[int, int]:
    # Callers in processes of their own, each with a pooled sync client: one process's
    # asyncio client would measure httpx's async pool, not the server.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.starmap(_drive, [(url, seconds, w) for w in range(workers)])
    return sum(d for d, _ in results), sum(e for _, e in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    with redis_server(args.redis_url) as store, tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(store, tmp)
        try:
            n = Nasca(url, api_key=KEY, state_dir=tmp)
            bare = httpx.Client(base_url=url)

            def remote() -> None:
                n.settle(n.reserve(nanos=1000, user="bench"), nanos=1000)

            def two_gets() -> None:
                bare.get("/healthz")
                bare.get("/healthz")

            p50 = interleaved({"remote reserve+settle": remote, "two bare httpx GETs": two_gets}, args.n)
            n.close()
            bare.close()
            done, errors = sustained(url, args.seconds, args.workers)
        finally:
            proc.terminate()
            proc.wait()
    ratio = p50["remote reserve+settle"] / p50["two bare httpx GETs"]
    print(f"{'what':<34}{'p50 µs':>10}")
    for name, value in p50.items():
        print(f"{name:<34}{value:>10.0f}")
    print(f"ratio: {ratio:.2f}x two bare requests (goal <= 3x: {'met' if ratio <= 3 else 'missed'})")
    print(f"one nasca serve process on Redis: {done / args.seconds:,.0f} reserve+settle/s "
          f"({args.workers} caller processes, {args.seconds:.0f} s, {errors} errors)")


if __name__ == "__main__":
    main()
