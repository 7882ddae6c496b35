"""Redis server time per call for a lease's settles through the background sender, folded
(``_fold``: one settle script per lease per batch) against the same settles unfolded (no
``lease``: one script each), interleaved, from ``INFO commandstats``.

    .venv/bin/python benchmarks/bench_fold.py [--redis-url URL] [--calls 1000] [--rounds 5]

Each round: one user, ``calls`` calls in leases of ``--per-lease`` calls (each a real lease
hold reserved in the store, counted in the figure), each call's settle sent to the background
sender as fast as they come (``burst``) or one every ``--gap-ms`` (``paced``: calls that take a
while, as model calls do), each lease's closing settle after its calls, then a flush.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._util import redis_server
from nasca_core import Nasca, Tier


def one_round(url: str, calls: int, folded: bool, gap_s: float, per_lease: int) -> tuple[float, float]:
    """Server µs per call (the leases' reserves included) and scripts per call."""
    n = Nasca(url, tiers={"t": Tier(daily=10**4, monthly=10**5)}, default_tier="t",
              namespace=f"fold{uuid.uuid4().hex[:6]}", settle_in_background=True)
    client = redis.Redis.from_url(url)
    client.config_resetstat()
    for first in range(0, calls, per_lease):
        lease = n.reserve(nanos=10**9, user="u")
        close = dataclasses.replace(n._settle_op(lease, None, 0, (0, 0)), calls=0,
                                    lease=lease.hold_id if folded else "")
        for i in range(first, min(first + per_lease, calls)):
            n.deferred.send(dataclasses.replace(close, hold_id=f"{lease.hold_id}-{i}", estimate=0,
                                                cost=1_000 + i, calls=1, input_tokens=100, output_tokens=50))
            if gap_s:
                time.sleep(gap_s)
        n.deferred.send(close)
    n.flush()
    stats = client.info("commandstats")["cmdstat_evalsha"]
    u = n.get_usage("u")
    assert u.month_calls == calls and u.in_flight == 0, (u.month_calls, u.in_flight)
    n.close()
    client.close()
    return stats["usec"] / calls, stats["calls"] / calls


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--redis-url")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gap-ms", type=float, default=1.0)
    p.add_argument("--per-lease", type=int, default=64, help="calls per lease (L = 64 estimates at most)")
    args = p.parse_args()
    with redis_server(args.redis_url) as url:
        for mode, gap in (("burst", 0.0), ("paced", args.gap_ms / 1000)):
            got: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for _ in range(args.rounds):
                for folded in (False, True):  # interleaved
                    got[folded].append(one_round(url, args.calls, folded, gap, args.per_lease))
            for folded in (False, True):
                us = statistics.median(r[0] for r in got[folded])
                scripts = statistics.median(r[1] for r in got[folded])
                print(f"{mode:<6} {'folded' if folded else 'one by one':<11} "
                      f"{us:7.2f} µs server time per call, {scripts:.3f} scripts per call "
                      f"({args.per_lease} calls per lease)")


if __name__ == "__main__":
    main()
