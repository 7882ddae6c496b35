"""What the Redis stores send for the pools (``_pools``) and what the replies mean, free of I/O
(sync and async alike), and how a user's script and a pool's share one round trip.

A pool's keys share a hash tag of their own (``PoolKeys``), so on a cluster a pool's script goes
to the pool's node and the user's to the user's, in one client pipeline (redis-py's cluster
pipeline writes each node's commands together). The pool's command comes first: on one server
it runs first; on a cluster either may land without the other if the process dies between, and
both are safe to run again (a take by its lease id, a charge by its hold ids, a reserve by its
hold, a settle by its marker), so the journal's replay of the settle completes it.

    {tag}:<pool>:h     zset  lease id -> the chunk's expiry, epoch ms
    {tag}:<pool>:hs    hash  lease id -> the chunk's nanos
    {tag}:<pool>:s     zset  hold ids charged -> when they may be forgotten
    {tag}:<pool>:d:/w:/m:<id>  the window's nanos spent (plain counters)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from nasca_core.stores._base import ReserveOp, ReserveResult, SettleOp
from nasca_core.stores._pools import (
    PoolKeys,
    PoolSnapshot,
    PoolTakeOp,
    PoolTakeResult,
    check_pools,
    check_ref,
    check_take,
    chunk_of,
)
from nasca_core.stores._redis_errors import translate

Command = tuple[Any, ...]


def take_args(op: PoolTakeOp) -> tuple[list[str], list[Any]]:
    check_take(op)
    k = op.keys
    return ([k.holds, k.held, k.day, k.week, k.month],
            [op.now_ms, op.lease_id, op.want, op.least, *op.limits, op.expiry_ms])


def take_result(raw: Sequence[Any]) -> PoolTakeResult:
    return PoolTakeResult(int(raw[0]), int(raw[1]), (int(raw[2]), int(raw[3]), int(raw[4])), int(raw[5]))


def release_args(keys: PoolKeys, lease_id: str, now_ms: int) -> tuple[list[str], list[Any]]:
    check_ref(keys, now_ms, lease_id)
    return [keys.holds, keys.held], [lease_id]


def snapshot_args(keys: PoolKeys, now_ms: int) -> tuple[list[str], list[Any]]:
    check_ref(keys, now_ms)
    return [keys.holds, keys.held, keys.day, keys.week, keys.month], [now_ms]


def snapshot_result(raw: Sequence[Any]) -> PoolSnapshot:
    return PoolSnapshot((int(raw[0]), int(raw[1]), int(raw[2])), int(raw[3]))


def charge_commands(op: SettleOp, sha: str) -> list[Command]:
    """The pool charges of a settle, one EVALSHA of pool_charge.lua per pool."""
    check_pools(op.pools, op.chunks)
    head, ids = (op.now_ms, op.cost, *op.ttls_ms, op.marker_expiry_ms), (op.hold_id, *op.of)
    return [("EVALSHA", sha, 5, k.settled, k.day, k.week, k.month, k.held, *head, chunk_of(op.chunks, i),
             *ids) for i, k in enumerate(op.pools)]


def evalsha(sha: str, keys: list[str], args: list[Any]) -> Command:
    return ("EVALSHA", sha, len(keys), *keys, *args)


def noscript(replies: Sequence[Any]) -> list[int]:
    """Which commands met NOSCRIPT: sent again once the scripts are loaded, those alone (the
    others ran: a settle sent again would answer "already settled", its warn_at marks lost)."""
    return [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]


def checked(replies: Sequence[Any], sent: int, tier: str) -> list[Any]:
    """The replies of a pipeline of ``sent`` commands, raising the first error among them (as
    Nasca's) or when the connection was lost before every reply was read: the caller's op did
    not land as a whole, and running it again is safe."""
    for reply in replies:
        if isinstance(reply, BaseException):  # a cancelled call (asyncio) is raised as it is
            if (mapped := translate(reply, tier)) is reply:
                raise reply
            raise mapped from reply
    if len(replies) < sent:
        raise translate(ConnectionError("Redis connection lost before every reply was read"), tier)
    return list(replies)


def answered(exc: BaseException) -> bool:
    """Whether a failed pooled reserve's error is the server's reply (WRONGTYPE, a script's
    error): the take may have landed, and one more command drops it now. Not for a lost
    connection, a timeout or a cancelled call: the server may not answer that command either
    (a stopped server would cost the caller one more timeout), and the core releases a take
    whose reply never came (``nasca_core._pools``, ``LOST_TAKE_MS``), else it expires."""
    return isinstance(exc.__cause__, ResponseError) or isinstance(exc, ResponseError)


def reserve_outcome(op: ReserveOp, pool: PoolTakeResult, result: ReserveResult,
                    version: int | None) -> tuple[ReserveResult, bool]:
    """The pooled reserve's answer, and whether the user's hold must be released at once: when
    the pool granted nothing (the call is blocked) or the caller's config was stale (a cluster
    checks the version beside the script), an admitted reserve is undone. The pool first, as
    the other stores answer (their take comes before any version check): blocked is blocked."""
    if not pool.granted:
        return ReserveResult(0, op.tier, 0, (0, 0, 0), 0, -1, pool=pool), result.status == 1
    if version is not None and version != op.config_version:
        return ReserveResult(-1, "", 0, (0, 0, 0), 0, -1, pool=pool), result.status == 1
    result.pool = pool
    return result, False
