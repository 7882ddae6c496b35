"""The remote client's own behaviour (``nasca_core.remote``): fork safety, a key rotated
mid-call, what the journal replays and for how long, a hung server, the per-loop pools,
typed errors for bad input before any request, http:// refused off loopback, and the
members of Nasca it has or refuses by name.

The server here is ``create_app`` on the memory store in a thread of the test process (a
real uvicorn on loopback): these tests are about the client, and the server's store is not
what they test (tests/test_remote.py runs the wire over real Redis and a real process).
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time
import warnings
import weakref
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from nasca_core import (
    ConfigurationError,
    InvalidInputError,
    InvalidUserError,
    Nasca,
    StoreError,
    Tier,
    UnauthorizedError,
    warning_of,
)
from nasca_core._types import LedgerStats
from nasca_core.remote import RemoteNasca
from nasca_core.remote._parts import NOT_REMOTE, hold_of
from nasca_core.remote._pending import SETTLED_MEMORY_MS, PendingSettles
from nasca_core.remote._wire import Hold, SettleBody
from nasca_core.server import ApiKeys, ServerSettings, create_app
from nasca_core.testing import ProviderServer, Reply, Usage
from tests._webapp import LiveServer

KEY = "remote-client-tests-key-0123456789ab"
NEW_KEY = "remote-client-tests-new-key-9876543210"
SECRET = "remote-client-tests-secret-0123456789abcdef"
DEAD = "http://127.0.0.1:1"  # nothing listens on port 1: every connect is refused at once


class Server:
    """A server ledger on the memory store behind ``create_app`` on a loopback port."""

    def __init__(self, keys: list[str], port: int | None = None, ledger: Nasca | None = None, **kwargs: Any):
        kwargs.setdefault("tiers", {"t": Tier(daily=100, monthly=1000)})
        kwargs.setdefault("default_tier", "t")
        self.nasca = ledger or Nasca("memory://", **kwargs)
        self.live = LiveServer(create_app(self.nasca, ServerSettings(secret=SECRET), api_keys=ApiKeys(keys)),
                               port).__enter__()
        self.url, self.port = self.live.url, self.live.port

    def stop(self) -> None:
        self.live.__exit__()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server([KEY])
    yield s
    s.stop()


@pytest.fixture
def client(server: Server, tmp_path: Path) -> Iterator[Any]:
    n = Nasca(server.url, api_key=KEY, state_dir=str(tmp_path / "j"))
    yield n
    n.close()


# -- fork ------------------------------------------------------------------------------
def test_a_forked_child_never_shares_the_parents_connections_or_settles(server, tmp_path):
    n = Nasca(server.url, api_key=KEY, state_dir=str(tmp_path / "j"))  # module level, as with --preload
    n.get_usage("warm")  # one pooled keep-alive connection, inherited by the child
    owed_hold = Hold(user="p", tier="t", hold_id="parent-owed", estimate_nanos=1)
    n.pending.defer(SettleBody(hold=owed_hold, nanos=1))
    r, w = os.pipe()
    pid = os.fork()
    me = "child" if pid == 0 else "parent"
    bad = errors = 0
    owed = len(n.pending)
    for i in range(150):
        try:
            got = n.reserve(nanos=1000 + i, user=f"{me}-{i}")
            bad += got.user_id != f"{me}-{i}" or got.estimate_nanos != 1000 + i
        except Exception:
            errors += 1
    if pid == 0:
        os.write(w, f"{bad} {errors} {owed}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 100).decode().split()
    os.close(r)
    os.close(w)
    assert child == ["0", "0", "0"]  # right replies, and the parent's owed settle is not the child's
    assert (bad, errors) == (0, 0)
    n.close()


# -- a key rotated mid-call --------------------------------------------------------------
def test_a_settle_refused_for_its_key_is_journaled_and_a_valid_key_replays_it(tmp_path):
    first = Server([KEY])
    state = str(tmp_path / "j")
    old = Nasca(first.url, api_key=KEY, state_dir=state)
    r = old.reserve("0.25", user="u1")
    first.stop()
    rotated = Server([NEW_KEY], port=first.port, ledger=first.nasca)  # the same URL, the old key gone
    try:
        with pytest.raises(UnauthorizedError):
            old.settle(r, "0.20")
        assert len(old.pending) == 1 and old.flush() == 0  # still refused, still owed
        old.close()  # the process ends with the key it had: its journal stays
        new = Nasca(rotated.url, api_key=NEW_KEY, state_dir=state)
        assert new.flush() == 1
        u = rotated.nasca.get_usage("u1")
        assert u.daily_spent == Decimal("0.20") and u.in_flight == 0
        new.close()
    finally:
        rotated.stop()


def test_flush_sets_a_refused_settle_aside_and_sends_the_ones_behind_it(client, server, tmp_path):
    good = client.reserve("0.05", user="u1")
    # both an amount and a cost: the server refuses it as bad input, every time
    bad = SettleBody(hold=Hold(user="u1", tier="t", hold_id="bad-1", estimate_nanos=1), nanos=1, cost="0.01")
    client.pending.defer(bad)
    client.pending.defer(SettleBody(hold=hold_of(good), nanos=30_000_000))
    assert client.flush() == 1 and len(client.pending) == 0
    assert server.nasca.get_usage("u1").daily_spent == Decimal("0.03")
    assert client.stats.deferred_refused == 1 and list((tmp_path / "j").rglob("*.refused"))


# -- what the journal replays, and for how long --------------------------------------------
def _refused() -> StoreError:
    try:
        httpx.get(DEAD)
    except httpx.ConnectError as exc:
        err = StoreError("no answer")
        err.__cause__ = exc
        return err
    raise AssertionError("something listens on port 1")


def _timed_out(hung: socket.socket) -> StoreError:
    try:
        httpx.get(f"http://127.0.0.1:{hung.getsockname()[1]}", timeout=0.2)
    except httpx.ReadTimeout as exc:
        err = StoreError("no answer")
        err.__cause__ = exc
        return err
    raise AssertionError("the hung socket answered")


@pytest.fixture
def hung() -> Iterator[socket.socket]:
    """A socket that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s
    s.close()


