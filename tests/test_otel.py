"""nasca_core.otel: metrics and spans read back through the real OpenTelemetry SDK
(InMemoryMetricReader, InMemorySpanExporter), with real SDK clients and LangChain talking HTTP
to nasca_core.testing's provider server, on the memory store, a SQLite file and a real Redis."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from nasca_core import ConfigurationError, Nasca, NascaBlockedError, NascaBusyError, StoreError, Tier, otel
from nasca_core.pricing import TokenUsage
from nasca_core.testing import ProviderServer, Reply, Usage

MODEL = "gpt-4o-mini"
MSG = [{"role": "user", "content": "How many tokens is this question?"}]
USAGES = [(1200, 300), (800, 50), (60_000, 3_000)]


class Telemetry:
    """An SDK meter and tracer provider that keep what they are given in memory."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        # In memory only: nothing to flush at exit, and a ledger closed after the test may
        # still end spans (its last deferred settles).
        self.meter_provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def instrument(self, nasca: Nasca) -> otel.Instrumentation:
        return otel.instrument(nasca, meter_provider=self.meter_provider,
                               tracer_provider=self.tracer_provider)

    def points(self, name: str, **attrs: Any) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = [p for rm in (data.resource_metrics if data else ()) for sm in rm.scope_metrics
                 for m in sm.metrics if m.name == name for p in m.data.data_points]
        return [p for p in found if all(p.attributes.get(k) == v for k, v in attrs.items())]

    def total(self, name: str, **attrs: Any) -> int | float:
        """A counter's value, or a histogram's sum, over the points that carry ``attrs``."""
        return sum(getattr(p, "value", None) if hasattr(p, "value") else p.sum
                   for p in self.points(name, **attrs))

    def count(self, name: str, **attrs: Any) -> int:
        """How many values a histogram recorded over the points that carry ``attrs``."""
        return sum(p.count for p in self.points(name, **attrs))

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    with ProviderServer() as started:
        yield started


@pytest.fixture
def srv(server: ProviderServer) -> ProviderServer:
    server.reset()  # no reply or request left over from another test
    return server


def _cost(nasca: Nasca, tokens: tuple[int, int]) -> int:
    return nasca.cost_of(MODEL, TokenUsage(input_tokens=tokens[0], output_tokens=tokens[1]))


