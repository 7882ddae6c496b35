"""Deferred settles on disk: one append-only file per process, so a settle the store could
not take survives the process that deferred it.

    <state dir>/id-<the store's id>/<pid>-<random>.jsonl    (``_journal_home``)

Each line is ``{"s": <settle>}`` (deferred), ``{"d": <hold id>}`` (applied since), or for a
lease's settles folded into one (``_fold``) ``{"f": <fold>}`` and ``{"u": <its hold id>}`` (not
sent: its settles stand; a settle of it done by itself says the same). A write that fails is
cut back to the last whole line, or when it can't be, the next write starts a line of its own. A line is
written with one ``write()`` before ``settle`` returns, so a killed process loses
nothing; ``fsync`` runs at most once a second (and at flush and close), so a power loss can
lose the last second. The owner holds an exclusive ``flock`` on its file while it lives: a
file whose lock can be taken belongs to a dead process, and the next Nasca on the same
store and namespace adopts what it left pending (``adopt_orphans``). A file is emptied
whenever nothing in it is pending.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from hashlib import sha256
from pathlib import Path
from typing import Any

from nasca_core._fold import Fold, Send, weight
from nasca_core.stores import PoolKeys, SettleOp, UserKeys

log = logging.getLogger("nasca")

FSYNC_EVERY_S = 1.0


def default_state_dir() -> Path:
    """``$NASCA_STATE_DIR``, else ``$XDG_STATE_HOME/nasca``, else ``~/.local/state/nasca``."""
    env = os.environ.get("NASCA_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "nasca"


def journal_dir(state_dir: str | os.PathLike[str] | None, store_identity: str, namespace: str) -> Path:
    """The directory named by a store's address (``StoreHandle.identity``): the journal's
    home only while the store's own id can't be read (``_journal_home``)."""
    digest = sha256(f"{store_identity}\0{namespace}".encode()).hexdigest()[:24]
    return Path(state_dir) / digest if state_dir is not None else default_state_dir() / digest


_JSON = json.JSONEncoder(separators=(",", ":"))  # built once: a settle's line is written on the caller's path


def encode(op: SettleOp) -> str:
    """A settle's journal line: ``{"s": ...}``, or ``{"f": {..., "of": [hold ids]}}`` for a
    ``Fold`` (one settle standing for the queued settles it names)."""
    k = op.keys
    fields = {
        "k": [k.meta, k.holds, k.settled, k.day, k.week, k.month, k.credits, k.held], "t": op.now_ms,
        "h": op.hold_id, "e": op.estimate, "c": op.cost, "tr": op.tier, "tj": op.tiers_json,
        "tc": op.tier_compiled, "ttl": op.ttls_ms, "mx": op.marker_expiry_ms,
        "ti": op.input_tokens, "to": op.output_tokens, "rt": op.reserved_ms, "n": op.calls,
        "l": op.lease}
    if op.pools:  # the pools the call drew from: a replay charges each once (``SettleOp.pools``)
        fields["p"] = [[p.pool, p.holds, p.held, p.settled, p.day, p.week, p.month] for p in op.pools]
        if op.chunks:  # the chunk each was drawn on: a replay lowers its hold (once, as it charges)
            fields["pc"] = list(op.chunks)
    if isinstance(op, Fold):
        return _JSON.encode({"f": {**fields, "of": op.of}}) + "\n"
    return _JSON.encode({"s": fields}) + "\n"


def decode(d: dict[str, Any]) -> SettleOp:
    ttl = d["ttl"]
    return SettleOp(keys=UserKeys(*d["k"]), now_ms=int(d["t"]), hold_id=str(d["h"]), estimate=int(d["e"]),
                    cost=int(d["c"]), tier=str(d["tr"]), tiers_json=str(d["tj"]),
                    tier_compiled=tuple(int(x) for x in d["tc"]),
                    ttls_ms=(int(ttl[0]), int(ttl[1]), int(ttl[2])), marker_expiry_ms=int(d["mx"]),
                    input_tokens=int(d["ti"]), output_tokens=int(d["to"]),
                    reserved_ms=int(d.get("rt", 0)), calls=int(d.get("n", 1)), lease=str(d.get("l", "")),
                    of=tuple(str(h) for h in d.get("of", ())),  # a fold's line: the ids the store marks
                    pools=tuple(PoolKeys(*(str(k) for k in p)) for p in d.get("p", ())),
                    chunks=tuple(str(c) for c in d.get("pc", ())))


def pending_in(lines: Iterator[str]) -> list[SettleOp]:
    """The settles a journal still holds: deferred and not marked applied, first seen first.
    A fold's line supersedes the settles it names (none of them was sent by itself) until an
    ``{"u"}`` line gives them back (the fold was never sent): a fold pending is replayed as
    itself, with its own hold id, so the store takes it once. A later fold naming a settle of
    an earlier one replaces it: the earlier was never sent (one that was is never planned again)."""
    ops: dict[str, SettleOp] = {}
    parts: dict[str, SettleOp] = {}  # the settles a pending fold stands for
    folds: dict[str, tuple[str, ...]] = {}  # pending fold -> the hold ids it stands for
    owner: dict[str, str] = {}  # a settle -> the pending fold standing for it
    for line in lines:
        try:
            entry = json.loads(line)
            if "s" in entry:
                op = decode(entry["s"])
                if op.hold_id not in owner:
                    ops.setdefault(op.hold_id, op)
            elif "f" in entry:
                fold = Fold(**{f.name: getattr(decode(entry["f"]), f.name) for f in fields(SettleOp)})
                of = fold.of
                for hold_id in of:
                    if (earlier := owner.get(hold_id)) is not None and earlier != fold.hold_id:
                        ops.pop(earlier, None)
                        folds.pop(earlier, None)
                    if (part := ops.pop(hold_id, None)) is not None and not isinstance(part, Fold):
                        parts[hold_id] = part
                    owner[hold_id] = fold.hold_id
                folds[fold.hold_id] = of
                ops[fold.hold_id] = fold
            elif "u" in entry:  # the fold was never sent: its settles stand, each by itself
                if (unsent := str(entry["u"])) in folds:
                    ops.pop(unsent, None)
                for hold_id in folds.pop(unsent, ()):
                    owner.pop(hold_id, None)
                    ops.pop(hold_id, None)
                    if (part := parts.pop(hold_id, None)) is not None:
                        ops[hold_id] = part
            elif "d" in entry:
                hold_id = str(entry["d"])
                ops.pop(hold_id, None)
                if (unsent_fold := owner.get(hold_id)) is not None and unsent_fold != hold_id:
                    # A settle of a pending fold landed by itself: the fold was never sent (one
                    # whose line reached the file in full is only retried as itself, and its
                    # own "d" comes before its settles'), so its settles not yet done stand
                    # again. A fold under its lease close's id is not one of these: its "d" is
                    # the fold's, since the close by itself is queued (and sent) after its
                    # calls, whose "d" lines give the fold back first.
                    ops.pop(unsent_fold, None)
                    for part_id in folds.pop(unsent_fold, ()):
                        owner.pop(part_id, None)
                        if (part := parts.pop(part_id, None)) is not None and part_id != hold_id:
                            ops[part_id] = part
                for settled in folds.pop(hold_id, ()):  # a fold applied: its settles with it
                    parts.pop(settled, None)
                    owner.pop(settled, None)
        except (ValueError, KeyError, TypeError, IndexError):
            # A line cut short by a crash mid-write (or power loss): everything before it counts.
            log.error("nasca: skipped an unreadable deferred-settle journal line: %.80r", line)
    return list(ops.values())


class Torn(OSError):
    """A journal write failed and part of it may be in the file (it could not be cut back)."""


_FRESH = ".new"  # a journal being created (left empty if its creator died right then)


class Journal:
    """This process's journal file, opened on first write."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path: Path | None = None
        self._fd: int | None = None
        self._pid = 0
        self.synced = 0.0
        self.writes = 0  # lines written so far: ``empty`` keeps a file written to since it was asked
        self._torn = False  # a part line may end the file (``Torn``): the next write starts a line
        self._io = threading.Lock()  # a write and an emptying never interleave

    def _open(self) -> int:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        if self._fd is not None:
            # Forked: the parent's file (and its lock, shared with the parent) stays the parent's.
            os.close(self._fd)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        self.path = self.directory / f"{self._pid}-{os.urandom(4).hex()}.jsonl"
        self._torn = False  # a new file
        # Created and locked under a name orphans() skips, then renamed: another process can
        # never take an unlocked new journal for a dead one's and delete it under its owner.
        fresh = self.path.with_name(self.path.name + _FRESH)
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(fresh, self.path)
        self._fd = fd
        return fd

    def forked(self) -> bool:
        return self._fd is not None and self._pid != os.getpid()

    def append(self, lines: str, *, sync: bool = False, lazy: bool = False) -> None:
        """Write ``lines`` with one write(); fsync when asked or when the last was over a second
        ago, unless ``lazy`` (a settle about to be sent: the sender syncs if it can't land).
        Raises OSError (a full disk, a read-only state dir)."""
        data = lines.encode()
        with self._io:
            fd = self._open()
            if self._torn:  # the part line ends here, unreadable alone, not glued to these
                data = b"\n" + data
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError:
                # Cut back to the last whole line: a part line would glue to the next one,
                # and a replay would skip both.
                try:
                    os.ftruncate(fd, end)
                except OSError as err:
                    self._torn = True
                    raise Torn(err.errno, f"a journal line may be left cut short: {err}") from err
                raise
            self.writes, self._torn = self.writes + 1, False
        if sync or (not lazy and time.monotonic() - self.synced > FSYNC_EVERY_S):
            self.sync()

    def done(self, *hold_ids: str) -> None:
        # Never synced by itself: a lost done-line replays a settle the store already took, a no-op.
        if self._fd is not None and self._pid == os.getpid():
            self.append("".join([_JSON.encode({"d": hold_id}) + "\n" for hold_id in hold_ids]), lazy=True)

    def sync(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.fsync(self._fd)
            self.synced = time.monotonic()

    def empty(self, writes: int) -> None:
        """Nothing in the file was pending when it had ``writes`` lines: start it over, unless
        more were written since."""
        with self._io:
            if self._fd is not None and self._pid == os.getpid() and self.writes == writes:
                os.ftruncate(self._fd, 0)
                self._torn = False

    def after_fork(self) -> None:
        """In a forked child: a parent's thread may have held the lock."""
        self._io = threading.Lock()

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            fd, path, self._fd = self._fd, self.path, None
            if path is not None and os.fstat(fd).st_size == 0:
                path.unlink(missing_ok=True)
            os.close(fd)

    def orphans(self) -> Iterator[tuple[Path, list[SettleOp]]]:
        """Each journal of a dead process in the directory and what it holds pending; the file
        is emptied and removed once the caller has taken the pending settles (after the yield)."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return
        for name in names:
            path = self.directory / name
            if not name.endswith(".jsonl") or path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # adopted by another process meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                if os.fstat(fd).st_nlink == 0:
                    continue  # another process adopted and removed it between open and lock
                with os.fdopen(os.dup(fd), encoding="utf-8", errors="replace") as f:
                    ops = pending_in(iter(f))
                yield path, ops
                # Emptied before unlinking: a process that opened it meanwhile reads nothing.
                os.ftruncate(fd, 0)
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)


def write(journal: Journal | None, op: SettleOp, *, lazy: bool = False) -> bool | None:
    """Journal ``op`` (``Journal.append``): True when written, False with no journal, None when
    it can't be written (logged: when ``lazy``, a background settle, the caller settles it
    instead; else it is kept in memory only)."""
    if journal is None:
        return False
    try:
        journal.append(encode(op), lazy=lazy)
        return True
    except OSError as err:
        if lazy:
            log.warning("nasca: the settle journal in %s can't be written (%s): settling on the "
                        "caller's path", journal.directory, err)
            return None
        # Raising would lose the charge for certain; in memory it is lost only if this
        # process dies before the store comes back.
        log.error("nasca: the deferred-settle journal in %s can't be written (%s): a settle of %d "
                  "nanos for %s is kept in memory only", journal.directory, err, op.cost, op.keys.meta)
        return None


def sync_quietly(journal: Journal | None, *, due: bool = False) -> None:
    """``journal.sync()`` (only if the last was ``FSYNC_EVERY_S`` ago when ``due``), failures logged."""
    if journal is None or (due and time.monotonic() - journal.synced < FSYNC_EVERY_S):
        return
    try:
        journal.sync()
    except OSError as err:
        log.warning("nasca: could not sync the settle journal %s: %s", journal.path, err)


def write_folds(journal: Journal | None, sends: list[Send]) -> list[Send] | None:
    """Journal the folds among ``sends`` (``_fold.plan``), synced: the lines of their settles
    may be on disk already, and a fold that landed must never replay as its settles. Returns
    what to send: ``sends``; or, when the lines can't be written in full, the settles one by
    one, once nothing in the file stands for them (the write was cut back, or an ``{"u"}``
    line gives them back); or None (logged) when not even that can be written: nothing may be
    sent, the batch waits as it was."""
    folds = [send.op for send in sends if len(send.items) > 1]
    if journal is None or not folds:
        return sends
    one_by_one = [Send(op, [op]) for send in sends for op in send.items]
    try:
        journal.append("".join(map(encode, folds)), lazy=True)
    except Torn as err:
        failed: OSError = err
    except OSError as err:  # cut back: nothing of the lines is in the file
        log.warning("nasca: the settle journal in %s can't be written (%s): a lease's settles go "
                    "one by one", journal.directory, err)
        return one_by_one
    else:
        try:
            journal.sync()
            return sends
        except OSError as err:
            failed = err
    try:  # the lines may be in the file: they must not stand for settles sent one by one
        journal.append("".join(_JSON.encode({"u": fold.hold_id}) + "\n" for fold in folds), sync=True)
    except OSError as err:
        log.warning("nasca: the settle journal in %s can't be written (%s, then %s): a lease's settles "
                    "wait", journal.directory, failed, err)
        return None
    log.warning("nasca: the settle journal in %s could not take a fold (%s): a lease's settles go one "
                "by one", journal.directory, failed)
    return one_by_one


def adopt(journal: Journal, held: set[str], now_ms: int) -> Iterator[tuple[list[SettleOp], int]]:
    """Per journal of a dead process beside ``journal``: the settles it left pending that are
    not in ``held`` (added to it) and younger than their settled markers, written to ``journal``
    (synced) before the orphan is removed, and how many older ones were refused (``refuse``).
    Raises OSError."""
    for path, ops in journal.orphans():
        fresh = [op for op in ops if op.hold_id not in held and op.marker_expiry_ms > now_ms]
        old = [op for op in ops if op.hold_id not in held and op.marker_expiry_ms <= now_ms]
        if fresh:  # in our journal (and synced) before the orphan is removed
            journal.append("".join(map(encode, fresh)), sync=True)
            held.update(op.hold_id for op in fresh)
        yield fresh, refuse(path, old) if old else 0


def refuse(orphan: Path, ops: list[SettleOp]) -> int:
    """Keep settles too old to replay safely beside ``orphan`` (``.refused``); returns how many
    (a fold: the settles it stands for)."""
    aside, n = orphan.with_suffix(".refused"), sum(map(weight, ops))
    with open(aside, "a", encoding="utf-8") as f:
        f.write("".join(map(encode, ops)))
        f.flush()
        os.fsync(f.fileno())
    log.error("nasca: %d deferred settles (%d nanos) waited longer than the store remembers settled "
              "holds, so replaying them could charge twice; they were not applied and are kept in %s",
              n, sum(op.cost for op in ops), aside)
    return n


def set_aside(journal: Journal | None, ops: list[SettleOp]) -> int:
    """Keep queued settles too old to send safely beside ``journal`` (``refuse``), marked done
    in it so no replay applies them either; returns how many."""
    if journal is None or journal.path is None:
        log.error("nasca: %d deferred settles (%d nanos) waited longer than the store remembers "
                  "settled holds and were not applied", len(ops), sum(op.cost for op in ops))
        return len(ops)
    refused = refuse(journal.path, ops)
    try:
        journal.done(*(op.hold_id for op in ops))
    except OSError as err:
        log.warning("nasca: could not mark set-aside settles in %s: %s", journal.path, err)
    return refused
