"""A model call's settle leaves the caller's path: journaled, queued and applied by the
background sender in order; this process sees it at its real cost until it lands; a full
queue settles on the caller's path; close() and flush() apply it; a process killed with
settles queued loses none (the next Nasca replays them once). Real Redis, real SQLite files."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core.pricing import TokenUsage
from tests.conftest import RedisProcess, _free_port, _need_redis

TIERS = {"free": Tier(daily=1, monthly=5, max_in_flight=1)}
MODEL = "gpt-4o-mini"
USAGE = TokenUsage(input_tokens=100_000, output_tokens=50_000)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return str(request.getfixturevalue("redis_url"))


def _nasca(uri: str, namespace: str, state_dir: Path, **kw: Any) -> Nasca:
    kw.setdefault("settle_in_background", True)
    return Nasca(uri, tiers=TIERS, default_tier="free", namespace=namespace, state_dir=str(state_dir), **kw)


def _call(n: Nasca, user: str = "u1") -> Any:
    call = n.start_call(MODEL, prompt_tokens=100_000, max_tokens=50_000, user=user)
    return call.finish(USAGE)


class _Stalled:
    """Holds the sender back (as a slow store would) until released."""

    def __init__(self, n: Nasca) -> None:
        self.lock = n.deferred._flush_lock

    def __enter__(self) -> _Stalled:
        self.lock.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.lock.release()


def test_the_default_is_on_for_stores_with_a_round_trip_and_off_for_memory(tmp_path, redis_url):
    ns = f"b{uuid.uuid4().hex[:8]}"
    assert Nasca("memory://", tiers=TIERS).deferred.sender is None
    assert Nasca(f"sqlite:///{tmp_path}/l.db", tiers=TIERS, namespace=ns).deferred.sender is not None
    assert Nasca(redis_url, tiers=TIERS, namespace=ns).deferred.sender is not None
    assert Nasca(redis_url, tiers=TIERS, namespace=ns, settle_in_background=False).deferred.sender is None


def test_a_queued_settle_is_seen_at_its_cost_and_lands_in_the_store(uri, tmp_path):
    n = _nasca(uri, f"b{uuid.uuid4().hex[:8]}", tmp_path / "state")
    cost = n.cost_of(MODEL, USAGE)
    with _Stalled(n):
        charge = _call(n)
        assert charge.pending and charge.cost_nanos == cost
        assert (charge.tier_nanos, charge.credit_nanos) == (0, 0)  # split by the store as it lands
        assert len(n.deferred) == 1 and n.stats.settle_queued == 1 and n.stats.settled == 0
        usage = n.get_usage("u1")  # the finished call counts at its cost, not as a hold
        assert usage.daily_spent == Decimal(cost) / 10**9 and usage.in_flight == 0
        raw = n.store.sync.snapshot(n.user_keys("u1"), int(n.now() * 1000))
        assert raw.spent == (0, 0, 0) and raw.held > 0  # the hold stays until the settle lands
        # max_in_flight=1: the user's own finished call does not make them busy.
        second = n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1")
    second.finish(TokenUsage(input_tokens=10, output_tokens=10))
    assert n.flush() >= 0 and len(n.deferred) == 0
    raw = n.store.sync.snapshot(n.user_keys("u1"), int(n.now() * 1000))
    total = cost + n.cost_of(MODEL, TokenUsage(input_tokens=10, output_tokens=10))
    assert raw.spent[0] == total and raw.held == 0 and raw.month_calls == 2
    assert n.get_usage("u1").daily_spent == Decimal(total) / 10**9  # not counted twice
    assert n.stats.settled == 2
    n.close()


def test_the_sender_applies_settles_by_itself(tmp_path, redis_url):
    n = _nasca(redis_url, f"b{uuid.uuid4().hex[:8]}", tmp_path / "state")
    for _ in range(5):
        assert _call(n, user=f"u{_}").pending
    deadline = time.monotonic() + 10
    while n.stats.settled < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert n.stats.settled == 5 and len(n.deferred) == 0
    assert n.deferred.journal is not None and n.deferred.journal.path is not None
    assert n.deferred.journal.path.stat().st_size == 0  # nothing pending in the journal
    n.close()


def test_settles_land_in_the_order_they_were_made(tmp_path, redis_url):
    n = _nasca(redis_url, f"b{uuid.uuid4().hex[:8]}", tmp_path / "state")
    store = n.store.sync
    landed: list[str] = []
    real, real_many = store.settle, store.settle_many
    batching = threading.local()  # a batch of one (or a reloaded script) calls ``settle`` itself

    def spy(op: Any) -> Any:
        if not getattr(batching, "on", False):
            landed.append(op.hold_id)
        return real(op)

    def spy_many(ops: Any) -> Any:  # the sender's batches
        landed.extend(op.hold_id for op in ops)
        batching.on = True
        try:
            return real_many(ops)
        finally:
            batching.on = False

    store.settle = spy  # type: ignore[method-assign]
    store.settle_many = spy_many  # type: ignore[method-assign]
    with _Stalled(n):
        calls = [n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user=f"u{i}") for i in range(4)]
        for call in calls:
            call.finish(TokenUsage(input_tokens=10, output_tokens=10))
        direct = n.reserve("0.01", user="u9")
    # A synchronous settle (the core API) waits for the queued ones: it lands after them.
    n.settle(direct, "0.01")
    assert landed == [c.reservation.hold_id for c in calls] + [direct.hold_id]
    n.close()


def test_a_full_queue_settles_on_the_caller_s_path_never_drops(tmp_path, redis_url, caplog):
    n = _nasca(redis_url, f"b{uuid.uuid4().hex[:8]}", tmp_path / "state")
    n.deferred.queue_limit = 2
    stall = _Stalled(n).__enter__()
    charges = [_call(n, user=f"u{i}") for i in range(2)]
    threading.Timer(0.3, stall.lock.release).start()  # the sender catches up later
    third = _call(n, user="u2")  # waits for the queue, then settles itself
    assert [c.pending for c in charges] == [True, True] and not third.pending
    assert n.stats.settle_queue_full == 1 and "background settle queue is full" in caplog.text
    assert n.stats.settled == 3 and len(n.deferred) == 0
    cost = Decimal(n.cost_of(MODEL, USAGE)) / 10**9
    assert sum(n.get_usage(f"u{i}").daily_spent for i in range(3)) == 3 * cost
    n.close()


def test_close_applies_what_is_queued(uri, tmp_path):
    ns, state = f"b{uuid.uuid4().hex[:8]}", tmp_path / "state"
    n = _nasca(uri, ns, state)
    with _Stalled(n):
        _call(n)
    n.close()
    assert n.stats.settled == 1 and len(n.deferred) == 0
    if not uri.startswith("memory"):
        again = _nasca(uri, ns, state, settle_in_background=False)
        assert again.stats.deferred_replayed == 0  # nothing left in a journal
        assert again.get_usage("u1").daily_spent == Decimal(n.cost_of(MODEL, USAGE)) / 10**9
        again.close()


def test_async_settles_queue_without_waiting_and_aflush_applies_them(tmp_path, redis_url):
    n = _nasca(redis_url, f"b{uuid.uuid4().hex[:8]}", tmp_path / "state")

    async def main() -> None:
        with _Stalled(n):
            call = await n.astart_call(MODEL, prompt_tokens=100_000, max_tokens=50_000, user="u1")
            charge = await asyncio.wait_for(call.afinish(USAGE), 1)  # no wait on the stalled sender
            assert charge.pending
            assert (await n.aget_usage("u1")).daily_spent == Decimal(charge.cost_nanos) / 10**9
        assert await n.aflush() >= 0 and len(n.deferred) == 0
        assert n.stats.settled == 1
        await n.aclose()

    asyncio.run(main())


def _queue_then_die(uri: str, namespace: str, state_dir: str) -> None:
    n = _nasca(uri, namespace, Path(state_dir))
    n.deferred._flush_lock.acquire()  # the sender never gets to them
    for _ in range(2):
        assert _call(n).pending
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit, no flush


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_killed_process_s_queued_settles_are_replayed_exactly_once(kind, tmp_path, request):
    uri = f"sqlite:///{tmp_path}/ledger.db" if kind == "sqlite" else request.getfixturevalue("redis_url")
    ns, state = f"b{uuid.uuid4().hex[:8]}", tmp_path / "state"
    proc = multiprocessing.get_context("fork").Process(target=_queue_then_die, args=(uri, ns, str(state)))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    [journal] = list(state.rglob("*.jsonl"))
    assert journal.read_text().count('"s"') == 2  # on disk before finish() returned
    cost = Nasca("memory://", tiers=TIERS).cost_of(MODEL, USAGE)
    n = _nasca(uri, ns, state)
    assert n.stats.deferred_replayed == 2 and len(n.deferred) == 0
    raw = n.store.sync.snapshot(n.user_keys("u1"), int(n.now() * 1000))
    assert raw.spent[0] == 2 * cost and raw.held == 0  # both holds replaced by their cost
    again = _nasca(uri, ns, state)
    assert again.stats.deferred_replayed == 0
    assert again.get_usage("u1").daily_spent == Decimal(2 * cost) / 10**9
    n.close()
    again.close()


def test_a_forked_child_starts_with_an_empty_queue_and_a_sender_of_its_own(tmp_path, redis_url):
    ns, state = f"b{uuid.uuid4().hex[:8]}", tmp_path / "state"
    parent = _nasca(redis_url, ns, state)
    _call(parent, user="u0")  # the parent's sender thread is running
    parent.flush()
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()

    def child() -> None:
        _call(parent, user="u1")
        deadline = time.monotonic() + 10
        while parent.stats.settled < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        done.put((parent.stats.settled, len(parent.deferred)))

    with _Stalled(parent):
        _call(parent, user="u2")  # queued in the parent; the child must not apply it
        proc = ctx.Process(target=child)
        proc.start()
        assert done.get(timeout=20) == (2, 0)  # the child's own settle landed through its own thread
        proc.join(10)
        assert len(parent.deferred) == 1
    parent.flush()
    assert parent.get_usage("u2").daily_spent == parent.get_usage("u1").daily_spent > 0
    parent.close()


def test_the_sender_waits_out_a_store_outage_and_lands_everything(tmp_path):
    _need_redis()
    port, state = _free_port(), tmp_path / "state"
    server = RedisProcess(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.3&socket_timeout=0.5"
    n = _nasca(url, f"b{uuid.uuid4().hex[:8]}", state)
    try:
        with _Stalled(n):
            charges = [_call(n, user=f"u{i}") for i in range(3)]
            server.stop()  # the store goes away with three settles queued
        deadline = time.monotonic() + 10
        while n.stats.store_errors == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert n.stats.store_errors >= 1 and len(n.deferred) == 3  # refused, kept, in order
        assert n.deferred.journal is not None and n.deferred.journal.path is not None
        assert n.deferred.journal.path.read_text().count('"s"') == 3
        server = RedisProcess(port, tmp_path)  # back (empty: no persistence in this test)
        deadline = time.monotonic() + 15
        while len(n.deferred) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(n.deferred) == 0 and n.stats.settled == 3  # the sender's backoff retried
        assert all(n.get_usage(f"u{i}").daily_spent == Decimal(c.cost_nanos) / 10**9
                   for i, c in enumerate(charges))
        n.close()
    finally:
        server.stop()


def test_a_ledger_nobody_holds_takes_its_sender_thread_with_it(tmp_path, redis_url):
    n = _nasca(redis_url, f"b{uuid.uuid4().hex[:8]}", tmp_path / "state")
    _call(n)
    n.flush()
    sender = n.deferred.sender
    assert sender is not None and sender._thread is not None
    thread = sender._thread
    assert thread.is_alive()
    del n
    for _ in range(20):  # the ledger is cyclic garbage: gone at a collection the sender isn't inside
        gc.collect()
        thread.join(0.5)
        if not thread.is_alive():
            break
    assert not thread.is_alive()


# -- the review of issue 16: races, limbo, hangs, forks, a journal that can't be written --------
def _held_back(tmp_path: Path, **kw: Any) -> Nasca:
    """SQLite, with a sender that is never woken: settles wait until a flush."""
    n = _nasca(f"sqlite:///{tmp_path}/ledger.db", f"b{uuid.uuid4().hex[:8]}", tmp_path / "state", **kw)
    assert n.deferred.sender is not None
    n.deferred.sender.wake = lambda: None  # type: ignore[method-assign]
    return n


def test_a_settle_landing_during_a_reserve_is_not_counted_twice(tmp_path, monkeypatch):
    n = _held_back(tmp_path)
    _call(n)  # A: queued, owed at its cost
    c = n.start_call(MODEL, prompt_tokens=100_000, max_tokens=50_000, user="u1")  # admitted: A is done
    store = n.store.sync
    reserve = type(store).reserve

    def racing(self: Any, op: Any) -> Any:  # the sender tries to land A while D's reserve is on its way
        sender = threading.Thread(target=n.flush)
        sender.start()
        sender.join(0.3)
        return reserve(self, op)

    monkeypatch.setattr(type(store), "reserve", racing)
    with pytest.raises(NascaBlockedError):  # C is in flight and max_in_flight=1
        n.start_call(MODEL, prompt_tokens=100_000, max_tokens=50_000, user="u1")
    monkeypatch.setattr(type(store), "reserve", reserve)
    n.flush()
    usage = n.get_usage("u1")
    assert usage.in_flight == Decimal(c.reservation.estimate_nanos) / 10**9
    assert usage.daily_spent == Decimal(n.cost_of(MODEL, USAGE)) / 10**9


async def test_an_async_reserve_and_a_landing_settle_take_turns(tmp_path, monkeypatch):
    n = _held_back(tmp_path)
    _call(n)
    await n.astart_call(MODEL, prompt_tokens=100_000, max_tokens=50_000, user="u1")
    store = n.store.for_loop()
    reserve = type(store).reserve

    async def racing(self: Any, op: Any) -> Any:
        sender = threading.Thread(target=n.flush)
        sender.start()
        await asyncio.sleep(0.3)
        return await reserve(self, op)

    monkeypatch.setattr(type(store), "reserve", racing)
    with pytest.raises(NascaBlockedError):
        await n.astart_call(MODEL, prompt_tokens=100_000, max_tokens=50_000, user="u1")


def test_a_settle_failing_with_any_error_is_put_back_not_lost(tmp_path, monkeypatch):
    n = _held_back(tmp_path)
    store = n.store.sync
    settle = type(store).settle
    monkeypatch.setattr(type(store), "settle", lambda self, op: (_ for _ in ()).throw(RuntimeError("span")))
    _call(n)
    with pytest.raises(RuntimeError):
        n.flush()
    assert n.deferred.queued() == 1 and len(n.deferred) == 1
    started = time.monotonic()
    assert n.get_usage("u1").daily_spent == Decimal(n.cost_of(MODEL, USAGE)) / 10**9
    assert time.monotonic() - started < 0.5  # no settle is stuck "on its way"
    monkeypatch.setattr(type(store), "settle", settle)
    assert n.flush() == 1 and len(n.deferred) == 0
    assert n.get_usage("u1").daily_spent == Decimal(n.cost_of(MODEL, USAGE)) / 10**9


async def test_an_async_flush_puts_back_a_settle_failing_with_any_error(tmp_path, monkeypatch):
    n = _held_back(tmp_path)
    store = n.store.for_loop()

    async def boom(self: Any, op: Any) -> Any:
        raise RuntimeError("driver")

    settle = type(store).settle
    monkeypatch.setattr(type(store), "settle", boom)
    _call(n)
    with pytest.raises(RuntimeError):
        await n.aflush()
    usage = await asyncio.wait_for(n.aget_usage("u1"), 2)
    assert usage.daily_spent == Decimal(n.cost_of(MODEL, USAGE)) / 10**9
    monkeypatch.setattr(type(store), "settle", settle)
    assert await n.aflush() == 1 and len(n.deferred) == 0


@pytest.mark.timeout(30)
async def test_a_sync_flush_on_the_loop_does_not_wait_forever_for_a_read_on_that_loop(tmp_path):
    n = _held_back(tmp_path)
    _call(n)
    read = asyncio.create_task(n.aget_usage("u1"))
    for _ in range(10_000):
        await asyncio.sleep(0)
        if n.deferred._reading:
            break
    assert n.deferred._reading
    started = time.monotonic()
    n.flush()  # blocks the loop the read needs: it must give up, not hang
    assert time.monotonic() - started < 3
    assert (await read).daily_spent == Decimal(n.cost_of(MODEL, USAGE)) / 10**9
    n.flush()
    assert len(n.deferred) == 0


def test_readers_do_not_starve_the_sender(tmp_path):
    n = _held_back(tmp_path)
    _call(n)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            n.get_usage("u1")

    readers = [threading.Thread(target=read) for _ in range(3)]
    for r in readers:
        r.start()
    try:
        deadline = time.monotonic() + 5
        while len(n.deferred) and time.monotonic() < deadline:
            n.flush()
        assert len(n.deferred) == 0
    finally:
        stop.set()
        for r in readers:
            r.join(10)


def test_a_forked_child_does_not_count_its_parent_s_queued_settles(tmp_path):
    n = _held_back(tmp_path)
    _call(n, user="u2")
    meta = n.user_keys("u2").meta
    ctx = multiprocessing.get_context("fork")
    seen = ctx.Queue()

    def child() -> None:
        seen.put((n.deferred.owed(meta), len(n.deferred), str(n.get_usage("u2").daily_spent)))

    proc = ctx.Process(target=child)
    proc.start()
    assert seen.get(timeout=20) == ((0, 0, 0), 0, "0")  # in the store nothing landed yet
    proc.join(10)
    assert n.deferred.owed(meta)[0] == 1
    n.flush()


def test_a_settle_that_can_t_be_journaled_is_settled_on_the_caller_s_path(tmp_path):
    n = _nasca(f"sqlite:///{tmp_path}/ledger.db", "nj", Path("/dev/null/state"))
    charge = _call(n)
    assert not charge.pending and n.deferred.queued() == 0 and n.stats.settle_queued == 0
    assert n.get_usage("u1").daily_spent == Decimal(n.cost_of(MODEL, USAGE)) / 10**9


def test_after_close_a_settle_is_applied_on_the_caller_s_path(tmp_path):
    n = _nasca(f"sqlite:///{tmp_path}/ledger.db", "ac", tmp_path / "state")
    call = n.start_call(MODEL, prompt_tokens=100_000, max_tokens=50_000, user="u1")
    n.close()
    assert n.deferred.sender is not None
    charge = call.finish(USAGE)
    assert not charge.pending and n.deferred.queued() == 0
    assert n.deferred.sender._thread is None  # not restarted


def test_a_reserve_waiting_for_its_user_s_last_settle_to_land_sees_it_landed(tmp_path, monkeypatch):
    n = _held_back(tmp_path)
    store = n.store.sync
    settle, going, go = type(store).settle, threading.Event(), threading.Event()

    def slow(self: Any, op: Any) -> Any:
        going.set()
        go.wait(10)
        return settle(self, op)

    monkeypatch.setattr(type(store), "settle", slow)
    _call(n)
    sender = threading.Thread(target=n.flush)
    sender.start()
    assert going.wait(10)  # the settle is on its way: a reserve of u1 waits for it
    threading.Timer(0.2, go.set).start()
    call = n.start_call(MODEL, prompt_tokens=100_000, max_tokens=50_000, user="u1")
    sender.join(10)
    usage = n.get_usage("u1")
    assert usage.daily_spent == Decimal(n.cost_of(MODEL, USAGE)) / 10**9
    assert usage.in_flight == Decimal(call.reservation.estimate_nanos) / 10**9


def test_exit_waits_a_bounded_time_for_a_store_that_never_answers(tmp_path, monkeypatch):
    from nasca_core import _sender

    n = _held_back(tmp_path)
    store = n.store.sync
    settle, answer = type(store).settle, threading.Event()
    monkeypatch.setattr(type(store), "settle", lambda self, op: (answer.wait(30), settle(self, op))[1])
    _call(n)
    started = time.monotonic()
    _sender._flush_at_exit(0.3)
    assert time.monotonic() - started < 2
    assert n.deferred.owed(n.user_keys("u1").meta)[0] == 1  # still owed, still journaled
    answer.set()