def _assert_child_of(span: ReadableSpan, parent: ReadableSpan) -> None:
    assert span.parent is not None and span.parent.span_id == parent.context.span_id
    assert span.context.trace_id == parent.context.trace_id


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_wrapped_openai_calls_give_exact_spend_blocks_and_spans(
        make_nasca: Any, srv: ProviderServer, telemetry: Telemetry, backend: str) -> None:
    # Daily $0.01: the third call (about $0.011) takes the user over, the fourth is blocked.
    nasca = make_nasca(tiers={"t": Tier(daily="0.01")}, default_tier="t")
    telemetry.instrument(nasca)
    create = nasca.wrap(srv.openai_client(max_retries=0).chat.completions.create)
    tracer = telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("request"):
        for tokens in USAGES:
            srv.queue(Reply(text="ok", usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1])))
            create(model=MODEL, messages=MSG, user="u_42")
        with pytest.raises(NascaBlockedError):
            create(model=MODEL, messages=MSG, user="u_42")
    assert srv.request_count == len(USAGES)
    nasca.flush_deferred()  # Redis and SQLite settle in a background thread: let it land
    background = nasca.deferred.sender is not None
    assert background is (backend != "memory")

    expected = sum(_cost(nasca, t) for t in USAGES)
    spent = nasca.get_usage("u_42").daily_spent
    assert spent is not None and int(spent * 10**9) == expected
    labels = {"gen_ai.request.model": MODEL, "nasca.tier": "t", "gen_ai.provider.name": "openai"}
    assert telemetry.total("nasca.spend", **labels) == expected
    assert telemetry.total("nasca.calls", **labels) == len(USAGES)
    assert telemetry.total("gen_ai.client.token.usage", **labels, **{"gen_ai.token.type": "input"}) \
        == sum(t[0] for t in USAGES)
    assert telemetry.total("gen_ai.client.token.usage", **labels, **{"gen_ai.token.type": "output"}) \
        == sum(t[1] for t in USAGES)
    assert telemetry.total("nasca.blocks", **{"nasca.tier": "t", "nasca.window": "daily",
                                              "nasca.block.reason": "limit"}) == 1
    assert telemetry.count("nasca.reserve.duration", **{"nasca.outcome": "admitted"}) == len(USAGES)
    # A blocked reserve is tried again once the settles queued for the background sender land.
    assert 1 <= telemetry.count("nasca.reserve.duration", **{"nasca.outcome": "blocked"}) <= 2
    assert telemetry.count("nasca.settle.duration", **{"nasca.outcome": "applied"}) == len(USAGES)
    store = nasca.store.description.split()[0]
    assert {p.attributes["nasca.store"] for p in telemetry.points("nasca.reserve.duration")} == {store}
    assert 0 < telemetry.total("nasca.reserve.duration") < 5  # seconds

    (parent,) = telemetry.spans("request")
    reserves, settles = telemetry.spans("nasca.reserve"), telemetry.spans("nasca.settle")
    outcomes = [s.attributes["nasca.outcome"] for s in reserves]
    assert outcomes[:3] == ["admitted"] * 3 and set(outcomes[3:]) == {"blocked"}
    assert [s.attributes["nasca.cost_nanos"] for s in settles] == [_cost(nasca, t) for t in USAGES]
    assert [s.attributes["gen_ai.usage.input_tokens"] for s in settles] == [t[0] for t in USAGES]
    assert [s.attributes["gen_ai.usage.output_tokens"] for s in settles] == [t[1] for t in USAGES]
    for reserve, settle in zip(reserves, settles, strict=False):
        _assert_child_of(reserve, parent)
        if background:  # the sender's thread has no caller: its settles are trace roots (the
            # caller's own flush, before a blocked reserve, may apply one first)
            assert settle.parent is None or settle.parent.span_id == parent.context.span_id
        else:
            _assert_child_of(settle, parent)
        assert reserve.attributes["nasca.hold_id"] == settle.attributes["nasca.hold_id"]
        assert [link.context.span_id for link in settle.links] == [reserve.context.span_id]
        assert reserve.end_time <= settle.start_time
    assert reserves[3].links == ()  # a reserve links to nothing
    for span in reserves + settles:  # never the end user's id
        assert "u_42" not in json.dumps(dict(span.attributes))
    for point in telemetry.points("nasca.spend") + telemetry.points("nasca.blocks"):
        assert "u_42" not in json.dumps(dict(point.attributes))


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_async_client_spans_nest_under_the_callers_span(
        make_nasca: Any, srv: ProviderServer, telemetry: Telemetry) -> None:
    nasca = make_nasca(tiers={"t": Tier(daily=1)}, default_tier="t")
    telemetry.instrument(nasca)
    create = nasca.wrap(srv.async_openai_client(max_retries=0).chat.completions.create)
    tracer = telemetry.tracer_provider.get_tracer("app")

    async def one(i: int) -> None:
        with tracer.start_as_current_span(f"request-{i}"):
            await create(model=MODEL, messages=MSG, user=f"u{i}")

    async def main() -> None:
        for i, tokens in enumerate(USAGES):
            srv.queue(Reply(text="ok", usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1])))
            await one(i)
        await nasca.store.aclose()

    asyncio.run(main())
    nasca.flush_deferred()
    assert telemetry.total("nasca.spend") == sum(_cost(nasca, t) for t in USAGES)
    assert len(telemetry.spans("nasca.settle")) == len(USAGES)
    # On Redis the background sender settles, outside any request.
    expected = ["nasca.reserve"] if nasca.deferred.sender else ["nasca.reserve", "nasca.settle"]
    for i in range(len(USAGES)):
        (parent,) = telemetry.spans(f"request-{i}")
        children = [s for s in telemetry.spans() if s.parent and s.parent.span_id == parent.context.span_id]
        assert sorted(s.name for s in children) == expected


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_langchain_calls_are_counted_by_model_and_tier(
        make_nasca: Any, srv: ProviderServer, telemetry: Telemetry) -> None:
    from langchain_openai import ChatOpenAI

    from nasca_langchain import NascaCallbackHandler

    nasca = make_nasca(tiers={"free": Tier(daily=1), "pro": Tier(daily=5)}, default_tier="free")
    telemetry.instrument(nasca)
    model = ChatOpenAI(model=MODEL, base_url=srv.base_url, api_key="x", max_retries=0)
    handler = NascaCallbackHandler(nasca)
    tracer = telemetry.tracer_provider.get_tracer("app")
    for tier, tokens in (("free", USAGES[0]), ("pro", USAGES[1]), ("pro", USAGES[2])):
        srv.queue(Reply(text="ok", usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1])))
        with tracer.start_as_current_span(f"chain-{tier}"):
            model.invoke("hi", config={"callbacks": [handler],
                                       "metadata": {"nasca_user_id": "u_7", "nasca_tier": tier}})
    assert telemetry.total("nasca.spend", **{"nasca.tier": "free"}) == _cost(nasca, USAGES[0])
    assert telemetry.total("nasca.spend", **{"nasca.tier": "pro"}) == \
        _cost(nasca, USAGES[1]) + _cost(nasca, USAGES[2])
    assert telemetry.total("nasca.calls", **{"nasca.tier": "pro", "gen_ai.request.model": MODEL}) == 2
    nasca.flush_deferred()
    (parent,) = telemetry.spans("chain-free")
    _assert_child_of(telemetry.spans("nasca.reserve")[0], parent)
    settle = telemetry.spans("nasca.settle")[0]
    if nasca.deferred.sender is None:
        _assert_child_of(settle, parent)
    else:  # sent by the background thread
        assert settle.parent is None


