"""One token-usage model, and parsers for the providers' wire shapes (framework adapters
read their framework's own usage objects into the same model).

Convention (the one OpenAI and Gemini report, and the one our cost formula needs):

    input_tokens        ALL input tokens, cache reads and cache writes included
      cache_read_tokens   subset of input read from a prompt cache
      cache_write_tokens  subset of input written to a prompt cache
    output_tokens       ALL output tokens, reasoning included
      reasoning_tokens    subset of output spent on hidden reasoning/thinking

Providers that report otherwise (Anthropic's ``input_tokens`` excludes cache traffic;
Gemini's ``candidatesTokenCount`` excludes thoughts) are converted here, once, so the
pricing code never has to know who sent the numbers.

Every parser raises ``UsageParseError`` on a payload it cannot read. None of them
returns a silent zero for garbage: a missing *required* count is an error. Optional
detail counts that are absent or ``null`` mean 0 (providers omit them when unused).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nasca_core._errors import UsageParseError

_MAX_TOKENS = 2**53  # no real call comes near; a bigger count is a corrupt payload


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one model call, in the convention described in the module docstring.

    Beyond the five core counts: ``cache_write_1h_tokens`` (subset of ``cache_write_tokens``
    written with a 1-hour TTL), audio and image tokens (subsets of input and output, billed at
    their own rates where the model has them), ``web_searches`` (server-side tool calls billed
    per call), ``web_fetches`` (Anthropic's web fetch: recorded, no fee) and ``service_tier``
    (the tier the provider says it served: ``"flex"``, ``"priority"``, ``"batch"``...).

    Raises UsageParseError when a count is not a non-negative int, or a subset exceeds its total.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0
    input_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_audio_tokens: int = 0
    output_image_tokens: int = 0
    web_searches: int = 0
    web_fetches: int = 0
    service_tier: str | None = None

    def __post_init__(self) -> None:
        i, o = self.input_tokens, self.output_tokens
        cr, cw, rs = self.cache_read_tokens, self.cache_write_tokens, self.reasoning_tokens
        # Fast path (one usage per model call): exact ints (not bool), in range, subsets fit.
        if (
            type(i) is int
            and type(o) is int
            and type(cr) is int
            and type(cw) is int
            and type(rs) is int
            and 0 <= i <= _MAX_TOKENS
            and 0 <= o <= _MAX_TOKENS
            and cr >= 0
            and cw >= 0
            and 0 <= rs <= o
            and cr + cw <= i
            and not (
                self.cache_write_1h_tokens
                or self.input_audio_tokens
                or self.input_image_tokens
                or self.output_audio_tokens
                or self.output_image_tokens
                or self.web_searches
                or self.web_fetches
            )
            and (self.service_tier is None or type(self.service_tier) is str)
        ):
            return
        for name in _FIELDS:
            _check_count(getattr(self, name), name)
        if self.service_tier is not None and not isinstance(self.service_tier, str):
            raise UsageParseError(f"service_tier must be a string or None, got {self.service_tier!r}")
        inputs = (
            self.cache_read_tokens
            + self.cache_write_tokens
            + self.input_audio_tokens
            + self.input_image_tokens
        )
        if inputs > self.input_tokens:
            raise UsageParseError(
                f"cache_read_tokens ({self.cache_read_tokens}) + cache_write_tokens "
                f"({self.cache_write_tokens}) + input audio/image tokens exceed input_tokens "
                f"({self.input_tokens})"
            )
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise UsageParseError(
                f"cache_write_1h_tokens ({self.cache_write_1h_tokens}) exceed cache_write_tokens "
                f"({self.cache_write_tokens})"
            )
        outputs = self.reasoning_tokens + self.output_audio_tokens + self.output_image_tokens
        if outputs > self.output_tokens:
            raise UsageParseError(
                f"reasoning_tokens ({self.reasoning_tokens}) + output audio/image tokens exceed "
                f"output_tokens ({self.output_tokens})"
            )

    def __add__(self, other: object) -> TokenUsage:
        if not isinstance(other, TokenUsage):
            return NotImplemented
        counts = {name: getattr(self, name) + getattr(other, name) for name in _FIELDS}
        return TokenUsage(**counts, service_tier=self.service_tier or other.service_tier)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "input_image_tokens",
    "output_audio_tokens",
    "output_image_tokens",
    "web_searches",
    "web_fetches",
)


def _check_count(value: object, name: str) -> int:
    # bool is an int subclass: True tokens is a bug upstream, not a count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageParseError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise UsageParseError(f"{name} must be >= 0, got {value}")
    if value > _MAX_TOKENS:
        raise UsageParseError(f"{name} is implausibly large: {value}")
    return value


class _ModelView(Mapping[str, Any]):
    """An SDK pydantic object read as a mapping, attribute by attribute: model_dump() of a
    usage object costs more than the whole rest of a call's accounting."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getitem__(self, key: str) -> Any:
        try:
            value = getattr(self._obj, key)
        except AttributeError:
            raise KeyError(key) from None
        return _ModelView(value) if callable(getattr(value, "model_dump", None)) else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and hasattr(self._obj, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._obj.model_dump())

    def __len__(self) -> int:
        return len(self._obj.model_dump())

    def __repr__(self) -> str:
        return repr(self._obj.model_dump())


