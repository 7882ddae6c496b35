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

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nasca_core._errors import InvalidInputError, UsageParseError

MAX_TOKENS = 2**53  # no real call comes near; a bigger count is a corrupt payload


def token_pair(tokens: Any) -> tuple[int, int]:
    """``settle(tokens=(input, output))`` checked: two ints in ``0..MAX_TOKENS`` (the store
    sums them; a lease's fold sums many), else InvalidInputError before anything is changed."""
    if (type(tokens) in (tuple, list) and len(tokens) == 2 and type(tokens[0]) is int
            and type(tokens[1]) is int and 0 <= tokens[0] <= MAX_TOKENS and 0 <= tokens[1] <= MAX_TOKENS):
        return tokens[0], tokens[1]
    raise InvalidInputError(f"tokens must be (input, output), two ints from 0 to {MAX_TOKENS}, "
                            f"got {tokens!r:.80}")


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one model call, in the convention described in the module docstring.

    Beyond the five core counts: ``cache_write_1h_tokens`` (subset of ``cache_write_tokens``
    written with a 1-hour TTL), audio and image tokens (subsets of input and output, billed at
    their own rates where the model has them), ``web_searches`` (server-side tool calls billed
    per call; Gemini's grounding with Google Search), ``file_searches`` (OpenAI
    ``file_search_call`` items), ``code_containers`` (code-execution containers, in the unit
    the provider bills: a GB of an OpenAI container session, five minutes of an Anthropic
    container; see ``_fees.py``), ``web_fetches`` (Anthropic's web fetch: recorded, no fee)
    and ``service_tier`` (the tier the provider says it served: ``"flex"``, ``"priority"``,
    ``"batch"``...).

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
    file_searches: int = 0
    code_containers: int = 0
    service_tier: str | None = None
    # the code_containers' ids, when the provider names them (OpenAI): a container reused by
    # a later response is charged once (Pricer)
    container_ids: tuple[str, ...] = ()

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
            and 0 <= i <= MAX_TOKENS
            and 0 <= o <= MAX_TOKENS
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
                or self.file_searches
                or self.code_containers
                or self.container_ids
            )
            and (self.service_tier is None or type(self.service_tier) is str)
        ):
            return
        for name in _FIELDS:
            _check_count(getattr(self, name), name)
        if self.service_tier is not None and not isinstance(self.service_tier, str):
            raise UsageParseError(f"service_tier must be a string or None, got {self.service_tier!r}")
        ids = self.container_ids
        if not isinstance(ids, tuple) or not all(isinstance(i, str) for i in ids):
            raise UsageParseError(f"container_ids must be a tuple of strings, got {self.container_ids!r}")
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
        ids = tuple(dict.fromkeys(self.container_ids + other.container_ids))
        return TokenUsage(**counts, service_tier=self.service_tier or other.service_tier, container_ids=ids)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int) -> TokenUsage:
        """``TokenUsage(input_tokens, output_tokens)``, the shape of most calls' usage, made in
        half the time: the generated frozen ``__init__`` sets 16 fields through
        ``object.__setattr__`` and checks them. Raises UsageParseError, as the constructor."""
        if cls is TokenUsage and type(input_tokens) is int and type(output_tokens) is int \
                and 0 <= input_tokens <= MAX_TOKENS and 0 <= output_tokens <= MAX_TOKENS:
            usage = _new(cls)
            _set_input(usage, input_tokens)
            _set_output(usage, output_tokens)
            for set_default, value in _DEFAULTS:
                set_default(usage, value)
            return usage
        return cls(input_tokens, output_tokens)


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
    "file_searches",
    "code_containers",
)


_new = object.__new__
# The slots' own setters (what the frozen __init__ reaches through object.__setattr__).
_set_input, _set_output = (TokenUsage.__dict__[f].__set__ for f in _FIELDS[:2])
_DEFAULTS = tuple((TokenUsage.__dict__[f.name].__set__, f.default)
                  for f in dataclasses.fields(TokenUsage) if f.name not in _FIELDS[:2])


