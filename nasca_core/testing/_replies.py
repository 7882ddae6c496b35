"""What the local server answers: replies, tool calls, token usage, injected failures."""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from nasca_core._errors import ConfigurationError

DEFAULT_REPLY_TEXT = "This is a reply from the Nasca test server."

_ALNUM = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24, *, alphabet: str = _ALNUM) -> str:
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass(frozen=True)
class Usage:
    """Token counts to report instead of the computed ones, or the counts the server reported.

    ``input_tokens`` is the whole prompt, cached and cache-written tokens included (as
    OpenAI counts ``prompt_tokens``); ``output_tokens`` includes ``reasoning_tokens``.
    Each provider's wire format is derived from these: Anthropic's ``input_tokens`` is
    ``input_tokens - cached_tokens - cache_write_tokens``, with the other two in
    ``cache_read_input_tokens`` / ``cache_creation_input_tokens``.

    Raises ConfigurationError for negative counts or parts larger than their whole.
    """

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        for name in (
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"Usage.{name} must be an int >= 0, got {value!r}")
        if self.cached_tokens + self.cache_write_tokens > self.input_tokens:
            raise ConfigurationError(
                "Usage.cached_tokens + cache_write_tokens must not exceed input_tokens "
                f"({self.cached_tokens} + {self.cache_write_tokens} > {self.input_tokens})"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ConfigurationError(
                f"Usage.reasoning_tokens ({self.reasoning_tokens}) must not exceed "
                f"output_tokens ({self.output_tokens})"
            )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """Anthropic's ``input_tokens``: the prompt minus cache reads and cache writes."""
        return self.input_tokens - self.cached_tokens - self.cache_write_tokens


@dataclass(frozen=True)
class ToolCall:
    """A function call the model asks for: ``ToolCall("get_weather", {"city": "Paris"})``.

    ``id`` defaults to a fresh provider-style id per request (``call_…``, ``toolu_…``).
    """

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None

    @property
    def arguments_json(self) -> str:
        return json.dumps(dict(self.arguments), ensure_ascii=False)


@dataclass(frozen=True)
class Reply:
    """One scripted model answer: ``Reply("hi")``, ``Reply(tool_calls=[ToolCall(...)])``.

    ``usage`` replaces the computed token counts; ``finish_reason`` takes either
    provider's vocabulary (``"stop"``/``"end_turn"``, ``"length"``/``"max_tokens"``,
    ``"tool_calls"``/``"tool_use"``, ``"content_filter"``/``"refusal"``) and is
    translated per wire format; other values are passed through unchanged.

    ``wire`` replays a recorded provider response verbatim instead: the JSON body (a
    mapping) for a plain request, or the stream's event payloads (a list of mappings; each
    ``type`` names its SSE event on Anthropic and Responses streams) for ``stream=True``.
    """

    text: str = ""
    _: KW_ONLY
    tool_calls: Sequence[ToolCall] = ()
    usage: Usage | None = None
    finish_reason: str | None = None
    wire: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        # a caller's list could still change after the reply was queued
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))


@dataclass(frozen=True)
class Failure:
    status: int
    body: Any
    message: str | None
    endpoint: str | None
    after_chunks: int | None
    headers: Mapping[str, str]


# finish reasons in each vocabulary; "neutral" names are OpenAI Chat Completions'
_TO_ANTHROPIC = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_TO_OPENAI = {v: k for k, v in _TO_ANTHROPIC.items()} | {"stop_sequence": "stop"}


def openai_finish_reason(reason: str) -> str:
    return _TO_OPENAI.get(reason, reason)


def anthropic_stop_reason(reason: str) -> str:
    return _TO_ANTHROPIC.get(reason, reason)


@dataclass
class Turn:
    """A reply resolved for one request: final text, ids, usage and finish reason."""

    model: str
    text: str
    tool_calls: list[ToolCall]  # ids filled in
    usage: Usage
    finish_reason: str  # either vocabulary; each wire format translates it
    created: int = field(default_factory=lambda: int(time.time()))
    wire: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None  # recorded, sent verbatim
