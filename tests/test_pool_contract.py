"""The pool operations (``_pools``: chunks of an allowance many users' calls draw from, the
app-wide ceiling's store side) on every store: memory, SQLite, a real Redis and a real Cluster.

Takes are granted only within every window's room and only down to ``least``; chunks lapse;
releases are idempotent; a settle's cost reaches each pool once per hold id (retries, replays,
folds' ``of``, a retried user settle); a reserve with a take applies neither part when the pool
grants nothing; and 200 threads never hold more than the limit."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from nasca_core import InvalidAmountError, StoreError, Tier
from nasca_core._money import MAX_NANOS
from nasca_core.stores import PoolKeys, PoolTakeOp, ReserveOp, SettleOp, UserKeys

TIERS = {"t": Tier(daily=1, monthly=5)}
NANO = 10**9
TTLS = (3_600_000, 7_200_000, 86_400_000)


def _pool(n: Any, pool: str = "app") -> PoolKeys:
    return PoolKeys.build(n.namespace, pool, n.windows_at().ids)


def _take(n: Any, keys: PoolKeys, lease: str, want: int, least: int, limits: tuple[int, int, int],
          life_ms: int = 5_000, now_ms: int | None = None) -> PoolTakeOp:
    now_ms = int(n.now() * 1000) if now_ms is None else now_ms
    return PoolTakeOp(keys, now_ms, lease, want, least, limits, now_ms + life_ms, TTLS)


def _settles(n: Any, user: str, costs: list[str]) -> list[SettleOp]:
    """The settles the ledger makes for ``user``'s calls of ``costs``, caught before the store."""
    store, caught = n.store.sync, []

    def catch(op: Any) -> Any:
        caught.append(op)
        raise StoreError("caught on its way")

    def refuse(ops: Any) -> Any:
        raise StoreError("caught on its way")

    store.settle, store.settle_many = catch, refuse
    try:
        for cost in costs:
            n.settle(n.reserve(cost, user=user), cost)
    finally:
        del store.settle, store.settle_many
    assert len(caught) == len(costs)
    return caught


def _reserve_op(n: Any, user: str, estimate: str) -> ReserveOp:
    store, caught = n.store.sync, []

    def catch(op: Any) -> Any:
        caught.append(op)
        raise StoreError("caught on its way")

    store.reserve = catch
    try:
        with pytest.raises(StoreError):
            n.reserve(estimate, user=user)
    finally:
        del store.reserve
    return caught[0]


@pytest.fixture
def n(make_nasca: Any) -> Any:
    return make_nasca(tiers=TIERS, default_tier="t", settle_in_background=False, on_store_error="block")


def test_take_within_room_partial_grant_and_refusal_write_nothing(n):
    store, keys = n.store.sync, _pool(n)
    limits = (1000, -1, 5000)
    first = store.pool_take(_take(n, keys, "a", 300, 100, limits))
    assert (first.granted, first.window, first.spent, first.held) == (300, 0, (0, 0, 0), 300)
    second = store.pool_take(_take(n, keys, "b", 900, 100, limits))
    assert (second.granted, second.held) == (700, 1000)  # the daily room left, below want
    refused = store.pool_take(_take(n, keys, "c", 500, 1, limits))
    assert (refused.granted, refused.window, refused.held) == (0, 1, 1000)
    snap = store.pool_snapshot(keys, int(n.now() * 1000))
    assert (snap.spent, snap.held) == ((0, 0, 0), 1000)
    store.pool_release(keys, "c", int(n.now() * 1000))  # never granted: a no-op
    assert store.pool_snapshot(keys, int(n.now() * 1000)).held == 1000


def test_no_limit_grants_want_and_the_tightest_window_blocks(n):
    store, keys = n.store.sync, _pool(n)
    assert store.pool_take(_take(n, keys, "a", 10**12, 1, (-1, -1, -1))).granted == 10**12
    other = _pool(n, "team:x")
    assert store.pool_take(_take(n, other, "b", 100, 1, (-1, 900, 50))).granted == 50
    blocked = store.pool_take(_take(n, other, "c", 100, 1, (-1, 900, 50)))
    assert (blocked.granted, blocked.window) == (0, 3)
    # Two pools are apart: the first's chunk is not the second's.
    assert store.pool_snapshot(other, int(n.now() * 1000)).held == 50


def test_a_retried_take_answers_its_first_grant(n):
    store, keys = n.store.sync, _pool(n)
    op = _take(n, keys, "a", 400, 100, (1000, -1, -1))
    assert store.pool_take(op).granted == 400
    again = store.pool_take(op)
    assert (again.granted, again.held) == (400, 400)


