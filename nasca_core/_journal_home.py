"""Where a Nasca journals its deferred settles: a directory keyed by the store's own id.

The id (``Store.store_id``: random, made once per store and namespace, kept in the store)
is the same for every process however it writes the store's address (``localhost`` or
``127.0.0.1``, cluster nodes in any order or any subset of them), so a dead process's
journal is found by the next Nasca on the same data. Building a Nasca never waits for the
store: ``journal_home`` picks the directory from what is on disk, and ``locate`` reads the
id on a daemon thread (retrying while the store is away; a store that never answers only
keeps that thread waiting), then hands the dead processes' journals recorded under it to
the Nasca, which replays them.

    <state dir>/id-<the store's id>/   the journals (``_journal``)
    <state dir>/ids/<directory name>   the id whose journals a directory holds: an address
                                       directory (the id last read through that address),
                                       or another id's directory (below)

Until the id is known, a process journals in the directory of the id last read through
the same address, else in the directory named by the address itself (as releases before
this one named it); either is recorded for the id once it is read, so the next Nasca on
the same store finds it. When the id read through an address is not the one recorded for
it, the store there lost its data (or was replaced): the earlier id's journals are
adopted, and their settles replayed into the store now at that address, as releases that
named the directory by the address did.

What is not told apart: a Redis restored from another's snapshot (an RDB or AOF copied to
another port or host) has the same id as the original, and so shares its journals: run a
copy with its own ``state_dir`` (or ``namespace``). A copied SQLite file makes its own id
(``_sqlite_schema.own_id``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path

from nasca_core._journal import journal_dir
from nasca_core.stores import StoreHandle

log = logging.getLogger("nasca")

_IDS = "ids"
_ID = re.compile(r"[0-9a-f]{32}")
_known: dict[tuple[str, str], str] = {}  # (address, namespace) -> id, read once per process
_lock = threading.Lock()
_reading: dict[tuple[str, str], threading.Lock] = {}  # one read per key at a time
RETRY_S = (1.0, 60.0)  # a failed read is retried after the first, doubling up to the second


def _after_fork() -> None:  # a lock a parent's thread held at the fork is never released
    global _lock
    _lock = threading.Lock()
    _reading.clear()


os.register_at_fork(after_in_child=_after_fork)


def journal_home(store: StoreHandle, state_dir: str | os.PathLike[str] | None, namespace: str) -> Path:
    """The directory a journalled store's Nasca journals in; reads no store."""
    assert store.identity is not None
    spelled = journal_dir(state_dir, store.identity, namespace)
    with _lock:
        known = _known.get((str(store.identity), namespace))
    known = known or _recorded(spelled.parent / _IDS / spelled.name)
    if known is None:
        return spelled
    home = _home(spelled.parent, known)
    try:  # files only: the Nasca adopts these at its build, before any call
        _take_recorded(spelled.parent, home, known)
    except OSError as err:
        log.warning("nasca: could not gather deferred-settle journals into %s: %s", home, err)
    return home


def locate(store: StoreHandle, state_dir: str | os.PathLike[str] | None, namespace: str, mine: Path,
           found: weakref.WeakMethod[Callable[[], object]]) -> threading.Event:
    """Read the store's id on a daemon thread, move the dead processes' journals recorded
    under it into ``mine`` and then call ``found`` (the Nasca adopts them). The event is
    set once that is done. ``found`` is held weakly: a ledger dropped meanwhile ends it."""
    done = threading.Event()
    if str(store.identity).startswith("sqlite:"):
        # A local file answers at once; and a thread inside SQLite when the app forks (a
        # preloading server) would leave the child a held SQLite mutex, deadlocking it.
        if (store_id := _read_id(store, namespace)) is not None:
            _hand_over(store, state_dir, namespace, mine, store_id, found)
        done.set()
        return done

    def run() -> None:
        delay = RETRY_S[0]
        while (store_id := _read_id(store, namespace)) is None:
            time.sleep(delay)
            delay = min(delay * 2, RETRY_S[1])
            if found() is None:
                return
        _hand_over(store, state_dir, namespace, mine, store_id, found)
        done.set()

    threading.Thread(target=run, name="nasca-journal-locate", daemon=True).start()
    return done


