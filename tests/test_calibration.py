"""Calibrated estimates: learned per model from settled calls, kept in the store in a slot
of their own, written off the caller's path; cold start is the uncalibrated estimate."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from nasca_core import Nasca, Tier
from nasca_core._calibration import BATCH, KEEP, MIN_CALLS, merge, stats_key
from nasca_core.pricing import TokenUsage, count_tokens, estimate_cost_nanos
from nasca_core.stores import SampleOp

MODEL = "gpt-4o-mini"
PROMPT = "What is the weather in Paris today? Answer in one short sentence."


def test_merge_learns_the_ratio_and_the_output_quantile():
    s = merge(None, [(100, 300, 50)] * 40)
    assert s.n == 40 and s.ratio_ppm == 3_000_000 and s.output_quantile() == 50
    s = merge(None, [(100, 100, out) for out in range(1, 33)])
    assert s.output_quantile() == 29  # the 90th percentile of 1..32
    assert len(merge(s, [(1, 1, 7)] * 100).outputs) == 32
    # it adapts: once KEEP calls follow a change in the app's prompts, only they count
    moved = merge(merge(None, [(100, 300, 50)] * 40), [(100, 100, 50)] * KEEP)
    assert moved.ratio_ppm == 1_000_000 and moved.n == 40 + KEEP
    # the median of the last KEEP: it moves once most of them show the change (KEEP // 2 + 1)
    half = merge(merge(None, [(100, 300, 50)] * 40), [(100, 100, 50)] * (KEEP // 2))
    assert half.ratio_ppm == 3_000_000  # a tie holds the larger: never less than either half
    most = merge(half, [(100, 100, 50)])
    assert most.ratio_ppm == 1_000_000


def test_one_outlier_cannot_poison_the_model():
    """A "hi" with hidden tools or images (counted 1, reported 60,000) is one sample of 32:
    the median ignores it, and each sample's ratio is clamped to [0.5, 8] besides."""
    s = merge(None, [(1000, 1000, 50)] * (KEEP - 1) + [(1, 60_000, 50)])
    assert s.ratio_ppm == 1_000_000 and s.prompt_hold(1000) == 1000
    all_poisoned = merge(None, [(1, 60_000, 50)] * KEEP)
    assert all_poisoned.ratio_ppm == 8_000_000 and all_poisoned.prompt_hold(1000) == 8000
    assert merge(None, [(1000, 1, 50)] * KEEP).ratio_ppm == 500_000  # and never below half


def test_holds_follow_the_rule():
    s = merge(None, [(10, 25, 40)] * MIN_CALLS)
    assert s.warm and s.prompt_hold(10) == 25 and s.prompt_hold(3) == 8  # rounded up
    assert s.output_hold(None, strict=False) == 40
    assert s.output_hold(100, strict=False) == 40 and s.output_hold(30, strict=False) == 30
    assert s.output_hold(100, strict=True) == 100


def _stored(n):
    """What the store holds for MODEL (an empty batch only reads)."""
    return n.store.sync.add_samples(SampleOp(key=stats_key(n.namespace, MODEL), batch_id="", samples=(),
                                             keep=KEEP, ttl_ms=60_000, now_ms=int(n.now() * 1000)))


def _call(n, reported_ratio: int, output: int, user: str = "u", max_tokens: int | None = None):
    call = n.start_call(MODEL, prompt=PROMPT, max_tokens=max_tokens, user=user)
    estimate = call.reservation.estimate_nanos
    call.finish(TokenUsage(input_tokens=call.prompt_tokens * reported_ratio, output_tokens=output))
    return estimate


