"""What OpenTelemetry costs per model call: start_call + finish with telemetry off and on.

    .venv/bin/python benchmarks/bench_otel.py [--redis-url redis://...] [-n 5000]

"On" is ``nasca_core.otel.instrument`` with the real SDK: a MeterProvider with an in-memory
reader (recording is the cost; export happens off the call's path) and a TracerProvider with
a batch span processor whose exporter drops the spans; "metrics" is the same with
``tracer_provider=NoOpTracerProvider()`` (how an app turns Nasca's spans off). p50 in µs, interleaved so each
variant sees the same machine. Redis settles on the caller's path here
(``settle_in_background=False``), so both spans and both store round trips are on it.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import interleaved, redis_server
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

from nasca_core import Nasca, Tier, otel
from nasca_core.pricing import TokenUsage

USAGE = TokenUsage(input_tokens=1200, output_tokens=300)


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def make(store: str) -> Nasca:
    return Nasca(store, tiers={"t": Tier(monthly=10**6)}, default_tier="t", settle_in_background=False,
                 namespace=f"bench{uuid.uuid4().hex[:6]}")


def one_call(n: Nasca) -> None:
    n.start_call("gpt-4o-mini", prompt_tokens=1200, user="bench-user").finish(USAGE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url")
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    tracers = TracerProvider()
    tracers.add_span_processor(BatchSpanProcessor(_Drop()))
    with redis_server(args.redis_url) as url:
        ledgers = {f"{name} {state}": make(store) for name, store in (("memory", "memory://"), ("redis", url))
                   for state in ("off", "on", "metrics")}
        for name, n in ledgers.items():
            if name.endswith(" on"):
                otel.instrument(n, meter_provider=meters, tracer_provider=tracers)
            elif name.endswith(" metrics"):
                otel.instrument(n, meter_provider=meters, tracer_provider=NoOpTracerProvider())
        p50 = interleaved({name: (lambda n=n: one_call(n)) for name, n in ledgers.items()}, args.n)
        for store in ("memory", "redis"):
            off, on, only = p50[f"{store} off"], p50[f"{store} on"], p50[f"{store} metrics"]
            print(f"{store:6} start_call+finish: off {off:7.1f} µs, on {on:7.1f} µs (+{on - off:.1f}), "
                  f"metrics only {only:7.1f} µs (+{only - off:.1f})")
        for n in ledgers.values():
            n.close()
    tracers.shutdown()
    meters.shutdown()


if __name__ == "__main__":
    main()
