"""Server-sent events and the way replies are cut into deltas."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

_PIECE = re.compile(r"\s*\S+\s*$|\s*\S+|\s+$")
ARGUMENT_CHUNK = 12  # characters of tool-call JSON per delta


class Event(NamedTuple):
    data: bytes
    is_delta: bool  # carries reply content: per-chunk delay and after_chunks count these


def sse(payload: Any, event: str | None = None) -> bytes:
    body = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {body}\n\n".encode()


def split_text(text: str) -> list[str]:
    """Word-sized pieces (leading space attached, as tokens are) that join back to ``text``."""
    return _PIECE.findall(text)


def split_arguments(arguments: str) -> Iterator[str]:
    for start in range(0, len(arguments), ARGUMENT_CHUNK):
        yield arguments[start : start + ARGUMENT_CHUNK]


def text_of(content: Any) -> list[str]:
    """The text pieces in a message ``content``: a string or a list of typed parts/blocks.

    Text parts (``text``, ``input_text``, ``output_text``) count; tool results count by
    their content; tool calls by their JSON input; images, audio and files do not.
    """
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [piece for part in content for piece in text_of(part)]
    if not isinstance(content, dict):
        return []
    kind = content.get("type")
    if isinstance(content.get("text"), str):
        return [content["text"]]
    if kind == "thinking" and isinstance(content.get("thinking"), str):
        return [content["thinking"]]
    if kind == "tool_use":
        return [json.dumps(content.get("input", {}), ensure_ascii=False)]
    if kind == "tool_result":
        return text_of(content.get("content"))
    return []
