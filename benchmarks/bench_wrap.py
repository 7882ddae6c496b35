"""wrap() overhead: a wrapped OpenAI SDK call against the bare call, on the local server.

    .venv/bin/python benchmarks/bench_wrap.py [-n 2000]

Both calls go through the real openai client over HTTP to nasca_core.testing's server;
the difference is what wrap() adds (estimate, reserve, usage parsing, settle) on the
memory store. Target: overhead ≤ 5% of the bare call.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

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
    finally:
        server.kill()
    bare, wrapped_p50 = p50["bare SDK call"], p50["wrapped, memory store"]
    over = wrapped_p50 - bare
    print(f"{'call':<24}{'p50 µs':>10}")
    print(f"{'bare SDK call':<24}{bare:>10.1f}")
    print(f"{'wrapped, memory store':<24}{wrapped_p50:>10.1f}")
    print(f"overhead {over:.1f} µs = {over / bare:.1%} of the bare call   target ≤ 5% "
          f"{'OK' if over / bare <= 0.05 else 'MISSED'}")


if __name__ == "__main__":
    main()