def test_chunks_lapse_at_their_expiry(n):
    store, keys = n.store.sync, _pool(n)
    now = int(n.now() * 1000)
    store.pool_take(_take(n, keys, "a", 1000, 1, (1000, -1, -1), life_ms=2_000, now_ms=now))
    assert store.pool_take(_take(n, keys, "b", 10, 1, (1000, -1, -1), now_ms=now + 1_999)).granted == 0
    assert store.pool_snapshot(keys, now + 2_000).held == 0  # a crashed process's chunk is gone
    assert store.pool_take(_take(n, keys, "b", 10, 1, (1000, -1, -1), now_ms=now + 2_001)).granted == 10


def test_release_is_idempotent_and_unknown_ids_are_no_ops(n):
    store, keys = n.store.sync, _pool(n)
    now = int(n.now() * 1000)
    store.pool_release(keys, "never", now)  # nothing there at all
    store.pool_take(_take(n, keys, "a", 300, 1, (1000, -1, -1)))
    store.pool_take(_take(n, keys, "b", 200, 1, (1000, -1, -1)))
    store.pool_release(keys, "a", now)
    store.pool_release(keys, "a", now)
    store.pool_release(keys, "zzz", now)
    assert store.pool_snapshot(keys, now).held == 200
    store.pool_release(keys, "b", now)
    assert store.pool_snapshot(keys, now).held == 0


@pytest.mark.parametrize("bad", [
    dict(want=-5, least=-5), dict(least=0), dict(least=200, want=100), dict(limits=(-2, -1, -1)),
    dict(lease_id=""), dict(expiry_ms=0),
    # Plain ints only, at most MAX_NANOS: each store would read these its own way (Redis stored
    # want=inf as -2^63 and granted every later take; want=100.5 was three answers on three stores).
    dict(want=100.5), dict(want=float("inf")), dict(want=True, least=True), dict(least=10.0),
    dict(want=MAX_NANOS + 1), dict(limits=(1000.5, -1, -1)), dict(limits=(float("inf"), -1, -1)),
    dict(limits=(MAX_NANOS + 1, -1, -1)), dict(limits=(False, -1, -1)), dict(now_ms=1.5e12),
    dict(expiry_ms=float("inf")), dict(ttls_ms=(1.5, 2, 3)), dict(ttls_ms=[1, 2, 3]), dict(lease_id=7)])
def test_bad_take_is_a_typed_error_with_nothing_changed(n, bad):
    store, keys = n.store.sync, _pool(n)
    store.pool_take(_take(n, keys, "a", 300, 1, (1000, -1, -1)))
    with pytest.raises(InvalidAmountError):
        store.pool_take(replace(_take(n, keys, "b", 100, 10, (1000, -1, -1)), **bad))
    with pytest.raises(InvalidAmountError):  # inside a reserve too: the user's part not applied
        store.reserve(replace(_reserve_op(n, "u", "0.01"),
                              pool_take=replace(_take(n, keys, "c", 100, 10, (1000, -1, -1)), **bad)))
    assert store.pool_snapshot(keys, int(n.now() * 1000)).held == 300
    assert n.get_usage("u").in_flight == 0


@pytest.mark.parametrize("bad", [1.5, True, float("inf"), MAX_NANOS + 1, None])
def test_bad_release_and_snapshot_args_are_typed_errors_with_nothing_changed(n, bad):
    store, keys = n.store.sync, _pool(n)
    now = int(n.now() * 1000)
    store.pool_take(_take(n, keys, "a", 300, 1, (1000, -1, -1)))
    for call in (lambda: store.pool_release(keys, "a", bad), lambda: store.pool_release(keys, bad, now),
                 lambda: store.pool_snapshot(keys, bad), lambda: store.pool_release(keys.pool, "a", now),
                 lambda: store.pool_snapshot(keys.pool, now)):  # a pool id, not its keys
        with pytest.raises(InvalidAmountError):
            call()
    assert store.pool_snapshot(keys, now).held == 300


@pytest.mark.parametrize("bad", [("app",), [None], (None,)])
def test_a_settle_with_bad_pools_is_a_typed_error_with_nothing_changed(n, bad):
    store, app = n.store.sync, _pool(n)
    op = _settles(n, "u", ["0.10"])[0]
    with pytest.raises(InvalidAmountError):
        store.settle(replace(op, pools=bad))
    assert store.snapshot(op.keys, op.now_ms).spent == (0, 0, 0)
    assert store.settle(replace(op, pools=(app,))).status == 1  # not settled by the bad one
    assert store.pool_snapshot(app, op.now_ms).spent == (100_000_000,) * 3


