"""The HTTP under the remote client: one pooled ``httpx.Client`` per client and one
``httpx.AsyncClient`` per event loop (an async pool belongs to the loop that opened it),
the API key on every request, and every answer turned into a reply model or a typed error.

A request that never got an answer (connect refused, timeout, connection dropped) or one
the server could not serve (429, 5xx, a body that is not ours) is a StoreError: the
client's ``on_store_error`` decides what a reserve does, and a settle is deferred.

A hung server must not cost a caller more than one timeout: the connect timeout is short
and apart from the read timeout, only a failure to connect is retried (a request that was
sent may have been applied), and after a timeout every request fails at once for
``BACKOFF_S`` seconds. ``unsent(exc)`` tells a StoreError whose request never reached the
server (a settle that can be replayed at any age) from one that may have landed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from nasca_core._errors import ConfigurationError, NascaError, StoreError
from nasca_core.remote._wire import ErrorReply, error_of

R = TypeVar("R", bound=BaseModel)
BACKOFF_S = 5.0  # after a timeout: fail fast this long, rather than wait out a hung server again
CONNECT_TIMEOUT_S = 1.0  # the most a connect may take (under ``timeout``, if lower)
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class _BackingOff(Exception):
    """The cause of a StoreError raised without a request, while backing off."""


def unsent(exc: BaseException) -> bool:
    """Whether a StoreError from ``Http`` is sure its request never reached the server."""
    return isinstance(exc.__cause__, (*_NOT_SENT, _BackingOff))


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Http:
    """Requests to one ``nasca serve``. Raises ConfigurationError for a URL that is not
    https:// (http:// only to a loopback host, or with ``allow_insecure``: the API key
    travels in every request)."""

    def __init__(self, url: str, api_key: str | None, *, timeout: float = 5.0,
                 max_connections: int = 100, allow_insecure: bool = False) -> None:
        base = url.rstrip("/")
        if not base.lower().startswith(("http://", "https://")):
            raise ConfigurationError(f"a remote ledger URL is http:// or https://, got {url!r}")
        host = urlsplit(base).hostname or ""
        if base.lower().startswith("http://") and not allow_insecure and not _loopback(host):
            raise ConfigurationError(
                f"{url!r} would send the API key in cleartext: use https://, or allow_insecure=True "
                "on a network you trust (http:// is accepted as is only for a loopback host)"
            )
        if not isinstance(api_key, str) or not api_key:
            raise ConfigurationError("a remote ledger needs api_key= (one of the server's NASCA_API_KEYS)")
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = base
        self._options: dict[str, Any] = {
            "base_url": base,
            "headers": {"Authorization": f"Bearer {api_key}"},
            "timeout": httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)),
            # Idle connections are dropped well before uvicorn's 5 s keep-alive closes them: a
            # request sent as the server closes its connection fails with a ReadError, which can't
            # be retried (it may have landed).
            "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                                   keepalive_expiry=2.0),
        }
        self._down_until = 0.0  # time.monotonic() until which requests fail at once
        self._sync = httpx.Client(**self._options)
        # id(loop) -> (a weak reference to the loop, its pool): nothing here keeps a loop alive.
        self._loops: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], _Pool]] = {}
        self._loops_lock = threading.Lock()
        self.lock = threading.Lock()  # the client's, for loading the server's config once
        _all.add(self)

    @property
    def backing_off(self) -> bool:
        """Whether a recent timeout makes requests fail at once (the automatic flush waits)."""
        return time.monotonic() < self._down_until

    def after_fork(self) -> None:
        """In a forked child: the parent's pooled connections stay the parent's (never closed
        here: that would shut them under it); the child opens its own."""
        self._sync = httpx.Client(**self._options)
        self._loops = {}
        self._loops_lock = threading.Lock()  # a parent's thread may have held these at the fork
        self.lock = threading.Lock()

    async def _async(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            entry = self._loops.get(id(loop))
            if entry is not None and entry[0]() is loop:
                return entry[1].client
            for k, (ref, _) in list(self._loops.items()):
                seen = ref()
                if seen is None or seen.is_closed():
                    # Closed (without shutdown_asyncgens, or the keeper already ran): its pool goes,
                    # and asyncio reclaims the transports of a closed loop when they are collected.
                    del self._loops[k]
            made = _Pool(httpx.AsyncClient(**self._options))
            self._loops[id(loop)] = (weakref.ref(loop), made)
        await made.keeper.__anext__()  # the loop now finalizes it when it shuts down
        return made.client

    def _check(self) -> None:
        if self.backing_off:
            raise StoreError(
                f"the remote ledger at {self.url} timed out moments ago: not waiting on it again yet"
            ) from _BackingOff()

    def _failed(self, exc: httpx.TransportError) -> StoreError:
        if isinstance(exc, httpx.TimeoutException):
            self._down_until = time.monotonic() + BACKOFF_S
        return StoreError(f"the remote ledger at {self.url} did not answer: {exc!r}")

    def call(self, method: str, path: str, reply: type[R], body: BaseModel | None = None,
             params: dict[str, str] | None = None, retry: bool = False) -> R:
        """One request (``retry``: once more if it could not connect). Raises the error the
        server answered, or StoreError."""
        self._check()
        content = body.model_dump_json(exclude_none=True) if body is not None else None
        for attempt in (0, 1):
            try:
                response = self._sync.request(
                    method, path, content=content, params=params,
                    headers=_JSON if content is not None else None,
                )
                break
            except httpx.TransportError as exc:
                if retry and attempt == 0 and isinstance(exc, httpx.ConnectError):
                    continue
                raise self._failed(exc) from exc
        return _read(response, reply, self.url)

    async def acall(self, method: str, path: str, reply: type[R], body: BaseModel | None = None,
                    params: dict[str, str] | None = None, retry: bool = False) -> R:
        """Async twin of call()."""
        self._check()
        content = body.model_dump_json(exclude_none=True) if body is not None else None
        client = await self._async()
        for attempt in (0, 1):
            try:
                response = await client.request(
                    method, path, content=content, params=params,
                    headers=_JSON if content is not None else None,
                )
                break
            except httpx.TransportError as exc:
                if retry and attempt == 0 and isinstance(exc, httpx.ConnectError):
                    continue
                raise self._failed(exc) from exc
        return _read(response, reply, self.url)

    def close(self) -> None:
        self._sync.close()

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            entry = self._loops.pop(id(loop), None)
        if entry is not None and entry[0]() is loop:
            await entry[1].keeper.aclose()


async def _closed_with_its_loop(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    # An async generator the loop has started is closed by the loop's shutdown_asyncgens()
    # (asyncio.run, pytest-asyncio, uvicorn): the pool's connections go with the loop.
    try:
        yield
    finally:
        await client.aclose()


class _Pool:
    """One event loop's AsyncClient, and what closes it with the loop."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.keeper = _closed_with_its_loop(client)


_JSON = {"Content-Type": "application/json"}


def _read(response: httpx.Response, reply: type[R], url: str) -> R:
    try:
        if response.status_code == 200:
            return reply.model_validate_json(response.content)
        err: NascaError = error_of(ErrorReply.model_validate_json(response.content))
    except ValidationError:
        err = StoreError(
            f"the remote ledger at {url} answered {response.status_code} with a body that is "
            f"not the ledger API's: {response.text[:200]!r}"
        )
    raise err


_all: weakref.WeakSet[Http] = weakref.WeakSet()


def _after_fork() -> None:
    for http in list(_all):
        http.after_fork()


os.register_at_fork(after_in_child=_after_fork)
