"""The key layout a Redis store holds, checked on first use, and ``nasca migrate``.

Layout 1 (Nasca before the SQLite store) tagged a user's keys with the raw id,
``<ns>:{<user id>}<suffix>``: an id with a brace could split a user over cluster slots.
Layout 2 (``UserKeys``) tags them with a hash of the id, ``<ns>:{<tag>}:<user id><suffix>``.
A store records its layout in ``layout_key(namespace)``. A namespace without that record
is new (it is stamped with the current layout) unless it holds layout-1 keys, which are
refused with a ``ConfigurationError`` until ``nasca migrate`` moves them. Suffixes never
contain a brace, so in a layout-1 key the id runs to the last ``}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nasca_core._errors import ConfigurationError
from nasca_core.stores._base import KEY_LAYOUT, layout_key, user_tag
from nasca_core.stores._scripts import source

_SUFFIX = re.compile(r"(|:h|:s|:c|:hs|:subs|:[dwm]:[0-9W]+)")


def user_pattern(namespace: str) -> str:
    """SCAN pattern of every user key of ``namespace``, in either layout."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", namespace) + ":{*"


def is_current(key: str, namespace: str) -> bool:
    """Whether ``key`` is a layout-2 user key of ``namespace`` (its tag is its id's)."""
    head = f"{namespace}:{{"
    tag, rest = key[len(head):len(head) + 16], key[len(head) + 18:]
    if not key.startswith(head) or key[len(head) + 16:len(head) + 18] != "}:":
        return False
    for suffix in (":h", ":s", ":c", ":hs", ":subs", ""):
        if rest.endswith(suffix) and user_tag(rest[:len(rest) - len(suffix)]) == tag:
            return True
    window = re.search(r":[dwm]:[0-9W]+$", rest)
    return window is not None and user_tag(rest[:window.start()]) == tag


def old_key(key: str, namespace: str) -> tuple[str, str] | None:
    """(user id, suffix) of a layout-1 key, or None for any other key."""
    head = f"{namespace}:{{"
    end = key.rfind("}")
    if not key.startswith(head) or end <= len(head) or is_current(key, namespace):
        return None
    suffix = key[end + 1:]
    return (key[len(head):end], suffix) if _SUFFIX.fullmatch(suffix) else None


def new_key(namespace: str, user: str, suffix: str) -> str:
    return f"{namespace}:{{{user_tag(user)}}}:{user}{suffix}"


def refusal(namespace: str, found: str) -> ConfigurationError:
    return ConfigurationError(
        f"This store holds namespace {namespace!r} in key layout 1 (e.g. {found[:60]!r}); this Nasca "
        f"reads layout {KEY_LAYOUT}. Stop the app, then run `nasca migrate --store URI --namespace "
        f"{namespace}` to see what moves, and again with --apply.")


def check_reply(namespace: str, recorded: Any) -> bool:
    """True when the recorded layout is the current one; raises ConfigurationError for
    another; False when none is recorded (the caller looks for layout-1 keys)."""
    if recorded is None:
        return False
    value = int(recorded)
    if value != KEY_LAYOUT:
        raise ConfigurationError(
            f"This store holds namespace {namespace!r} in key layout {value}; this Nasca reads layout "
            f"{KEY_LAYOUT}: {'upgrade Nasca' if value > KEY_LAYOUT else 'run nasca migrate'}.")
    return True


def first_old(keys: Iterable[Any], namespace: str) -> str | None:
    for raw in keys:
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        if old_key(key, namespace) is not None:
            return key
    return None


def check_layout(client: Any, namespace: str) -> None:
    """Raise ConfigurationError unless ``namespace`` on this Redis is in the current layout;
    stamp a namespace that holds no user key yet. One GET, plus one SCAN the first time."""
    if check_reply(namespace, client.get(layout_key(namespace))):
        return
    found = first_old(client.scan_iter(match=user_pattern(namespace), count=1000), namespace)
    if found is not None:
        raise refusal(namespace, found)
    client.set(layout_key(namespace), KEY_LAYOUT, nx=True)


async def acheck_layout(client: Any, namespace: str) -> None:
    """Async twin of check_layout()."""
    if check_reply(namespace, await client.get(layout_key(namespace))):
        return
    keys = [k async for k in client.scan_iter(match=user_pattern(namespace), count=1000)]
    found = first_old(keys, namespace)
    if found is not None:
        raise refusal(namespace, found)
    await client.set(layout_key(namespace), KEY_LAYOUT, nx=True)


@dataclass
class Migration:
    """What ``migrate`` found (and, applied, moved): layout-1 keys and their users."""

    namespace: str
    moves: list[tuple[str, str]] = field(default_factory=list)  # (old key, new key)
    users: set[str] = field(default_factory=set)
    conflicts: list[str] = field(default_factory=list)  # new keys that already exist
    applied: bool = False


def read_for_move(client: Any, key: str) -> tuple[bytes | None, int]:
    """``key``'s DUMP and the TTL to RESTORE it with (0 = none), read in one transaction: a
    key that expires between two separate reads would come back with no expiry at all. One
    script, not MULTI: a cluster client before redis-py 6.1 refuses transactions."""
    dump, ttl = client.eval(source("read_for_move"), 1, key)
    if not dump or ttl == -2:
        return None, 0
    return dump, 0 if ttl == -1 else max(1, int(ttl))


def migrate(client: Any, namespace: str, *, apply: bool) -> Migration:
    """Find (and with ``apply`` move) every layout-1 key of ``namespace`` to the current
    layout, keeping values and expiries, then record the layout. Run it with the app stopped.
    Each key moves with DUMP / RESTORE / DEL, which works across cluster slots."""
    plan = Migration(namespace)
    for raw in client.scan_iter(match=user_pattern(namespace), count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        parsed = old_key(key, namespace)
        if parsed is not None:
            plan.moves.append((key, new_key(namespace, *parsed)))
            plan.users.add(parsed[0])
    done = set()
    for old, new in plan.moves:
        existing = client.dump(new)
        if existing is None:
            continue
        if existing == client.dump(old):  # a run stopped between RESTORE and DEL: resume
            done.add(old)
        else:
            plan.conflicts.append(new)
    if not apply or plan.conflicts:
        return plan
    for old, new in plan.moves:
        if old not in done:
            dump, ttl = read_for_move(client, old)
            if dump is None:
                continue  # expired since the scan
            client.restore(new, ttl, dump)
        client.delete(old)
    client.set(layout_key(namespace), KEY_LAYOUT)
    plan.applied = True
    return plan
