"""The lean Redis path (issue 16): expiries set once per window, the scripts' commands per
call, and EVALSHA on the store's own connections. Speed never changes a result."""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import time
import uuid
from decimal import Decimal

import pytest
import redis

from nasca_core import Nasca, Tier
from nasca_core.stores._scripts import NAMES, helpers, source
from tests.conftest import FakeClock

pytestmark = pytest.mark.redis

TIERS = {"t": Tier(daily=1, monthly=10, max_in_flight=8)}


def ledger(url: str, clock: FakeClock | None = None) -> Nasca:
    return Nasca(url, tiers=TIERS, default_tier="t", namespace=f"lean{uuid.uuid4().hex[:8]}",
                 clock=clock)


def test_counters_keep_the_expiry_their_first_settle_gave_them(redis_url, clock):
    n = ledger(redis_url, clock)
    admin = redis.Redis.from_url(redis_url)
    n.settle(n.reserve("0.01", user="u"), "0.01")
    k = n.user_keys("u")
    forget_d, forget_w, forget_m = n.windows_at().forget_at_ms
    now_ms = int(clock.now * 1000)
    first = {key: admin.pttl(key) for key in (k.day, k.week, k.month)}
    # Each counter expires when its window ends plus grace (relative to the caller's clock).
    for key, forget in zip((k.day, k.week, k.month), (forget_d, forget_w, forget_m), strict=True):
        assert forget - now_ms - 5000 < first[key] <= forget - now_ms
    clock.advance(3600)  # an hour later, same windows: the expiry is not pushed back or forward
    n.settle(n.reserve("0.02", user="u"), "0.02")
    for key, ttl in first.items():
        assert ttl - 5000 < admin.pttl(key) <= ttl
    assert n.get_usage("u").daily_spent == Decimal("0.03")
    assert admin.hget(k.month, "n") == b"2"
    n.close()
    admin.close()


def test_the_holds_and_their_sum_expire_together(redis_url):
    n = ledger(redis_url)
    admin = redis.Redis.from_url(redis_url)
    r1 = n.reserve("0.01", user="u")
    k = n.user_keys("u")
    holds, total = admin.pttl(k.holds), admin.pttl(k.held)
    assert holds > n.hold_ttl_ms and abs(holds - total) < 1000
    r2 = n.reserve("0.02", user="u")  # the keys' expiry has room: not extended per call
    assert abs(admin.pttl(k.holds) - admin.pttl(k.held)) < 1000
    n.release(r1)
    assert n.get_usage("u").in_flight == Decimal("0.02")
    n.settle(r2, "0.02")
    assert n.get_usage("u").in_flight == 0
    n.close()
    admin.close()


def test_a_settle_replayed_after_its_marker_lapsed_charges_as_on_every_store(redis_url, clock):
    """A marker counts until its score even while it lingers in the zset (purged once per
    marker lifetime): the replay then charges again, as on the memory store."""
    seen = {}
    for url in ("memory://", redis_url):
        c = FakeClock(clock.now)
        n = ledger(url, c)
        r = n.reserve("0.01", user="u")
        n.settle(r, "0.01")
        n.settle(r, "0.01")  # a retried settle: charged once
        once = n.get_usage("u").daily_spent
        c.advance(2 * 3600)
        n.settle(r, "0.01")
        seen[url] = (once, n.get_usage("u").daily_spent)
        n.close()
    assert seen["memory://"] == seen[redis_url] == (Decimal("0.01"), Decimal("0.02"))


def test_lapsed_settle_markers_are_purged_by_the_callers_clock(redis_url, clock):
    n = ledger(redis_url, clock)
    admin = redis.Redis.from_url(redis_url)
    for _ in range(10):
        n.settle(n.reserve("0.001", user="u"), "0.001")
        clock.advance(2 * 3600)  # past a marker's lifetime: the next settle purges it
    assert admin.zcard(n.user_keys("u").settled) == 1
    assert admin.pttl(n.user_keys("u").settled) > 0
    n.close()
    admin.close()


def _inner_commands(admin: redis.Redis) -> dict[str, int]:
    stats = admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
            if name not in ("cmdstat_evalsha", "cmdstat_config|resetstat", "cmdstat_info")}


def test_a_call_runs_fewer_commands_and_no_per_call_counter_expiry(redis_server_factory):
    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0"
    n = ledger(url)
    admin = redis.Redis.from_url(url)
    for _ in range(5):
        n.settle(n.reserve("0.001", user="u"), "0.001")
    admin.config_resetstat()
    calls = 50
    for _ in range(calls):
        n.settle(n.reserve("0.001", user="u"), "0.001")
    inner = _inner_commands(admin)
    # Before issue 16 a call ran 33 commands, 6 of them PEXPIRE (3 counters, the settle
    # markers, the holds and their sum). Now the counters and markers get theirs once.
    assert sum(inner.values()) <= 27 * calls
    assert inner.get("pexpire", 0) <= 2 * calls
    assert inner.get("hincrby", 0) == 0  # the month hash is written in one HSET
    assert n.get_usage("u").monthly_spent == Decimal("0.055")
    n.close()
    admin.close()


