"""The background sender: a daemon thread that applies settles off the caller's path.

A model call's settle (``LLMCall.finish``) is journaled and queued (``DeferredSettles.send``)
and returns at once; this thread applies the queue to the store in order, in batches
(``Store.settle_many``: one round trip for up to ``_deferred.BATCH`` settles on Redis, which
costs the process's GIL far less than one each), waiting ``LINGER_S`` after it is woken so a
burst of calls goes in one batch; the settles of one budget lease in a batch go as one
settle (``_fold``). Each round, and when idle, it calls ``DeferredSettles.on_idle`` (the
ledger's: ends idle leases) and waits no longer than that asks. Until a settle
lands its hold stays in the store, so admission stays safe, and this process counts it at
its real cost (``DeferredSettles.owed``). One thread per ledger, started on the first
send (and again in a forked child, which starts with an empty queue); it holds the queue
only weakly, retries with a backoff while the store is down, and every live sender is
flushed at interpreter exit. Async callers only queue and set an event: nothing waits on
the loop.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nasca_core._deferred import DeferredSettles

log = logging.getLogger("nasca")

QUEUE_LIMIT = 10_000  # settles the sender may be behind before callers settle synchronously
_IDLE_S = 1.0  # how often an idle thread checks that its ledger still exists
EXIT_FLUSH_S = 5.0  # how long exit waits for the store to take what is queued
_BACKOFF_S = (0.05, 5.0)  # retry delays while the store refuses settles: first, longest
LINGER_S = 0.002  # a woken sender waits this long for more settles to batch (Store.settle_many)


class Sender:
    """Wakes a thread that flushes ``deferred``."""

    def __init__(self, deferred: DeferredSettles) -> None:
        self._deferred = weakref.ref(deferred)
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._start_lock = threading.Lock()
        _senders.add(self)

    def wake(self) -> None:
        if self._pid != os.getpid() or self._thread is None:
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid() and self._thread is not None:
                return
            self._wake = threading.Event()  # a forked child's copy may be set, or its lock held
            self._pid, self._stopped = os.getpid(), False
            self._thread = threading.Thread(target=self._run, name="nasca-settle-sender", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        wait: float | None = None  # until the next round (None: until woken, checking now and then)
        backoff: float | None = None  # the retry delay while the store refuses settles
        while not self._stopped:
            # No strong reference while waiting: a ledger nobody holds is collected, and its
            # thread ends at the next check.
            woken = self._wake.wait(_IDLE_S if wait is None else wait)
            if woken and backoff is None:
                time.sleep(LINGER_S)  # the settles of a burst of calls go in one batch, not one each
            if (deferred := self._deferred()) is None:
                return
            wait, backoff = self._round(deferred, backoff)
            del deferred

    def _round(self, deferred: DeferredSettles, backoff: float | None) -> tuple[float | None, float | None]:
        """One flush and ``on_idle``; the wait until the next round (None: until woken) and the
        retry delay, doubled only by a flush the store refused."""
        self._wake.clear()  # before the flush: a send during it wakes the next round
        failed = False
        try:
            if deferred.queued() or backoff is not None or self._stopped:
                deferred.flush()
                failed = deferred.stalled
        except Exception:  # the thread must outlive any one failure; the queue keeps the settle
            log.exception("nasca: the background settle sender failed; it retries")
            failed = True
        backoff = (_BACKOFF_S[0] if backoff is None else min(backoff * 2, _BACKOFF_S[1])) if failed else None
        # Left queued while a read of its user ran: soon again, not a failure (no doubling).
        wait = backoff if failed else (_BACKOFF_S[0] if deferred.queued() else None)
        if (on_idle := deferred.on_idle) is not None:
            try:
                due = on_idle(time.monotonic())
            except Exception:
                log.exception("nasca: the sender's idle hook failed")
                due = None
            if due is not None:  # never longer than ``_IDLE_S``: the check that the ledger lives
                wait = min(max(due, 0.001), _IDLE_S if wait is None else wait)
        return wait, backoff

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (after the caller's last flush)."""
        self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None


_senders: weakref.WeakSet[Sender] = weakref.WeakSet()


def _after_fork() -> None:
    for sender in list(_senders):  # the parent's thread is not in the child: the next send starts one
        sender._start_lock = threading.Lock()
        sender._thread = None


os.register_at_fork(after_in_child=_after_fork)


@atexit.register
def _flush_at_exit(timeout: float = EXIT_FLUSH_S) -> None:
    # What is still queued at exit is in the journal too: a store that is down now leaves it
    # for the next process to replay. On a thread, so a store that never answers (a Redis
    # without a socket timeout) holds exit up for ``timeout`` at most.
    deadline = time.monotonic() + timeout
    for sender in list(_senders):
        deferred = sender._deferred()
        if deferred is not None and sender._pid == os.getpid() and len(deferred):
            flushing = threading.Thread(target=_flush_logged, args=(deferred,), daemon=True,
                                        name="nasca-exit-flush")
            flushing.start()
            flushing.join(max(deadline - time.monotonic(), 0))
            if flushing.is_alive():
                log.error("nasca: the store did not take the queued settles within %.0f s of exit; "
                          "they stay journaled for the next process", timeout)
                return


def _flush_logged(deferred: DeferredSettles) -> None:
    try:
        deferred.flush()
    except Exception:
        log.exception("nasca: flushing queued settles at exit failed; they stay journaled")
