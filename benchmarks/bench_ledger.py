"""Ledger hot path: reserve+settle on Redis, on SQLite and on the memory store, against a bare GET.

    .venv/bin/python benchmarks/bench_ledger.py [--redis-url redis://...] [-n 5000] [--server-only]

Prints, from one run: a bare redis-py GET round trip (p50), reserve+settle on loopback Redis,
on a SQLite file (WAL) and on the memory store (p50, interleaved so each sees the same
machine), Redis server time per LLM call (the two scripts, from ``INFO commandstats``, with
daily and monthly limits, the in-flight cap and credits on) and the commands run inside them,
the final spend of 200 concurrent callers on a $1 budget (default admission and strict),
Redis memory per active user-month, and budget leases off vs on (``--leases`` alone prints only
those rows): reserve+settle on the caller's path (settle in the background, and on the path)
on Redis, SQLite and memory, with the Redis server time per call with leases on. The lease rows
use a tier with no in-flight cap (a capped tier never gets a lease).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from _util import interleaved, redis_server

from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core.stores import _redis_conns


def make(store: str, **kw: object) -> Nasca:
    return Nasca(store, tiers={"t": Tier(monthly=10**6)}, default_tier="t",
                 namespace=f"bench{uuid.uuid4().hex[:6]}", **kw)  # type: ignore[arg-type]


def reserve_settle(n: Nasca) -> None:
    r = n.reserve(nanos=1000, user="bench-user")
    n.settle(r, nanos=900)


def reserve_release(n: Nasca) -> None:
    n.release(n.reserve(nanos=1000, user="bench-user"))


def reserve_settle_bg(n: Nasca) -> None:
    r = n.reserve(nanos=1000, user="bench-user")
    n.settle(r, nanos=900, background=True)


def leased(store: str, on: bool) -> Nasca:
    return Nasca(store, tiers={"t": Tier(daily=10**5, monthly=10**6, max_in_flight=None)}, default_tier="t",
                 namespace=f"lease{uuid.uuid4().hex[:6]}", leases=on)


def print_lease_rows(url: str, sqlite_uri: str, n: int) -> None:
    ledgers = {f"{name} {'on' if on else 'off'}": leased(store, on)
               for name, store in (("redis", url), ("sqlite", sqlite_uri), ("memory", "memory://"))
               for on in (False, True)}
    fns: dict[str, object] = {}
    for key, ledger in ledgers.items():
        fns[f"{key} bg"] = lambda ledger=ledger: reserve_settle_bg(ledger)
        fns[f"{key} path"] = lambda ledger=ledger: reserve_settle(ledger)
        fns[f"{key} rr"] = lambda ledger=ledger: reserve_release(ledger)
    p50 = interleaved(fns, n)  # type: ignore[arg-type]
    print("budget leases, reserve+settle p50 µs on the caller's path (off → on):")
    for name in ("redis", "sqlite", "memory"):
        for how, label in (("bg", "settle in the background"), ("path", "settle on the path")):
            off, on = p50[f"{name} off {how}"], p50[f"{name} on {how}"]
            print(f"  {name:<7} {label:<26}{off:>9.1f} → {on:>7.1f}   ({on / off:.2f}×)")
    off, on = p50["memory off rr"], p50["memory on rr"]
    print(f"  memory  reserve+release (no settle){off:>9.1f} → {on:>7.1f}   ({on / off:.2f}×): "
          "the lease's fast path, no store call")
    leases = ledgers["redis on"].stats
    print(f"  redis: {leases.leases} leases, {leases.leased} calls under one, {leases.lease_misses} misses")
    for ledger in ledgers.values():
        ledger.close()
    us, cmds = lease_server_time(url)
    verdict = "OK" if us <= 25 else "MISSED"
    print(f"{'Redis server time per call, leases on':<40}{us:>8.1f} µs   ≤ 25 µs {verdict}"
          f"   ({cmds:.1f} commands per call)")


def lease_server_time(url: str, calls: int = 4000) -> tuple[float, float]:
    """Redis server µs (and commands inside scripts) per reserve+settle with leases on, the
    settles sent by the background sender (flushed before reading the stats)."""
    n = leased(url, True)
    for _ in range(200):
        reserve_settle_bg(n)
    n.flush()
    client = redis.Redis.from_url(url)
    client.config_resetstat()
    for _ in range(calls):
        reserve_settle_bg(n)
    n.flush()
    stats = client.info("commandstats")
    client.close()
    n.close()
    us = sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")) / calls
    inner = sum(v["calls"] for k, v in stats.items()
                if k not in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_config|resetstat"))
    return us, inner / calls


def server_time(url: str, calls: int = 2000) -> tuple[float, float, dict[str, float]]:
    """Redis server µs per reserve+settle, Redis commands run inside the scripts per call, and
    those commands by name, from ``INFO commandstats`` around ``calls`` calls."""
    n = Nasca(url, tiers={"t": Tier(daily=10**5, monthly=10**6, max_in_flight=64)}, default_tier="t",
              namespace=f"srv{uuid.uuid4().hex[:6]}")
    n.billing.grant_credits("bench-user", spend="5.00", idempotency_key="bench-lot")  # a user with credits
    for _ in range(200):
        reserve_settle(n)
    client = redis.Redis.from_url(url)
    client.config_resetstat()
    for _ in range(calls):
        reserve_settle(n)
    stats = client.info("commandstats")
    client.close()
    scripts = stats["cmdstat_evalsha"]["usec"] / calls
    inner = {name.removeprefix("cmdstat_"): v["calls"] / calls for name, v in stats.items()
             if name not in ("cmdstat_evalsha", "cmdstat_config|resetstat")}
    return scripts, sum(inner.values()), inner


def script_floor(url: str, calls: int = 2000) -> float:
    """Server µs of the two EVALSHAs of one call carrying that call's real keys and arguments
    to scripts that return at once: what the server spends before a script runs a command."""
    seen: list[tuple[object, ...]] = []
    spied = _redis_conns.Conns.call

    def spy(self: _redis_conns.Conns, *args: object) -> object:
        seen.append(args)
        return spied(self, *args)

    _redis_conns.Conns.call = spy  # type: ignore[method-assign]  # before the store binds it
    try:
        n = Nasca(url, tiers={"t": Tier(daily=10**5, monthly=10**6, max_in_flight=64)}, default_tier="t",
                  namespace=f"srv{uuid.uuid4().hex[:6]}", settle_in_background=False)
        reserve_settle(n)
        seen.clear()
        reserve_settle(n)  # the counters exist: a call like the measured ones
    finally:
        _redis_conns.Conns.call = spied  # type: ignore[method-assign]
    n.close()
    client = redis.Redis.from_url(url)
    empty = client.script_load("return 0")
    replays = [(empty, *args[2:]) for args in seen if args[0] == "EVALSHA"]
    client.config_resetstat()
    for _ in range(calls):
        for replay in replays:
            client.evalsha(*replay)  # type: ignore[arg-type]
    us = float(client.info("commandstats")["cmdstat_evalsha"]["usec"]) / calls
    client.close()
    return us


def print_server_time(url: str) -> None:
    us, cmds, by_name = server_time(url)
    print(f"{'Redis server time per call':<28}{us:>10.1f}{'':>8}   ≤ 25 µs {'OK' if us <= 25 else 'MISSED'}")
    print(f"  {cmds:.1f} Redis commands inside the two scripts per call: "
          + ", ".join(f"{k} {v:g}" for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])))
    print(f"  the same two EVALSHAs (keys and arguments) on scripts that return at once: "
          f"{script_floor(url):.1f} µs")


def concurrency(store: str, strict: bool, callers: int = 200) -> tuple[Decimal, Decimal]:
    n = Nasca(store, tiers={"t": Tier(monthly=1)}, default_tier="t", strict=strict,
              namespace=f"conc{uuid.uuid4().hex[:6]}")
    cost = Decimal("0.07")
    start = threading.Barrier(callers)

    def caller() -> None:
        start.wait()
        while True:
            try:
                r = n.reserve(cost, user="hot")
            except NascaBlockedError:
                return
            n.settle(r, cost)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n.get_usage("hot").monthly_spent or Decimal(0), cost


async def aconcurrency(store: str, strict: bool, callers: int = 200) -> Decimal:
    n = Nasca(store, tiers={"t": Tier(monthly=1)}, default_tier="t", strict=strict,
              namespace=f"aconc{uuid.uuid4().hex[:6]}")

    async def caller() -> None:
        while True:
            try:
                r = await n.areserve("0.07", user="hot")
            except NascaBlockedError:
                return
            await asyncio.sleep(0)
            await n.asettle(r, "0.07")

    await asyncio.gather(*(caller() for _ in range(callers)))
    return (await n.aget_usage("hot")).monthly_spent or Decimal(0)


def memory_per_user_month(url: str, users: int = 200, calls: int = 100) -> float:
    """Bytes of the keys an active user holds in a month: month hash, today's and this week's
    counters, recent settled markers (older day/week counters expire by TTL)."""
    clock = {"now": 1_795_003_200.0}
    n = Nasca(url, tiers={"t": Tier(monthly=100, daily=10)}, default_tier="t",
              namespace="mem", clock=lambda: clock["now"])
    client = redis.Redis.from_url(url)
    for i in range(calls):
        for u in range(users):
            n.settle(n.reserve("0.001", user=f"user-{u:05d}"), "0.0009")
        clock["now"] += 6 * 3600 if i < calls - 1 else 0
    total = 0
    for u in range(users):
        k = n.user_keys(f"user-{u:05d}", clock["now"])
        for key in (k.meta, k.holds, k.held, k.settled, k.day, k.week, k.month, k.credits):
            total += client.memory_usage(key) or 0
    return total / users


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url")
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--server-only", action="store_true", help="print only the Redis server-time row")
    ap.add_argument("--leases", action="store_true", help="print only the budget-lease rows")
    args = ap.parse_args()
    with redis_server(args.redis_url) as url, tempfile.TemporaryDirectory() as tmp:
        client = redis.Redis.from_url(url)
        client.set("bench:k", "1")
        if args.server_only:
            print_server_time(url)
            return
        sqlite_uri = f"sqlite:///{tmp}/bench.db"
        if args.leases:
            print_lease_rows(url, sqlite_uri, args.n)
            return
        on_redis, on_memory, on_sqlite = make(url), make("memory://"), make(sqlite_uri)
        p50 = interleaved({
            "bare GET": lambda: client.get("bench:k"),
            "reserve+settle redis": lambda: reserve_settle(on_redis),
            "reserve+settle sqlite": lambda: reserve_settle(on_sqlite),
            "reserve+settle memory": lambda: reserve_settle(on_memory),
        }, args.n)
        get = p50["bare GET"]
        print(f"{'operation':<28}{'p50 µs':>10}{'× GET':>8}   target")
        print(f"{'redis-py GET (baseline)':<28}{get:>10.1f}{1:>8.2f}")
        rs = p50["reserve+settle redis"]
        print(f"{'reserve+settle, Redis':<28}{rs:>10.1f}{rs / get:>8.2f}   ≤ 2.5× GET "
              f"{'OK' if rs / get <= 2.5 else 'MISSED'}")
        sq = p50["reserve+settle sqlite"]
        print(f"{'reserve+settle, SQLite':<28}{sq:>10.1f}{sq / get:>8.2f}   ≤ Redis "
              f"{'OK' if sq <= rs else 'MISSED'}")
        ms = p50["reserve+settle memory"]
        print(f"{'reserve+settle, memory':<28}{ms:>10.1f}{ms / get:>8.2f}   ≤ 20 µs "
              f"{'OK' if ms <= 20 else 'MISSED'}")
        print_server_time(url)
        print()
        print("200 concurrent callers, one user, $1 monthly budget, $0.07 per call:")
        for store_name, store in (("memory", "memory://"), ("sqlite", sqlite_uri), ("redis", url)):
            for strict in (False, True):
                spent, cost = concurrency(store, strict)
                aspent = asyncio.run(aconcurrency(store, strict))
                over, aover = max(Decimal(0), spent - 1), max(Decimal(0), aspent - 1)
                bound = Decimal(0) if strict else cost
                ok = over <= bound and aover <= bound
                print(f"  {store_name:<7} {'strict' if strict else 'default':<8} threads spent ${spent} "
                      f"(over ${over}), asyncio spent ${aspent} (over ${aover})   bound ${bound} "
                      f"{'OK' if ok else 'MISSED'}")
        print()
        per_user = memory_per_user_month(url)
        print(f"Redis memory per active user-month (100 calls): {per_user:.0f} bytes   ≤ 1024 "
              f"{'OK' if per_user <= 1024 else 'MISSED'}")
        print()
        print_lease_rows(url, sqlite_uri, args.n)


if __name__ == "__main__":
    main()
