"""Remote-mode test helpers: a real ``nasca serve`` app (the server's ``create_app`` with API
keys) on a real uvicorn loopback port, over a real Redis, and the remote client for it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nasca_core import Nasca, Tier
from nasca_core.server import ApiKeys, ServerSettings, create_app
from tests._webapp import LiveServer, free_port

KEY = "remote-tests-key-0123456789abcdef"
OTHER_KEY = "remote-tests-rotated-key-abcdef0123"
ADMIN_KEY = "remote-tests-admin-key-0123456789ab"  # NASCA_ADMIN_API_KEYS: tiers and credits
SECRET = "remote-tests-secret-0123456789abcdef"
CLIENT_OPTIONS = ("get_user_id", "get_user_tier", "on_store_error", "state_dir", "timeout", "cap_output",
                  "charge_embeddings", "api_key")


class Served:
    """One server ledger, its uvicorn, and the clients made for it."""

    def __init__(self, server: Nasca, public_url: str | None, keys: ApiKeys, port: int | None = None) -> None:
        self.nasca = server
        settings = ServerSettings(secret=SECRET, public_url=public_url)
        self.app = create_app(server, settings, api_keys=keys)
        self.live = LiveServer(self.app, port)
        self.url = self.live.url
        self.port = self.live.port

    def start(self) -> Served:
        self.live.__enter__()
        return self

    def stop(self) -> None:
        self.live.__exit__()

    def restart(self) -> None:
        self.live = LiveServer(self.app, self.port)
        self.live.__enter__()


@pytest.fixture
def serve(redis_url: str, clock: Any) -> Iterator[Callable[..., Served]]:
    """``serve(**nasca_kwargs)``: a started server ledger on Redis in a namespace of the test's."""
    namespace = f"r{uuid.uuid4().hex[:12]}"
    made: list[Served] = []

    def make(public_url: str | None = None, keys: ApiKeys | None = None, **kwargs: Any) -> Served:
        kwargs.setdefault("tiers", {"free": Tier(monthly="0.50", daily="0.10"),
                                    "pro": Tier(monthly=10, weekly=5, daily=2)})
        kwargs.setdefault("default_tier", "free")
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("clock", clock)
        server = Nasca(kwargs.pop("store", redis_url), **kwargs)
        keys = keys if keys is not None else ApiKeys([KEY, OTHER_KEY], admin=[ADMIN_KEY])
        served = Served(server, public_url, keys).start()
        made.append(served)
        return served

    yield make
    for s in made:
        s.stop()
        s.nasca.close()


@pytest.fixture
def make_remote(serve: Callable[..., Served], tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """``make_nasca`` for remote mode: the server options go to a new ``nasca serve``, the
    client options (``CLIENT_OPTIONS``) to ``Nasca(url, api_key=...)``."""
    clients: list[Any] = []

    def make(**kwargs: Any) -> Any:
        client_kwargs = {k: kwargs.pop(k) for k in CLIENT_OPTIONS if k in kwargs}
        client_kwargs.setdefault("state_dir", str(tmp_path / "journal"))
        served = serve(**kwargs)
        client_kwargs.setdefault("api_key", KEY)
        client = Nasca(served.url, **client_kwargs)
        client.served = served  # the tests' handle on the server behind it
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


class ServeProcess:
    """``nasca serve`` as its own process, on a free loopback port, with ``NASCA_API_KEYS``."""

    def __init__(self, config: Path, keys: str = KEY, env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "nasca_core.cli", "serve", "--config", str(config),
                        "--port", str(self.port)]
        self.env = {**os.environ, "NASCA_SECRET": SECRET, "NASCA_API_KEYS": keys, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServeProcess:
        # Output to a file, not a pipe: a pipe nobody reads would stall the server when full.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"nasca serve exited: {self.log.read().decode()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("nasca serve did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


def serve_config(path: Path, store: str, namespace: str) -> Path:
    path.write_text(f'store = "{store}"\nnamespace = "{namespace}"\ndefault_tier = "free"\n\n'
                    '[tiers.free]\ndaily = "0.10"\nmonthly = "0.50"\n\n[tiers.pro]\nmonthly = 10\n',
                    encoding="utf-8")
    return path
