"""Streams that fail before the first byte: a blocked user gets a 402, not a broken 200.

A web framework sends the status line when a streaming response starts, but a chain's
stream does nothing (and so raises nothing) until it is read. ``astarted`` and ``started``
read the first chunk now, so ``NascaBlockedError`` surfaces while the app can still answer
402; the chunk is then given back first.

    try:
        chunks = await astarted(chain.astream(question, config=config))
    except NascaBlockedError as err:
        return JSONResponse(upgrade_fields(err), status_code=402)
    return StreamingResponse(chunks)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

T = TypeVar("T")


async def astarted(stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """Read ``stream``'s first chunk now (raising what the stream raises, e.g.
    NascaBlockedError) and return an iterator over the whole stream, that chunk first."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return _aempty()
    return _athen(first, stream)


def started(stream: Iterator[T]) -> Iterator[T]:
    """Sync twin of astarted()."""
    try:
        first = next(stream)
    except StopIteration:
        return iter(())
    return _then(first, stream)


async def _athen(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        # A client that hangs up closes us: close the chain's stream now, so the call is
        # charged for what streamed (not whenever the garbage collector gets to it).
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()


async def _aempty() -> AsyncIterator[T]:
    return
    yield


def _then(first: T, rest: Iterator[T]) -> Iterator[T]:
    try:
        yield first
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()