def test_a_reserve_that_fails_after_its_take_keeps_no_chunk(n):
    # The user's part raises after the pool's take granted a new chunk (here a ReserveOp with no
    # compiled tier): the chunk goes with it on every store (SQLite's rollback, Redis's release,
    # the memory store's own undo). A retried take's chunk, granted before, is kept.
    store, keys = n.store.sync, _pool(n)
    broken = replace(_reserve_op(n, "u", "0.01"), tier_compiled=())
    with pytest.raises((IndexError, StoreError)):  # Python's IndexError, the script's error reply
        store.reserve(replace(broken, pool_take=_take(n, keys, "new", 100, 10, (1000, -1, -1))))
    assert store.pool_snapshot(keys, broken.now_ms).held == 0
    first = _take(n, keys, "kept", 200, 10, (1000, -1, -1))
    assert store.pool_take(first).granted == 200
    with pytest.raises((IndexError, StoreError)):
        store.reserve(replace(broken, pool_take=first))
    if n.store.sync.__class__.__name__ != "RedisStore":  # Redis can't tell a retried take from a new one
        assert store.pool_snapshot(keys, broken.now_ms).held == 200
    assert n.get_usage("u").in_flight == 0


def test_a_stale_reserve_the_pool_blocks_answers_blocked_on_every_store(n):
    # A stale config and a pool that grants nothing: blocked (0) everywhere, not stale (-1) on a
    # cluster only; a stale config with a chunk granted is stale (-1) everywhere, the chunk kept.
    store, app = n.store.sync, _pool(n)
    limits = (1000, -1, -1)
    op = _reserve_op(n, "u", "0.01")
    stale = replace(op, config_version=op.config_version + 7)
    granted = store.reserve(replace(stale, pool_take=_take(n, app, "a", 600, 100, limits)))
    assert granted.status == -1 and granted.pool is not None and granted.pool.granted == 600
    assert store.pool_take(_take(n, app, "other", 400, 1, limits)).granted == 400
    r = store.reserve(replace(stale, hold_id="h2", pool_take=_take(n, app, "b", 500, 100, limits)))
    assert r.status == 0 and r.pool is not None and (r.pool.granted, r.pool.window) == (0, 1)
    assert n.get_usage("u").in_flight == 0
    assert store.pool_snapshot(app, stale.now_ms).held == 1000


def test_a_settle_charges_each_pool_once_per_hold_id(n):
    store, app, team = n.store.sync, _pool(n), _pool(n, "team:a")
    now = int(n.now() * 1000)
    ops = [replace(op, pools=(app, team)) for op in _settles(n, "u", ["0.10", "0.20"])]
    assert store.settle(ops[0]).status == 1
    assert store.settle(ops[0]).status == 2  # retried: the pools skip it as the user's part does
    assert store.settle_many(ops)[1].status == 1  # a replayed batch
    assert store.settle_many(ops)[1].status == 2
    for keys in (app, team):
        assert store.pool_snapshot(keys, now).spent == (300_000_000,) * 3
    assert n.flush_deferred() == 2  # the caught settles, landing as retries
    assert n.get_usage("u").daily_spent * NANO == 300_000_000


def test_a_retried_user_settle_still_charges_the_pool(n):
    # The process died between the pool's step and the user's (Redis: two scripts), or the user
    # settle landed first without its pools: the retry with pools charges the pool once.
    store, app = n.store.sync, _pool(n)
    now = int(n.now() * 1000)
    op = _settles(n, "u", ["0.10"])[0]
    assert store.settle(op).status == 1
    assert store.settle(replace(op, pools=(app,))).status == 2
    assert store.settle(replace(op, pools=(app,))).status == 2
    assert store.pool_snapshot(app, now).spent == (100_000_000,) * 3
    n.flush_deferred()
    assert n.get_usage("u").daily_spent * NANO == 100_000_000