def _hand_over(store: StoreHandle, state_dir: str | os.PathLike[str] | None, namespace: str, mine: Path,
               store_id: str, found: weakref.WeakMethod[Callable[[], object]]) -> None:
    try:
        moved = gather(store, state_dir, namespace, mine, store_id)
    except OSError as err:  # the journal itself reports what it can't write
        log.warning("nasca: could not gather deferred-settle journals into %s: %s", mine, err)
        return
    if moved and (callback := found()) is not None:
        callback()


def gather(store: StoreHandle, state_dir: str | os.PathLike[str] | None, namespace: str, mine: Path,
           store_id: str) -> int:
    """Record ``store_id`` for the address and for ``mine``, and move into ``mine`` the dead
    processes' journals of every directory recorded with it; returns how many moved."""
    assert store.identity is not None
    spelled = journal_dir(state_dir, store.identity, namespace)
    root, alias = spelled.parent, spelled.parent / _IDS / spelled.name
    home, previous = _home(root, store_id), _recorded(alias)
    _record(alias, store_id)
    if previous not in (None, store_id):
        earlier = _home(root, str(previous))
        log.warning("nasca: the store at this address is not the one it was (its id changed: its data lost, "
                    "or replaced); settles deferred for the earlier one (%s) are replayed into it", earlier)
        _record(root / _IDS / earlier.name, store_id)
    if mine != home:
        _record(root / _IDS / mine.name, store_id)  # found by the next Nasca on this store
    return (0 if mine == home else _take_orphans(home, mine)) + _take_recorded(root, mine, store_id)


def _take_recorded(root: Path, mine: Path, store_id: str) -> int:
    moved = 0
    try:
        recorded = sorted((root / _IDS).iterdir())
    except FileNotFoundError:
        return 0
    for path in recorded:
        if path.name != mine.name and not path.name.endswith(".tmp") and _recorded(path) == store_id:
            moved += _take_orphans(root / path.name, mine)
    return moved


def _read_id(store: StoreHandle, namespace: str) -> str | None:
    key = (str(store.identity), namespace)
    with _lock:
        reading = _reading.setdefault(key, threading.Lock())
    with reading:  # Nascas built at once share one read (and its failure: each retries later)
        with _lock:
            if key in _known:
                return _known[key]
        try:
            raw = store.sync.store_id(namespace)
        except Exception as exc:  # whatever keeps the store away (or a cluster unmapped), journaling goes on
            log.debug("nasca: could not read the store id: %s", exc)
            return None
        store_id = raw if _ID.fullmatch(raw) else sha256(raw.encode()).hexdigest()[:32]  # never a path
        with _lock:
            _known[key] = store_id
        return store_id


def _home(root: Path, store_id: str) -> Path:
    return root / f"id-{store_id}"


def _recorded(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _ID.fullmatch(text) else None


def _record(alias: Path, store_id: str) -> None:
    if _recorded(alias) == store_id:
        return
    alias.parent.mkdir(parents=True, exist_ok=True)
    fresh = alias.with_name(f"{alias.name}.{os.getpid()}.tmp")
    fresh.write_text(store_id, encoding="ascii")
    os.replace(fresh, alias)  # readers see the old id or the new one, never half


def _take_orphans(directory: Path, home: Path) -> int:
    """Move the journals of dead processes from an address directory into ``home``, where
    adoption (``Journal.orphans``) finds them. A journal is moved under its owner's lock,
    so a live owner's is never touched, and a journal moved or adopted meanwhile is skipped."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".jsonl"))
    except FileNotFoundError:
        return 0
    home.mkdir(parents=True, exist_ok=True)
    moved = 0
    for name in names:
        path = directory / name
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            if os.fstat(fd).st_nlink == 0 or (home / name).exists():
                continue
            try:
                os.rename(path, home / name)
                moved += 1
            except FileNotFoundError:
                continue  # moved by another process between our open and our lock
        finally:
            os.close(fd)
    return moved
