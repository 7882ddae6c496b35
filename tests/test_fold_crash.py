"""A process killed (SIGKILL: no close, no atexit) while its sender folds a lease's settles, at
each point that matters: before the fold's journal line; after it, before its fsync returned;
after it, when it could not be synced (EIO: the settles went one by one) and they landed;
after it but before the store's reply; after the reply but before the ``{"d"}`` line. With
the lease's close among them (the fold takes the lease's hold id) and without (a hold id of
its own). The next process on the store replays the journal, and every call of the lease is
charged and counted exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from nasca_core import Nasca, Tier

TIERS = {"t": Tier(daily="0.10", monthly=5)}
ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import os, signal, sys
import nasca_core._deferred as deferred
from nasca_core import Nasca, Tier
from tests.test_fold_calls import lease_ops

uri, namespace, state, point, closing = sys.argv[1:]
n = Nasca(uri, tiers={"t": Tier(daily="0.10", monthly=5)}, default_tier="t", namespace=namespace,
          state_dir=state, settle_in_background=True)
n.deferred.sender.wake = lambda: None  # this flush below is the one
calls, close = lease_ops(n, "u", [1_000_000 * (i + 1) for i in range(10)])
for op in [*calls, close] if closing == "1" else calls:
    assert n.deferred.send(op) is not None
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
store = n.store.sync
real = store.settle_many
if point == "before_line":
    deferred.write_folds = die
elif point == "at_sync":  # the fold's line written, killed before its fsync returns
    n.deferred.journal.sync = die
elif point == "unsynced":
    journal, sync, failed = n.deferred.journal, n.deferred.journal.sync, []

    def eio():
        if not failed:
            failed.append(1)
            raise OSError(5, "Input/output error")
        sync()

    journal.sync = eio
    store.settle_many = lambda ops: (real(ops), die())
elif point == "before_reply":
    store.settle_many = die
else:
    store.settle_many = lambda ops: (real(ops), die())
n.flush()
sys.exit(3)
"""


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
@pytest.mark.parametrize("point", ["before_line", "at_sync", "unsynced", "before_reply", "after_reply"])
@pytest.mark.parametrize("closing", [True, False], ids=["with_close", "own_id"])
def test_a_kill_while_folding_charges_each_call_once(store_uri, tmp_path, point, closing):
    namespace, state = f"k{uuid.uuid4().hex[:10]}", tmp_path / "state"
    child = subprocess.run([sys.executable, "-c", _CHILD, store_uri, namespace, str(state), point,
                            "1" if closing else "0"], cwd=ROOT, capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    [journal] = list(state.rglob("*.jsonl"))
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    settles = 11 if closing else 10
    assert sum("s" in line for line in lines) == settles
    assert sum("f" in line for line in lines) == (0 if point == "before_line" else 1)
    assert sum("u" in line for line in lines) == (point == "unsynced")
    assert not any("d" in line for line in lines)

    n = Nasca(store_uri, tiers=TIERS, default_tier="t", namespace=namespace, state_dir=str(state))
    try:
        # Adopted and flushed as it was built: the fold (or its settles) once, nothing twice.
        # (A fold counts the settles it stands for.)
        assert n.stats.deferred_replayed == settles
        assert n.flush() == 0 and len(n.deferred) == 0
        u = n.get_usage("u")
        # Without its close the lease's hold stays until its TTL: nothing closed it.
        assert (u.month_calls, u.month_cost, u.daily_spent, u.in_flight) == (
            10, Decimal("0.055"), Decimal("0.055"), Decimal(0) if closing else Decimal("0.05"))
        assert (u.month_input_tokens, u.month_output_tokens) == (sum(range(10, 20)), sum(range(20, 30)))
    finally:
        n.close()
    # A third process finds nothing left to replay.
    again = Nasca(store_uri, tiers=TIERS, default_tier="t", namespace=namespace, state_dir=str(state))
    try:
        assert again.stats.deferred_replayed == 0
        assert again.get_usage("u").month_calls == 10
    finally:
        again.close()
