"""``instrument()`` and what it installs: the instruments, the store view, the listeners."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
    from opentelemetry.trace import Link, SpanContext, SpanKind, TracerProvider
except ImportError as exc:  # pragma: no cover - the extra is installed in every test run
    raise ImportError("nasca_core.otel needs OpenTelemetry: pip install 'nasca[otel]'") from exc

from nasca_core import _observe
from nasca_core._errors import ConfigurationError, NascaBlockedError
from nasca_core.stores import (
    AsyncStore,
    ReserveOp,
    ReserveResult,
    SettleOp,
    SettleResult,
    Store,
    UserKeys,
)
from nasca_core.stores._base import settle_each

if TYPE_CHECKING:
    from nasca_core._calls import LLMCall
    from nasca_core._ledger import Nasca
    from nasca_core._types import Charge
    from nasca_core.pricing import TokenUsage

log = logging.getLogger("nasca")

SCOPE = "nasca"
# Seconds: a memory reserve takes tens of microseconds, a Redis one a few hundred.
_SECONDS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The GenAI semantic conventions' advice for gen_ai.client.token.usage.
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_RESERVE_OUTCOMES = {1: "admitted", 0: "blocked", 2: "busy", -1: "stale_config"}
_MAX_CACHED = 1024  # (model, tier) attribute sets kept; past that they are built per call
_MAX_LINKED = 100_000  # admitted reserves whose span a settle may link to; the oldest go first


class Instrumentation:
    """The instruments of one instrumented Nasca; ``uninstrument()`` stops them all.

    Built by ``instrument()``."""

    def __init__(self, nasca: Nasca, meter_provider: MeterProvider | None,
                 tracer_provider: TracerProvider | None) -> None:
        from nasca_core import __version__

        self.nasca = nasca
        self.active = True
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        self.reserve_duration = meter.create_histogram(
            "nasca.reserve.duration", unit="s", explicit_bucket_boundaries_advisory=_SECONDS,
            description="Time of one reserve in the store (the budget check before a model call)")
        self.settle_duration = meter.create_histogram(
            "nasca.settle.duration", unit="s", explicit_bucket_boundaries_advisory=_SECONDS,
            description="Time of one settle in the store (the charge after a model call)")
        self.calls = meter.create_counter(
            "nasca.calls", unit="{call}", description="Model calls charged")
        self.spend = meter.create_counter(
            "nasca.spend", unit="{nanodollar}", description="AI spend charged, in nano-dollars (1e-9 USD)")
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", explicit_bucket_boundaries_advisory=_TOKENS,
            description="Tokens per charged model call, by gen_ai.token.type")
        self.blocks = meter.create_counter(
            "nasca.blocks", unit="{block}", description="Calls refused before reaching the provider")
        _observe_on(meter, self)
        self.store_kind = nasca.store.description.split(" ", 1)[0]
        self._call_attrs: dict[tuple[str, str], tuple[dict[str, str], dict[str, str], dict[str, str]]] = {}
        self._lock = threading.Lock()
        self._reserve_spans: dict[str, SpanContext] = {}  # hold id -> its reserve's span
        self.handle = nasca.store
        self.handle.see_sync = self.see_sync
        self.handle.see_async = self.see_async
        nasca.block_listeners.append(self.on_block)
        # Process-wide and held weakly: an instrumented Nasca the app drops is collected.
        self._observer = _weak_observer(weakref.ref(self))
        _observe.add_call_observer(self._observer)
        weakref.finalize(self, _observe.remove_call_observer, self._observer)

    def uninstrument(self) -> None:
        """Stop recording: the store, block listener and call observer are put back. The
        instruments stay registered with the meter (the API cannot remove them) but report
        nothing more. Calling it twice is harmless."""
        with self._lock:
            if not self.active:
                return
            self.active = False
            _observe.remove_call_observer(self._observer)
            if self.on_block in self.nasca.block_listeners:
                self.nasca.block_listeners.remove(self.on_block)
            if self.handle.see_sync == self.see_sync:
                self.handle.see_sync = self.handle.see_async = None
            self._reserve_spans.clear()
            self._call_attrs.clear()

    # -- what the ledger tells ----------------------------------------------------------
    def on_block(self, err: NascaBlockedError) -> None:
        self.blocks.add(1, {"nasca.tier": err.tier, "nasca.window": err.window,
                            "nasca.block.reason": getattr(err, "reason", "limit")})

    def on_call(self, call: LLMCall, usage: TokenUsage, charge: Charge) -> None:
        if call.nasca is not self.nasca:
            return
        attrs, input_attrs, output_attrs = self._attrs_of(call.model, call.reservation.tier)
        self.calls.add(1, attrs)
        self.spend.add(charge.cost_nanos, attrs)
        self.tokens.record(usage.input_tokens, input_attrs)
        self.tokens.record(usage.output_tokens, output_attrs)

    def _attrs_of(self, model: str, tier: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        cached = self._call_attrs.get((model, tier))
        if cached is not None:
            return cached
        attrs = {"gen_ai.request.model": model, "nasca.tier": tier}
        price = self.nasca.pricer.price(model)
        if price is not None and price[1].provider:
            attrs["gen_ai.provider.name"] = price[1].provider
        made = (attrs, {**attrs, "gen_ai.token.type": "input"}, {**attrs, "gen_ai.token.type": "output"})
        if len(self._call_attrs) < _MAX_CACHED:
            self._call_attrs[(model, tier)] = made
        return made

    # -- what the store does ------------------------------------------------------------
    def see_sync(self, store: Store) -> Store:
        return _ObservedStore(store, self)

    def see_async(self, store: AsyncStore) -> AsyncStore:
        return _ObservedAsyncStore(store, self)

    def timed(self, name: str, histogram: Histogram | None, tier: str | None,
              span_attributes: dict[str, Any], hold_id: str | None = None) -> _Timed:
        """``hold_id``: link the span to the reserve span of that hold (a settle or release,
        which may run later, on the background sender's thread, in a trace of its own)."""
        attributes = {"nasca.store": self.store_kind}
        if tier is not None:
            attributes["nasca.tier"] = tier
        reserved = None if hold_id is None else self._reserve_spans.pop(hold_id, None)
        return _Timed(self, name, histogram, attributes, span_attributes,
                      None if reserved is None else [Link(reserved)])

    def reserved(self, hold_id: str, span: SpanContext) -> None:
        if not span.is_valid:  # spans are off (a no-op tracer): nothing to link to
            return
        spans = self._reserve_spans
        if len(spans) >= _MAX_LINKED:  # holds never settled (expired, or released elsewhere)
            with suppress(RuntimeError, StopIteration, KeyError):
                del spans[next(iter(spans))]
        spans[hold_id] = span


# The SDK keeps the first instrument registered under a name on a meter and drops the
# callbacks of any later one: so one set of observable instruments per meter, reading every
# active instrumentation on it (held weakly, they keep no Nasca alive).
_on_meter: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Instrumentation]] = weakref.WeakKeyDictionary()
_on_meter_lock = threading.Lock()


