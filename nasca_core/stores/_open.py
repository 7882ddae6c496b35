"""Open a store by URI or client: the sync store and, per event loop, its async twin.

Memory is built in; the SQLite and Redis modules load only for their URIs or clients.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from nasca_core._errors import ConfigurationError
from nasca_core.stores._base import AsyncStore, Store
from nasca_core.stores.memory import AsyncMemoryStore, MemoryStore, named_memory_store

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# Per node. redis-py's cluster clients have no blocking pool: past this a caller gets
# "Too many connections", so leave room for bursts of concurrent callers.
_CLUSTER_CONNECTIONS = 1024


class StoreHandle:
    """The sync store and, per event loop, the async store over the same data; each is
    built on first use (a Redis client connects when it is first asked)."""

    def __init__(self, make_sync: Callable[[], Store], make_async: Callable[[], AsyncStore],
                 description: str, *, is_memory: bool = False, identity: str | None = None) -> None:
        self._make_sync = make_sync
        self._sync: Store | None = None
        self._make_async = make_async
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncStore] = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.description = description
        self.is_memory = is_memory
        # The store's address as written (no credentials): where the journal of deferred
        # settles goes while the store's own id can't be read (``_journal_home``). None for
        # memory, which has no journal.
        self.identity = identity
        # Telemetry (nasca_core.otel): when set, every store handed out is seen through these,
        # by every holder of the handle (the ledger, the background sender, billing...).
        self.see_sync: Callable[[Store], Store] | None = None
        self.see_async: Callable[[AsyncStore], AsyncStore] | None = None

    @property
    def sync(self) -> Store:
        store = self._sync
        if store is None:
            with self._lock:
                store = self._sync
                if store is None:
                    store = self._sync = self._make_sync()
        return store if self.see_sync is None else self.see_sync(store)

    def for_loop(self) -> AsyncStore:
        """The async store of the running event loop. Raises RuntimeError outside a loop."""
        loop = asyncio.get_running_loop()
        store = self._async.get(loop)
        if store is None:
            store = self._async[loop] = self._make_async()
        return store if self.see_async is None else self.see_async(store)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        """Close the async store of the running loop (others close with their loop)."""
        store = self._async.pop(asyncio.get_running_loop(), None)
        if store is not None:
            await store.close()


def open_store(spec: Any, *, require_durable: bool = False) -> StoreHandle:
    """Build the store for a URI or a redis-py client. ``require_durable``: refuse a Redis
    that may evict or forget ledger keys (else a warning is logged). Raises ConfigurationError."""
    if isinstance(spec, MemoryStore):
        return _memory(spec)
    if isinstance(spec, str):
        return _from_uri(spec, require_durable)
    return _from_client(spec, require_durable)


def _memory(store: MemoryStore) -> StoreHandle:
    return StoreHandle(lambda: store, lambda: AsyncMemoryStore(store), "memory", is_memory=True)


def _from_uri(uri: str, durable: bool) -> StoreHandle:
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise ConfigurationError(f"Malformed store URI {uri!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return _memory(named_memory_store(parts.netloc + parts.path.strip("/")))
    if scheme == "sqlite":
        return _sqlite(uri)
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
            lambda: RedisStore(redis.Redis(connection_pool=pool), owns_client=True, require_durable=durable),
            lambda: AsyncRedisStore(
                redis.asyncio.Redis(connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
                    uri, timeout=10, **pool_args)),
                owns_client=True, require_durable=durable,
            ),
            f"redis {parts.hostname or parts.path}",
            identity=_redis_identity(scheme, parts.hostname or "", parts.port or 6379,
                                     parts.path if scheme == "unix" else parts.path.strip("/") or "0"),
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
                owns_client=True, require_durable=durable,
            ),
            lambda: AsyncRedisStore(
                AsyncRedisCluster(startup_nodes=[AsyncNode(h, p) for h, p in nodes], ssl=ssl, password=pw,
                                  max_connections=_CLUSTER_CONNECTIONS),
                owns_client=True, require_durable=durable,
            ),
            f"redis cluster {nodes[0][0]}:{nodes[0][1]}",
            identity=_cluster_identity(nodes),
        )
    raise ConfigurationError(
        f"Unknown store URI scheme in {uri!r}: use memory://, sqlite:///path, redis://, rediss://, "
        "unix:// or redis+cluster://host:port."
    )


def _sqlite(uri: str) -> StoreHandle:
    # As SQLAlchemy spells it: sqlite:///relative/path, sqlite:////absolute/path.
    path = uri.split("://", 1)[1]
    if not path.startswith("/") or len(path) < 2 or "?" in path or path[1:] == ":memory:":
        raise ConfigurationError(
            f"Malformed SQLite store URI {uri!r}: use sqlite:///nasca.db (relative to the working "
            "directory) or sqlite:////var/lib/nasca.db (absolute); memory:// for a store in memory.")
    from nasca_core.stores.sqlite import AsyncSqliteStore, SqliteStore

    path = path[1:]
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigurationError(f"SQLite store {uri!r}: the directory {parent!r} does not exist.")
    store = SqliteStore(path)
    where = os.path.realpath(path)
    return StoreHandle(lambda: store, lambda: AsyncSqliteStore(store), f"sqlite {where}",
                       identity=f"sqlite:{where}")


def _cluster_nodes(uri: str, netloc: str) -> list[tuple[str, int]]:
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for item in filter(None, hosts.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
            raise ConfigurationError(f"Malformed cluster node {item!r} in {uri!r}: use host:port.")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ConfigurationError(f"Store URI {uri!r} names no cluster node: use redis+cluster://host:port.")
    return nodes


def _from_client(client: Any, durable: bool) -> StoreHandle:
    import redis
    import redis.asyncio
    from redis.asyncio.cluster import ClusterNode as AsyncNode
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import ClusterNode, RedisCluster

    from nasca_core.stores.redis import AsyncRedisStore, RedisStore

    if isinstance(client, RedisCluster):
        nodes = [(n.host, n.port) for n in client.get_nodes()]
        return StoreHandle(
            lambda: RedisStore(client, require_durable=durable),
            lambda: AsyncRedisStore(
                AsyncRedisCluster(startup_nodes=[AsyncNode(h, p) for h, p in nodes]), owns_client=True,
                require_durable=durable,
            ),
            "redis cluster (client)", identity=_cluster_identity(nodes),
        )
    if isinstance(client, redis.Redis):
        kwargs = dict(client.connection_pool.connection_kwargs)
        cls = client.connection_pool.connection_class
        return StoreHandle(
            lambda: RedisStore(client, require_durable=durable),
            lambda: AsyncRedisStore(_async_twin(kwargs, cls), owns_client=True,
                                    require_durable=durable),
            "redis (client)", identity=_client_identity(kwargs),
        )
    if isinstance(client, AsyncRedisCluster):
        nodes = [(n.host, n.port) for n in client.get_nodes()]
        return StoreHandle(
            lambda: RedisStore(RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes]),
                               owns_client=True, require_durable=durable),
            lambda: AsyncRedisStore(client, require_durable=durable),
            "redis cluster (asyncio client)", identity=_cluster_identity(nodes),
        )
    if isinstance(client, redis.asyncio.Redis):
        kwargs = dict(client.connection_pool.connection_kwargs)
        kwargs.pop("connection_class", None)
        return StoreHandle(
            lambda: RedisStore(redis.Redis(**_sync_kwargs(kwargs)), owns_client=True,
                               require_durable=durable),
            lambda: AsyncRedisStore(client, require_durable=durable),
            "redis (asyncio client)", identity=_client_identity(kwargs),
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


def _redis_identity(scheme: str, host: str, port: int, db: str) -> str:
    return f"unix:{db}" if scheme == "unix" else f"redis:{host.lower()}:{port}/{db}"


def _client_identity(kwargs: dict[str, Any]) -> str:
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return _redis_identity("redis", str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)),
                           str(kwargs.get("db", 0)))


def _cluster_identity(nodes: list[tuple[str, int]]) -> str:
    # Any node names the cluster, but different processes may list different ones: all of them.
    return "cluster:" + ",".join(sorted(f"{h.lower()}:{p}" for h, p in nodes))