@pytest.mark.parametrize("backend", ["memory"])  # the reasons are decided in Python, on every store
def test_blocks_are_counted_by_reason(make_nasca: Any, telemetry: Telemetry) -> None:
    nasca = make_nasca(tiers={"capped": Tier(daily="0.10", max_in_flight=1), "tiny": Tier(weekly="0.01")},
                       default_tier="capped")
    telemetry.instrument(nasca)
    held = nasca.reserve("0.01", user="a")
    with pytest.raises(NascaBusyError):
        nasca.reserve("0.01", user="a")  # the in-flight cap
    nasca.settle(held, "0.01")
    nasca.settle(nasca.reserve("0.02", user="b", tier="tiny"), "0.02")
    for _ in range(2):
        with pytest.raises(NascaBlockedError) as blocked:
            nasca.reserve("0.001", user="b", tier="tiny")
        assert not isinstance(blocked.value, NascaBusyError)
    assert telemetry.total("nasca.blocks", **{"nasca.block.reason": "cap", "nasca.tier": "capped"}) == 1
    assert telemetry.total("nasca.blocks", **{"nasca.block.reason": "limit", "nasca.window": "weekly",
                                              "nasca.tier": "tiny"}) == 2
    assert telemetry.count("nasca.reserve.duration", **{"nasca.outcome": "busy"}) == 1
    # Raw reserve/settle (no LLMCall) have no model: they are timed and traced, not counted as calls.
    assert telemetry.points("nasca.calls") == []
    assert len(telemetry.spans("nasca.settle")) == 2


