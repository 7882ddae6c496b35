"""Helpers for the server, analytics and browser tests: a Nasca with packs and plans, the
server's settings, a real uvicorn on loopback, and headless Debian Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from nasca_core import NascaBlockedError, Tier
from nasca_core.billing import CreditPack, Plan
from nasca_core.server import ServerSettings

SECRET = "server-tests-secret-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
WHSEC = "whsec_server_tests_5f2c0d"
PUBLIC = "http://testserver"
TIERS = {"free": Tier(daily="0.10", monthly="1"), "pro": Tier(monthly=10, daily=2)}
PACKS = [
    CreditPack(id="p5", price=Decimal(5), spend=Decimal(3)),
    CreditPack(id="p10", price=Decimal(10), spend=Decimal(9), name="Credit pack"),
    CreditPack(id="e5", price=Decimal("4.50"), spend=Decimal(4), currency="eur"),
]
PLANS = [Plan(id="pro", tier="pro", price=Decimal(20), name="Pro")]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def billed(make_nasca: Any, stripe: Any = None, **kwargs: Any) -> Any:
    kwargs.setdefault("tiers", TIERS)
    return make_nasca(packs=PACKS, plans=PLANS, stripe=stripe, webhook_secret=WHSEC, **kwargs)


def settings(**kwargs: Any) -> ServerSettings:
    values: dict[str, Any] = {"secret": SECRET, "public_url": PUBLIC, "admin_token": ADMIN}
    values.update(kwargs)
    return ServerSettings(**values)


def block(n: Any, user: str, tier: str | None = None) -> NascaBlockedError:
    """Spend ``user``'s allowance until a call is blocked; the block."""
    for _ in range(100):
        try:
            r = n.reserve(Decimal("0.01"), user=user, tier=tier)
        except NascaBlockedError as err:
            return err
        n.settle(r, Decimal("0.04"), tokens=(1000, 200))
    raise AssertionError(f"{user} was never blocked")


def client(app: Any, base: str = PUBLIC) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn on a loopback port, in a thread (stopped by ``stop()``)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def chromium() -> str:
    """Debian's Chromium; with CI set, its absence fails the test instead of skipping it."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        msg = "chromium not found (scripts/test.sh installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI is set, so this fails the run", pytrace=False)
        pytest.skip(msg)
    return path


def artifacts(name: str) -> Path:
    d = ARTIFACTS / name
    d.mkdir(parents=True, exist_ok=True)
    return d
