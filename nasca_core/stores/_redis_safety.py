"""Is this Redis safe to keep money in? Checked once, on a store's first use.

The ledger's keys must never be evicted (``maxmemory-policy noeviction``: an evicted day
counter forgets spend, an evicted lot hash a purchase) and must survive a restart (AOF,
or at least RDB snapshots). What the server says comes from ``INFO`` (always allowed)
and ``CONFIG GET save`` where the provider allows ``CONFIG``. A problem is logged once per
process as a loud warning, or raised as a ConfigurationError with ``require_durable=True``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from nasca_core._errors import ConfigurationError

log = logging.getLogger("nasca")
_warned: set[str] = set()
UNKNOWN = "the server does not answer INFO, so its eviction policy and persistence are unknown"
_warned_lock = threading.Lock()


def problems(memory: Sequence[Mapping[str, Any]], persistence: Sequence[Mapping[str, Any]],
             save: str | None) -> list[str]:
    """What makes the servers (one INFO per primary) unsafe for the ledger; ``save`` is the
    RDB save points (None when CONFIG is not allowed)."""
    out = []
    policies = {str(m.get("maxmemory_policy", "noeviction")) for m in memory} - {"noeviction"}
    if policies:
        out.append(f"maxmemory-policy is {', '.join(sorted(policies))}: under memory pressure Redis may "
                   "evict ledger keys (a day's spend, a purchased credit lot); set noeviction")
    if not all(int(p.get("aof_enabled", 0)) == 1 for p in persistence):
        if save == "":
            out.append("neither AOF nor RDB snapshots are on: a restart loses every purchased credit and "
                       "the month's spend; set appendonly yes and appendfsync everysec")
        elif save is None:
            out.append("AOF is off and CONFIG is not allowed to show the RDB save points: a restart may "
                       "lose purchased credits and spend; turn on appendonly yes, appendfsync everysec")
    return out


def _per_node(reply: Any) -> list[Mapping[str, Any]]:
    # A cluster client asked several primaries answers {node: info}; one server, its info.
    if isinstance(reply, Mapping) and reply and all(isinstance(v, Mapping) for v in reply.values()):
        return list(reply.values())
    return [reply]


def _judge(found: list[str], require_durable: bool) -> None:
    if not found:
        return
    text = "; ".join(found)
    if require_durable:
        raise ConfigurationError(f"This Redis is not safe for the ledger (require_durable=True): {text}.")
    with _warned_lock:
        if text in _warned:
            return
        _warned.add(text)
    log.warning("nasca: THIS REDIS CAN LOSE MONEY: %s. See the README's production section.", text)


def check_durable(client: Any, require_durable: bool) -> None:
    """Warn (once) or raise ConfigurationError when the server can evict or forget ledger keys."""
    kw = {"target_nodes": RedisCluster.PRIMARIES} if isinstance(client, RedisCluster) else {}
    try:
        memory = _per_node(client.info("memory", **kw))
        persistence = _per_node(client.info("persistence", **kw))
    except ResponseError:
        return _judge([UNKNOWN], require_durable)
    try:
        saves = {str(v.get("save", "")) for v in _per_node(client.config_get("save", **kw))}
        save: str | None = "" if "" in saves else "on"
    except ResponseError:  # CONFIG renamed or refused (managed Redis)
        save = None
    _judge(problems(memory, persistence, save), require_durable)


async def acheck_durable(client: Any, require_durable: bool) -> None:
    """Async twin of check_durable()."""
    kw = {"target_nodes": AsyncRedisCluster.PRIMARIES} if isinstance(client, AsyncRedisCluster) else {}
    try:
        memory = _per_node(await client.info("memory", **kw))
        persistence = _per_node(await client.info("persistence", **kw))
    except ResponseError:
        return _judge([UNKNOWN], require_durable)
    try:
        saves = {str(v.get("save", "")) for v in _per_node(await client.config_get("save", **kw))}
        save: str | None = "" if "" in saves else "on"
    except ResponseError:
        save = None
    _judge(problems(memory, persistence, save), require_durable)