def test_a_fold_marks_its_constituents_in_the_pool(n):
    store, app = n.store.sync, _pool(n)
    now = int(n.now() * 1000)
    a, b, c = _settles(n, "u", ["0.10", "0.20", "0.30"])
    fold = replace(c, hold_id="fold-1", cost=600_000_000, of=(a.hold_id, b.hold_id, c.hold_id), pools=(app,))
    assert store.settle(fold).status == 1
    for op in (a, b, c):  # each alone after the fold: charged nowhere again
        assert store.settle(replace(op, pools=(app,))).status == 2
    # A new id whose `of` is marked: the user's settle checks its own id alone (settle.lua) and
    # charges, and so does the pool: the two parts of a settle never disagree.
    assert store.settle(replace(fold, hold_id="fold-2")).status == 1
    assert store.pool_snapshot(app, now).spent == (1_200_000_000,) * 3
    assert store.snapshot(c.keys, now).spent[0] == 1_200_000_000
    d = _settles(n, "w", ["0.05"])[0]
    store.settle(replace(d, pools=(app,)))
    assert store.settle(replace(d, hold_id="fold-3", of=(d.hold_id,), pools=(app,))).status == 1
    assert store.pool_snapshot(app, now).spent == (1_300_000_000,) * 3
    assert store.snapshot(d.keys, now).spent[0] == 100_000_000


def test_pool_counters_expire_after_their_ttls(n):
    # Redis keeps time itself (TTLs relative to the op's now), the others by the op's now: the
    # test waits out the day's TTL and asks at its end.
    store, app = n.store.sync, _pool(n)
    op = replace(_settles(n, "u", ["0.10"])[0], pools=(app,), ttls_ms=(300, 60_000, 60_000))
    store.settle(op)
    assert store.pool_snapshot(app, op.now_ms + 299).spent == (100_000_000,) * 3
    time.sleep(0.4)
    assert store.pool_snapshot(app, op.now_ms + 300).spent == (0, 100_000_000, 100_000_000)
    # A later settle's shorter ttls don't shorten the counters it finds.
    store.settle(replace(op, hold_id="later", now_ms=op.now_ms + 300, ttls_ms=(60_000, 1, 1)))
    time.sleep(0.01)
    assert store.pool_snapshot(app, op.now_ms + 310).spent == (100_000_000, 200_000_000, 200_000_000)


def test_spend_counts_against_later_takes(n):
    store, app = n.store.sync, _pool(n)
    op = replace(_settles(n, "u", ["0.60"])[0], pools=(app,))
    store.settle(op)
    limits = (NANO, -1, -1)
    took = store.pool_take(_take(n, app, "a", NANO, 1, limits))
    assert (took.granted, took.spent) == (400_000_000, (600_000_000,) * 3)


def test_reserve_with_a_take_applies_neither_when_the_pool_grants_nothing(n):
    store, app = n.store.sync, _pool(n)
    limits = (1000, -1, -1)
    assert store.pool_take(_take(n, app, "other", 1000, 1, limits)).granted == 1000
    op = replace(_reserve_op(n, "u", "0.01"), pool_take=_take(n, app, "mine", 500, 100, limits))
    r = store.reserve(op)
    assert r.status == 0 and r.pool is not None and (r.pool.granted, r.pool.window) == (0, 1)
    assert n.get_usage("u").in_flight == 0  # the user's hold was not kept
    assert store.pool_snapshot(app, op.now_ms).held == 1000


def test_reserve_with_a_take_admits_both_and_a_blocked_user_keeps_the_chunk(n):
    store, app = n.store.sync, _pool(n)
    limits = (NANO, -1, -1)
    take = _take(n, app, "mine", 300_000_000, 10_000_000, limits)
    op = replace(_reserve_op(n, "u", "0.01"), pool_take=take)
    r = store.reserve(op)
    assert r.status == 1 and r.pool is not None and r.pool.granted == 300_000_000
    assert n.get_usage("u").in_flight * NANO == 10_000_000
    take = _take(n, app, "next", 100_000_000, 10_000_000, limits)
    big = replace(_reserve_op(n, "v", "2"), strict=True, pool_take=take)
    blocked = store.reserve(big)  # 2 > the user's daily 1: the user blocks, the pool grants
    assert blocked.status == 0 and blocked.pool is not None and blocked.pool.granted == 100_000_000
    assert n.get_usage("v").in_flight == 0
    assert store.pool_snapshot(app, op.now_ms).held == 400_000_000