def _observe_on(meter: Any, telemetry: Instrumentation) -> None:
    with _on_meter_lock:
        seen = _on_meter.get(meter)
        if seen is None:
            seen = _on_meter[meter] = weakref.WeakSet()
            meter.create_observable_counter(
                "nasca.store.errors", [_read_all(seen, lambda n: n.stats.store_errors)],
                unit="{error}", description="Store operations that failed, since the process started")
            meter.create_observable_up_down_counter(
                "nasca.deferred.pending", [_read_all(seen, lambda n: len(n.deferred))],
                unit="{settle}", description="Settles not in the store yet: queued for the background "
                                             "sender, or waiting for the store to come back")
            meter.create_observable_up_down_counter(
                "nasca.deferred.pending_spend", [_read_all(seen, lambda n: n.deferred.nanos)],
                unit="{nanodollar}", description="What the settles not in the store yet charge")
        seen.add(telemetry)


def _read_all(seen: weakref.WeakSet[Instrumentation], read: Callable[[Nasca], int],
              ) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(read(t.nasca), {"nasca.namespace": t.nasca.namespace})
                for t in list(seen) if t.active]

    return callback


def _weak_observer(ref: weakref.ref[Instrumentation]) -> _observe.CallObserver:
    def observe(call: LLMCall, usage: TokenUsage, charge: Charge) -> None:
        telemetry = ref()
        if telemetry is not None:
            telemetry.on_call(call, usage, charge)

    return observe


def instrument(nasca: Nasca, *, meter_provider: MeterProvider | None = None,
               tracer_provider: TracerProvider | None = None) -> Instrumentation:
    """Emit OpenTelemetry metrics and spans for ``nasca``, through the given providers or the
    global ones (``opentelemetry.metrics.set_meter_provider``, ``trace.set_tracer_provider``).

    Raises ConfigurationError when ``nasca`` is instrumented already."""
    if nasca.store.see_sync is not None:
        raise ConfigurationError("this Nasca is instrumented already: uninstrument() it first")
    return Instrumentation(nasca, meter_provider, tracer_provider)