@pytest.mark.redis
def test_store_errors_and_deferred_settles(redis_server_factory: Any, telemetry: Telemetry,
                                           tmp_path: Any) -> None:
    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0?socket_connect_timeout=0.5&socket_timeout=0.5"
    # Settled on the caller's path, so the failed settle is one, at a known moment.
    nasca = Nasca(url, tiers={"t": Tier(daily=1)}, default_tier="t", namespace="otel-faults",
                  state_dir=str(tmp_path), settle_in_background=False)
    telemetry.instrument(nasca)
    try:
        call = nasca.start_call(MODEL, prompt="hello", user="u1")
        server.stop()
        charge = call.finish(TokenUsage(input_tokens=1000, output_tokens=100))
        assert charge.deferred
        with pytest.raises(StoreError):
            nasca.reserve("0.01", user="u1")
        assert telemetry.total("nasca.deferred.pending", **{"nasca.namespace": "otel-faults"}) == 1
        assert telemetry.total("nasca.deferred.pending_spend") == charge.cost_nanos
        assert telemetry.total("nasca.store.errors") == nasca.stats.store_errors >= 2
        assert telemetry.total("nasca.spend") == charge.cost_nanos  # charged, to be applied later
        assert telemetry.count("nasca.settle.duration", **{"nasca.outcome": "error",
                                                           "error.type": "StoreError"}) == 1
        failed = [s for s in telemetry.spans("nasca.reserve") if s.attributes["nasca.outcome"] == "error"]
        assert len(failed) == 1 and failed[0].status.status_code is StatusCode.ERROR
        assert [e.name for e in failed[0].events] == ["exception"]

        server.__init__(server.port, server.workdir)
        nasca.store.sync.client.connection_pool.disconnect()  # passed through the observed store
        assert nasca.flush_deferred() == 1
        assert telemetry.total("nasca.deferred.pending") == 0
        assert telemetry.total("nasca.deferred.pending_spend") == 0
    finally:
        nasca.close()


@pytest.mark.parametrize("backend", ["memory"])
def test_uninstrument_stops_emission(make_nasca: Any, telemetry: Telemetry) -> None:
    nasca = make_nasca(tiers={"t": Tier(daily="0.001")}, default_tier="t")
    other = make_nasca(tiers={"t": Tier(daily=1)}, default_tier="t", namespace="other")
    handle = telemetry.instrument(nasca)
    with pytest.raises(ConfigurationError):
        otel.instrument(nasca)
    usage = TokenUsage(input_tokens=500, output_tokens=50)
    nasca.start_call(MODEL, prompt="hi", user="u").finish(usage)
    other.start_call(MODEL, prompt="hi", user="u").finish(usage)  # not instrumented: not counted
    assert telemetry.total("nasca.calls") == 1
    assert [p.attributes["nasca.namespace"] for p in telemetry.points("nasca.store.errors")] == \
        [nasca.namespace]

    handle.uninstrument()
    handle.uninstrument()
    assert nasca.store.see_sync is None and nasca.store.see_async is None
    assert nasca.block_listeners == []
    spans = len(telemetry.spans())
    nasca.start_call(MODEL, prompt="hi", user="u").finish(usage)
    nasca.settle(nasca.reserve("0.0001", user="v"), "0.0001")
    with pytest.raises(NascaBlockedError):
        nasca.reserve("0.01", user="u", strict=True)
    assert telemetry.total("nasca.calls") == 1
    assert telemetry.points("nasca.blocks") == []
    assert telemetry.count("nasca.reserve.duration") == 1
    assert telemetry.points("nasca.store.errors") == []  # observable instruments go quiet too
    assert len(telemetry.spans()) == spans

    assert handle._reserve_spans == {} and handle._call_attrs == {}  # nothing kept for a dropped one

    again = telemetry.instrument(nasca)  # and it can be instrumented anew
    nasca.start_call(MODEL, prompt="hi", user="v").finish(usage)
    assert telemetry.total("nasca.calls") == 2
    # The meter registered its observable instruments once: they report the new one too,
    # and a second Nasca on the same meter alongside it.
    also = telemetry.instrument(other)
    assert sorted(p.attributes["nasca.namespace"] for p in telemetry.points("nasca.store.errors")) == \
        sorted([nasca.namespace, other.namespace])
    again.uninstrument()
    also.uninstrument()


def test_a_dropped_instrumented_nasca_is_collected(telemetry: Telemetry) -> None:
    nasca = Nasca(tiers={"t": Tier(daily=1)}, default_tier="t")
    telemetry.instrument(nasca)
    nasca.start_call(MODEL, prompt="hi", user="u").finish(TokenUsage(input_tokens=10))
    assert telemetry.total("nasca.calls") == 1
    gone = weakref.ref(nasca)
    del nasca
    gc.collect()
    assert gone() is None  # neither the meter's callbacks nor the call observer keep it
    assert telemetry.points("nasca.deferred.pending") == []
    other = Nasca(tiers={"t": Tier(daily=1)}, default_tier="t")
    other.start_call(MODEL, prompt="hi", user="u").finish(TokenUsage(input_tokens=10))
    assert telemetry.total("nasca.calls") == 1