def test_each_script_carries_only_the_helpers_it_calls():
    lib = "-- header\nlocal function a(x)\n  return x\nend\n\nlocal function b(x)\n  return a(x)\nend\n" \
          "\nlocal function c(x)\n  return x\nend\n"
    assert re.findall(r"local function (\w+)", helpers(lib, "return b(1)")) == ["a", "b"]
    assert helpers(lib, "return 1") == "-- header\n"
    settle = source("settle")
    assert "local function drop_hold" in settle and "local function add_hold" not in settle
    lib_names = set(re.findall(r"local function (\w+)", lib_text()))
    for name in NAMES:  # nothing a script calls is left out
        body = source(name)
        for called in set(re.findall(r"\b([a-z_]+)\(", body)) & lib_names:
            assert f"local function {called}(" in body, (name, called)


def lib_text() -> str:
    from importlib.resources import files

    return (files("nasca_core.stores") / "lua" / "_lib.lua").read_text(encoding="utf-8")


def test_scripts_flushed_from_the_server_are_loaded_again(redis_url):
    """A NOSCRIPT error reply leaves the store's connection usable: the script is loaded and
    the call goes through."""
    n = ledger(redis_url)
    admin = redis.Redis.from_url(redis_url)
    n.settle(n.reserve("0.01", user="u"), "0.01")
    admin.script_flush()
    n.settle(n.reserve("0.01", user="u"), "0.01")
    assert n.get_usage("u").daily_spent == Decimal("0.02")
    n.close()
    admin.close()


def test_a_restarted_server_is_reached_again(redis_server_factory):
    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0"
    n = ledger(url)
    n.settle(n.reserve("0.01", user="u"), "0.01")
    server.stop()
    server.__init__(server.port, server.workdir)  # empty again: it kept nothing on disk
    # The store's idle connection is dead: the call falls back to the client, which reconnects.
    n.settle(n.reserve("0.02", user="u"), "0.02")
    assert n.get_usage("u").daily_spent == Decimal("0.02")
    n.close()


def _forked_reserve(n: Nasca) -> str:
    out: multiprocessing.Queue = multiprocessing.Queue()
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=lambda: (n.settle(n.reserve("0.03", user="forked"), "0.03"),
                                        out.put(str(n.get_usage("forked").daily_spent))))
    proc.start()
    proc.join(20)
    return str(out.get(timeout=5))


def test_a_forked_child_does_not_share_the_parent_connections(redis_url):
    n = ledger(redis_url)
    n.settle(n.reserve("0.01", user="parent"), "0.01")  # the parent holds an idle connection
    assert _forked_reserve(n) == "0.03"
    # The parent's connection was not used by the child: its next reply is its own.
    n.settle(n.reserve("0.01", user="parent"), "0.01")
    assert n.get_usage("parent").daily_spent == Decimal("0.02")
    n.close()


def test_close_drops_the_store_connections(redis_server_factory):
    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0"
    admin = redis.Redis.from_url(url)
    base = len(admin.client_list())
    n = ledger(url)
    n.settle(n.reserve("0.01", user="u"), "0.01")
    assert len(admin.client_list()) > base
    n.close()
    deadline = time.monotonic() + 5  # the server sees a closed socket a moment later
    while len(admin.client_list()) > base and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(admin.client_list()) == base
    admin.close()


async def test_concurrent_async_calls_each_get_their_own_reply(redis_url):
    n = Nasca(redis_url, tiers={"t": Tier(monthly=10)}, default_tier="t",
              namespace=f"lean{uuid.uuid4().hex[:8]}")

    async def call(i: int) -> None:
        r = await n.areserve(nanos=1000 + i, user=f"u{i % 5}")
        await n.asettle(r, nanos=1000 + i)

    await asyncio.gather(*(call(i) for i in range(200)))
    total = sum([(await n.aget_usage(f"u{k}")).monthly_spent or Decimal(0) for k in range(5)], Decimal(0))
    assert total == Decimal(sum(1000 + i for i in range(200))) / 10**9
    await n.aclose()


async def test_a_call_cancelled_mid_reply_leaves_no_reply_for_the_next(redis_server_factory):
    """A task cancelled while its script runs drops its connection: the next call on the store
    must not read the cancelled call's reply as its own."""
    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0"
    n = ledger(url)
    admin = redis.Redis.from_url(url)
    r = await n.areserve("0.01", user="a")
    await n.asettle(r, "0.01")
    # A slow script: the reserve's keys are held busy by a Lua loop on another connection.
    busy = ("local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] "
            "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > 300000 return 1")
    stall = asyncio.get_running_loop().run_in_executor(None, lambda: admin.eval(busy, 0))
    await asyncio.sleep(0.05)
    task = asyncio.ensure_future(n.areserve("0.02", user="b"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stall
    # The next reply read is this call's own: a snapshot, not the cancelled reserve's reply.
    assert (await n.aget_usage("a")).daily_spent == Decimal("0.01")
    r = await n.areserve("0.03", user="a")
    assert r.user_id == "a" and r.estimate == Decimal("0.03")
    await n.asettle(r, "0.03")
    assert (await n.aget_usage("a")).daily_spent == Decimal("0.04")
    await n.aclose()
    admin.close()
