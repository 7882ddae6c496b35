"""Stores chosen by URI: ``memory://[name]``, ``redis://``, ``rediss://``, ``unix://``,
``redis+cluster://host:port[,host:port...]``, or an existing redis-py client."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any
from urllib.parse import urlsplit

from nasca_core._errors import ConfigurationError
from nasca_core.stores._base import (
    AsyncStore,
    Lot,
    ReserveOp,
    ReserveResult,
    SettleOp,
    SettleResult,
    Snapshot,
    Store,
    StoredConfig,
    UserKeys,
)
from nasca_core.stores.memory import AsyncMemoryStore, MemoryStore, named_memory_store

__all__ = [
    "AsyncStore",
    "Lot",
    "MemoryStore",
    "ReserveOp",
    "ReserveResult",
    "SettleOp",
    "SettleResult",
    "Snapshot",
    "Store",
    "StoreHandle",
    "StoredConfig",
    "UserKeys",
    "open_store",
]

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# Per node. redis-py's cluster clients have no blocking pool: past this a caller gets
# "Too many connections", so leave room for bursts of concurrent callers.
_CLUSTER_CONNECTIONS = 1024


class StoreHandle:
    """The sync store and, per event loop, the async store over the same data."""

    def __init__(self, sync: Any, make_async: Any, description: str) -> None:
        self._sync = sync
        self._make_async = make_async
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self.description = description

    @property
    def sync(self) -> Store:
        s = self._sync
        if not hasattr(s, "reserve"):  # a factory: build the store on first use
            s = self._sync = s()
        result: Store = s
        return result

    def for_loop(self) -> AsyncStore:
        loop = asyncio.get_running_loop()
        store = self._async.get(loop)
        if store is None:
            store = self._async[loop] = self._make_async()
        result: AsyncStore = store
        return result

    @property
    def is_memory(self) -> bool:
        return isinstance(self._sync, MemoryStore)

    def close(self) -> None:
        if hasattr(self._sync, "close"):
            self._sync.close()

    async def aclose(self) -> None:
        """Close the async store of the running loop (others close with their loop)."""
        store = self._async.pop(asyncio.get_running_loop(), None)
        if store is not None:
            await store.close()


def open_store(spec: Any) -> StoreHandle:
    """Build the store for a URI or a redis-py client. Raises ConfigurationError."""
    if isinstance(spec, MemoryStore):
        return StoreHandle(spec, lambda: AsyncMemoryStore(spec), "memory")
    if isinstance(spec, str):
        return _from_uri(spec)
    return _from_client(spec)


def _from_uri(uri: str) -> StoreHandle:
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise ConfigurationError(f"Malformed store URI {uri!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        memory = named_memory_store(parts.netloc + parts.path.strip("/"))
        return StoreHandle(memory, lambda: AsyncMemoryStore(memory), "memory")
    if scheme in _REDIS_SCHEMES:
        if scheme != "unix" and not parts.hostname:
            raise ConfigurationError(f"Store URI {uri!r} names no host: use redis://host:6379/0.")
        import redis
        import redis.asyncio

        from nasca_core.stores.redis import AsyncRedisStore, RedisStore

        # Blocking pools: a burst of concurrent callers waits for a connection instead of
        # failing with "Too many connections" (which on_store_error would have to judge).
        pool_args = {} if "max_connections=" in uri else {"max_connections": 64}
        try:
            pool = redis.BlockingConnectionPool.from_url(uri, timeout=10, **pool_args)
        except ValueError as exc:
            raise ConfigurationError(f"Malformed store URI {uri!r}: {exc}") from None
        return StoreHandle(
            lambda: RedisStore(redis.Redis(connection_pool=pool), owns_client=True),
            lambda: AsyncRedisStore(
                redis.asyncio.Redis(connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
                    uri, timeout=10, **pool_args)),
                owns_client=True,
            ),
            f"redis {parts.hostname or parts.path}",
        )
    if scheme in _CLUSTER_SCHEMES:
        nodes = _cluster_nodes(uri, parts.netloc)
        ssl = scheme.startswith("rediss")
        from redis.asyncio.cluster import ClusterNode as AsyncNode
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
        from redis.cluster import ClusterNode, RedisCluster

        from nasca_core.stores.redis import AsyncRedisStore, RedisStore

        pw = parts.password
        return StoreHandle(
            lambda: RedisStore(
                RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], ssl=ssl, password=pw,
                             max_connections=_CLUSTER_CONNECTIONS),
                owns_client=True,
            ),
            lambda: AsyncRedisStore(
                AsyncRedisCluster(startup_nodes=[AsyncNode(h, p) for h, p in nodes], ssl=ssl, password=pw,
                                  max_connections=_CLUSTER_CONNECTIONS),
                owns_client=True,
            ),
            f"redis cluster {nodes[0][0]}:{nodes[0][1]}",
        )
    raise ConfigurationError(
        f"Unknown store URI scheme in {uri!r}: use memory://, redis://, rediss://, unix:// "
        "or redis+cluster://host:port."
    )


def _cluster_nodes(uri: str, netloc: str) -> list[tuple[str, int]]:
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for item in filter(None, hosts.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(f"Malformed cluster node {item!r} in {uri!r}: use host:port.")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ConfigurationError(f"Store URI {uri!r} names no cluster node: use redis+cluster://host:port.")
    return nodes


def _from_client(client: Any) -> StoreHandle:
    import redis
    import redis.asyncio
    from redis.asyncio.cluster import ClusterNode as AsyncNode
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import ClusterNode, RedisCluster

    from nasca_core.stores.redis import AsyncRedisStore, RedisStore

    if isinstance(client, RedisCluster):
        nodes = [(n.host, n.port) for n in client.get_nodes()]
        return StoreHandle(
            RedisStore(client),
            lambda: AsyncRedisStore(
                AsyncRedisCluster(startup_nodes=[AsyncNode(h, p) for h, p in nodes]), owns_client=True
            ),
            "redis cluster (client)",
        )
    if isinstance(client, redis.Redis):
        kwargs = dict(client.connection_pool.connection_kwargs)
        cls = client.connection_pool.connection_class
        return StoreHandle(
            RedisStore(client),
            lambda: AsyncRedisStore(_async_twin(kwargs, cls), owns_client=True),
            "redis (client)",
        )
    if isinstance(client, AsyncRedisCluster):
        nodes = [(n.host, n.port) for n in client.get_nodes()]
        return StoreHandle(
            lambda: RedisStore(RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes]),
                               owns_client=True),
            lambda: AsyncRedisStore(client),
            "redis cluster (asyncio client)",
        )
    if isinstance(client, redis.asyncio.Redis):
        kwargs = dict(client.connection_pool.connection_kwargs)
        kwargs.pop("connection_class", None)
        return StoreHandle(
            lambda: RedisStore(redis.Redis(**_sync_kwargs(kwargs)), owns_client=True),
            lambda: AsyncRedisStore(client),
            "redis (asyncio client)",
        )
    raise ConfigurationError(
        f"store must be a URI string or a redis-py client, got {type(client).__name__}."
    )


def _async_twin(kwargs: dict[str, Any], cls: type) -> Any:
    import redis.asyncio

    if cls.__name__ == "UnixDomainSocketConnection":
        return redis.asyncio.Redis(unix_socket_path=kwargs.get("path"), db=kwargs.get("db", 0),
                                   password=kwargs.get("password"))
    return redis.asyncio.Redis(**_sync_kwargs(kwargs))


def _sync_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    keep = ("host", "port", "db", "username", "password", "socket_timeout", "socket_connect_timeout",
            "decode_responses", "encoding")
    return {k: v for k, v in kwargs.items() if k in keep}