@pytest.mark.parametrize("backend", ["memory"])
def test_blocks_log_at_info_and_charges_at_debug(make_nasca: Any, caplog: pytest.LogCaptureFixture) -> None:
    nasca = make_nasca(tiers={"t": Tier(daily="0.001")}, default_tier="t")
    caplog.set_level(logging.DEBUG, logger="nasca")
    charge = nasca.start_call(MODEL, prompt="hi", user="u_1").finish(TokenUsage(input_tokens=10_000))
    with pytest.raises(NascaBlockedError):
        nasca.start_call(MODEL, prompt="hi", user="u_1")
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "nasca"]
    assert records == [
        (logging.DEBUG, f"nasca: charged u_1 {charge.cost_nanos} nanos for {MODEL} "
                        "(tier t, 10000 input / 0 output tokens)"),
        (logging.INFO, "nasca: blocked u_1 on tier t (daily window, limit)"),
    ]


def _run(code: str) -> Any:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_telemetry_off_never_imports_opentelemetry(srv: ProviderServer) -> None:
    found = _run(f"""
        import json, sys
        import openai
        from nasca_core import Nasca, NascaBlockedError, Tier
        from nasca_core.testing import ProviderServer
        nasca = Nasca(tiers={{"t": Tier(daily="0.0001")}}, default_tier="t")
        client = openai.OpenAI(base_url={srv.base_url!r}, api_key="x", max_retries=0)
        create = nasca.wrap(client.chat.completions.create)
        create(model="{MODEL}", messages=[{{"role": "user", "content": "hi"}}], user="u")
        try:
            create(model="{MODEL}", messages=[{{"role": "user", "content": "hi"}}], user="u")
        except NascaBlockedError:
            pass
        print(json.dumps([m for m in sys.modules if m.startswith("opentelemetry")]))
    """)
    assert found == []


def test_global_providers_are_the_default() -> None:
    # In a child process: a global provider can be set once per process.
    totals = _run("""
        import json
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from nasca_core import Nasca, Tier, otel
        from nasca_core.pricing import TokenUsage
        reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        nasca = Nasca(tiers={"t": Tier(daily=1)}, default_tier="t")
        otel.instrument(nasca)
        charge = nasca.start_call("gpt-4o-mini", prompt="hi", user="u").finish(TokenUsage(input_tokens=9))
        spend = [p.value for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
                 for m in sm.metrics if m.name == "nasca.spend" for p in m.data.data_points]
        print(json.dumps({"spend": spend, "cost": charge.cost_nanos,
                          "spans": sorted(s.name for s in exporter.get_finished_spans()),
                          "scope": exporter.get_finished_spans()[0].instrumentation_scope.name}))
    """)
    assert totals["spend"] == [totals["cost"]] and totals["cost"] > 0
    assert totals["spans"] == ["nasca.reserve", "nasca.settle"]
    assert totals["scope"] == "nasca"


class _Raising(SimpleSpanProcessor):
    """A span processor that fails (an exporter's bug, a full buffer raising)."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("span processor failed on start")

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("span processor failed on end")


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_failing_span_processor_never_fails_a_store_operation(make_nasca: Any, telemetry: Telemetry,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    telemetry.tracer_provider.add_span_processor(_Raising(InMemorySpanExporter()))
    nasca = make_nasca(tiers={"t": Tier(daily=1)}, default_tier="t", settle_in_background=False)
    telemetry.instrument(nasca)
    usage = TokenUsage(input_tokens=500, output_tokens=50)
    charge = nasca.start_call(MODEL, prompt="hi", user="u").finish(usage)
    assert not charge.pending and charge.cost_nanos == nasca.cost_of(MODEL, usage)
    nasca.flush()
    assert nasca.get_usage("u").daily_spent == charge.cost and len(nasca.deferred) == 0
    assert telemetry.count("nasca.reserve.duration") == 1  # the metrics still record
    assert "span failed" in caplog.text