def _as_mapping(payload: object, what: str) -> Mapping[str, Any]:
    """A dict, or an SDK pydantic object read as one (openai/anthropic types, google-genai)."""
    if isinstance(payload, Mapping):
        return payload
    if callable(getattr(payload, "model_dump", None)):
        return _ModelView(payload)
    raise UsageParseError(f"{what} usage must be a mapping or an SDK model, got {type(payload)!r}")


def _required(data: Mapping[str, Any], key: str, what: str) -> int:
    if key not in data or data[key] is None:
        raise UsageParseError(f"{what} usage is missing {key!r}: {dict(data)!r}")
    return _check_count(data[key], f"{what} {key}")


def _optional(data: Mapping[str, Any] | None, key: str, what: str) -> int:
    if data is None:
        return 0
    value = data.get(key)
    if value is None:
        return 0
    return _check_count(value, f"{what} {key}")


def _details(data: Mapping[str, Any], key: str, what: str) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    return _as_mapping(value, f"{what} {key}")


def _build(what: str, **counts: Any) -> TokenUsage:
    try:
        return TokenUsage(**counts)
    except UsageParseError as exc:
        raise UsageParseError(f"{what} usage is inconsistent: {exc}") from None


def _tier(value: object) -> str | None:
    # "default"/"standard"/"auto" are the standard price; anything else selects a variant.
    if not isinstance(value, str) or value in ("default", "standard", "auto", ""):
        return None
    return value


# --------------------------------------------------------------------------- OpenAI


def usage_from_openai(usage: object, *, service_tier: str | None = None, web_searches: int = 0) -> TokenUsage:
    """Read OpenAI usage: Chat Completions (``prompt_tokens``…) or Responses (``input_tokens``…).

    Accepts a dict or the SDK objects (``openai.types.CompletionUsage``,
    ``openai.types.responses.ResponseUsage``), also the final ``include_usage`` stream chunk's
    ``usage``. ``prompt_tokens`` already includes ``cached_tokens`` (and ``cache_write_tokens``),
    and ``completion_tokens`` already includes ``reasoning_tokens``: both are subsets, unlike
    Anthropic's counters. Audio and image token details are read where reported.
    ``service_tier`` and ``web_searches`` live on the response, not its usage: pass them, or
    use ``usage_from_openai_response``.

    Raises UsageParseError.
    """
    data = _as_mapping(usage, "OpenAI")
    tier = _tier(service_tier)
    if "prompt_tokens" in data or "completion_tokens" in data:
        what = "OpenAI chat.completions"
        inp = _details(data, "prompt_tokens_details", what)
        out = _details(data, "completion_tokens_details", what)
        cached = _optional(inp, "cached_tokens", what)
        if cached == 0:
            # DeepSeek's OpenAI-compatible API reports cache hits at the top level.
            cached = _optional(data, "prompt_cache_hit_tokens", what)
        input_tokens = _required(data, "prompt_tokens", what)
        cache_write = _optional(inp, "cache_write_tokens", what)
        # Cached audio is counted in cached_tokens too: only the uncached part is audio-priced.
        audio_in = min(_optional(inp, "audio_tokens", what), max(input_tokens - cached - cache_write, 0))
        return _build(
            what,
            input_tokens=input_tokens,
            output_tokens=_required(data, "completion_tokens", what),
            cache_read_tokens=cached,
            cache_write_tokens=cache_write,
            reasoning_tokens=_optional(out, "reasoning_tokens", what),
            input_audio_tokens=audio_in,
            output_audio_tokens=_optional(out, "audio_tokens", what),
            web_searches=web_searches,
            service_tier=tier,
        )
    if "input_tokens" in data or "output_tokens" in data:
        what = "OpenAI responses"
        inp = _details(data, "input_tokens_details", what)
        out = _details(data, "output_tokens_details", what)
        return _build(
            what,
            input_tokens=_required(data, "input_tokens", what),
            output_tokens=_required(data, "output_tokens", what),
            cache_read_tokens=_optional(inp, "cached_tokens", what),
            cache_write_tokens=_optional(inp, "cache_write_tokens", what),
            reasoning_tokens=_optional(out, "reasoning_tokens", what),
            web_searches=web_searches,
            service_tier=tier,
        )
    raise UsageParseError(f"not an OpenAI usage payload: {dict(data)!r}")


