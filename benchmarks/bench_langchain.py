"""Per-call overhead of NascaCallbackHandler against no handler and against LangChain's
UsageMetadataCallbackHandler, on the memory store and on Redis, from one run.

    .venv/bin/python benchmarks/bench_langchain.py [--redis-url redis://...] [-n 6000]

The model is a fake chat model that answers at once with usage_metadata, so a call's time
is LangChain's plus the handlers'. Without --redis-url a throwaway redis-server is started
on a free loopback port. Figures are p50 per call, sampled in interleaved rounds;
overhead = p50 - p50 with no handler. A do-nothing handler separates LangChain's cost of
dispatching to any handler from the handlers' own work, and a breakdown times the
handler's steps directly.

Targets (issue 16): memory-store overhead <= 2x UsageMetadataCallbackHandler's; Redis
overhead <= that plus one bare Redis GET round trip (measured in the same run): the reserve
is the one round trip a call waits for, the settle goes to the background sender (whose
settles share this process's GIL, so they are in the figure). The machine's load moves
the absolute figures; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import redis
from _util import interleaved, redis_server
from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult, LLMResult
from langchain_core.runnables import RunnableConfig

from nasca_core import Nasca, Tier
from nasca_core.pricing import TokenUsage, count_message_tokens
from nasca_langchain import NascaCallbackHandler, usage_from_langchain

PROMPT = [SystemMessage("You are a helpful assistant."),
          HumanMessage("What is the capital of France? Answer in one sentence.")]
USAGE = {"input_tokens": 25, "output_tokens": 8, "total_tokens": 33}
REPLY = AIMessage("The capital of France is Paris.", usage_metadata=USAGE,  # type: ignore[arg-type]
                  response_metadata={"model_name": "gpt-4o-mini"})


class FakeChat(BaseChatModel):
    """Answers at once and reports usage, like a provider integration."""

    model_name: str = "gpt-4o-mini"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=REPLY)])

    @property
    def _llm_type(self) -> str:
        return "bench-fake-chat"


class NoOp(BaseCallbackHandler):
    """Handles nothing: what LangChain charges for dispatching to one handler. Like
    UsageMetadataCallbackHandler, it lacks on_chat_model_start, so LangChain raises
    NotImplementedError and retries the event as on_llm_start with the prompt as text."""


class Floor(BaseCallbackHandler):
    """The least a blocking handler costs: NascaCallbackHandler's shape (raise_error, inline,
    chains ignored, on_chat_model_start and on_llm_end), doing nothing in them."""

    raise_error = True
    run_inline = True
    ignore_chain = ignore_agent = ignore_retriever = ignore_retry = ignore_custom_event = True

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any, **kwargs: Any) -> None:
        pass

    def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
        pass


def make_nasca(store: str) -> Nasca:
    return Nasca(store, tiers={"free": Tier(daily=10**6)}, default_tier="free",
                 namespace=f"bench{uuid.uuid4().hex[:6]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--redis-url")
    ap.add_argument("-n", type=int, default=6000, help="samples per configuration")
    args = ap.parse_args()
    model = FakeChat()
    users = (f"user-{i}" for i in itertools.count())  # a user's first call of the window

    with redis_server(args.redis_url) as url:
        mem, red = make_nasca("memory://"), make_nasca(url)
        bare = redis.Redis.from_url(url)
        bare.set("bench:get", "1")

        def invoke(*handlers: Any, user: str | None = None) -> Callable[[], object]:
            return lambda: model.invoke(PROMPT, config={
                "callbacks": list(handlers), "metadata": {"nasca_user_id": user or next(users)}})

        p50 = interleaved({
            "no handler": invoke(),
            "do-nothing handler": invoke(NoOp()),
            "floor: Nasca's shape, no work": invoke(Floor()),
            "UsageMetadataCallbackHandler": invoke(UsageMetadataCallbackHandler()),
            "Nasca, memory store": invoke(NascaCallbackHandler(mem)),
            "Nasca, Redis store": invoke(NascaCallbackHandler(red)),
            "Nasca, Redis, returning user": invoke(NascaCallbackHandler(red), user="returning"),
            "bare Redis GET (redis-py)": lambda: bare.get("bench:get"),
        }, args.n, rounds=10)
        steps = breakdown(make_nasca("memory://"), make_nasca(url), args.n, users)
        async_rows = asyncio.run(bench_async(model, mem, args.n // 2, users))
        bare.close()
        red.close()

    report(p50, steps, async_rows, args.n)


def report(p50: dict[str, float], steps: dict[str, float], async_rows: dict[str, float],
           n: int) -> None:
    base, get_us = p50["no handler"], p50["bare Redis GET (redis-py)"]
    over = {k: v - base for k, v in p50.items() if not k.startswith("bare")}
    umch = over["UsageMetadataCallbackHandler"]
    print(f"\nsync invoke of a fake chat model, p50 of {n} calls each (interleaved), "
          "a fresh user per call unless the row says otherwise\n")
    print(f"{'configuration':32s}{'p50 µs':>9s}{'overhead µs':>13s}{'× UMCH':>9s}")
    for name, v in p50.items():
        if name.startswith("bare"):
            print(f"{name:32s}{v:9.1f}")
        else:
            ratio = f"{over[name] / umch:8.2f}×" if name != "no handler" else ""
            print(f"{name:32s}{v:9.1f}{over[name]:13.1f}{ratio:>9s}")
    m, r = over["Nasca, memory store"], over["Nasca, Redis store"]
    print(f"\nmemory: overhead {m:.1f} µs = {m / umch:.2f}× UMCH vs target 2 × UMCH = {2 * umch:.1f} µs: "
          f"{'MET' if m <= 2 * umch else 'MISSED'}")
    print(f"Redis:  overhead {r:.1f} µs vs target 2 × UMCH + 1 × GET = "
          f"{2 * umch + get_us:.1f} µs: {'MET' if r <= 2 * umch + get_us else 'MISSED'}"
          f"   (Redis - memory = {r - m:.1f} µs = {(r - m) / get_us:.1f} GETs)")
    back = over["Nasca, Redis, returning user"]
    print(f"Redis, one user calling again (its budget lease: no store call on most calls): overhead "
          f"{back:.1f} µs = {back / umch:.2f}× UMCH, vs the target {2 * umch + get_us:.1f} µs: "
          f"{'MET' if back <= 2 * umch + get_us else 'MISSED'}")
    print("\nwhere the memory-store overhead goes (p50 of each step, timed directly):")
    for name, v in steps.items():
        print(f"  {name:58s}{v:7.1f} µs")
    glue = steps["handler start+end, called directly (no LangChain)"] \
        - steps["  the same core calls without the handler"]
    label = "=> the handler's own code (the difference)"
    print(f"  {label:58s}{glue:7.1f} µs")
    print(f"  {'=> LangChain dispatching to one handler (do-nothing row)':58s}"
          f"{over['do-nothing handler']:7.1f} µs")
    floor = over["floor: Nasca's shape, no work"]
    print(f"  {'=> LangChain dispatching to a handler of our shape (floor row)':58s}{floor:7.1f} µs"
          f"  = {floor / umch:.2f}× UMCH: the ≤ 2× goal leaves {2 * umch - floor:.1f} µs for "
          "estimate, reserve, usage, price and settle")
    print("\nasync ainvoke, memory store: overhead per call over no handler")
    for name, v in async_rows.items():
        print(f"  {name:58s}{v:7.1f} µs")


def breakdown(mem: Nasca, red: Nasca, n: int, users: Any) -> dict[str, float]:
    handler = NascaCallbackHandler(mem)
    result = LLMResult(generations=[[ChatGeneration(message=REPLY)]])
    params = {"model_name": "gpt-4o-mini", "_type": "bench-fake-chat", "stop": None}
    prompt = [{"role": "system", "content": PROMPT[0].content, "name": None, "tool_calls": None},
              {"role": "user", "content": PROMPT[1].content, "name": None, "tool_calls": None}]

    def handler_direct() -> None:
        run_id = uuid.uuid4()
        handler.on_chat_model_start({}, [PROMPT], run_id=run_id, invocation_params=params,
                                    metadata={"nasca_user_id": next(users)})
        handler.on_llm_end(result, run_id=run_id)

    core = make_nasca("memory://")

    def core_equivalent() -> None:  # the handler's work minus its glue: same inputs, same calls
        uuid.uuid4()
        call = core.start_call("gpt-4o-mini", messages=prompt, user=next(users))
        call.finish(usage_from_langchain(REPLY.usage_metadata))

    def core_call(nasca: Nasca) -> Callable[[], None]:
        def run() -> None:
            nasca.start_call("gpt-4o-mini", prompt_tokens=30, user=next(users)).finish(
                TokenUsage(25, 8))
        return run

    def reserve_settle(nasca: Nasca) -> Callable[[], None]:
        def run() -> None:
            nasca.settle(nasca.reserve(nanos=1000, user=next(users)), nanos=900, tokens=(25, 8))
        return run

    return interleaved({
        "handler start+end, called directly (no LangChain)": handler_direct,
        "  the same core calls without the handler": core_equivalent,
        "  core: start_call + finish (estimate, price, reserve, settle)": core_call(mem),
        "  core: reserve + settle alone": reserve_settle(mem),
        "  core: count_message_tokens (prompt estimate)":
            lambda: count_message_tokens(prompt, "gpt-4o-mini"),
        "  adapter: usage_from_langchain": lambda: usage_from_langchain(USAGE),
        "  Redis: core start_call + finish": core_call(red),
    }, n // 2, rounds=5)


async def bench_async(model: FakeChat, nasca: Nasca, n: int, users: Any) -> dict[str, float]:
    configs: dict[str, list[Any]] = {
        "no handler": [],
        "UsageMetadataCallbackHandler (LangChain's thread pool)": [UsageMetadataCallbackHandler()],
        "Nasca (coroutines, inline on the event loop)": [NascaCallbackHandler(nasca)],
    }
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _round in range(5):
        for name, handlers in configs.items():
            for i in range(n // 5 + 20):
                config: RunnableConfig = {"callbacks": handlers,
                                          "metadata": {"nasca_user_id": next(users)}}
                t0 = time.perf_counter_ns()
                await model.ainvoke(PROMPT, config=config)
                if i >= 20:
                    times[name].append((time.perf_counter_ns() - t0) / 1000)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    return {k: v - p50["no handler"] for k, v in p50.items() if k != "no handler"}


if __name__ == "__main__":
    main()
