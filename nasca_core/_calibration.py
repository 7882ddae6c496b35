"""Calibrated estimates: what each model's settled calls teach the next call's hold.

Per model (and namespace), from the last ``KEEP`` (32) calls finished with the provider's
usage, in every process sharing the store:

- ``ratio``: the median of reported input tokens / the prompt tokens Nasca counted, each
  call's clamped to [0.5, 8] (one outlier can't poison the model). Providers bill system
  prompts the app never sees, tool schemas, images, another tokenizer; the hold counts the
  prompt times this ratio.
- ``p90``: the 90th percentile of their output tokens; the hold's output is
  ``min(max_tokens, p90)`` in default admission, ``max_tokens`` in strict, and the p90
  instead of ``default_output_tokens`` without ``max_tokens``.

Both follow a change in the app's prompts or answers once most of the last ``KEEP`` calls
show it (``KEEP // 2 + 1`` calls). Until a model
has ``MIN_CALLS`` observations its estimates are exactly what they were without
calibration (cold start). The statistics live in the store, one capped list of recent
observations per model in a slot of its own (``{<namespace>:cal}``), never in a user's.
Observations are counted in memory and added by a background thread every ``BATCH`` calls
with one atomic store operation (``Store.add_samples``: append, trim, read back), so no
process's batch is lost to another's and a retried batch is added once. The live config is
not touched, so no cache is invalidated.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from hashlib import blake2b

from nasca_core._errors import NascaError
from nasca_core.stores import SampleOp, StoreHandle

log = logging.getLogger("nasca")

MIN_CALLS = 8  # observations before a model's estimates change
LOCAL_STEP = 8  # observations folded into this process's view at once (one sort per 8 calls)
BATCH = 16  # observations per background write: below KEEP, so a write keeps the other processes' samples
KEEP = 32  # recent observations the statistics are computed from
QUANTILE = 0.9
_PPM = 1_000_000
RATIO_MIN, RATIO_MAX = _PPM // 2, 8 * _PPM  # a sample's reported/counted, clamped to [0.5, 8]
_TTL_MS = 30 * 86_400_000  # a model unused for 30 days starts cold again
Observation = tuple[int, int, int]  # (counted prompt, reported input, output) tokens


@dataclass(frozen=True, slots=True)
class ModelStats:
    """What a model's settled calls taught: ``n`` calls in all, the last ``KEEP`` of them
    (oldest first), their median input ratio in millionths and their outputs' 90th percentile."""

    n: int = 0
    recent: tuple[Observation, ...] = ()
    ratio_ppm: int = _PPM
    p90: int = 0

    @property
    def warm(self) -> bool:
        return self.n >= MIN_CALLS

    @property
    def outputs(self) -> tuple[int, ...]:
        return tuple(o for _, _, o in self.recent)

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


def stats_of(n: int, recent: Sequence[Observation]) -> ModelStats:
    """The statistics of ``n`` calls whose last ones are ``recent`` (pure)."""
    kept = tuple(recent[-KEEP:])
    if not kept:
        return ModelStats(n)
    # The median, each sample clamped: one call with hidden tools or images (counted 1,
    # reported 60,000) must not make every prompt on the model be held 60,000 times over.
    ratios = sorted(min(max(reported * _PPM // counted, RATIO_MIN), RATIO_MAX)
                    for counted, reported, _ in kept)
    ratio = ratios[len(ratios) // 2]  # a tie takes the larger middle: holds more, not less
    ranked = sorted(o for _, _, o in kept)
    p90 = ranked[max(0, -(-len(ranked) * 9 // 10) - 1)]
    return ModelStats(n, kept, ratio, p90)


def merge(stats: ModelStats | None, observations: Sequence[Observation]) -> ModelStats:
    """``stats`` after more observations (pure)."""
    if stats is None:
        return stats_of(len(observations), observations)
    return stats_of(stats.n + len(observations), (*stats.recent, *observations))


def stats_key(namespace: str, model: str) -> str:
    """The model's statistics: one slot per namespace for every model, none of them a user's."""
    return f"{{{namespace}:cal}}:{blake2b(model.encode('utf-8', 'surrogatepass'), digest_size=8).hexdigest()}"


_batch_ids = itertools.count(1)
_BATCH_PREFIX = os.urandom(6).hex()


def _new_batch_prefix() -> None:
    global _BATCH_PREFIX, _batch_ids  # a forked child must not reuse its parent's batch ids
    _BATCH_PREFIX, _batch_ids = os.urandom(6).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_new_batch_prefix)


class Calibration:
    """The ledger's learned estimates (``nasca.calibration``)."""

    def __init__(self, store: StoreHandle, namespace: str, clock: Callable[[], float]) -> None:
        self._store = store
        self._namespace = namespace
        self._clock = clock
        self._lock = threading.Lock()
        self._views: dict[str, ModelStats] = {}
        self._pending: dict[str, list[Observation]] = {}
        self._unsent: dict[str, tuple[str, list[Observation]]] = {}  # a failed batch, its id kept
        self._fresh: dict[str, list[Observation]] = {}  # observed, not yet in the view
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
        with self._lock:  # get, not setdefault: that makes a new list per call
            if (fresh := self._fresh.get(model)) is None:
                fresh = self._fresh[model] = []
            fresh.append(obs)
            if len(fresh) >= LOCAL_STEP:
                self._views[model] = merge(self._views.get(model), fresh)
                del self._fresh[model]
            if (pending := self._pending.get(model)) is None:
                pending = self._pending[model] = []
            pending.append(obs)
            full = len(pending) >= BATCH and model not in self._scheduled
            if full:
                self._scheduled.add(model)
        if full:
            self._submit(model)

    def sync(self, model: str) -> ModelStats | None:
        """Add this process's pending observations of ``model`` to the store and read back
        what every process taught, in one store operation (the background thread's step;
        also for tests)."""
        with self._lock:
            # A batch that failed goes again first, under its id: if the store applied it and
            # only the reply was lost, the store's marker skips it instead of adding it twice.
            unsent = self._unsent.pop(model) if model in self._unsent else None
            batch_id, pending = unsent or (f"{_BATCH_PREFIX}{next(_batch_ids)}", self._pending.pop(model, []))
            self._scheduled.discard(model)
        op = SampleOp(key=stats_key(self._namespace, model), batch_id=batch_id,
                      samples=tuple(pending), keep=KEEP, ttl_ms=_TTL_MS, now_ms=int(self._clock() * 1000))
        try:
            stored = self._store.sync.add_samples(op)
        except BaseException:
            with self._lock:  # kept for the next sync; what came since, the last KEEP of it
                self._unsent[model] = (batch_id, pending)
                if model in self._pending:
                    self._pending[model] = self._pending[model][-KEEP:]
            raise
        with self._lock:
            if stored.n:  # the store's view, plus what this process saw since (now in the view)
                self._views[model] = merge(stats_of(stored.n, stored.recent), self._pending.get(model, []))
                self._fresh.pop(model, None)
            return self._views.get(model)

    def close(self) -> None:
        """Write what is pending and stop the background thread."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)
        for model in {*self._unsent, *self._pending}:
            self._safe_sync(model)
            if model in self._pending:  # behind a resent batch
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