def test_a_settle_that_never_reached_the_server_is_replayed_at_any_age(tmp_path, hung):
    now = [1_000_000]
    stats = LedgerStats()
    pending = PendingSettles("http://127.0.0.1:9", str(tmp_path), stats, lambda: now[0])
    never = SettleBody(hold=Hold(user="u1", tier="t", hold_id="h-never", estimate_nanos=5), nanos=7)
    maybe = SettleBody(hold=Hold(user="u1", tier="t", hold_id="h-maybe", estimate_nanos=5), nanos=9)
    pending.defer(never, _refused())
    pending.defer(maybe, _timed_out(hung))
    now[0] += SETTLED_MEMORY_MS + 1  # the server may have forgotten a settle that landed
    sent: list[SettleBody] = []
    assert pending.flush(sent.append) == 1 and [b.hold.hold_id for b in sent] == ["h-never"]
    assert stats.deferred_refused == 1 and len(pending) == 0
    pending.close()


def test_a_replay_that_times_out_is_then_replayed_only_while_the_server_remembers(tmp_path, hung):
    now = [1_000_000]
    pending = PendingSettles("http://127.0.0.1:9", str(tmp_path), LedgerStats(), lambda: now[0])
    pending.defer(SettleBody(hold=Hold(user="u1", tier="t", hold_id="h1", estimate_nanos=5), nanos=7),
                  _refused())
    timeout = _timed_out(hung)

    def send(_: SettleBody) -> None:
        raise timeout  # this time the request was sent: it may have landed

    assert pending.flush(send) == 0 and len(pending) == 1
    pending.close()
    now[0] += SETTLED_MEMORY_MS + 1
    adopted = PendingSettles("http://127.0.0.1:9", str(tmp_path), LedgerStats(), lambda: now[0])
    assert len(adopted) == 0  # the journal kept that it was sent: too old to replay now
    adopted.close()


# -- a hung server -----------------------------------------------------------------------------
def test_a_hung_server_costs_one_timeout_then_calls_fail_fast(tmp_path, hung):
    n = Nasca(f"http://127.0.0.1:{hung.getsockname()[1]}", api_key=KEY, state_dir=str(tmp_path / "j"),
              timeout=0.5, on_store_error="block")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError):
            n.reserve("0.01", user="u1")
        first = time.monotonic() - started
        assert 0.4 < first < 0.9  # one read timeout: not retried, no second wait
        from nasca_core._types import Reservation
        from nasca_core.stores import UserKeys

        r = Reservation("u1", "t", "h-hung", 10, UserKeys.build("remote", "u1", ("", "", "")))
        started = time.monotonic()
        assert n.settle(r, "0.01").deferred and len(n.pending) == 1
        with pytest.raises(StoreError):
            n.reserve("0.01", user="u1")
        assert time.monotonic() - started < 0.2  # backing off: no request, no flush
    finally:
        n.close()