def test_a_pools_keys_are_one_slot_and_no_script_mixes_them_with_a_users():
    # A pool's own hash tag puts every key of it on one Cluster slot (a user's keys may land on
    # the same slot by chance: harmless, as each script names one pool's keys or one user's).
    from redis.crc import key_slot

    from nasca_core.stores import _redis_pools

    def slots(names: Any) -> set[int]:
        return {key_slot(k.encode()) for k in names}

    ids = ("20261118", "2026W47", "202611")
    for pool in ("app", "team:a", "team:b"):
        keys = PoolKeys.build("ns", pool, ids)
        assert len(slots((keys.holds, keys.held, keys.settled, keys.day, keys.week, keys.month))) == 1
        take = PoolTakeOp(keys, 1, "l", 2, 1, (-1, -1, -1), 2, TTLS)
        user = UserKeys.build("ns", "u", ids)
        settle = SettleOp(user, 1, "h", 0, 1, "t", "{}", (), TTLS, 2, pools=(keys,))
        scripts = [_redis_pools.take_args(take)[0], _redis_pools.release_args(keys, "l", 1)[0],
                   _redis_pools.snapshot_args(keys, 1)[0],
                   *[list(cmd[3:3 + cmd[2]]) for cmd in _redis_pools.charge_commands(settle, "sha")]]
        for script_keys in scripts:
            assert len(slots(script_keys)) == 1 and set(script_keys) <= {
                keys.holds, keys.held, keys.settled, keys.day, keys.week, keys.month}


@pytest.mark.parametrize("backend", ["cluster"], indirect=True)
def test_on_a_cluster_a_pool_is_one_node(n):
    store, app = n.store.sync, _pool(n)
    client = store.client
    op = replace(_settles(n, "u", ["0.10"])[0], pools=(app,))
    store.pool_take(_take(n, app, "a", 100, 1, (NANO, -1, -1)))
    assert store.settle(op).status == 1
    pool_slots = {client.keyslot(k) for k in (app.holds, app.held, app.settled, app.day, app.week, app.month)}
    assert len(pool_slots) == 1
    node = client.get_node_from_key(app.day)
    assert client.get_node_from_key(app.holds) == node
    assert int(client.get(app.day)) == 100_000_000


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
def test_pooled_ops_load_the_scripts_a_restarted_server_lost(n):
    store, app = n.store.sync, _pool(n)
    op = replace(_settles(n, "u", ["0.10"])[0], pools=(app,))
    take = _take(n, app, "mine", 300_000_000, 10_000_000, (NANO, -1, -1))
    reserve = replace(_reserve_op(n, "v", "0.01"), pool_take=take)
    store.client.script_flush()
    pooled = store.reserve(reserve)
    assert pooled.status == 1 and pooled.pool is not None and pooled.pool.granted == 300_000_000
    store.client.script_flush()
    assert store.settle(op).status == 1
    assert store.pool_snapshot(app, op.now_ms).spent == (100_000_000,) * 3


def test_two_hundred_threads_never_hold_more_than_the_limit(n):
    store, app = n.store.sync, _pool(n)
    limit, start = 200 * 5, int(n.now() * 1000)
    limits = (limit, -1, -1)
    granted_total, charged, errors = [0], [0], []
    lock = threading.Lock()
    barrier = threading.Barrier(200)
    template = _settles(n, "u", ["0.01"])[0]

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for j in range(3):
                got = store.pool_take(_take(n, app, f"l{i}-{j}", 9, 3, limits, now_ms=start))
                if got.granted:
                    assert got.held + got.spent[0] <= limit
                    with lock:
                        granted_total[0] += got.granted
                    cost = got.granted - (i % 3)  # a call costs at most its chunk
                    store.settle(replace(template, keys=n.user_keys(f"u{i % 7}"), now_ms=start,
                                         hold_id=f"h{i}-{j}", estimate=0, cost=cost, pools=(app,)))
                    store.pool_release(app, f"l{i}-{j}", start)
                    with lock:
                        charged[0] += cost
        except Exception as e:  # reported below: a thread's assert would be lost
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    snap = store.pool_snapshot(app, start)
    assert snap.held == 0 and snap.spent == (charged[0],) * 3
    assert charged[0] <= limit and granted_total[0] >= charged[0]
    # The pool ends full to within the smallest chunk: takes stopped only for want of room.
    assert limit - charged[0] < 3 + 2 * 600


