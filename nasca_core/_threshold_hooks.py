"""``Thresholds``: soft thresholds' side effects, a service over the ledger's public port.

At the reserve it attaches the (projected) warning (``_thresholds.admitted``, from the reply
alone). Events come from settles that landed: ``landed`` is called with every applied settle's
reply, wherever it lands (``Nasca.settle``/``asettle``, the background sender, a flush of
deferred settles, a journal replay in the next process), and picks the marks the reply's
settled counters have reached (``_thresholds.reached_marks``, pure, O(1)). Nothing else runs on
the caller's path: the marks go to a bounded queue (``dropped`` counts what a full one refused)
and one worker thread claims each in the store once per user, window id and threshold
(``Store.claim_marker``: set if absent, with the window's life, and the settle's hold id as its
token, so a retried claim is still this one's), and only the claim's winner records
``threshold_crossed``, calls the hooks (on the worker's own loop, each within ``hook_timeout``)
and posts the owner's webhook. A process remembers the marks claimed, so later settles of a
user past a mark pay nothing for it; a claim that fails is forgotten, so the next settle past
the mark tries again.

The app-wide ceiling's marks come from its pool's take replies instead (``ceiling_seen``: the
pool's settled spend per window, seen once per chunk taken; the refused take of a call the
ceiling blocks is its hit); the same queue, claim (a marker on the pool's slot), hooks and
webhook carry them, as ``ThresholdEvent(scope="ceiling")``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nasca_core._errors import ConfigurationError, StoreError
from nasca_core._money import to_usd
from nasca_core._owner_webhook import WebhookSender
from nasca_core._thresholds import WARNING_PROMPT, ThresholdEvent, admitted, reached_marks
from nasca_core._types import Charge, Reservation
from nasca_core._windows import WINDOWS
from nasca_core.stores import PoolTakeOp, PoolTakeResult, ReserveOp, ReserveResult, SettleOp, SettleResult

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca

log = logging.getLogger("nasca")

ThresholdHook = Callable[[ThresholdEvent], Any]  # sync, or returning an awaitable
_SEEN_MAX = 65_536
QUEUE_LIMIT = 1024  # marks waiting for the worker; past it they are dropped (and counted)
HOOK_TIMEOUT_S = 5.0
_IDLE_S = 30.0  # an idle worker ends after this


@dataclass(frozen=True, slots=True)
class _Mark:
    """A mark a landed settle reached, waiting for its claim."""

    user_id: str
    tier: str
    window: int
    fraction: float
    key: str  # the once-per-user-window-threshold marker (on the user's slot)
    ttl_ms: int  # as long as the window's counter lives
    token: str  # the settle's hold id
    spent: int
    limit: int
    now_ms: int
    scope: str = "user"  # "ceiling": the app-wide ceiling's (no user, no analytics record)


class Thresholds:
    """``nasca.thresholds``: hooks (``on_threshold``) and the owner's webhook
    (``threshold_webhook_url=``, signed with ``threshold_webhook_secret=``)."""

    def __init__(self, ledger: Nasca, webhook_url: str | None = None, webhook_secret: str | None = None,
                 *, queue_limit: int = QUEUE_LIMIT, hook_timeout: float = HOOK_TIMEOUT_S) -> None:
        self._ledger = ledger
        self.hooks: list[ThresholdHook] = []
        self.webhook = None if webhook_url is None else WebhookSender(webhook_url, webhook_secret)
        self.hook_timeout = hook_timeout
        self.dropped = 0  # marks a full queue refused (the next settle past the mark queues it again)
        self._seen: OrderedDict[str, None] = OrderedDict()  # claimed, or queued for a claim
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Mark | None] = queue.Queue(queue_limit)
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        ledger.deferred.on_landed = self.landed  # settles the sender or a replay lands
        # Replayed from a dead process's journal as the ledger was built: queued once the owner
        # had the chance to add hooks (the first on_threshold, settle, flush or close).
        self._early, ledger.deferred.early = ledger.deferred.early, []

    def on_threshold(self, callback: ThresholdHook) -> ThresholdHook:
        """Call ``callback(event: ThresholdEvent)`` once per user, window id and threshold, when a
        settle takes the window's settled spend to it. It runs on Nasca's threshold worker, never
        on the caller's path: a coroutine function on the worker's own loop, a plain one on a
        thread of it, each given ``hook_timeout`` seconds; one that raises or runs late is
        logged, never raised. Returns ``callback`` (it works as a decorator). Raises
        ConfigurationError if not callable."""
        if not callable(callback):
            raise ConfigurationError(f"on_threshold() needs a callable, got {callback!r}")
        self.hooks.append(callback)
        self._replayed()
        return callback

    def _replayed(self) -> None:
        early, self._early = self._early, []
        for op, result in early:
            if isinstance(result, SettleResult):
                self.landed(op, result)

    def admitted(self, user_id: str, op: ReserveOp, result: ReserveResult) -> Reservation:
        """The Reservation of an admitted reserve, warned by its tier's ``warn_at``."""
        snap = self._ledger.live.current()
        if result.tier not in snap.warned:  # the common case, on every call: nothing more to do
            return Reservation(user_id, result.tier, op.hold_id, op.estimate, op.keys, False, result.room,
                               None, op.now_ms, op.anchor)
        tier = snap.tiers[result.tier]
        # What the store applied: the user's own limits and boosts, else the tier's.
        compiled = result.applied or snap.compiled.get(result.tier, (-1, -1, -1, 0, 0, 0))
        return admitted(user_id, op, result, compiled, tier.warn_at,
                        lambda now: self._ledger.windows_at(now, user=user_id), self._ledger.tz)

    # -- the settle side ---------------------------------------------------------------
    def landed(self, op: SettleOp, result: SettleResult) -> Charge:
        """The Charge of a settle the store applied; queues the marks its settled counters reached
        and nobody here has claimed. O(1), no I/O, never raises."""
        if self._early:
            self._replayed()
        if result.status == 1:
            try:  # cached per config version (the settle read it too)
                snap = self._ledger.live.current()
            except StoreError:  # the store went away since (a replay drained at close)
                snap = None
            if snap is not None and op.tier in snap.warned:
                # The limits the store applied (the user's own, boosts): every store's reply says.
                for i, f, _ in reached_marks(result.limits, result.spent, snap.tiers[op.tier].warn_at):
                    self._queue_mark(op, result, i, f, result.limits[i])
        return Charge(op.cost, result.tier_part, result.credit_part)

    # -- the app-wide ceiling ----------------------------------------------------------------
    def ceiling_seen(self, op: PoolTakeOp, result: PoolTakeResult, warn_at: tuple[float, ...],
                     *, blocked: bool = False) -> None:
        """Call with every reply of a take on the ceiling's pool (``op.keys.pool == "app"``), in
        band with a reserve (``ReserveOp.pool_take`` / ``ReserveResult.pool``) or alone
        (``pool_take``), and ``warn_at`` the ceiling Tier's; and with ``blocked=True`` (any
        ``warn_at``) for the refused take of a call the ceiling blocks (a refusal this process
        answers by dropping its own ended chunks and taking again is no block). Queues a
        ``scope="ceiling"`` event for each mark of ``warn_at`` the reply's settled ``spent`` has
        reached under ``op.limits``, and for the hit (``fraction=1.0``, ``result.window`` the
        window) when ``blocked``. Each fires once per window id, fraction and limit across processes
        (``claim_marker`` on the pool's slot), to the ``on_threshold`` hooks and the owner's
        webhook, on the worker thread. O(1), no I/O, never raises."""
        try:
            keys, spent = op.keys, result.spent
            windows = (keys.day, keys.week, keys.month)
            if blocked and result.granted == 0 and 1 <= result.window <= 3:
                i = result.window - 1
                self._enqueue(f"{windows[i]}:warn:1.0@{op.limits[i]}", i, 1.0, op.ttls_ms[i], op.lease_id,
                              spent[i], op.limits[i], op.now_ms, "", "", "ceiling")
            if warn_at:  # the limit is in the key: a ceiling the owner raises warns (and hits) anew
                for i, f, _ in reached_marks(op.limits, spent, warn_at):
                    self._enqueue(f"{windows[i]}:warn:{f}@{op.limits[i]}", i, f, op.ttls_ms[i], op.lease_id,
                                  spent[i], op.limits[i], op.now_ms, "", "", "ceiling")
        except Exception:  # a warning must never fail the call it rides on
            log.exception("nasca: a ceiling threshold could not be queued")

    def _queue_mark(self, op: SettleOp, result: SettleResult, i: int, f: float, limit: int) -> None:
        self._enqueue(f"{(op.keys.day, op.keys.week, op.keys.month)[i]}:warn:{f}", i, f, op.ttls_ms[i],
                      op.hold_id, result.spent[i], limit, op.now_ms, op.keys.meta.split("}:", 1)[1], op.tier)

    def _enqueue(self, key: str, i: int, f: float, ttl_ms: int, token: str, spent: int, limit: int,
                 now_ms: int, user_id: str, tier: str, scope: str = "user") -> None:
        with self._lock:
            if key in self._seen:
                return
            mark = _Mark(user_id, tier, i, f, key, ttl_ms, token, spent, limit, now_ms, scope)
            try:
                self._queue.put_nowait(mark)
            except queue.Full:
                self.dropped += 1
                return
            self._remember(key)
            self._pending += 1
            # Under the lock the idle worker leaves by; not alive: this is a forked child.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="nasca-thresholds", daemon=True)
                self._thread.start()

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)

    def _next(self) -> _Mark | None:
        """The next mark; None to stop (close, or idle a while: the thread ends, so a ledger
        nobody holds is not kept alive by it, and the next mark starts another)."""
        try:
            return self._queue.get(timeout=_IDLE_S)
        except queue.Empty:
            with self._lock:
                if self._queue.empty():
                    self._thread = None
                    return None
            return self._queue.get()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while (mark := self._next()) is not None:
                try:
                    loop.run_until_complete(self._deliver(mark))
                except Exception:  # the worker outlives any one mark
                    log.exception("nasca: a threshold crossing could not be handled")
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()
        finally:
            loop.close()

    async def _deliver(self, mark: _Mark) -> None:
        n = self._ledger
        try:
            first = n.store.sync.claim_marker(mark.key, mark.ttl_ms, mark.now_ms, mark.token)
        except StoreError as exc:  # forgotten: the next settle past the mark tries again
            log.warning("nasca: could not claim a threshold crossing: %s", exc)
            with self._lock:
                self._seen.pop(mark.key, None)
            return
        if not first:
            return
        event = self._event(mark)
        try:
            if event.scope == "user":  # the ceiling is the owner's limit: no user's funnel step
                n.analytics.record("threshold_crossed", event.user_id, event.prompt_id, at=event.at)
        except Exception:
            log.exception("nasca: could not record a threshold_crossed event")
        for hook in self.hooks:
            await self._call(hook, event)
        if self.webhook is not None:
            self.webhook.send_event("threshold_crossed", json.loads(event.model_dump_json()))

    def _event(self, mark: _Mark) -> ThresholdEvent:
        n = self._ledger
        user = mark.scope == "user"
        ws = n.windows_at(mark.now_ms / 1000, user=mark.user_id if user else None)  # the ceiling's: calendar
        return ThresholdEvent(
            scope="user" if user else "ceiling", user_id=mark.user_id, tier=mark.tier,
            window=WINDOWS[mark.window], window_id=mark.key.rsplit(":warn:", 1)[0].rsplit(":", 1)[1],
            fraction=mark.fraction, spent=to_usd(mark.spent), limit=to_usd(mark.limit),
            resets_at=ws.end_datetime(mark.window, n.tz),
            prompt_id=WARNING_PROMPT + mark.token if user else "",
            at=datetime.fromtimestamp(mark.now_ms / 1000, n.tz))

    async def _call(self, hook: ThresholdHook, event: ThresholdEvent) -> None:
        try:
            if inspect.iscoroutinefunction(hook):
                await asyncio.wait_for(hook(event), self.hook_timeout)
                return
            try:
                result = await asyncio.wait_for(asyncio.to_thread(hook, event), self.hook_timeout)
            except RuntimeError:  # the interpreter is exiting: no new threads, so here, unbounded
                result = hook(event)
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, self.hook_timeout)
        except TimeoutError:
            log.error("nasca: on_threshold hook %r ran past %.1f s; left behind", hook, self.hook_timeout)
        except Exception:
            log.exception("nasca: on_threshold hook %r failed", hook)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (up to ``timeout`` s) until every queued mark is claimed and its hooks have run;
        False on timeout. (Webhook deliveries: ``webhook.flush()``.)"""
        self._replayed()
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Let queued marks finish (up to ``timeout`` s), stop the worker, then the webhook's
        sender (its queued deliveries get the rest of the time)."""
        self.flush(timeout)
        thread = self._thread
        if thread is not None and thread.is_alive():
            try:
                self._queue.put(None, timeout=1.0)
            except queue.Full:
                log.error("nasca: the threshold worker is stuck; left behind")
            thread.join(timeout)
            with self._lock:
                if self._thread is thread and not thread.is_alive():
                    self._thread = None  # a mark after close starts a worker again
        if self.webhook is not None:
            self.webhook.close(timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Async twin of close(): waits on a thread, never on the loop."""
        await asyncio.to_thread(self.close, timeout)
