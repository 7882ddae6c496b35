"""Calibrated estimates: what each model's settled calls teach the next call's hold.

Per model (and namespace), from every call finished with the provider's usage:

- ``ratio``: reported input tokens / the prompt tokens Nasca counted. Providers bill
  system prompts the app never sees, tool schemas, images, another tokenizer; the hold
  counts the prompt times this ratio. A moving average: each call weighs 1/n of the
  first 16, then 1/16, so a change in the app's prompts shows within ~16 calls.
- ``outputs``: the output tokens of the last 32 calls; the hold's output is their 90th
  percentile (default admission: ``min(max_tokens, p90)``; strict: ``max_tokens``;
  without ``max_tokens``: the p90 instead of ``default_output_tokens``).

Until a model has ``MIN_CALLS`` observations its estimates are exactly what they were
without calibration (cold start). The statistics live in the store, one marker per model
in a slot of their own (``{<namespace>:cal}``), never in a user's slot. Observations are
counted in memory and written by a background thread every ``BATCH`` calls, merged with
what the store holds (a read and a write off the caller's path; a race between two
processes' batches keeps one of them: these are statistics, not money). The live config
is not touched, so no cache is invalidated.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from hashlib import blake2b

from nasca_core._errors import NascaError
from nasca_core.stores import StoreHandle

log = logging.getLogger("nasca")

MIN_CALLS = 8  # observations before a model's estimates change
LOCAL_STEP = 8  # observations folded into this process's view at once (one sort per 8 calls)
BATCH = 16  # observations per background write
KEEP = 32  # output token counts kept for the quantile
QUANTILE = 0.9
_RATIO_WINDOW = 16
_PPM = 1_000_000
_TTL_MS = 30 * 86_400_000  # a model unused for 30 days starts cold again


@dataclass(frozen=True, slots=True)
class ModelStats:
    """What a model's settled calls taught: ``n`` calls, the input ratio in millionths, and
    the last ``KEEP`` output token counts, oldest first."""

    n: int = 0
    ratio_ppm: int = _PPM
    outputs: tuple[int, ...] = ()
    p90: int = 0  # the outputs' 90th percentile, computed once (``_stats_of``), read on every estimate

    @property
    def warm(self) -> bool:
        return self.n >= MIN_CALLS

    def output_quantile(self) -> int:
        return self.p90

    def prompt_hold(self, counted: int) -> int:
        """The counted prompt times the learned ratio, rounded up."""
        return -(-counted * self.ratio_ppm // _PPM)

    def output_hold(self, max_tokens: int | None, strict: bool) -> int | None:
        """The output tokens to hold (None: no learned output, keep today's default)."""
        q = self.output_quantile()
        if max_tokens is None:
            return q
        return max_tokens if strict else min(max_tokens, q)

    def to_json(self) -> str:
        return json.dumps({"n": self.n, "r": self.ratio_ppm, "o": list(self.outputs)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> ModelStats | None:
        if not text:
            return None
        try:
            d = json.loads(text)
            return _stats_of(int(d["n"]), int(d["r"]), tuple(int(x) for x in d["o"][-KEEP:]))
        except (ValueError, KeyError, TypeError):
            return None  # written by another version: start cold rather than guess


def merge(stats: ModelStats | None, observations: Sequence[tuple[int, int, int]]) -> ModelStats:
    """``stats`` after (counted prompt, reported input, output tokens) observations (pure)."""
    n, ratio, outputs = (stats.n, stats.ratio_ppm, stats.outputs) if stats else (0, _PPM, ())
    for counted, reported, output in observations:
        n += 1
        weight = min(n, _RATIO_WINDOW)
        ratio = (ratio * (weight - 1) + reported * _PPM // counted) // weight
        outputs = (*outputs[-(KEEP - 1):], output)
    return _stats_of(n, ratio, outputs)


def _stats_of(n: int, ratio_ppm: int, outputs: tuple[int, ...]) -> ModelStats:
    """A ``ModelStats`` with its quantile computed."""
    ranked = sorted(outputs)
    p90 = ranked[max(0, -(-len(ranked) * 9 // 10) - 1)] if ranked else 0
    return ModelStats(n, ratio_ppm, outputs, p90)


def stats_key(namespace: str, model: str) -> str:
    """The model's marker: one slot per namespace for every model, none of them a user's."""
    return f"{{{namespace}:cal}}:{blake2b(model.encode('utf-8', 'surrogatepass'), digest_size=8).hexdigest()}"


class Calibration:
    """The ledger's learned estimates (``nasca.calibration``)."""

    def __init__(self, store: StoreHandle, namespace: str, clock: Callable[[], float]) -> None:
        self._store = store
        self._namespace = namespace
        self._clock = clock
        self._lock = threading.Lock()
        self._views: dict[str, ModelStats] = {}
        self._pending: dict[str, list[tuple[int, int, int]]] = {}
        self._fresh: dict[str, list[tuple[int, int, int]]] = {}  # observed, not yet in the view
        self._read: set[str] = set()
        self._scheduled: set[str] = set()  # models with a batch write queued: one at a time
        self._worker: ThreadPoolExecutor | None = None

    def view(self, model: str) -> ModelStats | None:
        """What ``model``'s calls taught, warm or not (None before any); the first look
        reads the store's statistics in the background, for the next call."""
        if not isinstance(model, str):
            return None
        if model not in self._read:
            with self._lock:
                first = model not in self._read
                self._read.add(model)
            if first:
                self._submit(model)
        return self._views.get(model)

    def observe(self, model: str, counted: int, reported: int, output: int) -> None:
        """One call finished with the provider's usage (O(1): the view is updated every
        LOCAL_STEP calls, the store by a background write every BATCH)."""
        if counted <= 0 or reported < 0 or output < 0:
            return
        obs = (counted, reported, output)
        with self._lock:
            fresh = self._fresh.setdefault(model, [])
            fresh.append(obs)
            if len(fresh) >= LOCAL_STEP:
                self._views[model] = merge(self._views.get(model), fresh)
                del self._fresh[model]
            pending = self._pending.setdefault(model, [])
            pending.append(obs)
            full = len(pending) >= BATCH and model not in self._scheduled
            if full:
                self._scheduled.add(model)
        if full:
            self._submit(model)

    def sync(self, model: str) -> ModelStats | None:
        """Merge this process's pending observations of ``model`` into the store and read
        back what every process taught (the background thread's step; also for tests)."""
        with self._lock:
            pending = self._pending.pop(model, [])
            self._scheduled.discard(model)
        now_ms = int(self._clock() * 1000)
        key = stats_key(self._namespace, model)
        store = self._store.sync
        merged = merge(ModelStats.from_json(store.get_marker(key, now_ms)), pending)
        if pending:
            store.put_marker(key, merged.to_json(), _TTL_MS, now_ms)
        with self._lock:
            later = self._pending.get(model, [])
            if merged.n:  # the store's view, plus what this process saw since (now in the view)
                self._views[model] = merge(merged, later)
                self._fresh.pop(model, None)
            return self._views.get(model)

    def close(self) -> None:
        """Write what is pending and stop the background thread."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)
        for model in list(self._pending):
            self._safe_sync(model)

    def _submit(self, model: str) -> None:
        if self._worker is None:
            with self._lock:
                if self._worker is None:
                    self._worker = ThreadPoolExecutor(1, thread_name_prefix="nasca-calibration")
        with suppress(RuntimeError):  # shut down (interpreter exit): the statistics can wait
            self._worker.submit(self._safe_sync, model)

    def _safe_sync(self, model: str) -> None:
        try:
            self.sync(model)
        except NascaError as exc:  # a store error here costs a batch of statistics, no money
            log.warning("nasca: could not sync calibration of %r: %s", model, exc)
        except Exception:
            log.exception("nasca: calibration sync of %r failed", model)