def test_cold_start_is_the_uncalibrated_estimate_then_holds_match_reality(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    counted = count_tokens(PROMPT, MODEL)
    cold = estimate_cost_nanos(n.pricer, MODEL, counted, None, 256)
    for _ in range(MIN_CALLS):
        assert _call(n, 3, 40) == cold  # cold start: exactly today's estimate
    warm = _call(n, 3, 40)
    assert warm == estimate_cost_nanos(n.pricer, MODEL, 3 * counted, 40)
    assert warm == n.pricer.cost(MODEL, TokenUsage(input_tokens=3 * counted, output_tokens=40))
    # max_tokens bounds the learned output in default admission
    assert _call(n, 3, 40, max_tokens=20) == estimate_cost_nanos(n.pricer, MODEL, 3 * counted, 20)
    n.calibration.close()


def test_statistics_live_in_the_store_per_model_and_reach_another_process(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    version = n.store.sync.config_version(n.namespace)
    for _ in range(BATCH + 3):
        _call(n, 2, 30)
    n.calibration.close()  # waits for the background writes and writes the rest
    key = stats_key(n.namespace, MODEL)
    assert key.startswith(f"{{{n.namespace}:cal}}")  # its own slot, no user's
    stored = _stored(n)
    assert stored.n == BATCH + 3 and {r // c for c, r, _ in stored.recent} == {2}
    assert n.store.sync.config_version(n.namespace) == version  # the live config untouched
    other = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t", namespace=n.namespace)
    learned = other.calibration.sync(MODEL)  # what the first process learned
    assert learned is not None and (learned.n, learned.recent, learned.ratio_ppm) == (
        BATCH + 3, stored.recent, 2_000_000)
    counted = count_tokens(PROMPT, MODEL)
    call = other.start_call(MODEL, prompt=PROMPT, user="v")
    assert call.reservation.estimate_nanos == estimate_cost_nanos(other.pricer, MODEL, 2 * counted, 30)
    call.fail()
    other.calibration.close()


def test_no_store_round_trip_on_the_callers_thread(make_nasca, monkeypatch):
    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    store = n.store.sync
    threads: list[str] = []
    for name in ("add_samples", "get_marker", "put_marker"):
        original = getattr(store, name)

        def spy(*args, _original=original):
            threads.append(threading.current_thread().name)
            return _original(*args)

        monkeypatch.setattr(store, name, spy)
    for _ in range(2 * BATCH):
        _call(n, 1, 10)
    on_callers = [t for t in threads if not t.startswith("nasca-calibration")]
    n.calibration.close()  # close() itself may write the last batch
    assert on_callers == [] and threads
    assert _stored(n).n == 2 * BATCH


def test_calls_without_reported_usage_teach_nothing(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    for _ in range(10):
        call = n.start_call(MODEL, prompt=PROMPT, user="u")
        call.add_text("Sunny.")
        call.finish(None)  # counted, not reported: no information about the provider's count
    assert n.calibration.view(MODEL) is None
    n.calibration.close()


def test_a_retried_batch_is_added_once(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    op = SampleOp(key=stats_key(n.namespace, MODEL), batch_id="b1", samples=((10, 20, 5),) * 3, keep=KEEP,
                  ttl_ms=60_000, now_ms=int(n.now() * 1000))
    assert n.store.sync.add_samples(op).n == 3
    assert n.store.sync.add_samples(op).n == 3  # a client retry after a lost reply
    assert n.store.sync.add_samples(SampleOp(**{**_fields(op), "batch_id": "b2"})).n == 6
    assert len(_stored(n).recent) == 6


def _fields(op):
    return {f: getattr(op, f) for f in op.__slots__}


def test_concurrent_writers_lose_no_update(make_nasca):
    """Eight threads, each a Nasca of its own (as processes would be), write batches of the
    same model at once: every observation is counted, the list keeps the last KEEP."""
    nascas = [make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t") for _ in range(8)]
    rounds = 5
    start = threading.Barrier(len(nascas))

    def writer(k: int) -> None:
        cal = nascas[k].calibration
        start.wait()
        for _ in range(rounds * BATCH):  # a background write every BATCH, all at once
            cal.observe(MODEL, 10, 10 * (k + 1), k)
        cal.close()  # waits for them, then writes what is left

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(len(nascas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = _stored(nascas[0])
    assert stored.n == len(nascas) * rounds * BATCH
    assert len(stored.recent) == KEEP


def _process_writer(uri: str, namespace: str, k: int, rounds: int) -> None:
    n = Nasca(uri, tiers={"t": Tier(monthly=100)}, default_tier="t", namespace=namespace)
    for _ in range(rounds * BATCH):
        n.calibration.observe(MODEL, 10, 20, k)
    n.calibration.close()  # the background writes, then the rest
    n.close()


def test_processes_lose_no_update(make_nasca, store_uri, backend):
    if backend == "memory":
        return  # one process's store: the threads above cover it
    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_writer, args=(store_uri, n.namespace, k, 3)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    stored = _stored(n)
    assert stored.n == 4 * 3 * BATCH and len(stored.recent) == KEEP


def test_a_batch_whose_reply_was_lost_is_added_once_when_resent(make_nasca, monkeypatch):
    """The store applied the batch but the reply never came: the resend must carry the same
    batch id (so the store's marker skips it), not a new one that adds it twice."""
    from nasca_core import StoreError

    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    store = n.store.sync
    real = store.add_samples

    def lost_reply(op):
        real(op)
        raise StoreError("timed out reading the reply")

    monkeypatch.setattr(store, "add_samples", lost_reply)
    for _ in range(5):
        n.calibration.observe(MODEL, 10, 20, 5)
    with pytest.raises(StoreError):
        n.calibration.sync(MODEL)
    monkeypatch.setattr(store, "add_samples", real)
    n.calibration.observe(MODEL, 10, 30, 5)  # one more since: sent too, once
    n.calibration.close()
    stored = _stored(n)
    assert stored.n == 6 and len(stored.recent) == 6


def test_processes_learn_from_each_other(make_nasca):
    """Two processes on one model: a batch written is fewer than the list keeps, so each
    process's next view holds the other's samples too (a batch of KEEP would replace them)."""
    assert BATCH < KEEP
    a = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    b = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t", namespace=a.namespace)
    for _ in range(BATCH):
        b.calibration.observe(MODEL, 100, 600, 10)
    b.calibration.close()
    for _ in range(BATCH):
        a.calibration.observe(MODEL, 100, 200, 10)
    a.calibration.close()
    seen = a.calibration.view(MODEL)
    assert seen is not None and seen.n == 2 * BATCH
    assert {r for _, r, _ in seen.recent} == {200, 600}  # A's view holds B's samples


def test_a_warm_model_refuses_a_huge_max_tokens_as_a_cold_one_does(make_nasca):
    """The learned output (p90) is held instead of max_tokens, but a max_tokens no call can
    ask for is still refused; the uncapped ceiling of a huge one (compared, never stored) is no error."""
    from nasca_core import UsageParseError

    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    for _ in range(MIN_CALLS):
        n.calibration.observe("gpt-4.1", 10, 10, 40)
    assert n.calibration.view("gpt-4.1").warm
    with pytest.raises(UsageParseError, match="implausibly large"):
        n.start_call("gpt-4.1", prompt=PROMPT, max_tokens=10**30, user="u")
    # within the bound, at $8/M its uncapped cost is above 2**63 nanos: held at the p90
    call = n.start_call("gpt-4.1", prompt=PROMPT, max_tokens=2**52, user="u", cap_output=True)
    assert call.reservation.estimate_nanos == estimate_cost_nanos(n.pricer, "gpt-4.1", call.prompt_tokens, 40)
    call.fail()
    n.calibration.close()