def _check_count(value: object, name: str) -> int:
    # bool is an int subclass: True tokens is a bug upstream, not a count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageParseError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise UsageParseError(f"{name} must be >= 0, got {value}")
    if value > MAX_TOKENS:
        raise UsageParseError(f"{name} is implausibly large: {value}")
    return value


class _ModelView(Mapping[str, Any]):
    """An SDK pydantic object read as a mapping, attribute by attribute: model_dump() of a
    usage object costs more than the whole rest of a call's accounting."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getitem__(self, key: str) -> Any:
        value = _field(self._obj, key)
        if value is _ABSENT:
            raise KeyError(key)
        return _ModelView(value) if callable(getattr(value, "model_dump", None)) else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and _field(self._obj, key) is not _ABSENT

    def __iter__(self) -> Iterator[str]:
        return iter(self._obj.model_dump())

    def __len__(self) -> int:
        return len(self._obj.model_dump())

    def __repr__(self) -> str:
        return repr(self._obj.model_dump())


_ABSENT = object()


def _field(obj: object, key: str) -> Any:
    """``obj.key``, or _ABSENT. A pydantic model's fields and extras are looked up in its
    dicts: ``getattr`` of a field it lacks costs ~5 µs (pydantic formats the error), and a
    usage object lacks most of the detail counts asked for."""
    extra: Any = getattr(obj, "__pydantic_extra__", _ABSENT)
    if extra is _ABSENT:  # not a pydantic model
        return getattr(obj, key, _ABSENT)
    fields = getattr(obj, "__dict__", None)
    if fields is None:  # an object with __slots__ that has the name: read as anything else
        return getattr(obj, key, _ABSENT)
    if key in fields:
        return fields[key]
    if extra and key in extra:
        return extra[key]
    # a property, say (not hasattr: pydantic's metaclass formats an error for a miss too)
    cls = type(obj)
    on_class = _on_class.get((cls, key))
    if on_class is None:
        on_class = any(key in c.__dict__ for c in cls.__mro__)
        if len(_on_class) < 4096:  # SDK classes × the keys parsers ask: a few hundred
            _on_class[cls, key] = on_class
    return getattr(obj, key, _ABSENT) if on_class else _ABSENT


_on_class: dict[tuple[type, str], bool] = {}


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


def usage_from_openai(
    usage: object, *, service_tier: str | None = None, web_searches: int = 0, file_searches: int = 0,
    code_containers: int = 0,
) -> TokenUsage:
    """Read OpenAI usage: Chat Completions (``prompt_tokens``…) or Responses (``input_tokens``…).

    Accepts a dict or the SDK objects (``openai.types.CompletionUsage``,
    ``openai.types.responses.ResponseUsage``), also the final ``include_usage`` stream chunk's
    ``usage``. ``prompt_tokens`` already includes ``cached_tokens`` (and ``cache_write_tokens``),
    and ``completion_tokens`` already includes ``reasoning_tokens``: both are subsets, unlike
    Anthropic's counters. Audio and image token details are read where reported.
    ``service_tier`` and the tool calls (``web_searches``, ``file_searches``,
    ``code_containers``) live on the response, not its usage: pass them, or use
    ``usage_from_openai_response``.

    Raises UsageParseError.
    """
    tier = _tier(service_tier)
    if tier is None and not (web_searches or file_searches or code_containers) \
            and (plain := _plain_chat(usage)) is not None:
        return plain
    data = _as_mapping(usage, "OpenAI")
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
            file_searches=file_searches,
            code_containers=code_containers,
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
            file_searches=file_searches,
            code_containers=code_containers,
            service_tier=tier,
        )
    raise UsageParseError(f"not an OpenAI usage payload: {dict(data)!r}")


_CHAT_KEYS = ("prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details",
              "prompt_cache_hit_tokens")
_CHAT_IN = ("cached_tokens", "cache_write_tokens", "audio_tokens")
_CHAT_OUT = ("reasoning_tokens", "audio_tokens")


def _plain_chat(usage: object) -> TokenUsage | None:
    """Chat Completions usage with no cache, audio or reasoning tokens (most calls), read
    straight off the dict or SDK object; None: anything else, read in full."""
    data = _plain_fields(usage)
    if data is None:
        return None
    prompt, completion, inp, out, hits = map(data.get, _CHAT_KEYS)
    if type(prompt) is not int or type(completion) is not int \
            or not (hits is None or (type(hits) is int and hits == 0)) \
            or not _no_details(inp, _CHAT_IN) or not _no_details(out, _CHAT_OUT):
        return None
    return TokenUsage.of(prompt, completion)


def _plain_fields(obj: object) -> dict[str, Any] | None:
    """A dict's items or a pydantic SDK object's fields (one with no extra fields), else None."""
    if type(obj) is dict:
        return obj
    extra = getattr(obj, "__pydantic_extra__", _ABSENT)
    return None if extra is _ABSENT or extra else getattr(obj, "__dict__", None)


def _no_details(obj: object, keys: tuple[str, ...]) -> bool:
    """Whether ``obj`` (a details dict or SDK object) counts none of ``keys``; False for
    anything else (the full read says what is wrong with it)."""
    if obj is None:
        return True
    data = _plain_fields(obj)
    return data is not None and all(v is None or (type(v) is int and v == 0) for v in map(data.get, keys))


def usage_from_openai_response(response: object) -> TokenUsage | None:
    """Usage of a whole OpenAI response (chat completion, Responses object, or the final
    stream chunk/event's response): its ``usage``, ``service_tier`` and, for Responses, the
    tool calls billed per call: one web search per ``web_search_call`` item, one file
    search per ``file_search_call`` item, and the code-interpreter containers the response
    created (``container: {"type": "auto"}``), each once however many
    ``code_interpreter_call`` items ran in it, in GB of its ``memory_limit`` (OpenAI bills
    a container session by its size). A container the app made itself (the tool names its
    id) is billed when it is made, not here. None when the response carries no usage.

    Raises UsageParseError.
    """
    usage = _get(response, "usage")
    if usage is None:
        return None
    searches = files = 0
    containers: set[str] = set()
    for item in _get(response, "output") or ():
        kind = _get(item, "type")
        if kind == "web_search_call":
            searches += 1
        elif kind == "file_search_call":
            files += 1
        elif kind == "code_interpreter_call":
            containers.add(str(_get(item, "container_id")))
    gigabytes = _auto_container_gb(_get(response, "tools")) if containers else None
    parsed = usage_from_openai(
        usage, service_tier=_get(response, "service_tier"), web_searches=searches, file_searches=files,
        code_containers=0 if gigabytes is None else len(containers) * gigabytes,
    )
    if gigabytes is None:
        return parsed
    return dataclasses.replace(parsed, container_ids=tuple(sorted(containers)))


def _auto_container_gb(tools: Any) -> int | None:
    # The Responses object echoes the request's tools; None: no container made by this call.
    for tool in tools or ():
        if _get(tool, "type") != "code_interpreter":
            continue
        container = _get(tool, "container")
        if container is None or isinstance(container, str):
            return None
        limit = _get(container, "memory_limit") or "1g"
        if not isinstance(limit, str) or not limit.lower().removesuffix("g").isdigit():
            raise UsageParseError(f"OpenAI code_interpreter memory_limit is not '<n>g': {limit!r}")
        return int(limit.lower().removesuffix("g"))
    return 1  # a call without the tools echoed: the default 1 GB container


def _get(obj: object, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    value = _field(obj, key)
    return None if value is _ABSENT else value