def test_the_async_twins(n):
    async def run() -> None:
        store, app = n.store.for_loop(), _pool(n)
        now = int(n.now() * 1000)
        took = await store.pool_take(_take(n, app, "a", 300, 1, (1000, -1, -1)))
        assert took.granted == 300
        assert (await store.pool_snapshot(app, now)).held == 300
        await store.pool_release(app, "a", now)
        assert (await store.pool_snapshot(app, now)).held == 0
        op = replace(_settles(n, "u", ["0.10"])[0], pools=(app,))
        assert (await store.settle(op)).status == 1
        assert (await store.settle(op)).status == 2
        assert (await store.pool_snapshot(app, now)).spent == (100_000_000,) * 3
        r = await store.reserve(replace(_reserve_op(n, "v", "0.01"), pool_take=_take(n, app, "b", 50, 10,
                                                                                      (NANO, -1, -1))))
        assert r.status == 1 and r.pool is not None and r.pool.granted == 50

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
def test_a_reserve_that_fails_keeps_no_chunk(n):
    # The user's script fails after the pool's landed (here a key of the wrong type: an error
    # reply): the chunk is dropped with it, not held until its expiry. (A lost connection sends
    # no release: see the test below.)
    store, app = n.store.sync, _pool(n)
    keys = n.user_keys("u")
    store.client.set(keys.holds, "not a zset")
    take = _take(n, app, "mine", 300, 10, (NANO, -1, -1))
    op = replace(_reserve_op(n, "v", "0.01"), keys=keys, pool_take=take)
    with pytest.raises(StoreError):
        store.reserve(op)
    assert store.pool_snapshot(app, op.now_ms).held == 0


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
def test_a_batch_whose_pool_step_fails_is_retried_and_charges_the_pool_then(n):
    # The pool's script fails (here its key of the wrong type) and the user's lands: each op's
    # outcome is the error, so the sender keeps it; its retry finds the user's part settled
    # (status 2) and charges the pool, once.
    store, app = n.store.sync, _pool(n)
    ops = [replace(op, pools=(app,)) for op in _settles(n, "u", ["0.10", "0.20", "0.30"])]
    # Scripts loaded first (another test flushed them): a batch meeting NOSCRIPT goes one by one.
    store.settle(replace(ops[0], keys=n.user_keys("w"), hold_id="warm", pools=(_pool(n, "warm"),)))
    store.client.set(app.settled, "not a zset")
    outcomes = store.settle_many(ops)
    assert len(outcomes) == 3 and all(isinstance(o, StoreError) for o in outcomes)
    store.client.delete(app.settled)
    assert [r.status for r in store.settle_many(ops)] == [2, 2, 2]
    assert [r.status for r in store.settle_many(ops)] == [2, 2, 2]
    assert store.pool_snapshot(app, ops[0].now_ms).spent == (600_000_000,) * 3


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
def test_a_pooled_reserve_and_settle_are_one_round_trip_each(n, monkeypatch):
    from nasca_core.stores import _redis_conns

    store, app = n.store.sync, _pool(n)
    op = replace(_settles(n, "u", ["0.10"])[0], pools=(app,))
    reserve = replace(_reserve_op(n, "v", "0.01"), pool_take=_take(n, app, "mine", 300_000_000, 10_000_000,
                                                                    (NANO, -1, -1)))
    warm = replace(reserve, keys=n.user_keys("w"), hold_id="warm", pool_take=replace(reserve.pool_take,
                                                                                      lease_id="warm"))
    store.reserve(warm)  # the scripts loaded (another test flushed them), the connections made
    trips: list[str] = []

    def counted(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            trips.append(name)
            return real(*args, **kwargs)
        return call

    if store.cluster:  # the cluster client's pipeline: one per node it writes to, sent together
        monkeypatch.setattr(store.client, "pipeline", counted("pipeline", store.client.pipeline))
        monkeypatch.setattr(store.client, "execute_command", counted("one", store.client.execute_command))
    else:
        conns = _redis_conns.Conns
        monkeypatch.setattr(conns, "call_many", counted("pipeline", conns.call_many))
        monkeypatch.setattr(conns, "call", counted("one", conns.call))
    assert store.reserve(reserve).status == 1
    assert trips == ["pipeline"]
    assert store.settle(op).status == 1
    assert trips == ["pipeline", "pipeline"]


def test_a_fold_of_many_settles_marks_them_all(n):
    # As many constituents as a fold may have (``_fold.MAX_OF``): each is marked (the last ones
    # too), so each alone later is a retry in the pool as in the user's part; a fold of a new id
    # charges both whatever its `of` (the user settle's rule), the pool and the user alike.
    store, app = n.store.sync, _pool(n)
    op = _settles(n, "u", ["0.01"])[0]
    assert store.settle(replace(op, hold_id="big", cost=7, of=tuple(f"c{i}" for i in range(1024)),
                                pools=(app,))).status == 1
    for i in (0, 511, 1023):  # each of the fold's alone: a retry, nothing charged
        assert store.settle(replace(op, hold_id=f"c{i}", cost=13, pools=(app,))).status == 2
    store.settle(replace(op, hold_id="d1000", cost=5, pools=(app,)))
    store.settle(replace(op, hold_id="big2", cost=11, of=tuple(f"d{i}" for i in range(1024)), pools=(app,)))
    assert store.pool_snapshot(app, op.now_ms).spent == (23,) * 3
    assert store.snapshot(op.keys, op.now_ms).spent == (23,) * 3


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
def test_commands_that_met_noscript_alone_are_sent_again(n):
    # A server that lost some scripts (here: all flushed, the user's settle loaded again): the
    # settles land, the pool charges meet NOSCRIPT. Only those are sent again, once every script
    # is loaded; the settles keep their first replies (status 1, not "already settled": the
    # ledger's warn_at marks are read from them), and every pool is charged once.
    from nasca_core.stores._scripts import source

    store, app = n.store.sync, _pool(n)
    ops = [replace(op, pools=(app,) if i % 2 else ()) for i, op in enumerate(_settles(n, "u", ["0.10"] * 5))]
    single, batch, last = ops[0], ops[1:4], replace(ops[4], pools=(app,))
    for sent in ([replace(single, pools=(app,))], batch):
        store.client.script_flush()
        store.client.script_load(source("settle"))
        results = store.settle(sent[0]) if len(sent) == 1 else store.settle_many(sent)
        statuses = [results.status] if len(sent) == 1 else [r.status for r in results]
        assert statuses == [1] * len(sent)
        assert all(r.spent[0] > 0 for r in ([results] if len(sent) == 1 else results))

    async def the_async_twin() -> None:
        aio = n.store.for_loop()
        await aio.pool_snapshot(app, last.now_ms)  # connected, its scripts loaded
        store.client.script_flush()
        store.client.script_load(source("settle"))
        assert (await aio.settle(last)).status == 1

    asyncio.run(the_async_twin())
    assert store.pool_snapshot(app, single.now_ms).spent == (400_000_000,) * 3  # ops 0, 1, 3, 4
    assert store.snapshot(single.keys, single.now_ms).spent[0] == 500_000_000


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_a_pooled_reserve_whose_reply_is_lost_sends_no_release(n):
    # The server stops answering (CLIENT PAUSE; a SIGSTOPped Redis alike): the reserve fails
    # after one timeout, with no release sent after it (another timeout on the caller's wait);
    # the core releases a take with no reply (``_pools.LOST_TAKE_MS``), else the chunk expires.
    # An error reply (WRONGTYPE: the test above) still releases at once.
    import redis

    from nasca_core.stores.redis import AsyncRedisStore, RedisStore

    kwargs = n.store.sync.client.connection_pool.connection_kwargs
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries of the client's own (the async link fails a call over to them): one timeout.
    where = dict(host=kwargs["host"], port=kwargs["port"], socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    admin, app = n.store.sync.client, _pool(n)
    op = replace(_reserve_op(n, "v", "0.01"), pool_take=_take(n, app, "mine", 300, 10, (NANO, -1, -1)))
    stores = [RedisStore(redis.Redis(**where)), AsyncRedisStore(redis.asyncio.Redis(**where))]
    released: list[str] = []
    for store in stores:
        store.pool_release = lambda *a, **k: released.append("release")  # type: ignore[method-assign]

    def paused(call: Any) -> None:
        admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        try:
            started = time.monotonic()
            with pytest.raises(StoreError):
                call()
            took = time.monotonic() - started
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        assert released == []
        assert took < 2.5  # not held until the pause ends by a release after the timeout

    sync, aio = stores
    sync.reserve(replace(op, hold_id="warm", pool_take=replace(op.pool_take, lease_id="w")))  # connected
    paused(lambda: sync.reserve(op))
    sync.close()

    async def in_one_loop() -> None:
        await aio.reserve(replace(op, hold_id="warm2", pool_take=replace(op.pool_take, lease_id="w2")))
        again = replace(op, hold_id="h2", pool_take=replace(op.pool_take, lease_id="m2"))
        admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        try:
            started = time.monotonic()
            with pytest.raises(StoreError):
                await aio.reserve(again)
            took = time.monotonic() - started
            # Cancelled while it waits (the caller's own timeout): a lost reply too, nothing sent.
            late = asyncio.ensure_future(aio.reserve(replace(again, hold_id="h3", pool_take=replace(
                op.pool_take, lease_id="m3"))))
            await asyncio.sleep(0.1)
            late.cancel()
            with pytest.raises(asyncio.CancelledError):
                await late
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        assert released == [] and took < 2.5
        await aio.close()

    asyncio.run(in_one_loop())


@pytest.mark.parametrize("bad", [(None,), ["a"], ("a", "b")])
def test_a_settle_with_bad_chunks_is_a_typed_error_with_nothing_changed(n, bad):
    store, app = n.store.sync, _pool(n)
    store.pool_take(_take(n, app, "a", 500_000_000, 1, (-1, -1, -1)))
    op = _settles(n, "u", ["0.10"])[0]
    with pytest.raises(InvalidAmountError):
        store.settle(replace(op, pools=(app,), chunks=bad))
    snap = store.pool_snapshot(app, op.now_ms)
    assert (snap.spent, snap.held) == ((0, 0, 0), 500_000_000)
    assert store.snapshot(op.keys, op.now_ms).spent == (0, 0, 0)


def test_a_charge_takes_its_cost_off_its_chunk_once(n):
    # A settled call's cost is spent, no longer held: counted once in limit - spent - held, so
    # other processes' takes see the room the chunk's owner has not used (the reviewer's case:
    # counted twice, a second process was blocked at 9 of 10 calls with nothing in flight).
    store, app = n.store.sync, _pool(n)
    now = int(n.now() * 1000)
    limits = (1_000_000_000, -1, -1)
    assert store.pool_take(_take(n, app, "a", 600_000_000, 1, limits)).granted == 600_000_000
    store.pool_take(_take(n, app, "b", 100_000_000, 1, limits))
    op = replace(_settles(n, "u", ["0.20"])[0], pools=(app,), chunks=("a",))
    assert store.settle(op).status == 1
    snap = store.pool_snapshot(app, now)
    assert (snap.spent[0], snap.held) == (200_000_000, 500_000_000)  # a: 400, b: 100 (not lowered)
    assert store.settle(op).status == 2  # a retry charges nothing and lowers nothing
    assert store.pool_snapshot(app, now).held == 500_000_000
    # The room is limit - spent - held = 300: exactly that is granted, then nothing.
    got = store.pool_take(_take(n, app, "c", 900_000_000, 1, limits))
    assert (got.granted, got.held) == (300_000_000, 800_000_000)
    assert store.pool_take(_take(n, app, "d", 1, 1, limits)).granted == 0
    store.pool_release(app, "a", now)  # its 400 left given back whole
    assert store.pool_snapshot(app, now).held == 400_000_000


def test_a_cost_above_its_chunk_floors_it_at_zero_and_a_gone_chunk_is_skipped(n):
    store, app = n.store.sync, _pool(n)
    now = int(n.now() * 1000)
    store.pool_take(_take(n, app, "a", 100_000_000, 1, (-1, -1, -1)))
    first, second = _settles(n, "u", ["0.30", "0.05"])
    assert store.settle(replace(first, pools=(app,), chunks=("a",))).status == 1
    snap = store.pool_snapshot(app, now)
    assert (snap.spent[0], snap.held) == (300_000_000, 0)  # floored, not negative
    store.pool_release(app, "a", now)
    assert store.settle(replace(second, pools=(app,), chunks=("a",))).status == 1  # dropped: charged only
    snap = store.pool_snapshot(app, now)
    assert (snap.spent[0], snap.held) == (350_000_000, 0)
    # A chunk that is not there stays not there (the charge does not make one).
    assert store.pool_take(_take(n, app, "a", 7, 1, (-1, -1, -1))).granted == 7


def test_a_fold_lowers_its_chunk_by_its_sum_once(n):
    store, app = n.store.sync, _pool(n)
    now = int(n.now() * 1000)
    store.pool_take(_take(n, app, "a", 1_000_000_000, 1, (-1, -1, -1)))
    a, b, c = _settles(n, "u", ["0.10", "0.20", "0.30"])
    fold = replace(c, hold_id="fold-1", cost=600_000_000, of=(a.hold_id, b.hold_id, c.hold_id),
                   pools=(app,), chunks=("a",))
    assert store.settle(fold).status == 1
    for op in (a, b, c, fold):  # each again, alone or as the fold: the chunk is lowered no more
        assert store.settle(replace(op, pools=(app,), chunks=("a",))).status == 2
    assert store.pool_snapshot(app, now).held == 400_000_000
