"""The overspend bound with the output cap (README, "Output cap"): with every call's output
held to the room it was admitted with, final spend ≤ limit + Σ over the calls in flight of
(real − hold)⁺ + the last call's prompt and one output token (an admitted call's prompt
can't be capped, its output can). Concurrent callers on
every store, each answer as long as its cap allows (the worst case)."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from nasca_core import NascaBlockedError, Tier
from nasca_core.pricing import TokenUsage, count_message_tokens

MODEL = "gpt-4o-mini"
LIMIT = 2_000_000  # nanos
MSG = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
N = 6  # max_in_flight


@pytest.mark.parametrize("max_tokens", [4000, None], ids=["max_tokens", "no-max_tokens"])
def test_concurrent_capped_calls_stay_within_the_bound(make_nasca, max_tokens):
    n = make_nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9, max_in_flight=N)}, default_tier="t",
                   default_output_tokens=50, busy_wait=3, cap_output=True)
    excess: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(24)

    def caller() -> None:
        start.wait()
        try:
            call = n.start_call(MODEL, messages=MSG, max_tokens=max_tokens, user="b")
        except NascaBlockedError:
            return
        cap = call.output_cap(max_tokens)
        output = cap if cap is not None else (max_tokens or 4096)  # the model says all it may
        real = n.cost_of(MODEL, TokenUsage(input_tokens=call.prompt_tokens, output_tokens=output))
        with lock:
            excess.append(max(0, real - call.reservation.estimate_nanos))
        call.finish(TokenUsage(input_tokens=call.prompt_tokens, output_tokens=output))

    threads = [threading.Thread(target=caller) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n.flush()
    spent = int(n.get_usage("b").daily_spent * 10**9)
    token = n.cost_of(MODEL, TokenUsage(output_tokens=1))
    prompt = n.cost_of(MODEL, TokenUsage(input_tokens=count_message_tokens(MSG, MODEL)))
    bound = LIMIT + (N - 1) * max(excess) + prompt + token  # |F| ≤ N − 1
    assert excess and spent <= bound
    if max_tokens is not None:  # holds of max_tokens are never exceeded: the last prompt at most
        assert max(excess) == 0 and spent <= LIMIT + prompt + token
    assert spent >= LIMIT // 2  # the budget was used, not refused
