"""wrap() overhead: a wrapped OpenAI SDK call against the bare call, on the local server.

    .venv/bin/python benchmarks/bench_wrap.py [-n 2000] [--breakdown]

Both calls go through the real openai client over HTTP to nasca_core.testing's server;
the difference is what wrap() adds (estimate, reserve, usage parsing, settle) on the
memory store. Target: overhead ≤ 5% of the bare call.

``--breakdown`` also prints where the overhead goes: the wrapper's own time around the SDK
call (start_call, finish, the usage read), and the core's reserve+settle pair warm (run
twice in a row), right after an SDK call, and after a 5 ms sleep. The pair does the same
work in all three (same function calls); what differs is the caches it finds cold.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import interleaved

from nasca_core import Nasca, Tier

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise the attached meeting notes in three bullet points."}]


SERVE = """
import sys
from nasca_core.testing import ProviderServer
srv = ProviderServer(reply="A short answer.").start()
print(srv.base_url, flush=True)
sys.stdin.read()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--breakdown", action="store_true", help="where the overhead goes (see above)")
    args = ap.parse_args()
    # The server runs in its own process: in this one its threads would compete with the
    # measured code for the GIL and charge wrap() for the server's own work.
    server = subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        import openai

        assert server.stdout is not None
        client = openai.OpenAI(base_url=server.stdout.readline().strip(), api_key="x", max_retries=0)
        nasca = Nasca("memory://", tiers={"t": Tier(monthly=10**6)}, default_tier="t")
        create = client.chat.completions.create
        wrapped = nasca.wrap(create)
        p50 = interleaved({
            "bare SDK call": lambda: create(model="gpt-4o-mini", messages=MESSAGES),
            "wrapped, memory store": lambda: wrapped(model="gpt-4o-mini", messages=MESSAGES, user="u"),
        }, args.n)
        if args.breakdown:
            breakdown(nasca, create, args.n)
    finally:
        server.kill()
    bare, wrapped_p50 = p50["bare SDK call"], p50["wrapped, memory store"]
    over = wrapped_p50 - bare
    print(f"{'call':<24}{'p50 µs':>10}")
    print(f"{'bare SDK call':<24}{bare:>10.1f}")
    print(f"{'wrapped, memory store':<24}{wrapped_p50:>10.1f}")
    print(f"overhead {over:.1f} µs = {over / bare:.1%} of the bare call   target ≤ 5% "
          f"{'OK' if over / bare <= 0.05 else 'MISSED'}")


def breakdown(nasca: Nasca, create: Callable[..., Any], n: int) -> None:
    import nasca_core._calls as calls
    import nasca_core._ledger as ledger
    import nasca_core._wrap as wrap_module

    spent: dict[str, list[float]] = {}

    def timed(owner: Any, name: str, label: str) -> Callable[[], None]:
        real, times = getattr(owner, name), spent.setdefault(label, [])

        def fn(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                times.append(time.perf_counter() - t)

        fn.__name__ = name  # wrap() knows the SDK's methods by name
        setattr(owner, name, fn)
        return lambda: setattr(owner, name, real)

    sdk = type(create.__self__)  # type: ignore[attr-defined]
    undo = [timed(sdk, "create", "the SDK call"), timed(ledger.Nasca, "start_call", "start_call"),
            timed(calls.LLMCall, "finish", "finish"), timed(wrap_module, "response_usage", "usage read")]
    wrapped = nasca.wrap(create.__self__.create)  # type: ignore[attr-defined]
    whole: list[float] = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            wrapped(model="gpt-4o-mini", messages=MESSAGES, user="u")
            whole.append(time.perf_counter() - t)
    finally:
        for u in undo:
            u()
    p50 = {k: statistics.median(v[-n:]) * 1e6 for k, v in spent.items()}
    print(f"\nwrapped call, p50 µs of each part ({n} calls)")
    print(f"  {'whole wrapped call':<34}{statistics.median(whole) * 1e6:>10.1f}")
    for label, us in p50.items():
        print(f"  {label:<34}{us:>10.1f}")
    own = [w - s for w, s in zip(whole, spent["the SDK call"][-n:], strict=True)]
    print(f"  {'the wrapper around the SDK call':<34}{statistics.median(own) * 1e6:>10.1f}")

    def pair() -> None:
        nasca.settle(nasca.reserve(nanos=1000, user="u"), nanos=900)

    cold: dict[str, list[float]] = {"warm (right after itself)": [], "right after an SDK call": [],
                                    "after a 5 ms sleep": []}
    for _ in range(max(n // 2, 200)):
        create(model="gpt-4o-mini", messages=MESSAGES)
        for label in ("right after an SDK call", "warm (right after itself)"):
            t = time.perf_counter()
            pair()
            cold[label].append(time.perf_counter() - t)
        time.sleep(0.005)
        t = time.perf_counter()
        pair()
        cold["after a 5 ms sleep"].append(time.perf_counter() - t)
    print("core reserve+settle, p50 µs")
    for label, v in cold.items():
        print(f"  {label:<34}{statistics.median(v) * 1e6:>10.1f}")


if __name__ == "__main__":
    main()
