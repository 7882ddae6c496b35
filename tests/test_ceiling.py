"""The app-wide ceiling (``Nasca(ceiling=Tier(...))``, ``_pools``) on memory, a SQLite file, a
real Redis and a real Cluster: calls are blocked before the provider once the app as a whole
has spent it, every user's calls draw on it, settles and releases give their draws back
exactly, a ceiling set from another instance takes effect within one chunk's life, and with
no ceiling nothing about a call changes.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import (
    ConfigurationError,
    NascaBlockedError,
    NascaBusyError,
    NascaCeilingError,
    StoreError,
    Tier,
)
from nasca_core._lease_policy import LEASE_S
from nasca_core.testing import ProviderServer, Reply, Usage
from tests import _remote

serve, make_remote = _remote.serve, _remote.make_remote  # fixtures

MICRO = 1_000_000  # $0.001 in nanos
TIERS = {"free": Tier(daily=1, monthly=5, max_in_flight=None)}
MSG = [{"role": "user", "content": "How many tokens is this question?"}]
# Stores with the background sender (memory:// has none by default: no budget leases, no reaper).
SENDER_BACKENDS = ["sqlite", "redis", "cluster"]


@pytest.fixture(scope="module")
def srv():
    with ProviderServer() as server:
        yield server


def pool(n: Any) -> Any:
    """The ceiling's pool as the store has it now (this process's queued settles landed)."""
    n.deferred.flush()
    return n.store.sync.pool_snapshot(n.pools.keys(n.windows_at()), int(n.now() * 1000))


def spend(n: Any, user: str, estimate: int = MICRO, cost: int = MICRO) -> bool:
    try:
        r = n.reserve(nanos=estimate, user=user)
    except NascaCeilingError:
        return False
    n.settle(r, nanos=cost, background=True)
    return True


def test_blocks_at_the_ceiling_before_the_provider(srv, make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.002"))
    wrapped = n.wrap(srv.openai_client(max_retries=0).chat.completions.create)
    before, calls, err = srv.request_count, 0, None
    for i in range(50):
        srv.queue(Reply(text="hi", usage=Usage(input_tokens=2000, output_tokens=500)))
        try:
            with n.user(f"u{i % 5}"):
                wrapped(model="gpt-4o-mini", messages=MSG)
            calls += 1
        except NascaCeilingError as exc:
            err = exc
            break
    assert err is not None and calls > 0
    assert srv.request_count - before == calls  # the blocked call never reached the provider
    assert err.reason == "ceiling" and err.checkout_url is None and err.window == "daily"
    assert err.limit == Decimal("0.002") and "budget" in err.upgrade_message
    snap = pool(n)
    users = sum(n.get_usage(f"u{i}").daily_spent for i in range(5))
    assert snap.spent[0] == int(users * 10**9)  # every user's spend counted on the ceiling, exactly
    assert snap.spent[0] <= 2 * MICRO + MICRO  # within the limit, but for real cost over estimates


def test_many_users_share_it_and_draws_come_back_exactly(make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.05", monthly=1))
    admitted = sum(spend(n, f"u{i % 7}") for i in range(80))
    assert admitted == 50  # exactly the ceiling, whichever user called
    assert not spend(n, "someone-new")
    n.flush()
    assert not n.pools.draws
    snap = pool(n)
    assert snap.spent == (50 * MICRO, 50 * MICRO, 50 * MICRO) and snap.held == 0


def test_settle_and_release_give_the_draw_back(make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=1))
    a = n.reserve(nanos=3 * MICRO, user="a")
    b = n.reserve(nanos=5 * MICRO, user="b")
    assert a.pool is not None and b.pool is not None and a.pool.amount == 3 * MICRO
    assert set(n.pools.draws) == {a.hold_id, b.hold_id}
    n.release(a)
    n.settle(b, nanos=2 * MICRO)
    n.release(a)  # twice: nothing more given back
    n.settle(b, nanos=2 * MICRO)  # a retried settle charges the ceiling once
    assert not n.pools.draws
    n.flush()
    snap = pool(n)
    assert snap.spent[0] == 2 * MICRO and snap.held == 0


def test_a_ceiling_set_from_another_instance_takes_effect_within_a_chunk(make_nasca, clock):
    a = make_nasca(tiers=TIERS, ceiling=Tier(daily=1))
    b = make_nasca(tiers=TIERS)
    assert spend(a, "u")
    b.set_ceiling(Tier(daily="0.002"))  # lower than what a has spent plus its chunk
    chunk = max(c.size for c in a.pools._chunks.values()) if a.pools._chunks else 0
    over = 0
    while spend(a, "u"):
        over += MICRO
        assert over <= chunk + MICRO  # at most what a's chunk had left
    clock.advance(LEASE_S + 0.1)
    assert not spend(a, "u")  # the chunk ended: the new ceiling holds
    b.set_ceiling(None)  # no ceiling any more, whatever the constructor said
    clock.advance(LEASE_S + 0.1)
    assert spend(a, "u")


def test_no_ceiling_no_pool_and_no_extra_store_call(make_nasca):
    n = make_nasca(tiers=TIERS, leases=False)
    c = make_nasca(tiers=TIERS, leases=False, ceiling=Tier(daily=10), namespace=n.namespace + "c")
    counts: dict[str, dict[str, int]] = {}
    inside = threading.local()
    for ledger in (n, c):
        seen = counts[ledger.namespace] = {}
        store = ledger.store.sync
        for name in ("reserve", "settle", "release", "pool_take", "pool_release", "snapshot"):
            real = getattr(store, name)

            def spy(*args: Any, _real: Any = real, _name: str = name, _seen: dict[str, int] = seen,
                    _ns: str = ledger.namespace + ":") -> Any:
                keys = getattr(args[0], "keys", args[0])  # named memory stores are shared: this ledger's
                depth = getattr(inside, "depth", 0)  # per thread: the sender's and timers' too
                caller = threading.current_thread() is threading.main_thread()  # the callers' path only
                if getattr(keys, "holds", "").startswith(_ns) and not depth and caller:
                    _seen[_name] = _seen.get(_name, 0) + 1
                inside.depth = depth + 1  # a store's own call of its method (SQLite's pooled reserve): none
                try:
                    return _real(*args)
                finally:
                    inside.depth = depth

            setattr(store, name, spy)
        for i in range(40):
            r = ledger.reserve(nanos=MICRO, user=f"u{i % 4}")
            ledger.settle(r, nanos=MICRO)
    plain, ceiled = counts[n.namespace], counts[c.namespace]
    assert plain == {"reserve": 40, "settle": 40}  # no pool call at all
    # With a ceiling: the same reserves and settles, the chunk taken in band, no call alone.
    assert ceiled.get("reserve") == 40 and ceiled.get("settle") == 40 and "pool_take" not in ceiled
    assert ceiled.get("pool_release", 0) <= c.stats.pool_takes
    assert n.pools.draws == {} and n.stats.pool_takes == 0


def test_no_ceiling_writes_no_pool_key_on_redis(redis_url):
    import redis

    from nasca_core import Nasca

    n = Nasca(redis_url, tiers=TIERS, default_tier="free", namespace="ceilnone")
    admin = redis.Redis.from_url(redis_url)
    for key in admin.scan_iter("ceilnone:*"):
        admin.delete(key)
    for i in range(20):
        spend(n, f"u{i}")
    n.flush()
    assert not list(admin.scan_iter("ceilnone:pool:*"))
    n.set_ceiling(Tier(daily=1))
    spend(n, "u0")
    n.flush()
    assert list(admin.scan_iter("ceilnone:pool:*"))  # the same scan finds them once there is one
    n.set_ceiling(None)
    n.close()
    admin.close()


def test_the_error_is_typed_and_pickles(make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.001"))
    told: list[NascaBlockedError] = []
    n.block_listeners.append(told.append)
    assert spend(n, "u")
    with pytest.raises(NascaCeilingError) as info:
        n.reserve(nanos=MICRO, user="v")
    err = info.value
    assert isinstance(err, NascaBlockedError) and not isinstance(err, NascaBusyError)
    assert told == [err] and n.stats.blocked == 1
    assert err.user_id == "v" and err.spent == Decimal("0.001") and err.resets_at is not None
    assert "Upgrade" not in err.upgrade_message and "today" in err.upgrade_message
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is NascaCeilingError and back.reason == "ceiling" and back.checkout_url is None
    assert (back.window, back.limit, back.spent, back.upgrade_message) == (
        err.window, err.limit, err.spent, err.upgrade_message)
    assert "NascaCeilingError" in repr(back)


def test_analytics_count_no_prompt_for_it(make_nasca):
    n = make_nasca(tiers={"free": Tier(daily="0.001", max_in_flight=None)}, ceiling=Tier(daily="0.002"))
    analytics = n.analytics  # listening from now on
    assert spend(n, "a")
    with pytest.raises(NascaBlockedError) as user_block:
        n.reserve(nanos=MICRO, user="a")  # the user's own limit: an upgrade prompt
    assert not isinstance(user_block.value, NascaCeilingError)
    assert spend(n, "b")
    with pytest.raises(NascaCeilingError):
        n.reserve(nanos=MICRO, user="c")
    asyncio.run(analytics.aflush())
    assert analytics.month().funnel.blocked == 1  # the user's block only


def test_fallback_spend_counts_against_the_ceiling(srv, make_nasca):
    tier = Tier(daily="0.0001", on_exhausted="fallback", fallback_model="gpt-4o-mini",
                fallback_allowance=Tier(daily=1), max_in_flight=None)
    n = make_nasca(tiers={"t": tier}, default_tier="t", ceiling=Tier(daily="0.05"))
    wrapped = n.wrap(srv.openai_client(max_retries=0).chat.completions.create)
    blocked = None
    for _ in range(200):
        srv.queue(Reply(text="hi", usage=Usage(input_tokens=2000, output_tokens=500)))
        try:
            with n.user("f"):
                wrapped(model="gpt-4o", messages=MSG)
        except NascaCeilingError as exc:
            blocked = exc
            break
    assert blocked is not None and n.stats.fallbacks > 0  # the fallback's calls stop at the ceiling too
    snap = pool(n)
    usage = n.get_usage("f")
    own = usage.daily_spent + (usage.fallback.daily_spent if usage.fallback else 0)
    assert snap.spent[0] == int(own * 10**9)  # the fallback's spend is on the ceiling


def test_async_twins(make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.01"))

    async def go() -> int:
        admitted = 0
        for i in range(30):
            try:
                r = await n.areserve(nanos=MICRO, user=f"u{i % 3}")
            except NascaCeilingError:
                continue
            if i % 4 == 0:
                await n.arelease(r)
            else:
                await n.asettle(r, nanos=MICRO, background=True)
                admitted += 1
        await n.aflush()
        return admitted

    assert asyncio.run(go()) == 10
    snap = pool(n)
    assert snap.spent[0] == 10 * MICRO and snap.held == 0 and not n.pools.draws


def test_threads_never_pass_the_ceiling(make_nasca):
    a = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.1"))
    b = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.1"))  # another process on the same store
    got = [0] * 16
    start = threading.Barrier(16)

    def run(i: int) -> None:
        start.wait()
        n = a if i % 2 else b
        for j in range(20):
            if spend(n, f"u{i}-{j % 3}"):
                got[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.flush()
    b.flush()
    assert sum(got) <= 100  # estimates equal costs: never a call past the ceiling
    snap = pool(a)
    assert snap.spent[0] == sum(got) * MICRO and snap.held == 0
    # A call blocked while another process's chunk still had room was blocked early; once the
    # chunks end that room is there again: the ceiling admits exactly its limit, no more.
    later = 0
    while spend(a, "late") and later <= 100:
        later += 1
    assert sum(got) + later == 100


@pytest.mark.parametrize("tier", [Tier(daily=1, max_in_flight=3), Tier(), Tier(daily=1, warn_at=(0.5,),
                                  default_output_tokens=10)])
def test_a_tier_a_ceiling_cannot_be_is_refused(make_nasca, tier):
    with pytest.raises(ConfigurationError):
        make_nasca(ceiling=tier)
    n = make_nasca()
    with pytest.raises(ConfigurationError):
        n.set_ceiling(tier)
    assert n.live.fresh().ceiling is None  # nothing stored


@pytest.mark.parametrize("backend", SENDER_BACKENDS, indirect=True)
def test_calls_under_a_budget_lease_take_chunks_alone_once_per_chunk(make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.5"))
    takes: list[str] = []
    real = n.store.sync.pool_take

    def take(op: Any) -> Any:
        takes.append(threading.current_thread().name)
        return real(op)

    n.store.sync.pool_take = take
    admitted = 0
    for _ in range(300):
        admitted += spend(n, "solo")
        time.sleep(0.0005)  # an app's calls are apart: the sender's thread has its turns
    assert n.stats.leased > 200  # admitted in-process under the user's lease...
    assert n.stats.pool_takes < 20  # ...the ceiling's chunks taken once each...
    # ...by the sender's thread, before the chunk in use runs out (none on the caller's path
    # past the first chunks: the first is the call's estimate alone, the room not known yet).
    # Mostly by the sender's thread (the prefetch), at most once per chunk on the caller's path.
    assert "nasca-settle-sender" in takes and takes.count("MainThread") <= n.stats.pool_takes
    n.flush()
    assert admitted == 300 and pool(n).spent[0] == 300 * MICRO and pool(n).held == 0


@pytest.mark.parametrize("backend", SENDER_BACKENDS, indirect=True)
@pytest.mark.parametrize("policy", ["block", "allow"])
def test_a_chunk_the_store_cannot_give_follows_on_store_error(make_nasca, policy):
    from nasca_core import StoreError

    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=1), on_store_error=policy)
    for _ in range(20):
        spend(n, "solo")  # the user's lease taken, its calls drawn on the chunk
    assert n.stats.leased
    n.pools.close()  # the chunk ends: the next leased call takes one alone

    def down(op: Any) -> Any:
        raise StoreError("the store went away")

    n.store.sync.pool_take = down
    if policy == "block":
        with pytest.raises(StoreError):
            n.reserve(nanos=MICRO, user="solo")
        n.flush()
        assert pool(n).spent[0] == 20 * MICRO  # the refused call left nothing behind
    else:
        r = n.reserve(nanos=MICRO, user="solo")  # admitted unchecked, logged...
        assert r.pool is None
        n.settle(r, nanos=MICRO)
        n.flush()
        assert pool(n).spent[0] == 21 * MICRO  # ...and still charged to the ceiling


def test_the_remote_client_raises_it_typed(make_remote):
    n = make_remote(ceiling=Tier(daily="0.001"))
    r = n.reserve(nanos=MICRO, user="a")
    n.settle(r, nanos=MICRO)
    with pytest.raises(NascaCeilingError) as info:
        n.reserve(nanos=MICRO, user="b")
    assert info.value.reason == "ceiling" and info.value.checkout_url is None
    assert info.value.window == "daily" and info.value.limit == Decimal("0.001")


def test_the_ceiling_from_the_environment(monkeypatch):
    from nasca_core import Nasca

    monkeypatch.setenv("NASCA_TIERS", '{"free": {"daily": 1}}')
    monkeypatch.setenv("NASCA_CEILING", '{"daily": "0.002", "warn_at": [0.5]}')
    n = Nasca.from_env(default_tier="free")
    assert n.live.current().ceiling == Tier(daily="0.002", warn_at=(0.5,))
    assert spend(n, "a") and spend(n, "b") and not spend(n, "c")
    n.close()
    monkeypatch.setenv("NASCA_CEILING", '{"daily": 1, "max_in_flight": 3}')
    with pytest.raises(ConfigurationError):
        Nasca.from_env(default_tier="free")


@pytest.mark.parametrize("backend", SENDER_BACKENDS, indirect=True)
def test_an_idle_chunk_is_released_by_the_sender_s_thread(make_nasca, clock):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=1))
    assert spend(n, "u") and spend(n, "v")
    time.sleep(0.05)
    assert pool(n).held > 0  # the chunk, held for this process's next calls
    clock.advance(LEASE_S + 0.1)
    n.deferred.sender.wake()
    deadline = time.monotonic() + 5
    while pool(n).held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool(n).held == 0 and pool(n).spent[0] == 2 * MICRO  # unheld, every call still charged


# One store is enough: the child's table is this process's.
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_forked_child_has_no_chunk(make_nasca):
    import os

    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=1))
    r = n.reserve(nanos=MICRO, user="u")
    assert n.pools.draws
    pid = os.fork()
    if pid == 0:  # the child: none of its parent's chunks or draws; its own taken and released
        ok = not n.pools.draws and spend(n, "child") and r.hold_id not in n.pools.draws
        n.flush()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert r.hold_id in n.pools.draws  # the parent keeps its own
    n.settle(r, nanos=MICRO)
    n.flush()
    assert pool(n).spent[0] == 2 * MICRO and pool(n).held == 0


def test_redis_commands_per_call_with_and_without_a_ceiling(redis_server_factory):
    """Counted by the server (INFO commandstats): no ceiling, a call runs exactly the reserve and
    settle scripts it ran before pools existed; with one, the steady state adds the pool's charge
    script to the settle's pipeline (same round trip) and one take per chunk to a reserve's."""
    import redis

    from nasca_core import Nasca

    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0"
    admin = redis.Redis.from_url(url)
    figures = {}
    for name, ceiling in (("plain", None), ("ceiled", Tier(daily=100))):
        n = Nasca(url, tiers=TIERS, default_tier="free", namespace=name, leases=False, ceiling=ceiling,
                  settle_in_background=False)
        takes: list[int] = []
        real = n.store.sync.reserve
        n.store.sync.reserve = lambda op, _real=real, _takes=takes: (
            _takes.append(op.pool_take is not None) or _real(op))
        for _ in range(3):
            spend(n, "warm")
        deadline = time.monotonic() + 5  # the warm-up's first chunk ended: dropped on a timer's thread
        live = n.pools._live.get("app")  # held in the pool: its free part (its calls' costs are charged)
        while live and (n.pools._chunks.keys() - {live.id} or n.pools._reaping.locked()) and \
                time.monotonic() < deadline:
            time.sleep(0.01)  # (a used-up chunk holds nothing, but its release is a command)
        admin.config_resetstat()
        takes.clear()
        for i in range(20):
            spend(n, f"u{i % 4}")
        stats = admin.info("commandstats")
        figures[name] = ({k: int(v["calls"]) for k, v in stats.items()
                          if k not in ("cmdstat_config|resetstat", "cmdstat_info")}, sum(takes))
        assert not list(admin.scan_iter(f"{name}:pool:*")) if ceiling is None else True
        n.close()
    plain, ceiled = figures["plain"], figures["ceiled"]
    # Scripts called (commands inside a script are counted too, under their own names).
    assert plain[0]["cmdstat_evalsha"] == 40 and plain[1] == 0  # one script each way, nothing else
    chunks = ceiled[1]
    assert chunks <= 1  # 20 calls: the warm-up's chunk (64 estimates) covers them
    assert ceiled[0]["cmdstat_evalsha"] == 40 + 20 + chunks  # the charges and takes, pipelined
    admin.close()


def test_a_take_whose_reply_was_lost_is_released_later(make_nasca, clock):
    from nasca_core import StoreError
    from nasca_core._pools import LOST_TAKE_MS

    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=1), leases=False)
    real = n.store.sync.reserve
    depth = [0]

    def lost(op: Any) -> Any:  # the store applied it; the reply never came back (a dropped link)
        depth[0] += 1
        try:
            got = real(op)
        finally:
            depth[0] -= 1
        if depth[0]:
            return got  # SQLite's pooled reserve calls its own reserve inside the transaction
        raise StoreError("connection lost")

    n.store.sync.reserve = lost
    with pytest.raises(StoreError):
        n.reserve(nanos=MICRO, user="u")
    n.store.sync.reserve = real
    n.deferred.flush()
    assert pool(n).held > 0  # the lost take's chunk is held in the store
    clock.advance(LOST_TAKE_MS / 1000 + 1)
    n.pools.close()  # the next call takes a chunk of its own...
    assert spend(n, "u")
    n.flush()  # ...and the lost one is released with it
    assert pool(n).held == 0 and pool(n).spent[0] == MICRO


@pytest.mark.parametrize("backend", SENDER_BACKENDS, indirect=True)
def test_the_sender_takes_the_next_chunk_before_the_callers_need_it(make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=1), leases=False)
    takes: list[bool] = []
    real = n.store.sync.reserve
    n.store.sync.reserve = lambda op, _real=real: takes.append(op.pool_take is not None) or _real(op)
    for _ in range(3):  # the first chunk is one estimate (the room not known), the next are sized
        assert spend(n, "u")
    time.sleep(0.2)  # the sender's turn: the first chunk's successor taken
    takes.clear()
    live = n.pools._live["app"]
    while n.pools._live.get("app") is live and 2 * (live.out + live.used) <= live.size:
        assert spend(n, "u")  # past half of it, the sender's thread is asked for the next one
    deadline = time.monotonic() + 5
    while n.pools._live.get("app") is live and time.monotonic() < deadline:
        time.sleep(0.01)
    assert n.pools._live["app"] is not live and not any(takes)  # taken off the callers' path
    takes.clear()
    for _ in range(10):
        assert spend(n, "u")
    assert takes == [False] * 10  # the callers' reserves carry no take: the next chunk is here
    n.flush()
    assert pool(n).held == 0 and pool(n).spent[0] == n.get_usage("u").daily_spent * 10**9


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
@pytest.mark.parametrize("capped", [False, True])
def test_a_call_cancelled_while_its_chunk_is_taken_is_released(make_nasca, capped):
    tier = Tier(daily=1, max_in_flight=3 if capped else None)
    n = make_nasca(tiers={"free": tier}, ceiling=Tier(daily=1), leases=True)

    async def run() -> None:
        r = await n.areserve(nanos=MICRO, user="u")  # the user's lease opened, its first chunk taken
        await n.asettle(r, nanos=MICRO)
        n.pools.close()  # the chunk ends: the next leased call takes one alone, on the loop's store
        store = n.store.for_loop()
        real, started = store.pool_take, asyncio.Event()

        async def slow(op: Any) -> Any:
            started.set()
            await asyncio.sleep(10)
            return await real(op)

        store.pool_take = slow
        task = asyncio.ensure_future(n.areserve(nanos=MICRO, user="u"))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not n.leases.calls  # no phantom call on the user's lease
        store.pool_take = real
        r = await n.areserve(nanos=MICRO, user="u")  # the lease still carries calls (capped: one at a time)
        await n.asettle(r, nanos=MICRO)
        await n.aflush()

    asyncio.run(run())
    now_ms = int(n.now() * 1000)
    assert n.store.sync.snapshot(n.user_keys("u"), now_ms).held == 0
    assert pool(n).held == 0 and pool(n).spent[0] == 2 * MICRO


def test_a_flush_waiting_for_the_sender_s_reap_does_not_stall_the_loop(make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=1))
    assert spend(n, "u")
    reaping, held = threading.Event(), 0.5

    def reap() -> None:  # the sender's thread in a slow store call under the reap's lock
        with n.pools._reaping:
            reaping.set()
            time.sleep(held)

    async def run() -> tuple[float, float]:
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        tick = asyncio.ensure_future(ticker())
        thread = threading.Thread(target=reap)
        thread.start()
        reaping.wait(5)
        start = time.monotonic()
        await n.aflush()  # waits for the reap, off the loop
        took = time.monotonic() - start
        tick.cancel()
        thread.join()
        return took, max(gaps)

    took, worst = asyncio.run(run())
    assert took > held / 2  # it did wait for the reap...
    assert worst < held / 2  # ...while the loop kept running
    assert pool(n).held == 0 and pool(n).spent[0] == MICRO


def test_a_settled_call_counts_once_not_as_spent_and_held(make_nasca):
    # The reviewer's case: two processes on one store, a $0.010 daily ceiling, $0.001 calls. A
    # settled call's cost is spent and taken off its chunk's hold, so with nothing in flight
    # `held` is only what the chunks have not used (counted twice, A's 6 settled calls held a
    # whole call more, and B was blocked with the ceiling's last calls unspent).
    kw: dict[str, Any] = {"tiers": TIERS, "ceiling": Tier(daily="0.010"), "settle_in_background": False,
                          "leases": False}
    a, b = make_nasca(**kw), make_nasca(**kw)
    assert sum(spend(a, f"a{i}") for i in range(6)) == 6
    deadline = time.monotonic() + 5  # A's ended chunks dropped (a timer's thread): its live one is left
    while a.pools._chunks.keys() - {a.pools._live["app"].id} and time.monotonic() < deadline:
        time.sleep(0.01)
    snap = pool(a)
    assert snap.spent[0] == 6 * MICRO and snap.held < MICRO  # A's live chunk: what it has not used
    status = b.ceiling_status()
    assert status is not None and status.daily is not None
    assert status.daily.remaining * 10**9 == 10 * MICRO - snap.spent[0] - snap.held
    assert status.daily.held * 10**9 == snap.held
    got_b = 0
    while spend(b, f"b{got_b}") and got_b <= 10:
        got_b += 1
        after = pool(b)
        assert after.spent[0] + after.held <= 10 * MICRO
    assert snap.held > 0 or got_b == 4  # the room for whole calls: A's chunk keeps its unused part
    assert got_b == (10 * MICRO - snap.spent[0] - snap.held) // MICRO
    a.flush()  # A's chunk ends: its unused part is given back
    assert sum(spend(b, f"last{i}") for i in range(3)) == 4 - got_b  # the ceiling's last calls, no more
    a.flush()
    b.flush()
    assert pool(a).spent[0] == 10 * MICRO and pool(a).held == 0  # exactly the ceiling, nothing held


NEWER = '{"daily": {"amount": "1", "per": "seat"}}'  # a ceiling a newer version wrote, unreadable here


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
def test_an_unreadable_stored_ceiling_fails_closed(make_nasca, caplog):
    n = make_nasca(tiers=TIERS)
    n.set_ceiling(Tier(daily="0.002"))
    assert spend(n, "a")
    n.live.save("ceiling", "app", NEWER)  # another process, a newer version
    assert spend(n, "b") and not spend(n, "c")  # the last one read here stands: still at $0.002
    assert n.live.current().ceiling == Tier(daily="0.002")

    given = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.001"))  # a new process given ceiling=
    assert given.live.current().ceiling == Tier(daily="0.001")  # ...its own stands

    bare = make_nasca(tiers=TIERS)  # a new process with neither: no call runs unceilinged
    caplog.clear()
    for _ in range(3):
        with pytest.raises(ConfigurationError, match="stored ceiling can't be read"):
            bare.reserve(nanos=MICRO, user="d")
        bare.live.invalidate()  # reloaded: logged once for the same text
    assert sum("stored ceiling can't be read" in r.getMessage() for r in caplog.records) == 1
    now_ms = int(bare.now() * 1000)
    assert bare.store.sync.snapshot(bare.user_keys("d"), now_ms).held == 0  # nothing held for it

    bare.set_ceiling(Tier(daily=1))  # set again: calls run
    assert spend(bare, "d")

    # A last read of "off" doesn't stand for an unreadable value (it may be a new limit): the
    # process's ceiling= does ($0.001, already spent today), else calls are refused.
    off = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.001"))
    off.set_ceiling(None)
    assert off.live.current().ceiling is None
    off.live.save("ceiling", "app", NEWER)
    assert off.live.current().ceiling == Tier(daily="0.001") and not spend(off, "e")
    bare_off = make_nasca(tiers=TIERS)
    bare_off.set_ceiling(None)
    assert bare_off.live.current().ceiling is None
    bare_off.live.save("ceiling", "app", NEWER)
    with pytest.raises(ConfigurationError, match="stored ceiling can't be read"):
        bare_off.reserve(nanos=MICRO, user="e")

    # A stored ceiling removed ("default") is not revived by a later unreadable value: what was in
    # force just before (ceiling=) stands.
    unset = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.001"))
    unset.set_ceiling(Tier(daily=1000))
    assert unset.live.current().ceiling == Tier(daily=1000)
    unset.set_ceiling("default")
    assert unset.live.current().ceiling == Tier(daily="0.001")
    unset.live.save("ceiling", "app", NEWER)
    assert unset.live.current().ceiling == Tier(daily="0.001") and not spend(unset, "f")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_with_no_sender_an_idle_process_keeps_no_chunk(make_nasca, monkeypatch):
    monkeypatch.setattr("nasca_core._pool_policy.LEASE_S", 0.3)  # chunks end 0.3 s after they are taken
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=1), settle_in_background=False)
    assert n.deferred.sender is None

    def unheld_within(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while pool(n).held and time.monotonic() < deadline:
            time.sleep(0.02)
        return pool(n).held == 0

    assert spend(n, "u") and spend(n, "v")
    assert pool(n).held > 0  # the chunk, for this process's next calls...
    assert unheld_within(5)  # ...dropped once it ended, with no next call
    r = n.reserve(nanos=MICRO, user="u")  # a call outstanding when its chunk ends...
    time.sleep(0.5)
    assert pool(n).held > 0  # ...keeps it held (its cost is still on its way)...
    n.settle(r, nanos=MICRO)
    assert unheld_within(5)  # ...until it settles: then dropped, off the caller's path
    assert pool(n).spent[0] == 3 * MICRO


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_with_no_sender_chunks_ended_under_a_lease_are_dropped(make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily="0.020"), leases=True)  # memory://: no sender
    assert n.deferred.sender is None
    for _ in range(12):  # the first chunks are small: each leased call that doesn't fit takes one alone
        assert spend(n, "u")
    assert n.stats.leased and n.stats.pool_takes > 2
    live = n.pools._live["app"]
    deadline = time.monotonic() + 5  # the ended ones dropped on a timer's thread, with no next call
    while pool(n).held > live.size - live.used and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool(n).held == live.size - live.used and pool(n).spent[0] == 12 * MICRO


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("limit", ["1000", "0.05"])  # far from the limit, and near it (chunks of one call)
def test_with_no_sender_no_hold_is_dropped_on_the_caller_s_path(make_nasca, limit):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=limit), settle_in_background=False)
    assert n.deferred.sender is None
    real, threads = n.store.sync.pool_release, []

    def release(*a: Any) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return real(*a)

    n.store.sync.pool_release = release
    retry, refused = n.pools.retry, []

    def counted(*a: Any) -> bool:
        refused.append(len(threads))
        return retry(*a)

    n.pools.retry = counted
    for i in range(400):
        if not spend(n, f"u{i % 7}", 10 * MICRO, 10 * MICRO):
            break
    caller = threads.count(True)
    deadline = time.monotonic() + 5
    while len(threads) < n.stats.pool_takes - 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    # Only a take the pool refused (the timer's thread not done yet) drops this process's ended
    # chunks on the caller's path, rather than block the call: never in the steady state.
    assert caller <= len(refused) and n.stats.pool_takes > 3
    assert len(threads) >= n.stats.pool_takes - 1  # every ended chunk dropped, on a timer's thread


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_a_take_alone_under_a_lease_is_one_round_trip(make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=10), leases=True)
    counts = {"config_version": 0, "pool_take": 0}
    def counting(name: str) -> Any:
        real = getattr(n.store.sync, name)

        def counted(*a: Any) -> Any:
            counts[name] += 1
            return real(*a)
        return counted

    for name in counts:
        setattr(n.store.sync, name, counting(name))
    for _ in range(300):
        assert spend(n, "solo")
    assert n.stats.leased > 200 and counts["pool_take"] >= 2  # chunks taken alone, under the lease...
    assert counts["config_version"] == 0  # ...with no version read before each (checked at a refusal)


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_with_no_sender_a_mark_crossed_by_own_charges_fires_without_a_flush(make_nasca):
    n = make_nasca(tiers={"free": Tier(daily=100, max_in_flight=None)},
                   ceiling=Tier(daily=100, warn_at=(0.05,)))
    assert n.deferred.sender is None
    seen: list[tuple[str, float]] = []
    n.on_threshold(lambda ev: seen.append((ev.scope, ev.fraction)))
    for _ in range(12):  # $6 of a $100 ceiling: past its 5% mark, seen only by this process's charges
        assert spend(n, "u", 500 * MICRO, 500 * MICRO)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == [("ceiling", 0.05)]


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_with_no_sender_a_release_the_store_refused_is_tried_again(make_nasca):
    n = make_nasca(tiers=TIERS, ceiling=Tier(daily=1))
    assert n.deferred.sender is None
    real, tries = n.store.sync.pool_release, []

    def release(*a: Any) -> Any:
        tries.append(a)
        if len(tries) == 1:
            raise StoreError("down for a moment")
        return real(*a)

    n.store.sync.pool_release = release
    assert spend(n, "u") and spend(n, "u")  # the first chunk is one call's: the second ends it
    deadline = time.monotonic() + 5
    while len(tries) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(tries) == 2 and tries[1] == tries[0]  # the refused one again, on a timer's thread
    assert not n.pools._chunks.keys() - {n.pools._live["app"].id}  # only the live chunk still held
    n.close()
    assert not n.pools._timers.armed()  # close() dropped what was due and cancelled the timers
