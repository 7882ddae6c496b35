"""Calibrated estimates: learned per model from settled calls, kept in the store in a slot
of their own, written off the caller's path; cold start is the uncalibrated estimate."""

from __future__ import annotations

import threading

from nasca_core import Tier
from nasca_core._calibration import BATCH, MIN_CALLS, ModelStats, merge, stats_key
from nasca_core.pricing import TokenUsage, count_tokens, estimate_cost_nanos

MODEL = "gpt-4o-mini"
PROMPT = "What is the weather in Paris today? Answer in one short sentence."


def test_merge_learns_the_ratio_and_the_output_quantile():
    s = merge(None, [(100, 300, 50)] * 40)
    assert s.n == 40 and s.ratio_ppm == 3_000_000 and s.output_quantile() == 50
    s = merge(None, [(100, 100, out) for out in range(1, 33)])
    assert s.output_quantile() == 29  # the 90th percentile of 1..32
    assert len(merge(s, [(1, 1, 7)] * 100).outputs) == 32
    # it adapts: after the app's prompts change, the ratio follows within ~3 windows
    moved = merge(merge(None, [(100, 300, 50)] * 40), [(100, 100, 50)] * 48)
    assert 1_000_000 <= moved.ratio_ppm < 1_100_000
    assert ModelStats.from_json(s.to_json()) == s and ModelStats.from_json("garbage") is None


def test_holds_follow_the_rule():
    s = merge(None, [(10, 25, 40)] * MIN_CALLS)
    assert s.warm and s.prompt_hold(10) == 25 and s.prompt_hold(3) == 8  # rounded up
    assert s.output_hold(None, strict=False) == 40
    assert s.output_hold(100, strict=False) == 40 and s.output_hold(30, strict=False) == 30
    assert s.output_hold(100, strict=True) == 100


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
    stored = ModelStats.from_json(n.store.sync.get_marker(key, int(n.now() * 1000)))
    assert stored is not None and stored.n == BATCH + 3 and stored.ratio_ppm == 2_000_000
    assert n.store.sync.config_version(n.namespace) == version  # the live config untouched
    other = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t", namespace=n.namespace)
    assert other.calibration.sync(MODEL) == stored  # what the first process learned
    counted = count_tokens(PROMPT, MODEL)
    call = other.start_call(MODEL, prompt=PROMPT, user="v")
    assert call.reservation.estimate_nanos == estimate_cost_nanos(other.pricer, MODEL, 2 * counted, 30)
    call.fail()
    other.calibration.close()


def test_no_store_round_trip_on_the_callers_thread(make_nasca, monkeypatch):
    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    store = n.store.sync
    threads: list[str] = []
    for name in ("get_marker", "put_marker"):
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
    stored = ModelStats.from_json(store.get_marker(stats_key(n.namespace, MODEL), int(n.now() * 1000)))
    assert stored is not None and stored.n == 2 * BATCH


def test_calls_without_reported_usage_teach_nothing(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t")
    for _ in range(10):
        call = n.start_call(MODEL, prompt=PROMPT, user="u")
        call.add_text("Sunny.")
        call.finish(None)  # counted, not reported: no information about the provider's count
    assert n.calibration.view(MODEL) is None
    n.calibration.close()
