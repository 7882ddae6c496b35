"""Gemini's usage: ``usageMetadata`` (REST camelCase or google-genai's snake_case model) and
a whole response's grounding searches, in the convention of ``_usage.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nasca_core._errors import UsageParseError
from nasca_core.pricing._usage import TokenUsage, _as_mapping, _build, _check_count, _get, _tier

_GEMINI_KEYS = {
    # camelCase is the REST wire format; snake_case is google-genai's pydantic model.
    "prompt": ("promptTokenCount", "prompt_token_count"),
    "cached": ("cachedContentTokenCount", "cached_content_token_count"),
    "candidates": ("candidatesTokenCount", "candidates_token_count"),
    "thoughts": ("thoughtsTokenCount", "thoughts_token_count"),
    "tool_prompt": ("toolUsePromptTokenCount", "tool_use_prompt_token_count"),
    "total": ("totalTokenCount", "total_token_count"),
}


def usage_from_gemini(usage_metadata: object, *, web_searches: int = 0) -> TokenUsage:
    """Read Gemini ``usageMetadata`` (REST camelCase dict, or google-genai's snake_case model).

    ``promptTokenCount`` includes ``cachedContentTokenCount``. ``thoughtsTokenCount`` is NOT
    part of ``candidatesTokenCount`` (``totalTokenCount`` = prompt + candidates + tool-use
    prompt + thoughts) and thoughts are billed as output, so output = candidates + thoughts.
    ``toolUsePromptTokenCount`` is extra input. Proto3 JSON omits zero counts, so an absent
    count is 0; a payload with none of the counts at all is an error. The tier served is
    ``serviceTier`` (Gemini API: ``flex``, ``priority``) or ``trafficType`` (Vertex:
    ``ON_DEMAND_FLEX``, ``ON_DEMAND_PRIORITY``). Grounding searches live on the response's
    candidates: pass ``web_searches``, or use ``usage_from_gemini_response``.

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
        web_searches=web_searches,
        service_tier=_gemini_tier(data),
    )


# Vertex's trafficType values that name a priced tier; the rest (ON_DEMAND, provisioned
# throughput, unspecified) are the standard price.
_TRAFFIC = {"ON_DEMAND_FLEX": "flex", "ON_DEMAND_PRIORITY": "priority"}


def _gemini_tier(data: Mapping[str, Any]) -> str | None:
    for key in ("serviceTier", "service_tier"):
        value = data.get(key)
        value = getattr(value, "value", value)
        if isinstance(value, str) and value:
            return _tier(value.lower()) if value.lower() != "unspecified" else None
    for key in ("trafficType", "traffic_type"):
        value = data.get(key)
        value = getattr(value, "value", value)
        if isinstance(value, str):
            return _TRAFFIC.get(value.upper())
    return None


def usage_from_gemini_response(response: object, *, model: object = None) -> TokenUsage | None:
    """Usage of a whole Gemini response (REST dict or google-genai's model): its
    ``usageMetadata`` plus grounding with Google Search, which Google bills per grounded
    prompt on Gemini 2.x and older (one search for a response whose candidates ran any
    ``webSearchQueries``) and per search query from Gemini 3 on (each distinct query),
    told apart by ``modelVersion``, else by ``model`` (the requested model's name). None
    when the response carries no usage.

    Raises UsageParseError.
    """
    acc = GeminiStreamUsage(model)
    acc.add(response)
    return acc.usage


class GeminiStreamUsage:
    """Accumulates usage over a Gemini stream (``generate_content_stream`` chunks, or one
    whole response): every chunk's ``usageMetadata`` is the call's so far, so the last one
    counts, while grounding queries may arrive on any chunk, so all are collected.
    ``model``: the requested model, for when no chunk names its ``modelVersion``.

    Raises UsageParseError from ``usage``.
    """

    __slots__ = ("_metadata", "_queries", "_version")

    def __init__(self, model: object = None) -> None:
        self._metadata: object = None
        self._queries: set[str] = set()
        self._version = model if isinstance(model, str) else ""

    def add(self, chunk: object) -> None:
        """Take one chunk (or response)."""
        metadata = _get(chunk, "usageMetadata")
        if metadata is None:
            metadata = _get(chunk, "usage_metadata")
        if metadata is not None:
            self._metadata = metadata
        for candidate in _get(chunk, "candidates") or ():
            grounding = _get(candidate, "groundingMetadata") or _get(candidate, "grounding_metadata")
            found = _get(grounding, "webSearchQueries") or _get(grounding, "web_search_queries")
            self._queries.update(str(q) for q in found or ())
        version = _get(chunk, "modelVersion") or _get(chunk, "model_version")
        if isinstance(version, str) and version:
            self._version = version

    @property
    def usage(self) -> TokenUsage | None:
        """The usage so far; None before any chunk carried usage. Raises UsageParseError."""
        if self._metadata is None:
            return None
        per_prompt = self._version.removeprefix("models/").startswith(("gemini-1", "gemini-2"))
        searches = min(len(self._queries), 1) if per_prompt else len(self._queries)
        return usage_from_gemini(self._metadata, web_searches=searches)


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
