"""Opt-in: a block becomes the assistant's reply (an upgrade prompt), not a traceback.

``upgrade_reply(err)`` builds the message; ``with_upgrade_prompt(runnable)`` applies it to a
chat model or a chain that returns a message. For ``langchain.agents.create_agent`` use
``UpgradePromptMiddleware`` (in ``_middleware.py``: it imports langchain's agent stack).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig

from nasca_core import NascaBlockedError

METADATA_KEY = "nasca_blocked"


def upgrade_fields(err: NascaBlockedError) -> dict[str, Any]:
    """The block as JSON-ready fields (what ``response_metadata["nasca_blocked"]`` holds)."""
    return {
        "user_id": err.user_id,
        "tier": err.tier,
        "window": err.window,
        "resets_at": err.resets_at.isoformat() if err.resets_at else None,
        "upgrade_message": err.upgrade_message,
        "checkout_url": err.checkout_url,
        "prompt_id": err.prompt_id,
    }


def upgrade_reply(err: NascaBlockedError, *, chunk: bool = False) -> AIMessage:
    """An assistant message showing ``err.upgrade_message`` (and ``checkout_url``).

    The structured fields go in ``response_metadata["nasca_blocked"]``, which chat models
    never send back to the provider. ``chunk=True`` gives an ``AIMessageChunk`` for streams.
    """
    content = err.upgrade_message
    if err.checkout_url:
        content = f"{content}\n\n{err.checkout_url}"
    cls = AIMessageChunk if chunk else AIMessage
    return cls(
        content=content,
        id=f"nasca-blocked-{err.prompt_id}" if err.prompt_id else None,
        response_metadata={METADATA_KEY: upgrade_fields(err)},
    )


class _WithUpgradePrompt(Runnable[Any, Any]):
    """``bound``, with a NascaBlockedError turned into ``upgrade_reply(err)``."""

    def __init__(self, bound: Runnable[Any, Any]) -> None:
        self.bound = bound

    def __repr__(self) -> str:
        return f"with_upgrade_prompt({self.bound!r})"

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        try:
            return self.bound.invoke(input, config, **kwargs)
        except NascaBlockedError as err:
            return upgrade_reply(err)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None,
                      **kwargs: Any) -> Any:
        try:
            return await self.bound.ainvoke(input, config, **kwargs)
        except NascaBlockedError as err:
            return upgrade_reply(err)

    def stream(self, input: Any, config: RunnableConfig | None = None,
               **kwargs: Any) -> Iterator[Any]:
        try:
            yield from self.bound.stream(input, config, **kwargs)
        except NascaBlockedError as err:
            yield upgrade_reply(err, chunk=True)

    async def astream(self, input: Any, config: RunnableConfig | None = None,
                      **kwargs: Any) -> AsyncIterator[Any]:
        try:
            async for item in self.bound.astream(input, config, **kwargs):
                yield item
        except NascaBlockedError as err:
            yield upgrade_reply(err, chunk=True)


def with_upgrade_prompt(runnable: Runnable[Any, Any]) -> Runnable[Any, Any]:
    """Wrap a chat model (or a chain returning a message) so that a NascaBlockedError
    comes back as ``upgrade_reply(err)`` from invoke/stream/batch and their async twins.
    Other errors propagate unchanged."""
    return _WithUpgradePrompt(runnable)
