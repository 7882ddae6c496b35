"""The scripts' round trips on connections of their own, past redis-py's per-command layers.

redis-py's ``execute_command`` costs about as much Python as the round trip itself: the
pool's checks and lock, its observability hooks, the retry wrapper, packing argument by
argument. Measured here (redis-py 8.1, hiredis, loopback), an EVALSHA with 30 arguments
took 182 µs through it, against 60 µs on a connection of its own with the command packed
by hiredis in one call; a bare ``GET`` through the client took 137 µs.

``Conns`` keeps idle connections made by the client's own pool (same address, auth, db,
timeouts, protocol) in a deque. A connection that an error or an interrupt may have left
mid-reply is dropped, never reused. A connection error falls back to the client, so its
retry policy applies (every script is safe to run twice). Used for EVALSHA only: its reply
has no redis-py response callback, so it is the same whichever way it travels.
``AsyncConns`` is the asyncio twin (269 against 160 µs measured the same way); its idle
connections belong to one event loop, and a task cancelled mid-reply drops its connection.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - redis-py then packs (slower)
    _hiredis_pack = None


class Conns:
    """``call(*args)``: one command on an idle connection of the client's pool."""

    __slots__ = ("_client", "_free", "_pack", "_pid")

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._free: deque[Any] = deque()
        self._pid = os.getpid()
        self._pack = _packer(client.connection_pool.connection_kwargs)

    def call(self, *args: Any) -> Any:
        if self._pid != os.getpid():  # a forked child must not share its parent's sockets
            self._free, self._pid = deque(), os.getpid()
        packed = None
        if self._pack is not None:
            try:
                packed = self._pack(args)
            except (TypeError, ValueError):  # let the client raise what it raises for such input
                return self._client.execute_command(*args)
        try:
            conn = self._free.pop()
        except IndexError:
            conn = self._client.connection_pool.make_connection()
        try:
            if packed is None:
                conn.send_command(*args)
            else:
                conn.send_packed_command((packed,))
            reply = conn.read_response()
        except redis.ResponseError:
            self._free.append(conn)  # a whole error reply was read: the connection is in step
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            return self._client.execute_command(*args)  # with the client's retries
        except BaseException:
            conn.disconnect()
            raise
        self._free.append(conn)
        return reply

    def call_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The commands written in one send, their replies read in order: each a reply or the
        ``ResponseError`` it was. A connection lost midway ends the list early (those not
        read may or may not have run); lost (or timed out) before any reply, its error is raised."""
        if self._pid != os.getpid():
            self._free, self._pid = deque(), os.getpid()
        if self._pack is None:  # pragma: no cover - without hiredis: one at a time
            return [self.call(*command) for command in commands]
        packed = b"".join([self._pack(command) for command in commands])
        try:
            conn = self._free.pop()
        except IndexError:
            conn = self._client.connection_pool.make_connection()
        replies: list[Any] = []
        try:
            conn.send_packed_command((packed,))
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as err:  # a whole error reply was read: still in step
                    replies.append(err)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            # The idle connections beside it are as old: those dropped together would each
            # cost the settles after this a timeout. New ones are made on demand.
            self.close()
            if not replies:
                raise
            return replies
        except BaseException:
            conn.disconnect()
            raise
        self._free.append(conn)
        return replies

    def close(self) -> None:
        while self._free:
            self._free.pop().disconnect()


class AsyncConns:
    """The asyncio twin of Conns: ``await call(*args)``."""

    __slots__ = ("_client", "_free", "_loop", "_pack")

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._free: deque[Any] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pack = _packer(client.connection_pool.connection_kwargs)

    async def call(self, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # connections are bound to the loop that opened them
            self._free, self._loop = deque(), loop
        packed: Any = None
        if self._pack is not None:
            try:
                packed = (self._pack(args),)
            except (TypeError, ValueError):
                return await self._client.execute_command(*args)
        try:
            conn = self._free.pop()
        except IndexError:
            conn = self._client.connection_pool.make_connection()
        try:
            if packed is None:
                await conn.send_command(*args)
            else:
                await conn.send_packed_command(packed)
            reply = await conn.read_response()
        except redis.ResponseError:
            self._free.append(conn)
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            await conn.disconnect(nowait=True)
            return await self._client.execute_command(*args)
        except BaseException:  # cancelled mid-reply: the connection may still owe a reply
            await conn.disconnect(nowait=True)
            raise
        self._free.append(conn)
        return reply

    async def close(self) -> None:
        while self._free:
            await self._free.pop().disconnect()


def _packer(kwargs: dict[str, Any]) -> Callable[[tuple[Any, ...]], bytes] | None:
    # hiredis encodes text as strict UTF-8: only then is its packing the client's.
    utf8 = str(kwargs.get("encoding", "utf-8")).lower().replace("_", "-") in ("utf-8", "utf8")
    return _hiredis_pack if utf8 and kwargs.get("encoding_errors", "strict") == "strict" else None
