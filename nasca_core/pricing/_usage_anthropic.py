"""Anthropic's usage: Messages ``usage``, a whole Message (its code-execution container) and
a stream's events, in the convention of ``_usage.py``."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from nasca_core._errors import UsageParseError
from nasca_core.pricing._usage import (
    TokenUsage,
    _as_mapping,
    _build,
    _details,
    _get,
    _optional,
    _required,
    _tier,
)


def usage_from_anthropic(usage: object) -> TokenUsage:
    """Read Anthropic Messages ``usage`` (dict or ``anthropic.types.Usage``).

    Anthropic's ``input_tokens`` EXCLUDES ``cache_read_input_tokens`` and
    ``cache_creation_input_tokens``: the three are disjoint and each is billed (writes at
    1.25x input for 5 minutes or 2x for 1 hour, reads at 0.1x). We add them into
    ``input_tokens`` so they are subsets like everyone else's; pricing the raw
    ``input_tokens`` as "all input" and the cache counters again on top is the
    double-billing trap, forgetting them is the under-billing one. ``cache_creation`` splits
    writes by TTL; ``server_tool_use`` counts web searches (billed per search) and web
    fetches; ``service_tier`` says standard, priority or batch.

    Raises UsageParseError.
    """
    what = "Anthropic"
    data = _as_mapping(usage, what)
    uncached = _required(data, "input_tokens", what)
    output = _required(data, "output_tokens", what)
    return _anthropic(data, uncached, output, what)


def usage_from_anthropic_message(
    message: object, *, tools: Iterable[object] | None = None
) -> TokenUsage | None:
    """Usage of a whole Anthropic Message: its ``usage``, plus the code-execution container
    it ran in (``message.container``, set when a container tool was used). Anthropic bills
    container time, which no response reports, with a 5-minute minimum: a message with a
    container counts one 5-minute unit, unless code execution was free for the request.

    Anthropic's rule is on the request: code execution is free when a ``web_search`` or
    ``web_fetch`` tool of version 20260209 or later is in it, and billed with older
    versions. Pass the request's ``tools`` to apply it; without them (a framework that
    does not show the request) the response decides: free when its only server tools were
    web search and web fetch (dynamic filtering), billed otherwise. None when the message
    carries no usage.

    Raises UsageParseError.
    """
    usage = _get(message, "usage")
    if usage is None:
        return None
    parsed = usage_from_anthropic(usage)
    used = {_get(b, "name") for b in _get(message, "content") or () if _get(b, "type") == "server_tool_use"}
    if _get(message, "container") is None or not container_billed(used, tools):
        return parsed
    return dataclasses.replace(parsed, code_containers=1)


_FREE_CONTAINER_TOOLS = frozenset({"web_search", "web_fetch"})
_FREE_TOOL_TYPE = re.compile(r"web_(?:search|fetch)_(\d{8})")
_FREE_SINCE = 20260209


def container_billed(server_tools: set[Any], request_tools: Iterable[object] | None = None) -> bool:
    """Whether Anthropic bills a response's code-execution container (see
    ``usage_from_anthropic_message``): by the request's tool versions when they are known."""
    if request_tools is not None:
        for tool in request_tools:
            kind = _get(tool, "type")
            match = _FREE_TOOL_TYPE.fullmatch(kind) if isinstance(kind, str) else None
            if match is not None and int(match.group(1)) >= _FREE_SINCE:
                return False
        return True
    # No server tool at all: files preloaded into the container are billed even unused.
    return not server_tools or not server_tools <= _FREE_CONTAINER_TOOLS


def _anthropic(data: Mapping[str, Any], uncached: int, output: int, what: str) -> TokenUsage:
    cache_read = _optional(data, "cache_read_input_tokens", what)
    cache_write = _optional(data, "cache_creation_input_tokens", what)
    ttl = _details(data, "cache_creation", what)
    one_hour = _optional(ttl, "ephemeral_1h_input_tokens", what)
    if cache_write == 0:
        # Some payloads carry only the per-TTL breakdown.
        cache_write = _optional(ttl, "ephemeral_5m_input_tokens", what) + one_hour
    tools = _details(data, "server_tool_use", what)
    out = _details(data, "output_tokens_details", what)
    return _build(
        what,
        input_tokens=uncached + cache_read + cache_write,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=one_hour,
        reasoning_tokens=_optional(out, "thinking_tokens", what),
        web_searches=_optional(tools, "web_search_requests", what),
        web_fetches=_optional(tools, "web_fetch_requests", what),
        service_tier=_tier(data.get("service_tier")),
    )


class AnthropicStreamUsage:
    """Accumulates usage over an Anthropic Messages stream.

    ``message_start`` carries ``message.usage`` (input and cache counts, output so far);
    each ``message_delta`` carries ``usage`` whose counts are CUMULATIVE (the SDK documents
    every field as "the cumulative number"), so a later value replaces an earlier one rather
    than adding to it. Summing deltas over-counts whenever a stream sends more than one.
    Fields a delta leaves ``null`` keep their ``message_start`` value.

    Feed every event (others are ignored); read ``usage`` at the end. Raises UsageParseError
    from ``add`` on a malformed usage event. ``tools``: the request's, which decide whether
    a code-execution container is billed (``usage_from_anthropic_message``).
    """

    __slots__ = ("_container", "_data", "_request_tools", "_started", "_tools")

    def __init__(self, tools: Iterable[object] | None = None) -> None:
        self._data: dict[str, Any] = {}
        self._started = False
        self._container = False
        self._tools: set[Any] = set()
        self._request_tools = None if tools is None else list(tools)

    def add(self, event: object) -> None:
        """Take one stream event (dict or SDK event). Raises UsageParseError."""
        kind = _get(event, "type")
        if kind == "message_start":
            message = _get(event, "message")
            raw = _get(message, "usage")
            if raw is None:
                raise UsageParseError("Anthropic message_start has no message.usage")
            self._merge(_as_mapping(raw, "Anthropic message_start"))
            self._started = True
            self._container = _get(message, "container") is not None
        elif kind == "message_delta":
            if _get(_get(event, "delta"), "container") is not None:
                self._container = True
            raw = _get(event, "usage")
            if raw is not None:
                self._merge(_as_mapping(raw, "Anthropic message_delta"))
        elif kind == "content_block_start":
            block = _get(event, "content_block")
            if _get(block, "type") == "server_tool_use":
                self._tools.add(_get(block, "name"))

    def _merge(self, data: Mapping[str, Any]) -> None:
        for key, value in data.items():
            if value is not None:
                self._data[key] = value

    @property
    def usage(self) -> TokenUsage | None:
        """The usage so far, or None before ``message_start``. Raises UsageParseError."""
        if not self._started:
            return None
        parsed = usage_from_anthropic(self._data)
        if not self._container or not container_billed(self._tools, self._request_tools):
            return parsed
        return dataclasses.replace(parsed, code_containers=1)


def usage_from_anthropic_stream(events: Iterable[object]) -> TokenUsage | None:
    """Usage of a whole Anthropic event stream; None if it never started. Raises UsageParseError."""
    acc = AnthropicStreamUsage()
    for event in events:
        acc.add(event)
    return acc.usage
