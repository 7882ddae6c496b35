"""Holds against reality: 200 concurrent callers on one user with a $1 budget, when each
call's real cost is 3x, 1x or 0.1x the uncalibrated estimate (issue 15's benchmark).

    .venv/bin/python benchmarks/bench_admission.py [--store memory://] [--latency 0.02]

Every call goes through ``start_call`` / ``finish`` with the provider's usage, on a model
priced so that the uncalibrated estimate (the counted prompt, 256 output tokens) is about
$0.01. "calibrated" rows first make 50 sequential warm-up calls on the same model (another
user, no limit); "cold" rows don't, so their holds are the uncalibrated estimate. Prints,
per ratio and setting: the final spend, the overspend in calls, the calls admitted, their
share of what the budget allows (min(200, $1 / real cost)), and how many were told busy.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from decimal import Decimal
from typing import Any

from nasca_core import Nasca, NascaBlockedError, NascaBusyError, Tier
from nasca_core.pricing import TokenUsage

MODEL = "bench-model"
PRICES = {MODEL: {"input": 200, "output": 35}}  # USD per 1M tokens
PROMPT = "Summarise the customer's last three support tickets in two sentences, politely."
BUDGET = 1_000_000_000  # $1 in nanos
CALLERS = 200
SETTINGS: dict[str, tuple[bool, dict[str, Any], dict[str, Any]]] = {
    "cold, cap 64": (False, {}, {}),
    "calibrated, cap 64": (True, {}, {}),
    "calibrated, no cap": (True, {"max_in_flight": None}, {}),
    "calibrated, busy_wait=3": (True, {}, {"busy_wait": 3}),
}


async def run(store: str, ratio: Decimal, warm: bool, tier_kw: dict[str, Any], kw: dict[str, Any],
              latency: float) -> tuple[int, int, int, int, int]:
    n = Nasca(store, tiers={"t": Tier(monthly=1, **tier_kw), "warm": Tier()}, default_tier="t",
              namespace=f"adm{uuid.uuid4().hex[:6]}", prices=PRICES, **kw)
    probe = await n.astart_call(MODEL, prompt=PROMPT, user="probe", tier="warm")
    await probe.afail()
    usage = TokenUsage(input_tokens=max(1, round(probe.prompt_tokens * ratio)),
                       output_tokens=round(256 * ratio))
    real = n.cost_of(MODEL, usage)
    if warm:
        for _ in range(50):
            call = await n.astart_call(MODEL, prompt=PROMPT, user="warm", tier="warm")
            await call.afinish(usage)
    busy = 0

    async def caller() -> int:
        nonlocal busy
        try:
            call = await n.astart_call(MODEL, prompt=PROMPT, user="hot")
        except NascaBusyError:
            busy += 1
            return 0
        except NascaBlockedError:
            return 0
        await asyncio.sleep(latency)
        await call.afinish(usage)
        return 1

    admitted = sum(await asyncio.gather(*(caller() for _ in range(CALLERS))))
    spent = int((await n.aget_usage("hot")).monthly_spent * 10**9)
    await n.aclose()
    return spent, admitted, min(CALLERS, BUDGET // real), busy, real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="memory://")
    ap.add_argument("--latency", type=float, default=0.02)
    args = ap.parse_args()
    print(f"{CALLERS} concurrent callers, $1 budget, {args.latency * 1000:.0f} ms calls, {args.store}")
    print(f"{'real/est':>8}  {'setting':<24} {'spent':>7} {'over':>6} {'admitted':>8} {'share':>6} "
          f"{'busy':>5}")
    for ratio in (Decimal(3), Decimal(1), Decimal("0.1")):
        for name, (warm, tier_kw, kw) in SETTINGS.items():
            spent, admitted, affordable, busy, real = asyncio.run(
                run(args.store, ratio, warm, tier_kw, kw, args.latency))
            over = max(spent - BUDGET, 0) / real
            print(f"{ratio:>7}x  {name:<24} ${spent / 10**9:>6.3f} {over:>4.1f}c {admitted:>8} "
                  f"{admitted / affordable:>6.0%} {busy:>5}")
    print("over: overspend in calls of real cost; share: admitted / min(callers, what $1 buys)")


if __name__ == "__main__":
    main()
