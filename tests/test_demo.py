"""The README's demo runs on the embedded store with no keys and no network."""

import os
import subprocess
import sys


def test_demo_runs_and_tells_the_story():
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    out = subprocess.run([sys.executable, "-m", "nasca_core.demo"], capture_output=True, text=True,
                         timeout=120, env=env, check=True).stdout
    assert "BLOCKED before reaching the provider (daily limit)" in out
    assert "Provider requests made: 12" in out
    assert "credits  $5.00 left, in what they paid" in out
    assert "credits  $4.34 left, in what they paid" in out
    assert "alice's month so far" in out
    # A user warned at 80% who buys before she is ever blocked; the funnel counts it as warning-led.
    dana = out[out.index("dana (free)"):out.index("The owner raises")]
    assert "#10  ok" in dana and "warning: 80% of the daily limit" in dana and "BLOCKED" not in dana
    # The hook fires where the settled spend really reached 80% (#9), the projected warning
    # with the call whose estimate takes the day there (#10).
    hook = "[owner's hook] dana reached 80% of the daily limit ($0.00162 of $0.002)"
    assert f"#9   ok, 750 tokens\n        {hook}" in dana
    assert "dana buys the Starter pack before she is ever blocked" in dana and "#14  ok" in dana
    assert "1 warning-led purchase" in dana
