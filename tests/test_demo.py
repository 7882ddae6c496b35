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
