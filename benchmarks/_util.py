"""Shared helpers for the benchmark scripts: a throwaway redis-server and p50 timing."""

from __future__ import annotations

import contextlib
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(url: str | None = None) -> Iterator[str]:
    """Yield ``url`` if given, else start a redis-server on a free loopback port."""
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server, or pass --redis-url")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import redis

            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait()


def sample(fn: Callable[[], object], n: int, warmup: int = 200) -> list[float]:
    """Per-call times in microseconds."""
    for _ in range(warmup):
        fn()
    out = []
    perf = time.perf_counter_ns
    for _ in range(n):
        t0 = perf()
        fn()
        out.append((perf() - t0) / 1000)
    return out


def interleaved(fns: dict[str, Callable[[], object]], n: int, rounds: int = 5) -> dict[str, float]:
    """p50 (µs) of each function, sampled in alternating rounds so machine noise hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        sample(fn, 0)
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name] += sample(fn, n // rounds, warmup=20)
    return {k: statistics.median(v) for k, v in times.items()}