# -- the per-loop async pools ------------------------------------------------------------------
def test_pools_of_closed_loops_do_not_keep_the_loops_or_their_sockets(client):
    async def one() -> None:
        await client.asettle(await client.areserve("0.001", user="u1"), "0.001")

    def fds() -> int:
        return len(os.listdir(f"/proc/{os.getpid()}/fd"))

    for _ in range(3):
        asyncio.run(one())
    base = fds()
    refs = []
    with warnings.catch_warnings():
        # asyncio's own warning for a closed loop's sockets, collected with it (a recorded
        # warning would keep its transport, and so the loop, alive)
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(20):
            loop = asyncio.new_event_loop()  # closed without shutdown_asyncgens
            loop.run_until_complete(one())
            loop.close()
            refs.append(weakref.ref(loop))
            del loop
        asyncio.run(one())
        deadline = time.monotonic() + 5  # another thread's frame may hold a loop's object a moment
        gc.collect()
        while any(ref() is not None for ref in refs) and time.monotonic() < deadline:
            time.sleep(0.05)
            gc.collect()
    assert sum(ref() is not None for ref in refs) == 0  # no pool keeps its loop alive
    deadline = time.monotonic() + 5  # the in-process server closes its side when it sees ours close
    while fds() > base + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fds() <= base + 2
    assert client.get_usage("u1").month_calls == 24


# -- bad input: typed errors, before any request ---------------------------------------------
@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda n: n.grant_credits("u1", spend="1", idempotency_key=""), InvalidInputError),
        (lambda n: n.set_user_tier("", "t"), InvalidUserError),
        (lambda n: n.set_user_tier("u1", "t" * 300), InvalidInputError),
        (lambda n: n.set_tier("", None), InvalidInputError),
        (lambda n: n.set_tier("t" * 300, None), InvalidInputError),
        (lambda n: n.start_call("gpt-4o-mini", prompt_tokens=10**13, user="u1"), InvalidInputError),
        (lambda n: n.reserve(nanos=10**22, user="u1"), InvalidInputError),
    ],
    ids=["empty-key", "empty-user", "long-user-tier", "empty-tier", "long-tier", "prompt-tokens", "nanos"],
)
def test_bad_input_is_a_typed_error_before_any_request(call, error, tmp_path):
    n = Nasca(DEAD, api_key=KEY, state_dir=str(tmp_path / "j"))  # any request would be a StoreError
    try:
        with pytest.raises(error):
            call(n)
    finally:
        n.close()


def test_bad_settle_tokens_are_typed_and_nothing_is_charged(client, server):
    r = client.reserve("0.01", user="u1")
    with pytest.raises(InvalidInputError):
        client.settle(r, "0.01", tokens=(-1, 0))
    assert len(client.pending) == 0 and server.nasca.get_usage("u1").daily_spent == 0
    client.release(r)


# -- http:// only on loopback --------------------------------------------------------------------
@pytest.mark.parametrize("url", ["http://nasca.example.com", "http://10.1.2.3:8000", "http://[2001:db8::1]"])
def test_http_to_a_host_off_loopback_is_refused(url):
    with pytest.raises(ConfigurationError, match="cleartext"):
        Nasca(url, api_key=KEY)
    Nasca(url, api_key=KEY, allow_insecure=True).close()


@pytest.mark.parametrize("url", ["https://nasca.example.com", "http://localhost:9", "http://127.0.0.5:9",
                                 "http://[::1]:9"])
def test_https_and_loopback_http_are_accepted(url):
    Nasca(url, api_key=KEY).close()


# -- Nasca's members: there, or refused by name ---------------------------------------------------
# Nasca's public members the remote client need not have: the local ledger's own machinery
# (its store, journal, key and window builders, busy wait), the upgrade-prompt factories
# the server applies, and from_env (Nasca.from_env builds a remote client itself).
NOT_PUBLIC_API = {"store", "deferred", "leases", "pools", "user_keys", "windows_at", "hold_ttl_ms",
                  "busy_wait", "billing_listeners", "checkout_url_factory", "upgrade_message_template",
                  "from_env"}


def test_every_public_member_of_nasca_is_on_the_remote_client_or_refused_by_name(tmp_path):
    local = Nasca("memory://", tiers={"t": Tier(daily=1)})
    members = {k for k in [*dir(Nasca), *vars(local)] if not k.startswith("_")}
    local.close()
    remote = Nasca(DEAD, api_key=KEY, state_dir=str(tmp_path / "j"))
    try:
        assert members >= NOT_REMOTE and not NOT_PUBLIC_API & NOT_REMOTE
        for name in sorted(members - NOT_PUBLIC_API):
            if name in NOT_REMOTE:
                with pytest.raises(ConfigurationError, match=rf"Nasca\.{name} is not available on a remote"):
                    getattr(remote, name)
            else:
                # on the class (a property would ask the server) or set on the instance
                assert hasattr(RemoteNasca, name) or name in vars(remote), name
                kind = callable(getattr(RemoteNasca, name, None))
                assert callable(getattr(Nasca, name, None)) == kind, name
        with pytest.raises(AttributeError):
            remote.no_such_member  # noqa: B018
    finally:
        remote.close()


