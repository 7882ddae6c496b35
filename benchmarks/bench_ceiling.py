"""The app-wide ceiling (``Nasca(ceiling=Tier(...))``): its cost on the caller's path, and its
overspend under 200-way concurrency from several processes.

    .venv/bin/python benchmarks/bench_ceiling.py [--redis-url redis://...] [-n 4000] [--skip-load]

Prints, from one run:
- reserve+settle p50 (µs) on the caller's path without a ceiling and with one far from its
  limit, on Redis, a SQLite file and the memory store, settle in the background and on the path,
  interleaved so each sees the same machine, with the ratio; and the chunk takes per call (each
  take rides on a reserve the call makes anyway, or goes alone under a budget lease);
- 4 processes × 50 threads (memory: 4 ledgers × 50 threads in one process), each thread its
  own user, calling until the ceiling blocks them, with real costs 1× and 2× the estimates:
  the ceiling's final spend against the ceiling, the overspend, the calls admitted, and the
  bound stated in the README (the calls in flight's (real − estimate)⁺: 0 at 1×).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import interleaved, redis_server

from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core.stores import PoolKeys

PROCESSES, THREADS = 4, 50
CALL = 1_000_000  # $0.001 estimates
LIMIT = 1000 * CALL  # the ceiling of the load rows: $1 a day
_fork = multiprocessing.get_context("fork")


def make(store: str, ceiling: bool) -> Nasca:
    return Nasca(store, tiers={"t": Tier(daily=10**5, monthly=10**6, max_in_flight=None)}, default_tier="t",
                 namespace=f"ceil{uuid.uuid4().hex[:6]}",
                 ceiling=Tier(daily=10**5, monthly=10**6) if ceiling else None)


def reserve_settle(n: Nasca, background: bool) -> None:
    r = n.reserve(nanos=1000, user="bench-user")
    n.settle(r, nanos=900, background=background)


def print_path_rows(url: str, sqlite_uri: str, count: int) -> None:
    ledgers = {(name, on): make(store, on) for name, store in
               (("redis", url), ("sqlite", sqlite_uri), ("memory", "memory://")) for on in (False, True)}
    fns = {}
    for (name, on), n in ledgers.items():
        for bg in (True, False):
            fns[f"{name} {on} {bg}"] = lambda n=n, bg=bg: reserve_settle(n, bg)
    p50 = interleaved(fns, count)
    print("reserve+settle p50 µs on the caller's path, no ceiling → a ceiling far from its limit:")
    for name in ("redis", "sqlite", "memory"):
        for bg, label in ((True, "settle in the background"), (False, "settle on the path")):
            off, on = p50[f"{name} False {bg}"], p50[f"{name} True {bg}"]
            print(f"  {name:<7} {label:<26}{off:>9.1f} → {on:>7.1f}   ({on / off:.2f}×)")
    for name in ("redis", "sqlite", "memory"):
        n = ledgers[(name, True)]
        calls = n.stats.reserved  # a leased call is counted in reserved too
        print(f"  {name}: {n.stats.pool_takes} chunk takes for {calls} calls "
              f"({n.stats.pool_takes / max(calls, 1):.3f} per call), {n.stats.leased} under a budget lease")
    for n in ledgers.values():
        n.close()


def print_round_trips(url: str, calls: int = 500) -> None:
    """Round trips this thread sends per reserve+settle on Redis with leases off (every call goes
    to the store), counted at redis-py's socket writes (a pipeline is one), without and with the
    background sender (which then sends the settles and drops ended chunks off this thread)."""
    import redis.connection

    real, me, sent = redis.connection.AbstractConnection.send_packed_command, threading.get_ident(), [0]

    def counted(self: object, *args: object, **kwargs: object) -> None:
        if threading.get_ident() == me:
            sent[0] += 1
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        for bg in (False, True):
            out, takes = {}, 0
            for on in (False, True):
                n = Nasca(url, tiers={"t": Tier(max_in_flight=None)}, default_tier="t", leases=False,
                          settle_in_background=bg, namespace=f"rt{uuid.uuid4().hex[:6]}",
                          ceiling=Tier(daily=10**5) if on else None)
                for _ in range(50):
                    reserve_settle(n, bg)
                n.flush()
                sent[0], before = 0, n.stats.pool_takes
                for _ in range(calls):
                    reserve_settle(n, bg)
                out[on], takes = sent[0] / calls, n.stats.pool_takes - before
                n.close()
            how = "settles by the sender" if bg else "no sender, settle on the path"
            print(f"  redis round trips per reserve+settle on the caller's path ({how}, no leases): "
                  f"{out[False]:.3f} without a ceiling, {out[True]:.3f} with one "
                  f"({takes} chunks in {calls} calls)")
    finally:
        redis.connection.AbstractConnection.send_packed_command = real  # type: ignore[method-assign]


# -- 200-way concurrency -------------------------------------------------------------------------
def _ledger(store: str, namespace: str, state_dir: str) -> Nasca:
    return Nasca(store, tiers={"t": Tier(max_in_flight=None)}, default_tier="t", namespace=namespace,
                 state_dir=state_dir, ceiling=Tier(daily=LIMIT / 1e9))


def _callers(n: Nasca, who: str, cost: int) -> int:
    admitted, lock, start = [0], threading.Lock(), threading.Barrier(THREADS)

    def caller(i: int) -> None:
        blocked = 0
        start.wait()
        while blocked < 3:
            try:
                r = n.reserve(nanos=CALL, user=f"{who}-{i}")
            except NascaBlockedError:
                blocked += 1
                continue
            time.sleep(0.002)  # the model call
            n.settle(r, nanos=cost)
            with lock:
                admitted[0] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return admitted[0]


def _process(store: str, namespace: str, state_dir: str, who: str, cost: int, out: object) -> None:
    n = _ledger(store, namespace, state_dir)
    try:
        out.put(_callers(n, who, cost))  # type: ignore[attr-defined]
    finally:
        n.close()


def _spent(store: str, namespace: str, state_dir: str) -> tuple[int, int]:
    n = _ledger(store, namespace, state_dir)
    try:
        keys = PoolKeys.build(namespace, "app", n.windows_at().ids)
        snap = n.store.sync.pool_snapshot(keys, int(n.now() * 1000))
        return snap.spent[0], snap.held
    finally:
        n.close()


def load(name: str, store: str, state_dir: str, cost: int) -> tuple[int, int, int, float]:
    namespace = f"load{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    if name == "memory":
        got: list[int] = []
        ledgers = [_ledger(store, namespace, state_dir) for _ in range(PROCESSES)]
        threads = [threading.Thread(target=lambda n=n, i=i: got.append(_callers(n, f"m{i}", cost)))
                   for i, n in enumerate(ledgers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for n in ledgers:
            n.flush()
        admitted = sum(got)
        spent, held = _spent(store, namespace, state_dir)
        for n in ledgers:
            n.close()
    else:
        out = _fork.Queue()
        procs = [_fork.Process(target=_process, args=(store, namespace, state_dir, f"p{i}", cost, out))
                 for i in range(PROCESSES)]
        for p in procs:
            p.start()
        admitted = sum(out.get(timeout=600) for _ in procs)
        for p in procs:
            p.join()
        spent, held = _spent(store, namespace, state_dir)
    return spent, admitted, held, time.perf_counter() - started


def print_load_rows(url: str, sqlite_uri: str, memory_uri: str, state_dir: str) -> None:
    print(f"\n{PROCESSES} processes × {THREADS} threads (memory: {PROCESSES} ledgers × {THREADS} threads), "
          f"every thread its own user, ceiling ${LIMIT / 1e9:.2f} a day, ${CALL / 1e9:.3f} estimates:")
    print(f"  {'store':<7} {'real/est':>8} {'spent':>9} {'over':>9} {'bound':>9} {'admitted':>9} "
          f"{'charged once':>12} {'held after':>10} {'secs':>6}")
    for name, store in (("redis", url), ("sqlite", sqlite_uri), ("memory", memory_uri)):
        for ratio in (1, 2):
            cost = ratio * CALL
            spent, admitted, held, secs = load(name, store, state_dir, cost)
            bound = PROCESSES * THREADS * (cost - CALL)
            print(f"  {name:<7} {ratio:>7}× ${spent / 1e9:>8.3f} ${max(0, spent - LIMIT) / 1e9:>8.3f} "
                  f"${bound / 1e9:>8.3f} {admitted:>9} {spent == admitted * cost!s:>12} "
                  f"{held:>10} {secs:>6.1f}")
    print("  over: spend past the ceiling; bound: the calls in flight's (real − estimate)⁺ (README)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url")
    ap.add_argument("-n", type=int, default=4000)
    ap.add_argument("--skip-load", action="store_true", help="only the caller's-path rows")
    args = ap.parse_args()
    with redis_server(args.redis_url) as url, tempfile.TemporaryDirectory() as tmp:
        print_path_rows(url, f"sqlite:///{tmp}/path.db", args.n)
        print_round_trips(url)
        if not args.skip_load:
            print_load_rows(url, f"sqlite:///{tmp}/load.db", f"memory://{uuid.uuid4().hex}", tmp)


if __name__ == "__main__":
    main()
