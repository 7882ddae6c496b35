"""Benchmark: cost computation per call, and prompt estimates for 1k/10k/100k-token prompts.

    .venv/bin/python benchmarks/bench_pricing.py

Each figure is the best of several repeats (least noise from other processes). Ratios are
against baselines measured in the same run:

* cost: a bare dict lookup and float multiply-add (what a naive table does, inexact);
* estimate: ``len(text)`` (the cost of touching the text at all) and tiktoken's raw
  ``encode_ordinary`` (the floor for an exact count).

Target: cost computation <= 5 us per call. Prices come from genai-prices, compiled once
per model and service tier; the rows after the first six show what is not on the per-call
path (a new name's first lookup, genai-prices' own ``calc_price``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasca_core.pricing import (
    Pricer,
    PriceTable,
    TokenUsage,
    _estimate,
    count_message_tokens,
    count_tokens,
    estimate_cost_nanos,
    usage_from_openai,
)

COST_TARGET_US = 5.0


def best_per_call(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Best-of-``repeat`` seconds per call over ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def bench_cost() -> bool:
    table = PriceTable.default()
    pricer = Pricer(table)
    usage = TokenUsage(
        input_tokens=12_000,
        output_tokens=900,
        cache_read_tokens=8000,
        cache_write_tokens=1000,
        reasoning_tokens=300,
    )
    long_usage = TokenUsage(input_tokens=300_000, output_tokens=2000)
    every = TokenUsage(
        input_tokens=12_000, output_tokens=900, cache_read_tokens=6000, cache_write_tokens=2000,
        cache_write_1h_tokens=1000, reasoning_tokens=300, input_audio_tokens=500, output_audio_tokens=100,
        web_searches=2, service_tier="flex",
    )
    naive = {"gpt-4o": {"input": 2.5e-6, "cached": 1.25e-6, "output": 1e-5}}

    def baseline() -> float:
        p = naive["gpt-4o"]
        return (
            (usage.input_tokens - usage.cache_read_tokens) * p["input"]
            + usage.cache_read_tokens * p["cached"]
            + usage.output_tokens * p["output"]
        )

    n = 200_000
    base = best_per_call(baseline, n)
    rows = [("baseline: dict lookup + float multiply-add", base)]
    for label, fn in [
        ("PriceTable.cost_nanos('gpt-4o')", lambda: table.cost_nanos("gpt-4o", usage)),
        (
            "PriceTable.cost_nanos(Bedrock id)",
            lambda: table.cost_nanos("us.anthropic.claude-sonnet-4-20250514-v1:0", usage),
        ),
        (
            "PriceTable.cost_nanos(long context tier)",
            lambda: table.cost_nanos("gemini-2.5-pro", long_usage),
        ),
        ("Pricer.cost('gpt-4o-2024-08-06')", lambda: pricer.cost("gpt-4o-2024-08-06", usage)),
        ("PriceTable.cost_nanos(every dimension, flex tier)", lambda: table.cost_nanos("gpt-5", every)),
        (
            "PriceTable.cost_nanos(DeepSeek peak/off-peak)",
            lambda: table.cost_nanos("deepseek-chat", usage),
        ),
    ]:
        rows.append((label, best_per_call(fn, n)))

    rows.append(
        (
            "TokenUsage(...) construction + validation",
            best_per_call(lambda: TokenUsage(input_tokens=12_000, output_tokens=900), n),
        )
    )
    fresh = table.with_overrides({})
    names = iter(f"azure/gpt-4o-2024-08-{i}" for i in range(10**7))
    rows.append(
        (
            "first lookup of a new name (genai-prices match, uncached)",
            best_per_call(lambda: fresh.normalize(next(names)), 2000, repeat=3),
        )
    )
    import genai_prices

    rows.append(
        (
            "genai_prices.calc_price (what compiling avoids per call)",
            best_per_call(lambda: genai_prices.calc_price(genai_prices.Usage(input_tokens=12_000,
                                                          output_tokens=900), "gpt-4o"), 500, repeat=3),
        )
    )
    payload = {
        "prompt_tokens": 12_000,
        "completion_tokens": 900,
        "prompt_tokens_details": {"cached_tokens": 8000},
        "completion_tokens_details": {"reasoning_tokens": 300},
    }
    rows.append(
        (
            "usage_from_openai(dict) (parse, for scale)",
            best_per_call(lambda: usage_from_openai(payload), 50_000),
        )
    )

    print("Cost computation (per call)")
    for label, seconds in rows:
        print(f"  {label:<52} {seconds * 1e6:8.3f} us   x{seconds / base:6.1f} baseline")
    worst = max(s for _, s in rows[1:7])
    ok = worst * 1e6 <= COST_TARGET_US
    print(
        f"  target <= {COST_TARGET_US} us per cost call: {'PASS' if ok else 'FAIL'} "
        f"(slowest {worst * 1e6:.3f} us)"
    )
    return ok


def _text_of(tokens: int) -> str:
    # Varied English-like text; grown until it holds the requested number of o200k tokens.
    sentence = (
        "The quick brown fox jumps over the lazy dog while the accountant reviews invoice "
        "#4821 for $1,299.99, noting that 37% of spend came from cached prompts. "
    )
    text = sentence * (tokens // 30 + 1)
    while count_tokens(text, "gpt-4o") < tokens:
        text += sentence
    # Trim to about the target (binary search on characters).
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(text[:mid], "gpt-4o") < tokens:
            lo = mid + 1
        else:
            hi = mid
    return text[:lo]


def bench_estimate() -> None:
    encoder = _estimate.get_encoder("o200k_base")
    pricer = Pricer()
    print()
    if encoder is None:
        print("Prompt estimate: no tiktoken file found offline; figures use the approximation")
    print("Prompt estimate (count prompt tokens + price prompt and max_tokens), model gpt-4o")
    print(
        f"  {'prompt':>8}  {'estimate':>11}  {'len(text)':>10}  {'raw encode':>11}  "
        f"{'vs len':>8}  {'vs encode':>9}  {'messages':>11}"
    )
    for tokens in (1_000, 10_000, 100_000):
        text = _text_of(tokens)
        number = max(3, 2_000_000 // tokens // 10)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]

        def estimate(text: str = text) -> int:
            return estimate_cost_nanos(pricer, "gpt-4o", count_tokens(text, "gpt-4o"), 1024)

        t_est = best_per_call(estimate, number, repeat=5)
        t_len = best_per_call(partial(len, text), number, repeat=5)
        t_raw = float("nan")
        if encoder is not None:
            t_raw = best_per_call(partial(encoder.encode_ordinary, text), number, repeat=5)
        t_msg = best_per_call(partial(count_message_tokens, messages, "gpt-4o"), number, repeat=5)
        print(
            f"  {tokens:>8,}  {t_est * 1e3:8.3f} ms  {t_len * 1e6:7.3f} us  {t_raw * 1e3:8.3f} ms  "
            f"x{t_est / t_len:7.0f}  x{t_est / t_raw:8.2f}  {t_msg * 1e3:8.3f} ms"
        )


def main() -> int:
    ok = bench_cost()
    bench_estimate()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