# -- from_env, and wrap() without the server ----------------------------------------------------
def test_from_env_builds_a_remote_client_from_its_url_and_key(monkeypatch, server, tmp_path):
    monkeypatch.setenv("NASCA_STORE", server.url)
    monkeypatch.setenv("NASCA_API_KEY", KEY)
    monkeypatch.delenv("NASCA_TIERS", raising=False)
    n = Nasca.from_env(state_dir=str(tmp_path / "j"))
    try:
        assert isinstance(n, RemoteNasca)
        n.settle(n.reserve("0.01", user="u1"), "0.01")
        assert server.nasca.get_usage("u1").daily_spent == Decimal("0.01")
    finally:
        n.close()
    monkeypatch.delenv("NASCA_API_KEY")
    with pytest.raises(ConfigurationError, match="api_key"):
        Nasca.from_env()


def test_wrap_asks_nothing_of_the_server_until_the_first_call(tmp_path):
    from openai import OpenAI

    n = Nasca(DEAD, api_key=KEY, state_dir=str(tmp_path / "j"))
    sdk = OpenAI(api_key="x", base_url="http://127.0.0.1:1/v1", max_retries=0)
    try:
        create = n.wrap(sdk.chat.completions.create, user_hash_key="app-secret")  # at import: no request
        with pytest.raises(StoreError):
            create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], user="u1")
    finally:
        sdk.close()
        n.close()


# -- a warned call ---------------------------------------------------------------------------------
def test_a_warned_call_carries_the_servers_warning_on_its_reservation(tmp_path):
    s = Server([KEY], tiers={"t": Tier(daily=1, warn_at=(0.5,))})
    n = Nasca(s.url, api_key=KEY, state_dir=str(tmp_path / "j"))
    try:
        assert n.reserve("0.10", user="u1").warning is None
        warned = n.reserve("0.60", user="u1")
        assert warned.warning is not None and warned.warning.window == "daily"
        assert warned.warning.fraction == 0.5 and warned.warning.limit == Decimal(1)
        assert n.settle(warned, "0.60").cost_nanos == 600_000_000
        with ProviderServer() as provider:  # a wrapped SDK call: warning_of(response) as on a local ledger
            sdk = provider.openai_client(max_retries=0)
            create = n.wrap(sdk.chat.completions.create, user_hash_key="app-secret")
            provider.queue(Reply(text="ok", usage=Usage(input_tokens=10, output_tokens=5)))
            reply = create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], user="u1")
            assert warning_of(reply) is not None and warning_of(reply).window == "daily"
            sdk.close()
    finally:
        n.close()
        s.stop()


# -- a tier that falls back --------------------------------------------------------------------------
def test_a_wrapped_call_on_a_spent_tier_runs_on_the_servers_fallback_model(tmp_path):
    from nasca_core import fallback_of

    free = Tier(monthly="0.01", on_exhausted="fallback", fallback_model="gpt-4o-mini",
                fallback_allowance=Tier(daily="0.002"))
    s = Server([KEY], tiers={"free": free}, default_tier="free")
    s.nasca.settle(s.nasca.reserve(nanos=1, user="u1"), "0.02")  # the tier's month is spent
    n = Nasca(s.url, api_key=KEY, state_dir=str(tmp_path / "j"))
    try:
        with ProviderServer() as provider:
            sdk = provider.openai_client(max_retries=0)
            create = n.wrap(sdk.chat.completions.create, user_hash_key="app-secret")
            provider.queue(Reply(text="ok", usage=Usage(input_tokens=100, output_tokens=20)))
            reply = create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], user="u1")
            fell = fallback_of(reply)
            assert fell is not None and (fell.model, fell.requested) == ("gpt-4o-mini", "gpt-4o")
            assert fell.blocked.window == "monthly" and n.stats.fallbacks == 1
            assert provider.last_request.model == "gpt-4o-mini"  # the request was rewritten to it
            sdk.close()
        u = s.nasca.get_usage("u1")
        assert u.fallback is not None and u.fallback.daily_spent > 0 and u.in_flight == 0
    finally:
        n.close()
        s.stop()
