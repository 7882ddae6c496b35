"""The async Redis store's lean path (``stores/_redis_lean.py``): every task of a loop shares one
pipelined connection, made the way the client makes its own (auth, db, decoding); a lost
connection fails its calls over to the client. And the sync store's settles in batches: one
send for a batch. Speed never changes a result."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from decimal import Decimal
from typing import Any

import hiredis
import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from nasca_core import Nasca, StoreError, Tier
from nasca_core.stores import _redis_conns, _redis_lean
from nasca_core.stores._redis_lean import AsyncLink
from nasca_core.stores.redis import RedisStore

pytestmark = pytest.mark.redis

TIERS = {"t": Tier(daily=1, monthly=10, max_in_flight=64)}


def ledger(store: Any, **kw: Any) -> Nasca:
    return Nasca(store, tiers=TIERS, default_tier="t", namespace=f"link{uuid.uuid4().hex[:8]}", **kw)


async def _calls(n: Nasca, count: int, cost: str = "0.001") -> None:
    async def call(i: int) -> None:
        await n.asettle(await n.areserve(cost, user=f"u{i % 10}"), cost)

    await asyncio.gather(*(call(i) for i in range(count)))


async def _spent(n: Nasca, users: int = 10) -> Decimal:
    return sum([(await n.aget_usage(f"u{k}")).daily_spent for k in range(users)], Decimal(0))


async def test_fifty_concurrent_calls_share_one_connection(redis_server_factory):
    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0"
    admin = redis.Redis(port=server.port)
    n = ledger(url, settle_in_background=False)
    await _calls(n, 5)  # warm: the config, the layout check, the scripts
    before = len(admin.client_list())
    await _calls(n, 50)
    # redis-py's connections would be one per task in flight (up to 50).
    assert len(admin.client_list()) - before <= 1
    assert await _spent(n) == Decimal("0.055")
    await n.aclose()
    admin.close()


async def test_auth_and_db_are_those_of_the_url(redis_server_factory):
    server = redis_server_factory()
    admin = redis.Redis(port=server.port)
    admin.config_set("requirepass", "s3cret-pass")
    admin = redis.Redis(port=server.port, password="s3cret-pass", db=3)
    n = ledger(f"redis://:s3cret-pass@127.0.0.1:{server.port}/3", settle_in_background=False)
    await _calls(n, 20)
    assert await _spent(n) == Decimal("0.020")
    assert admin.dbsize() > 0 and redis.Redis(port=server.port, password="s3cret-pass", db=0).dbsize() == 0
    await n.aclose()
    admin.close()


async def test_a_client_that_decodes_replies_gets_the_same_results(redis_url):
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    assert AsyncLink.fits(client)
    n = ledger(client, settle_in_background=False)
    await _calls(n, 20)
    assert await _spent(n) == Decimal("0.020")
    await n.aclose()
    await client.aclose()


async def test_a_lost_connection_fails_over_to_the_client(redis_server_factory):
    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0"
    admin = redis.Redis(port=server.port)
    n = ledger(url, settle_in_background=False)
    await _calls(n, 10)
    links = [c["id"] for c in admin.client_list() if c["cmd"] == "evalsha"]
    assert len(links) == 1
    admin.client_kill_filter(_id=links[0])  # the server closes the link under the store
    await _calls(n, 10)  # each call on the dead link goes to the client, with its retries
    await _calls(n, 10)  # and the next ones on a new link
    assert await _spent(n) == Decimal("0.030")
    await n.aclose()
    admin.close()


async def test_a_timed_out_link_is_dropped_and_its_calls_answered(redis_server_factory):
    server = redis_server_factory()
    client = redis.asyncio.Redis(port=server.port, socket_timeout=0.2)
    admin = redis.Redis(port=server.port)
    n = ledger(client, settle_in_background=False)
    await _calls(n, 5)
    # The server stalls past the timeout (a slow script): the link is dropped, and the call
    # is answered by the client once the server is back.
    busy = ("local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] "
            "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > 300000 return 1")
    stall = asyncio.get_running_loop().run_in_executor(None, lambda: admin.eval(busy, 0))
    await asyncio.sleep(0.05)
    stalled = await asyncio.gather(*(n.areserve("0.001", user=f"u{i}") for i in range(5)),
                                   return_exceptions=True)
    await stall
    # Each answered: admitted, or the client's own timeout as a typed store error.
    assert all(isinstance(r, StoreError) or r.user_id == f"u{i}" for i, r in enumerate(stalled))
    for r in stalled:
        if not isinstance(r, BaseException):
            await n.asettle(r, "0.001")
    await _calls(n, 5)
    admitted = sum(not isinstance(r, BaseException) for r in stalled)
    assert await _spent(n) == Decimal("0.010") + admitted * Decimal("0.001")
    await n.aclose()
    await client.aclose()
    admin.close()


def _count_sends(monkeypatch: Any) -> list[int]:
    """The size of each batch the store sends on its own connections, from now on."""
    sends: list[int] = []
    real = _redis_conns.Conns.call_many

    def spy(self: Any, commands: Any) -> Any:
        sends.append(len(commands))
        return real(self, commands)

    monkeypatch.setattr(_redis_conns.Conns, "call_many", spy)
    return sends


def test_a_batch_of_settles_is_one_send(redis_url, monkeypatch):
    n = ledger(redis_url, leases=False)  # batches of calls' own settles
    n.settle(n.reserve("0.001", user="w"), "0.001")  # the settle script is loaded
    sends = _count_sends(monkeypatch)
    n.deferred.sender.wake = lambda: None  # type: ignore[union-attr,method-assign]  # queue only
    for i in range(40):
        call = n.start_call("gpt-4o-mini", prompt_tokens=10, max_tokens=10, user=f"u{i % 4}")
        call.finish()
    assert n.flush() == 40
    assert sends == [32, 8]  # BATCH settles per send
    assert n.get_usage("u0").month_calls == 10 and n.get_usage("u0").in_flight == 0
    n.close()


async def test_scripts_flushed_from_the_server_are_loaded_again_on_the_link(redis_url):
    n = ledger(redis_url, settle_in_background=False)
    await _calls(n, 10)
    admin = redis.Redis.from_url(redis_url)
    admin.script_flush()  # every task in flight meets NOSCRIPT on the shared connection
    await _calls(n, 20)
    assert await _spent(n) == Decimal("0.030")
    await n.aclose()
    admin.close()


def test_the_sender_lands_a_burst_of_settles_in_few_sends(redis_url, monkeypatch):
    """The sender, woken by a call's settle, waits a moment for the calls behind it: a burst
    goes to the store in batches, each settle once, none lost."""
    n = ledger(redis_url, leases=False)  # batches of calls' own settles
    n.settle(n.reserve("0.001", user="w"), "0.001")  # the settle script is loaded
    sends = _count_sends(monkeypatch)
    alone: list[int] = []  # a batch of one is a plain settle, whenever the sender catches one alone
    real_settle = RedisStore.settle

    def settle_spy(self: Any, op: Any) -> Any:
        alone.append(1)
        return real_settle(self, op)

    monkeypatch.setattr(RedisStore, "settle", settle_spy)
    calls = [n.start_call("gpt-4o-mini", prompt_tokens=10, max_tokens=10, user=f"u{i % 4}")
             for i in range(40)]
    for call in calls:
        call.finish()
    n.flush()  # waits for the sender's flush, then sends what is left
    assert sum(sends) + len(alone) == 40 and len(sends) + len(alone) < 20
    assert sum(n.get_usage(f"u{k}").month_calls for k in range(4)) == 40
    assert n.stats.settle_queued == 40 and n.stats.settled == 41 and len(n.deferred) == 0  # and "w"
    n.close()


@pytest.mark.cluster
def test_a_batch_on_a_cluster_is_one_pipeline(cluster_url, monkeypatch):
    from redis.cluster import ClusterPipeline

    n = ledger(cluster_url, leases=False)  # batches of calls' own settles
    n.settle(n.reserve("0.001", user="w"), "0.001")  # the settle script is loaded on its node
    n.deferred.sender.wake = lambda: None  # type: ignore[union-attr,method-assign]  # queue only
    for i in range(40):  # users on every node
        n.start_call("gpt-4o-mini", prompt_tokens=10, max_tokens=10, user=f"u{i % 7}").finish()
    piped: list[int] = []
    real = ClusterPipeline.execute

    def spy(self: Any, raise_on_error: bool = True) -> Any:
        replies = real(self, raise_on_error)
        piped.append(len(replies))
        return replies

    monkeypatch.setattr(ClusterPipeline, "execute", spy)
    assert n.flush() == 40
    assert piped == [32, 8]  # BATCH settles per pipeline (the cluster client loads a script on every node)
    assert sum(n.get_usage(f"u{k}").month_calls for k in range(7)) == 40
    n.close()


def _queue_calls(n: Nasca, users: list[str]) -> None:
    n.deferred.sender.wake = lambda: None  # type: ignore[union-attr,method-assign]  # queue only
    for user in users:
        n.start_call("gpt-4o-mini", prompt_tokens=10, max_tokens=10, user=user).finish()


def test_a_batch_on_idle_connections_the_server_closed_lands_all_the_same(redis_server_factory):
    """A restart or a failover closes every idle connection: the batch meets a closed one
    before any reply, and goes one settle at a time through the client (its retries)."""
    server = redis_server_factory()
    admin = redis.Redis(port=server.port)
    url = f"redis://127.0.0.1:{server.port}/0"
    n = ledger(url)
    n.settle(n.reserve("0.001", user="w"), "0.001")  # an idle connection, the script loaded
    _queue_calls(n, [f"u{i}" for i in range(5)])
    errors = n.stats.store_errors
    admin.client_kill_filter(_type="normal", skipme=True)
    assert n.flush() == 5 and len(n.deferred) == 0 and n.stats.store_errors == errors
    assert [n.get_usage(f"u{i}").month_calls for i in range(5)] == [1] * 5
    # Caller threads leave an idle connection each; close() (two flushes) meets them all closed.
    barrier = threading.Barrier(4)

    def read(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            n.get_usage(f"t{i}")

    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _queue_calls(n, [f"v{i}" for i in range(5)])
    admin.client_kill_filter(_type="normal", skipme=True)
    n.close()
    assert len(n.deferred) == 0
    later = Nasca(url, tiers=TIERS, default_tier="t", namespace=n.namespace, settle_in_background=False)
    assert [later.get_usage(f"v{i}").month_calls for i in range(5)] == [1] * 5
    later.close()
    admin.close()


def test_a_settle_refused_mid_batch_leaves_the_others_landed_once(redis_url):
    """The scripts after a refused one run too: those that landed count as landed (reported
    once, none queued again); only the refused one waits for the next flush."""
    n = ledger(redis_url)
    n.settle(n.reserve("0.001", user="w"), "0.001")
    _queue_calls(n, ["a", "b", "c"])
    landed: list[tuple[str, int]] = []
    n.deferred.on_landed = lambda op, result: landed.append((op.keys.meta.rsplit(":", 1)[1], result.status))
    admin = redis.Redis.from_url(redis_url)
    keys = n.user_keys("b", n.now())
    broken = [keys.meta, keys.holds, keys.settled, keys.held, keys.day, keys.week, keys.month, keys.credits]
    saved = {key: admin.dump(key) for key in broken}
    for key in broken:  # every command of b's script meets WRONGTYPE, before it writes anything
        admin.delete(key)
        admin.rpush(key, "x")
    assert n.flush() == 2
    assert landed == [("a", 1), ("c", 1)] and n.deferred.queued() == 1
    a, c = n.get_usage("a"), n.get_usage("c")
    assert (c.month_calls, c.daily_spent, c.in_flight) == (a.month_calls, a.daily_spent, a.in_flight)
    assert c.month_calls == 1 and c.in_flight == 0 and c.daily_spent > 0
    for key, value in saved.items():  # b's records back: its settle lands on the next flush
        admin.delete(key)
        if value is not None:
            admin.restore(key, 0, value)
    assert n.flush() == 1 and landed[-1] == ("b", 1) and len(n.deferred) == 0
    assert n.get_usage("b").month_calls == 1 and n.get_usage("c").month_calls == 1
    n.close()
    admin.close()


def test_a_connection_lost_mid_batch_answers_the_replies_read(redis_url):
    conns = _redis_conns.Conns(redis.Redis.from_url(redis_url))
    own = conns.call("CLIENT", "ID")  # the idle connection the batch takes
    key = f"link{uuid.uuid4().hex[:8]}"
    # The server closes the connection after its second reply: the third never runs.
    replies = conns.call_many([("SET", f"{key}:1", "1"), ("CLIENT", "KILL", "ID", own, "SKIPME", "no"),
                               ("SET", f"{key}:2", "1")])
    assert replies == [b"OK", 1]
    assert conns.call("EXISTS", f"{key}:1") == 1 and conns.call("EXISTS", f"{key}:2") == 0
    conns.call("DEL", f"{key}:1")
    conns.close()


async def test_a_stalled_server_fails_a_store_built_from_a_url_within_its_timeout(redis_server_factory):
    """A URL sets no timeout: redis-py's default (5 s) bounds the shared connection's wait."""
    server = redis_server_factory()
    n = ledger(f"redis://127.0.0.1:{server.port}/0", settle_in_background=False)
    await _calls(n, 3)
    server.proc.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    try:
        with pytest.raises(StoreError):
            await asyncio.wait_for(n.areserve("0.001", user="u1"), 60)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert time.monotonic() - started < 40  # the link's 5 s, then the client's own timeouts
    await n.aclose()


async def test_cancelled_calls_leave_the_shared_connection_in_step(redis_url):
    client = redis.asyncio.Redis.from_url(redis_url)
    link = AsyncLink(client)
    assert await link.call("ECHO", "warm") == b"warm"
    tasks = [asyncio.ensure_future(link.call("ECHO", f"m{i}")) for i in range(20)]
    await asyncio.sleep(0)  # written, not yet answered
    for task in tasks[1::2]:
        task.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert done[0::2] == [f"m{i}".encode() for i in range(0, 20, 2)]
    assert all(isinstance(r, asyncio.CancelledError) for r in done[1::2])
    assert [await link.call("ECHO", f"n{i}") for i in range(3)] == [b"n0", b"n1", b"n2"]
    await link.close()
    await client.aclose()


async def test_an_empty_password_sends_no_auth_as_the_client_does(redis_server_factory):
    server = redis_server_factory()
    admin = redis.Redis(port=server.port)
    client = redis.asyncio.Redis(port=server.port, password="")  # redis-py sends no AUTH
    link = AsyncLink(client)
    before = admin.info("stats")["total_connections_received"]
    assert [await link.call("ECHO", str(i)) for i in range(50)] == [str(i).encode() for i in range(50)]
    assert admin.info("stats")["total_connections_received"] - before == 1
    await link.close()
    await client.aclose()
    admin.close()


async def test_a_link_that_fails_to_open_is_tried_once_per_window(redis_server_factory, monkeypatch):
    """A handshake that fails (a wrong password) is tried once, not by every waiting task nor
    by every call after: they go to the client, which raises what it raises."""
    server = redis_server_factory()
    redis.Redis(port=server.port).config_set("requirepass", "right")
    client = redis.asyncio.Redis(port=server.port, password="wrong", retry=Retry(NoBackoff(), 0))
    link = AsyncLink(client)
    opened: list[int] = []
    real = AsyncLink._open

    async def counted(self: AsyncLink, loop: asyncio.AbstractEventLoop) -> Any:
        opened.append(1)
        return await real(self, loop)

    monkeypatch.setattr(AsyncLink, "_open", counted)
    monkeypatch.setattr(_redis_lean, "RETRY_LINK_S", 60.0)  # a loaded machine's 30 calls fit in it
    answers = await asyncio.gather(*(link.call("PING") for _ in range(10)), return_exceptions=True)
    assert all(isinstance(a, redis.AuthenticationError) for a in answers)
    for _ in range(20):
        with pytest.raises(redis.AuthenticationError):
            await link.call("PING")
    assert len(opened) == 1
    await link.close()
    await client.aclose()


def _seen(info: Any) -> dict[str, str | None]:
    fields = dict(kv.split("=", 1) for kv in (info.decode() if isinstance(info, bytes) else info).split())
    return {k: fields.get(k) for k in ("name", "db", "user", "lib-name", "lib-ver", "resp")}


async def _link_info(link: AsyncLink) -> dict[str, str | None]:
    return _seen(await link.call("CLIENT", "INFO"))


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:{port}/2?client_name=foo", "redis://alice:apw@127.0.0.1:{port}/1",
    "redis://bob@127.0.0.1:{port}/0", "redis://:apw@127.0.0.1:{port}/0",  # default user: no password
    "redis://carol:cpw@127.0.0.1:{port}/0?client_name=x&protocol=2",
    "redis://127.0.0.1:{port}/0?decode_responses=True&lib_name=", "redis://:apw@127.0.0.1:{port}/0?protocol=3",
])
async def test_the_link_shakes_hands_as_the_client_does(redis_server_factory, url):
    """Same user, db, name and driver as the client's own connections; RESP2 whatever the
    client speaks (the scripts' replies read the same), authenticated by the same check."""
    server = redis_server_factory()
    admin = redis.Redis(port=server.port)
    admin.acl_setuser("alice", enabled=True, passwords=["+apw"], keys=["*"], commands=["+@all"])
    admin.acl_setuser("bob", enabled=True, nopass=True, keys=["*"], commands=["+@all"])
    admin.acl_setuser("carol", enabled=True, passwords=["+cpw"], keys=["*"], commands=["+@all"])
    client = redis.asyncio.Redis.from_url(url.format(port=server.port))
    assert AsyncLink.fits(client)
    link = AsyncLink(client)
    try:
        theirs = _seen(await client.execute_command("CLIENT", "INFO"))
    except redis.AuthenticationError:  # redis-py before 8 sends ``AUTH apw``: refused the same
        with pytest.raises(redis.AuthenticationError):
            await link.call("CLIENT", "INFO")
        assert link._wire is None
        ours = theirs = {}
    else:
        ours = await _link_info(link)
        assert ours["resp"] == "2" and link._wire is not None
    assert {**ours, "resp": None} == {**theirs, "resp": None}
    await link.close()
    await client.aclose()
    admin.close()


class _Pre8Connection:
    """A connection as redis-py before 8 makes it: ``lib_name`` and ``lib_version``, no
    ``driver_info``; RESP2 by default. Everything else is the real connection's."""

    def __init__(self, real: Any, **changes: Any) -> None:
        self._real, self._changes = real, {"lib_name": "redis-py-old", "lib_version": "5.0.1",
                                           "protocol": 2, **changes}

    def __getattr__(self, name: str) -> Any:
        if name == "driver_info":
            raise AttributeError(name)
        if name in self._changes:
            value = self._changes[name]
            if isinstance(value, Exception):
                raise value
            return value
        return getattr(self._real, name)


def _pre8_link(client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch, **changes: Any) -> AsyncLink:
    pool = client.connection_pool
    real = pool.make_connection
    monkeypatch.setattr(pool, "make_connection", lambda: _Pre8Connection(real(), **changes))
    link = AsyncLink(client)
    monkeypatch.setattr(pool, "make_connection", real)
    return link


async def test_the_link_shakes_hands_as_a_redis_py_before_8_does(redis_server_factory, monkeypatch):
    server = redis_server_factory()
    admin = redis.Redis(port=server.port)
    admin.acl_setuser("alice", enabled=True, passwords=["+apw"], keys=["*"], commands=["+@all"])
    client = redis.asyncio.Redis(port=server.port, username="alice", password="apw", db=4)
    link = _pre8_link(client, monkeypatch)
    sent: list[tuple[Any, ...]] = []
    pack = link._pack
    link._pack = lambda command: sent.append(command) or pack(command)
    info = await _link_info(link)
    assert (info["db"], info["user"], info["resp"]) == ("4", "alice", "2")
    # The driver's name as redis-py before 8 sends it (a server before 7.2 ignores it).
    assert sent == [("CLIENT", "INFO"), ("AUTH", "alice", "apw"),
                    ("CLIENT", "SETINFO", "LIB-NAME", "redis-py-old"),
                    ("CLIENT", "SETINFO", "LIB-VER", "5.0.1"), ("SELECT", 4)]
    await link.close()
    await client.aclose()
    admin.close()


async def test_a_setup_the_link_does_not_know_sends_the_calls_to_the_client(redis_url, monkeypatch):
    """Whatever fails while the link opens (here a connection attribute that raises), the
    client answers: never an error of the link's own."""
    client = redis.asyncio.Redis.from_url(redis_url)
    link = _pre8_link(client, monkeypatch, client_name=RuntimeError("unknown to this link"))
    assert [await link.call("ECHO", str(i)) for i in range(3)] == [b"0", b"1", b"2"]
    assert link._wire is None
    await link.close()
    await client.aclose()


async def test_a_server_before_6_gets_the_password_alone(monkeypatch):
    """redis-py retries ``AUTH user pass`` that a server before 6.0 refuses for its number of
    arguments with the password alone: so does the link. The server here speaks RESP as
    Redis 5 does to those commands."""
    seen: list[list[bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parse = hiredis.Reader()
        while data := await reader.read(65536):
            parse.feed(data)
            while (command := parse.gets()) is not False:
                seen.append(command)
                if command[0].upper() == b"AUTH" and len(command) != 2:
                    writer.write(b"-ERR wrong number of arguments for 'auth' command\r\n")
                elif command[0].upper() == b"ECHO":
                    writer.write(b"$%d\r\n%s\r\n" % (len(command[1]), command[1]))
                else:
                    writer.write(b"+OK\r\n")

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = redis.asyncio.Redis(port=port, username="alice", password="apw")
    link = _pre8_link(client, monkeypatch, lib_name=None, lib_version=None)
    assert await link.call("ECHO", "hi") == b"hi"
    assert seen == [[b"AUTH", b"alice", b"apw"], [b"AUTH", b"apw"], [b"ECHO", b"hi"]]
    await link.close()
    await client.aclose()
    server.close()


class _StallingProxy:
    """TCP to a server; ``stall()`` stops forwarding on every connection open at that moment
    (an idle connection a NAT or a load balancer dropped without a word), new ones pass."""

    def __init__(self, port: int) -> None:
        self._target, self._open, self._stalled = port, [], set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        key = object()
        self._open.append(key)
        for a, b in ((reader, up_writer), (up_reader, writer)):
            self._tasks.add(asyncio.ensure_future(self._pipe(a, b, key)))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: object) -> None:
        try:
            while data := await reader.read(65536):
                while key in self._stalled:
                    await asyncio.sleep(3600)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass

    def stall(self) -> None:
        self._loop.call_soon_threadsafe(lambda: self._stalled.update(self._open))

    def stop(self) -> None:
        async def shut() -> None:
            self._server.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def test_a_batch_on_idle_connections_silently_dropped_lands_all_the_same(redis_server_factory):
    """The batch's first read times out before any reply: none known to have run, the
    settles go one at a time through the client (its retries), none left unapplied."""
    server = redis_server_factory()
    proxy = _StallingProxy(server.port)
    try:
        n = ledger(f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.5")
        n.settle(n.reserve("0.001", user="w"), "0.001")
        barrier = threading.Barrier(3)

        def read(i: int) -> None:  # idle connections, one per caller thread
            barrier.wait()
            for _ in range(20):
                n.get_usage(f"t{i}")

        threads = [threading.Thread(target=read, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _queue_calls(n, [f"v{i}" for i in range(5)])
        proxy.stall()
        errors, started = n.stats.store_errors, time.monotonic()
        assert n.flush() == 5 and len(n.deferred) == 0 and n.stats.store_errors == errors
        assert time.monotonic() - started < 10  # one timeout, not one per idle connection and settle
        n.close()
        later = Nasca(f"redis://127.0.0.1:{server.port}/0", tiers=TIERS, default_tier="t",
                      namespace=n.namespace, settle_in_background=False)
        assert [later.get_usage(f"v{i}").month_calls for i in range(5)] == [1] * 5
        later.close()
    finally:
        proxy.stop()
