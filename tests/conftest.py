"""Test session services: a real redis-server and a real 3-master Redis Cluster on loopback.

With CI set, a missing redis-server fails the run instead of skipping the Redis suites.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

# Journals of deferred settles go to a directory of the session's, never the user's ~/.local/state.
if "NASCA_STATE_DIR" not in os.environ:
    os.environ["NASCA_STATE_DIR"] = tempfile.mkdtemp(prefix="nasca-state-")
    atexit.register(shutil.rmtree, os.environ["NASCA_STATE_DIR"], ignore_errors=True)

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
IN_CI = bool(os.environ.get("CI"))


def _free_port(max_port: int = 65535) -> int:
    # Cluster nodes also listen on port + 10000, so they need a port below 55536.
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port <= max_port and (max_port == 65535 or _is_free(port + 10000)):
            return port
    raise RuntimeError("no free loopback port")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _need_redis() -> None:
    if REDIS_SERVER and REDIS_CLI:
        return
    msg = "redis-server/redis-cli not found (scripts/test.sh installs them with apt-get)"
    if IN_CI:
        pytest.fail(msg + "; CI is set, so this fails the run", pytrace=False)
    pytest.skip(msg)


class RedisProcess:
    def __init__(self, port: int, workdir: Path, *extra: str) -> None:
        self.port = port
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [REDIS_SERVER or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "no",
             "--loglevel", "warning", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.wait()

    def wait(self) -> None:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    _need_redis()
    with tempfile.TemporaryDirectory(prefix="nasca-redis-") as tmp:
        server = RedisProcess(_free_port(), Path(tmp))
        try:
            yield f"redis://127.0.0.1:{server.port}/0"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    _need_redis()
    with tempfile.TemporaryDirectory(prefix="nasca-cluster-") as tmp:
        nodes = []
        try:
            for i in range(3):
                d = Path(tmp) / str(i)
                d.mkdir()
                nodes.append(RedisProcess(_free_port(55535), d, "--cluster-enabled", "yes",
                                          "--cluster-config-file", "nodes.conf",
                                          "--cluster-node-timeout", "5000"))
            subprocess.run(
                [REDIS_CLI or "redis-cli", "--cluster", "create",
                 *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-replicas", "0", "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
            )
            deadline = time.monotonic() + 30
            while True:
                infos = [redis.Redis(port=n.port).cluster("info") for n in nodes]
                if all(i.get("cluster_state") == "ok" for i in infos):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster did not become ok: {infos}")
                time.sleep(0.2)
            yield "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        finally:
            for n in nodes:
                n.stop()


@pytest.fixture(scope="session")
def redis_server_factory() -> Iterator[Callable[[], RedisProcess]]:
    """Start extra throwaway servers (for fault tests that stop and restart one)."""
    _need_redis()
    started: list[RedisProcess] = []
    with tempfile.TemporaryDirectory(prefix="nasca-redis-extra-") as tmp:
        counter = itertools.count()

        def make() -> RedisProcess:
            d = Path(tmp) / str(next(counter))
            d.mkdir()
            p = RedisProcess(_free_port(), d)
            started.append(p)
            return p

        yield make
        for p in started:
            p.stop()


BACKENDS = ["memory", "sqlite", "redis", "cluster"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_uri(backend: str, request: pytest.FixtureRequest) -> str:
    """A store URI for the backend; memory stores are named so several Nasca share one."""
    if backend == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if backend == "sqlite":  # a real file, shared by every Nasca of the test like processes would
        return f"sqlite:///{request.getfixturevalue('tmp_path')}/ledger.db"
    return str(request.getfixturevalue("redis_url" if backend == "redis" else "cluster_url"))


class FakeClock:
    """A settable clock (epoch seconds) for crossing days, weeks and months."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    # Wednesday 2026-11-18 12:00 UTC
    return FakeClock(1_795_003_200.0)


@pytest.fixture
def make_nasca(store_uri: str, clock: FakeClock) -> Iterator[Callable[..., Any]]:
    """Build Nasca instances on the backend, in a namespace private to the test."""
    from nasca_core import Nasca, Tier

    namespace = f"t{uuid.uuid4().hex[:12]}"
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("tiers", {"free": Tier(monthly="0.50", daily="0.10"),
                                    "pro": Tier(monthly=10, weekly=5, daily=2)})
        kwargs.setdefault("default_tier", "free")
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("clock", clock)
        n = Nasca(kwargs.pop("store", store_uri), **kwargs)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()
