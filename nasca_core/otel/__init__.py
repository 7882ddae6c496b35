"""OpenTelemetry metrics and spans for a Nasca (the ``otel`` extra: ``pip install 'nasca[otel]'``).

    from nasca_core import otel

    telemetry = otel.instrument(nasca)          # the global meter and tracer providers
    telemetry = otel.instrument(nasca, meter_provider=mp, tracer_provider=tp)
    telemetry.uninstrument()                    # stops every metric and span of this Nasca

Like an OpenTelemetry instrumentation's ``instrument_app(app, tracer_provider=...,
meter_provider=...)``: one object is instrumented, the global providers by default. Nothing
of Nasca imports this module, so with telemetry off OpenTelemetry is never imported.

How it sees the ledger without the ledger knowing (docs/ARCHITECTURE.md):

- the store: ``nasca.store`` (a ``StoreHandle``) hands out its stores seen through
  ``_ObservedStore`` (``StoreHandle.see_sync`` / ``see_async``), which times and traces
  reserve, settle and release (``nasca.reserve.duration``, ``nasca.settle.duration``, the
  spans) whoever calls them: the caller's reserve, the background sender's settles, a
  replay of deferred ones;
- ``nasca.block_listeners``: blocks by reason;
- ``nasca_core._observe``: each charged model call (``LLMCall``): calls, spend and tokens
  by model and tier;
- observable instruments over ``nasca.stats`` and ``nasca.deferred``: store errors and
  settles not in the store yet.

Attributes are the model, its provider, the tier, the window and the reason; never the
user id (cardinality, privacy). Spend is an int counter of nano-dollars, so its sum is
exactly what was charged.
"""

from nasca_core.otel._instrument import Instrumentation, instrument

__all__ = ["Instrumentation", "instrument"]
