"""How long NascaCallbackHandler holds the event loop on LangChain's async path: a ticker's
lag while 50 concurrent ``ainvoke``s run, on the memory store and on Redis, from one run.

    .venv/bin/python benchmarks/bench_loop.py [--redis-url redis://...] [--rounds 20]

A ticker coroutine asks to wake every millisecond and records how late it wakes; while it
runs, batches of 50 concurrent ``ainvoke``s of a fake chat model (answers at once, reports
usage) go through the handler. Blocked time per call = (total ticker lag with the handler -
total lag with no handler) / calls. The configurations alternate round by round, so
machine noise hits all alike. Without --redis-url a throwaway redis-server is started on
loopback. Target (issue 16): Redis's blocked time per call equals the memory store's (the
store round trips are awaited, not made on the loop). The lag counts all Python work of
the process, the background sender's settles included (they hold the GIL), and the
async Redis client's own encoding and parsing on the loop; "Redis, settle awaited" is
``settle_in_background=False`` (the settle awaited on the loop's async store).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from _util import redis_server
from bench_langchain import PROMPT, REPLY, FakeChat
from langchain_core.outputs import ChatGeneration, ChatResult

from nasca_core import Nasca, Tier
from nasca_langchain import NascaCallbackHandler

CONCURRENT = 50
ROW_AWAITED = "Redis, settle awaited"
TICK_S = 0.001


class AsyncFakeChat(FakeChat):
    """Answers at once on the loop (no executor hop, which would dwarf what is measured)."""

    async def _agenerate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=REPLY)])


async def _lag_of(model: AsyncFakeChat, handler: Any, batches: int) -> tuple[float, int, float, float]:
    """Total ticker lag (µs) while ``batches`` x CONCURRENT ainvokes run, how many calls, the
    loop thread's own CPU time and the process's (µs: what other processes on the machine
    can't inflate; the process's includes the background sender's thread)."""
    lag = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal lag
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t0 = loop.time()
            await asyncio.sleep(TICK_S)
            lag += max(loop.time() - t0 - TICK_S, 0.0)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    calls, cpu0, proc0 = 0, time.thread_time(), time.process_time()
    for _ in range(batches):
        config = [{"callbacks": [handler] if handler else [],
                   "metadata": {"nasca_user_id": f"loop-{uuid.uuid4().hex[:8]}-{i}"}}
                  for i in range(CONCURRENT)]
        await asyncio.gather(*(model.ainvoke(PROMPT, config=c) for c in config))  # type: ignore[arg-type]
        calls += CONCURRENT
    while handler is not None and len(handler.nasca.deferred):  # the sender's work counts in the round
        await asyncio.sleep(0.001)
    cpu, proc = time.thread_time() - cpu0, time.process_time() - proc0
    stop.set()
    await tick
    return lag * 1e6, calls, cpu * 1e6, proc * 1e6


async def run(url: str, rounds: int, batches: int) -> dict[str, list[float]]:
    model = AsyncFakeChat()
    ns = f"bench{uuid.uuid4().hex[:6]}"
    tiers = {"free": Tier(daily=10**6)}
    mem = Nasca("memory://", tiers=tiers, default_tier="free", namespace=ns)
    red = Nasca(url, tiers=tiers, default_tier="free", namespace=ns)
    awaited = Nasca(url, tiers=tiers, default_tier="free", namespace=ns, settle_in_background=False)
    configs: dict[str, Any] = {"no handler": None, "Nasca, memory store": NascaCallbackHandler(mem),
                               "Nasca, Redis store": NascaCallbackHandler(red),
                               ROW_AWAITED: NascaCallbackHandler(awaited)}
    for handler in configs.values():  # warm: connections, scripts, the tokenizer
        await _lag_of(model, handler, 1)
    lags: dict[str, list[float]] = {k: [] for k in configs}
    wall: dict[str, list[float]] = {k: [] for k in configs}
    cpus: dict[str, list[float]] = {k: [] for k in configs}
    procs: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(rounds):
        for name, handler in configs.items():
            t0 = time.perf_counter()
            lag, calls, cpu, proc = await _lag_of(model, handler, batches)
            wall[name].append((time.perf_counter() - t0) * 1e6 / calls)
            lags[name].append(lag / calls)
            cpus[name].append(cpu / calls)
            procs[name].append(proc / calls)
    await red.aflush()
    await red.aclose()
    await awaited.aclose()
    await mem.aclose()
    return {**{f"lag {k}": v for k, v in lags.items()}, **{f"wall {k}": v for k, v in wall.items()},
            **{f"cpu {k}": v for k, v in cpus.items()}, **{f"proc {k}": v for k, v in procs.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--redis-url")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batches", type=int, default=4, help="batches of 50 ainvokes per round")
    args = ap.parse_args()
    with redis_server(args.redis_url) as url:
        rows = asyncio.run(run(url, args.rounds, args.batches))
    med = {k: statistics.median(v) for k, v in rows.items()}
    base = med["lag no handler"]
    print(f"\n{CONCURRENT} concurrent ainvokes, {args.rounds} interleaved rounds of {args.batches} "
          "batches; medians per call\n")
    cpu_base, proc_base = med["cpu no handler"], med["proc no handler"]
    print(f"{'configuration':24s}{'ticker lag µs':>15s}{'blocked µs':>12s}{'wall µs':>10s}"
          f"{'loop CPU +µs':>14s}{'process CPU +µs':>17s}")
    for name in ("no handler", "Nasca, memory store", "Nasca, Redis store", ROW_AWAITED):
        lag = med[f"lag {name}"]
        print(f"{name:24s}{lag:15.1f}{lag - base:12.1f}{med[f'wall {name}']:10.1f}"
              f"{med[f'cpu {name}'] - cpu_base:14.1f}{med[f'proc {name}'] - proc_base:17.1f}")
    m, r = med["lag Nasca, memory store"] - base, med["lag Nasca, Redis store"] - base
    print(f"\nblocked time per ainvoke, Redis / memory = {r / m if m > 0 else float('inf'):.2f}× "
          f"(goal: equal, 1.0×; Redis - memory = {r - m:.1f} µs per call)")
    mc, rc = med["cpu Nasca, memory store"] - cpu_base, med["cpu Nasca, Redis store"] - cpu_base
    pm, pr = med["proc Nasca, memory store"] - proc_base, med["proc Nasca, Redis store"] - proc_base
    print(f"CPU per ainvoke, Redis / memory: the loop thread's {rc / mc if mc > 0 else float('inf'):.2f}×, "
          f"the process's {pr / pm if pm > 0 else float('inf'):.2f}× (the sender's thread too: its GIL time)")


if __name__ == "__main__":
    main()
