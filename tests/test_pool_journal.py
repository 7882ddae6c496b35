"""A settle's pools in the journal of deferred settles and in folds: the line round-trips them,
only settles with equal pools fold, and a process killed (SIGKILL) while its sender lands a
lease's settles, at each point that matters, leaves a journal whose replay charges the pool
exactly once: the user's part and the pool's agree."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from nasca_core import Nasca, Tier
from nasca_core._fold import Fold, plan
from nasca_core._journal import decode, encode, pending_in
from nasca_core.stores import PoolKeys
from tests.test_fold_calls import lease_ops

TIERS = {"t": Tier(daily="0.10", monthly=5)}
ROOT = Path(__file__).resolve().parent.parent


def _pools(namespace: str, ids: tuple[str, str, str]) -> tuple[PoolKeys, ...]:
    return PoolKeys.build(namespace, "app", ids), PoolKeys.build(namespace, "team:a", ids)


def test_the_journal_line_round_trips_pools(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t")
    calls, _ = lease_ops(n, "u", [1_000_000, 2_000_000])
    pools = _pools(n.namespace, n.windows_at().ids)
    op = dataclasses.replace(calls[0], pools=pools)
    line = encode(op)
    assert decode(json.loads(line)["s"]) == op
    assert "\"p\"" not in encode(calls[0]) and decode(json.loads(encode(calls[0]))["s"]).pools == ()
    # A fold's line too, replayed as itself with its pools.
    [send] = plan([dataclasses.replace(c, pools=pools) for c in calls], {c.hold_id for c in calls})
    assert isinstance(send.op, Fold) and send.op.pools == pools
    lines = [encode(dataclasses.replace(c, pools=pools)) for c in calls] + [encode(send.op)]
    [replayed] = pending_in(iter(lines))
    assert isinstance(replayed, Fold) and replayed.pools == pools and replayed.of == send.op.of


def test_only_settles_with_equal_pools_fold(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t")
    calls, _ = lease_ops(n, "u", [1_000_000] * 4)
    app, team = _pools(n.namespace, n.windows_at().ids)
    ops = [dataclasses.replace(calls[0], pools=(app,)), dataclasses.replace(calls[1], pools=(app,)),
           dataclasses.replace(calls[2], pools=(app, team)), calls[3]]
    sends = plan(ops, {op.hold_id for op in ops})
    assert [len(s.items) for s in sends] == [2, 1, 1]
    assert sends[0].op.pools == (app,) and sends[1].op.pools == (app, team) and sends[2].op.pools == ()


def test_only_settles_drawn_on_one_chunk_fold_and_the_line_keeps_the_chunks(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="t")
    calls, _ = lease_ops(n, "u", [1_000_000] * 3)
    app, _ = _pools(n.namespace, n.windows_at().ids)
    ops = [dataclasses.replace(c, pools=(app,), chunks=(chunk,))
           for c, chunk in zip(calls, "aab", strict=True)]
    sends = plan(ops, {op.hold_id for op in ops})
    assert [len(s.items) for s in sends] == [2, 1]
    assert sends[0].op.chunks == ("a",) and sends[1].op.chunks == ("b",)
    assert decode(json.loads(encode(ops[0]))["s"]) == ops[0]
    [replayed] = pending_in(iter([encode(op) for op in ops[:2]] + [encode(sends[0].op)]))
    assert isinstance(replayed, Fold) and replayed.chunks == ("a",) and replayed.cost == 2_000_000
    assert "pc" not in encode(dataclasses.replace(ops[0], chunks=()))


_CHILD = """
import dataclasses, os, signal, sys
from nasca_core import Nasca, Tier
from nasca_core.stores import PoolKeys, PoolTakeOp
from tests.test_fold_calls import lease_ops

uri, namespace, state, point = sys.argv[1:]
n = Nasca(uri, tiers={"t": Tier(daily="0.10", monthly=5)}, default_tier="t", namespace=namespace,
          state_dir=state, settle_in_background=True)
n.deferred.sender.wake = lambda: None  # this flush below is the one
app = PoolKeys.build(namespace, "app", n.windows_at().ids)
calls, close = lease_ops(n, "u", [1_000_000 * (i + 1) for i in range(10)])
now_ms = int(n.now() * 1000)  # the calls' chunk: each settle lowers its hold, once, replayed too
n.store.sync.pool_take(PoolTakeOp(app, now_ms, "c1", 100_000_000, 1, (-1, -1, -1), now_ms + 600_000,
                                  (600_000,) * 3))
ops = [dataclasses.replace(op, pools=(app,), chunks=("c1",)) for op in [*calls, close]]
for op in ops:
    assert n.deferred.send(op) is not None
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
store = n.store.sync
real = store.settle_many
if point == "before_reply":
    store.settle_many = die
elif point == "pool_only":
    # The pool's step landed, the user's did not (Redis: the two scripts of one pipeline, on
    # two nodes of a cluster): the same settles charged to the pool under a throwaway user.
    other = n.user_keys("someone-else")
    def pool_only(batch):
        real([dataclasses.replace(op, keys=other) for op in batch])
        die()
    store.settle_many = pool_only
else:
    store.settle_many = lambda batch: (real(batch), die())
n.flush()
sys.exit(3)
"""


@pytest.mark.parametrize("backend", ["sqlite", "redis", "cluster"], indirect=True)
@pytest.mark.parametrize("point", ["before_reply", "pool_only", "after_reply"])
def test_a_kill_while_settling_charges_the_pool_once(store_uri, tmp_path, point):
    namespace, state = f"k{uuid.uuid4().hex[:10]}", tmp_path / "state"
    child = subprocess.run([sys.executable, "-c", _CHILD, store_uri, namespace, str(state), point],
                           cwd=ROOT, capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    [journal] = list(state.rglob("*.jsonl"))
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert all(entry["s"]["p"] for entry in lines if "s" in entry)  # every settle names its pool
    assert sum("f" in line for line in lines) == 1

    n = Nasca(store_uri, tiers=TIERS, default_tier="t", namespace=namespace, state_dir=str(state))
    try:
        assert n.stats.deferred_replayed == 11
        assert n.flush() == 0 and len(n.deferred) == 0
        u = n.get_usage("u")
        assert (u.month_calls, u.month_cost, u.in_flight) == (10, Decimal("0.055"), 0)
        app = PoolKeys.build(namespace, "app", n.windows_at().ids)
        snap = n.store.sync.pool_snapshot(app, int(n.now() * 1000))
        assert (snap.spent, snap.held) == ((55_000_000,) * 3, 45_000_000)  # the chunk's unspent part
    finally:
        n.close()
    again = Nasca(store_uri, tiers=TIERS, default_tier="t", namespace=namespace, state_dir=str(state))
    try:
        assert again.stats.deferred_replayed == 0
        snap = again.store.sync.pool_snapshot(app, int(again.now() * 1000))
        assert (snap.spent, snap.held) == ((55_000_000,) * 3, 45_000_000)
    finally:
        again.close()