def usage_from_openai_response(response: object) -> TokenUsage | None:
    """Usage of a whole OpenAI response (chat completion, Responses object, or the final
    stream chunk/event's response): its ``usage``, ``service_tier`` and, for Responses, one
    web search per ``web_search_call`` output item. None when it carries no usage.

    Raises UsageParseError.
    """
    usage = _get(response, "usage")
    if usage is None:
        return None
    searches = 0
    for item in _get(response, "output") or ():
        if _get(item, "type") == "web_search_call":
            searches += 1
    return usage_from_openai(usage, service_tier=_get(response, "service_tier"), web_searches=searches)


# --------------------------------------------------------------------------- Anthropic


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
    from ``add`` on a malformed usage event.
    """

    __slots__ = ("_data", "_started")

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._started = False

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
        elif kind == "message_delta":
            raw = _get(event, "usage")
            if raw is not None:
                self._merge(_as_mapping(raw, "Anthropic message_delta"))

    def _merge(self, data: Mapping[str, Any]) -> None:
        for key, value in data.items():
            if value is not None:
                self._data[key] = value

    @property
    def usage(self) -> TokenUsage | None:
        """The usage so far, or None before ``message_start``. Raises UsageParseError."""
        if not self._started:
            return None
        return usage_from_anthropic(self._data)


def usage_from_anthropic_stream(events: Iterable[object]) -> TokenUsage | None:
    """Usage of a whole Anthropic event stream; None if it never started. Raises UsageParseError."""
    acc = AnthropicStreamUsage()
    for event in events:
        acc.add(event)
    return acc.usage


def _get(obj: object, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


# --------------------------------------------------------------------------- Gemini

_GEMINI_KEYS = {
    # camelCase is the REST wire format; snake_case is google-genai's pydantic model.
    "prompt": ("promptTokenCount", "prompt_token_count"),
    "cached": ("cachedContentTokenCount", "cached_content_token_count"),
    "candidates": ("candidatesTokenCount", "candidates_token_count"),
    "thoughts": ("thoughtsTokenCount", "thoughts_token_count"),
    "tool_prompt": ("toolUsePromptTokenCount", "tool_use_prompt_token_count"),
    "total": ("totalTokenCount", "total_token_count"),
}


def usage_from_gemini(usage_metadata: object) -> TokenUsage:
    """Read Gemini ``usageMetadata`` (REST camelCase dict, or google-genai's snake_case model).

    ``promptTokenCount`` includes ``cachedContentTokenCount``. ``thoughtsTokenCount`` is NOT
    part of ``candidatesTokenCount`` (``totalTokenCount`` = prompt + candidates + tool-use
    prompt + thoughts) and thoughts are billed as output, so output = candidates + thoughts.
    ``toolUsePromptTokenCount`` is extra input. Proto3 JSON omits zero counts, so an absent
    count is 0; a payload with none of the counts at all is an error.

    Raises UsageParseError.
    """
    what = "Gemini"
    data = _as_mapping(usage_metadata, what)
    found: dict[str, int] = {}
    for name, keys in _GEMINI_KEYS.items():
        for key in keys:
            if data.get(key) is not None:
                found[name] = _check_count(data[key], f"{what} {key}")
                break
    if not found:
        raise UsageParseError(f"not a Gemini usageMetadata payload: {dict(data)!r}")
    thoughts = found.get("thoughts", 0)
    input_tokens = found.get("prompt", 0) + found.get("tool_prompt", 0)
    output_tokens = found.get("candidates", 0) + thoughts
    cached = found.get("cached", 0)
    prompt_by = _gemini_modalities(data, ("promptTokensDetails", "prompt_tokens_details"), what)
    out_by = _gemini_modalities(data, ("candidatesTokensDetails", "candidates_tokens_details"), what)
    # Cached tokens are cache-priced whatever their modality: audio/image take the rest.
    room = input_tokens - cached
    audio_in = min(prompt_by.get("AUDIO", 0), room)
    image_in = min(prompt_by.get("IMAGE", 0) + prompt_by.get("VIDEO", 0), room - audio_in)
    room_out = output_tokens - thoughts
    audio_out = min(out_by.get("AUDIO", 0), room_out)
    return _build(
        what,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cached,
        reasoning_tokens=thoughts,
        input_audio_tokens=audio_in,
        input_image_tokens=image_in,
        output_audio_tokens=audio_out,
        output_image_tokens=min(out_by.get("IMAGE", 0), room_out - audio_out),
    )


def _gemini_modalities(data: Mapping[str, Any], keys: tuple[str, str], what: str) -> dict[str, int]:
    # [{"modality": "AUDIO", "tokenCount": 12}, ...]; google-genai gives an enum for modality.
    items = None
    for key in keys:
        if data.get(key) is not None:
            items = data[key]
            break
    counts: dict[str, int] = {}
    for item in items or ():
        entry = _as_mapping(item, f"{what} {keys[0]}")
        modality = entry.get("modality")
        modality = getattr(modality, "value", modality)
        count = entry.get("tokenCount", entry.get("token_count"))
        if isinstance(modality, str) and count is not None:
            name = modality.upper()
            counts[name] = counts.get(name, 0) + _check_count(count, f"{what} {keys[0]}")
    return counts