class _Timed:
    """One store operation: a span, current while it runs (a Redis instrumentation's span is
    its child), and its duration, recorded with the outcome the caller sets."""

    __slots__ = ("attributes", "histogram", "links", "name", "outcome", "scope", "span", "span_attributes",
                 "start", "telemetry")

    def __init__(self, telemetry: Instrumentation, name: str, histogram: Histogram | None,
                 attributes: dict[str, str], span_attributes: dict[str, Any],
                 links: list[Link] | None) -> None:
        self.telemetry, self.name, self.histogram = telemetry, name, histogram
        self.attributes, self.span_attributes, self.links = attributes, span_attributes, links
        self.outcome = "ok"

    # Telemetry never fails a store operation: a span processor or exporter that raises is
    # logged, and the operation runs (or its outcome stands) all the same.
    def __enter__(self) -> _Timed:
        self.scope = self.span = None
        try:
            scope = self.telemetry.tracer.start_as_current_span(
                self.name, kind=SpanKind.INTERNAL, attributes={**self.attributes, **self.span_attributes},
                links=self.links)
            self.span = scope.__enter__()
            self.scope = scope
        except Exception:
            log.exception("nasca: starting the %s span failed; the operation runs untraced", self.name)
        self.start = perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        seconds = perf_counter() - self.start
        if exc is not None:
            self.outcome = "error"
            self.attributes["error.type"] = type(exc).__qualname__
        self.attributes["nasca.outcome"] = self.outcome
        try:
            if self.histogram is not None:
                self.histogram.record(seconds, self.attributes)
            if self.span is not None:
                self.span.set_attributes(self.attributes)
            if self.scope is not None:
                self.scope.__exit__(kind, exc, tb)  # records the exception and sets the error status
        except Exception:
            log.exception("nasca: recording the %s span failed; the operation's outcome stands", self.name)


def _reserve_span(op: ReserveOp) -> dict[str, Any]:
    return {"nasca.hold_id": op.hold_id, "nasca.estimate_nanos": op.estimate, "nasca.strict": op.strict}


def _settle_span(op: SettleOp) -> dict[str, Any]:
    return {"nasca.hold_id": op.hold_id, "nasca.estimate_nanos": op.estimate, "nasca.cost_nanos": op.cost,
            "gen_ai.usage.input_tokens": op.input_tokens, "gen_ai.usage.output_tokens": op.output_tokens}


def _reserved(timed: _Timed, op: ReserveOp, result: ReserveResult) -> ReserveResult:
    timed.outcome = _RESERVE_OUTCOMES.get(result.status, str(result.status))
    if result.tier:
        timed.attributes["nasca.tier"] = result.tier
    if result.status == 1 and timed.span is not None:
        with suppress(Exception):  # a link lost, never the admission
            timed.telemetry.reserved(op.hold_id, timed.span.get_span_context())
    return result


def _settled(timed: _Timed, result: SettleResult) -> SettleResult:
    timed.outcome = "replayed" if result.status == 2 else "applied"
    return result


class _ObservedStore:
    """A ``Store`` that times and traces reserve, settle and release, and passes every other
    operation through untouched."""

    __slots__ = ("inner", "telemetry")

    def __init__(self, inner: Store, telemetry: Instrumentation) -> None:
        self.inner, self.telemetry = inner, telemetry

    def reserve(self, op: ReserveOp) -> ReserveResult:
        t = self.telemetry
        with t.timed("nasca.reserve", t.reserve_duration, op.tier, _reserve_span(op)) as timed:
            return _reserved(timed, op, self.inner.reserve(op))

    def settle(self, op: SettleOp) -> SettleResult:
        t = self.telemetry
        with t.timed("nasca.settle", t.settle_duration, op.tier, _settle_span(op), op.hold_id) as timed:
            return _settled(timed, self.inner.settle(op))

    def settle_many(self, ops: Sequence[SettleOp]) -> list[SettleResult]:
        # One at a time, so each settle keeps its own span and duration (the batch's single
        # round trip is given up while instrumented).
        return settle_each(self.settle, ops)

    def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        with self.telemetry.timed("nasca.release", None, None, {"nasca.hold_id": hold_id}, hold_id):
            self.inner.release(keys, hold_id, estimate)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _ObservedAsyncStore:
    """The ``AsyncStore`` twin of ``_ObservedStore``."""

    __slots__ = ("inner", "telemetry")

    def __init__(self, inner: AsyncStore, telemetry: Instrumentation) -> None:
        self.inner, self.telemetry = inner, telemetry

    async def reserve(self, op: ReserveOp) -> ReserveResult:
        t = self.telemetry
        with t.timed("nasca.reserve", t.reserve_duration, op.tier, _reserve_span(op)) as timed:
            return _reserved(timed, op, await self.inner.reserve(op))

    async def settle(self, op: SettleOp) -> SettleResult:
        t = self.telemetry
        with t.timed("nasca.settle", t.settle_duration, op.tier, _settle_span(op), op.hold_id) as timed:
            return _settled(timed, await self.inner.settle(op))

    async def release(self, keys: UserKeys, hold_id: str, estimate: int) -> None:
        with self.telemetry.timed("nasca.release", None, None, {"nasca.hold_id": hold_id}, hold_id):
            await self.inner.release(keys, hold_id, estimate)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
