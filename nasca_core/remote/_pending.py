"""Settles the remote ledger did not take (no answer, 5xx, rate limited): kept in memory and
in the same append-only journal as a local ledger's deferred settles (``_journal``), sent
again before the next call, and adopted from the journal of a client process that died.

A settle that may have landed (its request was sent: a read timeout, a dropped connection,
a 5xx) is sent again only while the server still remembers settled hold ids
(``SETTLED_MEMORY_MS``): after that a replay could charge twice, so it is kept aside
(``.refused``) and logged. One that never reached the server (it could not connect, the
client was backing off, the server refused its key) is owed at any age and replayed until
it lands. A settle the server refuses as bad input is set aside the same way, and the ones
behind it are still sent.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from pydantic import ValidationError

from nasca_core._errors import NascaError, StoreError, UnauthorizedError
from nasca_core._journal import Journal, encode, journal_dir, refuse
from nasca_core.remote._http import unsent
from nasca_core.remote._wire import Hold, SettleBody
from nasca_core.stores import SettleOp, UserKeys

if TYPE_CHECKING:
    from pathlib import Path

    from nasca_core._types import LedgerStats

SETTLED_MEMORY_MS = 3_600_000 - 300_000  # the server's settled markers last an hour; keep a margin
NEVER = 2**62  # the expiry of a settle that never reached the server: it can be replayed at any age
_NS = "remote"
log = logging.getLogger("nasca")


def _op(body: SettleBody, now_ms: int, expiry_ms: int | None = None) -> SettleOp:
    h = body.hold
    return SettleOp(
        keys=UserKeys.build(_NS, h.user, ("", "", h.anchor)),  # the month slot carries the hold's anchor
        now_ms=now_ms,
        hold_id=h.hold_id,
        estimate=h.estimate_nanos,
        cost=body.nanos or 0,
        tier=h.tier,
        # The settle exactly as it was sent (the hold as the server signed it, the model and
        # usage it prices), for the replay.
        tiers_json=body.model_dump_json(exclude_none=True),
        tier_compiled=(),
        ttls_ms=(0, 0, 0),
        marker_expiry_ms=now_ms + SETTLED_MEMORY_MS if expiry_ms is None else expiry_ms,
        input_tokens=body.input_tokens,
        output_tokens=body.output_tokens,
        reserved_ms=h.reserved_ms,
    )


def _body(op: SettleOp) -> SettleBody:
    try:
        return SettleBody.model_validate_json(op.tiers_json)
    except ValidationError:  # a journal line of a client before the settle travelled whole
        hold = Hold(user=op.keys.meta.split("}:", 1)[1], tier=op.tier, hold_id=op.hold_id,
                    estimate_nanos=op.estimate, anchor=op.keys.month.rpartition(":")[2])
    return SettleBody(hold=hold, nanos=op.cost, input_tokens=op.input_tokens,
                      output_tokens=op.output_tokens)


class PendingSettles:
    """The settles owed to one remote ledger, journaled under ``state_dir``."""

    def __init__(
        self, url: str, state_dir: str | None, stats: LedgerStats, now_ms: Callable[[], int]
    ) -> None:
        self.stats, self._now_ms = stats, now_ms
        self._journal = Journal(journal_dir(state_dir, url, _NS))
        self._ops: dict[str, SettleOp] = {}
        self._lock = threading.Lock()
        self._adopt()
        _all.add(self)

    def after_fork(self) -> None:
        """In a forked child: the parent's settles are the parent's to send (its journal too)."""
        self._lock = threading.Lock()
        self._ops = {}
        self._journal.after_fork()
        self._count()

    def __len__(self) -> int:
        return len(self._ops)

    def nanos(self) -> int:
        return sum(op.cost for op in list(self._ops.values()))

    def defer(self, body: SettleBody, exc: BaseException | None = None) -> None:
        """Keep ``body`` to send again (``exc``: why it was not taken; None: it may have
        landed); on disk before this returns (unless the disk refuses)."""
        now = self._now_ms()
        sure = exc is not None and _never_sent(exc)
        op = _op(body, now, NEVER if sure else now + SETTLED_MEMORY_MS)
        with self._lock:
            if op.hold_id in self._ops:
                return
            self._ops[op.hold_id] = op
        try:
            self._journal.append(encode(op), sync=True)
        except OSError:
            self.stats.deferred_unjournaled += 1
        self.stats.deferred += 1
        self._count()

    def flush(self, send: Callable[[SettleBody], object]) -> int:
        """Send what is owed, oldest first, until the server fails again; how many landed."""
        done = 0
        for op in self._due():
            try:
                send(_body(op))
            except (StoreError, UnauthorizedError) as exc:
                self._failed_again(op, exc)
                break
            except NascaError as exc:
                self._set_aside(op, exc)
                continue
            self._landed(op)
            done += 1
        return done

    async def aflush(self, send: Callable[[SettleBody], Awaitable[object]]) -> int:
        """Async twin of flush()."""
        done = 0
        for op in self._due():
            try:
                await send(_body(op))
            except (StoreError, UnauthorizedError) as exc:
                self._failed_again(op, exc)
                break
            except NascaError as exc:
                self._set_aside(op, exc)
                continue
            self._landed(op)
            done += 1
        return done

    def _failed_again(self, op: SettleOp, exc: BaseException) -> None:
        if op.marker_expiry_ms != NEVER or _never_sent(exc):
            return
        # Sent this time, so it may have landed: from now on it is replayed only while the
        # server remembers it (the journal's later line for the hold wins on adoption).
        now = self._now_ms()
        sent = replace(op, marker_expiry_ms=now + SETTLED_MEMORY_MS)
        with self._lock:
            if op.hold_id not in self._ops:
                return
            self._ops[op.hold_id] = sent
        try:
            self._journal.done(op.hold_id)
            self._journal.append(encode(sent), sync=True)
        except OSError:
            self.stats.deferred_unjournaled += 1

    def _set_aside(self, op: SettleOp, exc: NascaError) -> None:
        log.error("nasca: the remote ledger refused a journaled settle of %s (hold %s), kept aside: %s",
                  op.keys.meta, op.hold_id, exc)
        with self._lock:
            self._ops.pop(op.hold_id, None)
        if self._journal.path is not None:
            self.stats.deferred_refused += refuse(self._journal.path, [op])
        self._journal.done(op.hold_id)
        self._count()

    def close(self) -> None:
        self._journal.close()  # a journal still holding settles stays for the next process

    def _due(self) -> list[SettleOp]:
        now = self._now_ms()
        with self._lock:
            ops = list(self._ops.values())
            old = [op for op in ops if op.marker_expiry_ms < now]
            for op in old:
                del self._ops[op.hold_id]
        if old and self._journal.path is not None:
            self.stats.deferred_refused += refuse(self._journal.path, old)
            for op in old:
                self._journal.done(op.hold_id)
        self._count()
        return [op for op in ops if op.marker_expiry_ms >= now]

    def _landed(self, op: SettleOp) -> None:
        with self._lock:
            self._ops.pop(op.hold_id, None)
        self._journal.done(op.hold_id)
        self.stats.deferred_retried += 1
        self._count()

    def _count(self) -> None:
        self.stats.deferred_pending = len(self._ops)
        self.stats.deferred_pending_nanos = self.nanos()

    def _adopt(self) -> None:
        for path, ops in self._journal.orphans():
            keep = self._refused_or_kept(path, ops)
            for op in keep:
                self._ops.setdefault(op.hold_id, op)
                self._journal.append(encode(op), sync=True)  # ours now: the orphan file goes
            self.stats.deferred_replayed += len(keep)
        self._count()

    def _refused_or_kept(self, path: Path, ops: list[SettleOp]) -> list[SettleOp]:
        now = self._now_ms()
        old = [op for op in ops if op.marker_expiry_ms < now]
        if old:
            self.stats.deferred_refused += refuse(path, old)
        return [op for op in ops if op.marker_expiry_ms >= now]


def _never_sent(exc: BaseException) -> bool:
    # A 401 is refused before the server does anything: a client with a valid key replays it.
    return isinstance(exc, UnauthorizedError) or unsent(exc)


_all: weakref.WeakSet[PendingSettles] = weakref.WeakSet()


def _after_fork() -> None:
    for pending in list(_all):
        pending.after_fork()


os.register_at_fork(after_in_child=_after_fork)
