"""``usage_from_langchain``: LangChain's ``AIMessage.usage_metadata`` as the core's TokenUsage;
``with_langchain_fees``: the tool fees and service tier the message carries beside it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from nasca_core import UsageParseError
from nasca_core.pricing import TokenUsage, usage_from_anthropic_message, usage_from_openai_response

log = logging.getLogger("nasca.langchain")

# langchain-openai prefixes details with the service tier on priority/flex requests
_CACHE_READ = ("cache_read", "priority_cache_read", "flex_cache_read")
_CACHE_WRITE = ("cache_creation", "priority_cache_creation", "flex_cache_creation")
_CACHE_WRITE_TTL = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
_REASONING = ("reasoning", "priority_reasoning", "flex_reasoning")
_TIERS = ("priority", "flex")


def usage_from_langchain(usage_metadata: object) -> TokenUsage:
    """Read LangChain's ``AIMessage.usage_metadata``.

    LangChain already normalises to all-inclusive ``input_tokens``/``output_tokens`` with
    ``input_token_details.cache_read``/``cache_creation`` and ``output_token_details.reasoning``
    as subsets. Two integration quirks are handled:

    * langchain-anthropic reports cache writes split by TTL
      (``ephemeral_5m_input_tokens``/``ephemeral_1h_input_tokens``) and then sets
      ``cache_creation`` to 0 to avoid double counting; we sum the TTL keys back, and the
      1-hour ones are priced at the 1-hour write price.
    * langchain-openai prefixes details with the service tier on ``priority``/``flex``
      (``priority_cache_read``, ``flex_reasoning``); we add those in, and the prefix is the
      service tier the call is priced at.

    Audio tokens (``input_token_details.audio``, ``output_token_details.audio``) are read.

    Raises UsageParseError.
    """
    if type(usage_metadata) is dict and (plain := _plain(usage_metadata)) is not None:
        return plain
    if not isinstance(usage_metadata, Mapping):
        raise UsageParseError(f"LangChain usage must be a mapping, got {type(usage_metadata)!r}")
    inp = _details(usage_metadata, "input_token_details")
    out = _details(usage_metadata, "output_token_details")
    input_tokens = _count(usage_metadata, "input_tokens", required=True)
    output_tokens = _count(usage_metadata, "output_tokens", required=True)
    if not inp and not out:  # the common shape: no details to read (a call's hot path)
        return TokenUsage(input_tokens, output_tokens)
    cache_read = _sum(inp, _CACHE_READ)
    cache_write = _sum(inp, _CACHE_WRITE) or _sum(inp, _CACHE_WRITE_TTL)
    reasoning = _sum(out, _REASONING)
    tier = next((t for t in _TIERS if any(k.startswith(t + "_") for k in (*inp, *out))), None)
    try:
        return TokenUsage(
            input_tokens,
            output_tokens,
            cache_read,
            cache_write,
            reasoning,
            cache_write_1h_tokens=_count(inp, "ephemeral_1h_input_tokens"),
            input_audio_tokens=min(_count(inp, "audio"), max(input_tokens - cache_read - cache_write, 0)),
            output_audio_tokens=min(_count(out, "audio"), max(output_tokens - reasoning, 0)),
            service_tier=tier,
        )
    except UsageParseError as exc:
        raise UsageParseError(f"LangChain usage is inconsistent: {exc}") from None


# Detail keys that, at 0, change nothing: a service-tier prefix would (it names the tier).
_ZERO_OK = frozenset({"audio", "cache_read", "cache_creation", "reasoning", *_CACHE_WRITE_TTL})


def _plain(usage: dict[str, Any]) -> TokenUsage | None:
    """The common shape, read at once: counts and no detail that isn't 0 (None: read in full)."""
    i, o = usage.get("input_tokens"), usage.get("output_tokens")
    if type(i) is not int or type(o) is not int or i < 0 or o < 0:
        return None
    for key in ("input_token_details", "output_token_details"):
        details = usage.get(key)
        if details is not None and (type(details) is not dict or not all(
                k in _ZERO_OK and type(v) is int and v == 0 for k, v in details.items())):
            return None
    return TokenUsage.of(i, o)


def _details(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageParseError(f"LangChain {key} must be a mapping, got {value!r}")
    return value


def _count(data: Mapping[str, Any], key: str, required: bool = False) -> int:
    value = data.get(key)
    if value is None:
        if required:
            raise UsageParseError(f"LangChain usage is missing {key!r}: {dict(data)!r}")
        return 0
    # bool is an int subclass: True tokens is a bug upstream, not a count
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageParseError(f"LangChain {key} must be an int >= 0, got {value!r}")
    return value


def _sum(data: Mapping[str, Any], keys: tuple[str, ...]) -> int:
    total = 0
    for key in keys:
        total += _count(data, key)
    return total


# OpenAI Responses items billed per call or per container (content blocks, or v0's tool_outputs)
_OPENAI_TOOL_ITEMS = frozenset({"web_search_call", "file_search_call", "code_interpreter_call"})
_NO_TOKENS = {"input_tokens": 0, "output_tokens": 0}


def with_langchain_fees(usage: TokenUsage, message: object, llm_output: Mapping[str, Any] | None,
                        tools: Sequence[Any] | None = None) -> TokenUsage:
    """``usage`` plus the tool fees and service tier of the chat model's ``message``, read by
    the core's own parsers so a LangChain call is charged like the same call through wrap().

    langchain-anthropic: the raw usage (``llm_output["usage"]``, non-streaming) counts web
    searches and fetches in ``server_tool_use``; a stream drops that counter, so its
    ``server_tool_use`` content blocks are counted instead; the code-execution container is
    ``response_metadata["container"]`` (or ``llm_output["container"]``). langchain-openai
    (Responses API): ``web_search_call`` / ``file_search_call`` / ``code_interpreter_call``
    content blocks (``additional_kwargs["tool_outputs"]`` in the v0 format) and
    ``response_metadata["service_tier"]``. ``tools``: the request's (its invocation
    params), which size an OpenAI container and decide whether Anthropic bills one.

    An unreadable fee payload is logged and the tokens are charged without it.
    """
    meta = getattr(message, "response_metadata", None) or {}
    out = llm_output or {}
    content = getattr(message, "content", None)
    extra = getattr(message, "additional_kwargs", None) or {}
    if type(content) is str and not extra.get("tool_outputs") and not meta.get("service_tier") \
            and meta.get("model_provider") != "anthropic" and "container" not in meta \
            and "container" not in out:
        return usage  # the common shape, known without reading blocks: nothing billed beside the tokens
    blocks = [b for b in (content if isinstance(content, list) else ()) if isinstance(b, Mapping)]
    blocks += [b for b in extra.get("tool_outputs") or () if isinstance(b, Mapping)]
    try:
        if meta.get("model_provider") == "anthropic" or "container" in meta or "container" in out:
            fees = _anthropic_fees(meta, out, blocks, tools)
        elif meta.get("service_tier") or any(b.get("type") in _OPENAI_TOOL_ITEMS for b in blocks):
            fees = usage_from_openai_response({"usage": _NO_TOKENS, "output": blocks, "tools": tools,
                                               "service_tier": meta.get("service_tier")})
        else:
            return usage  # the common shape: nothing billed beside the tokens
    except UsageParseError as exc:
        log.warning("nasca: unreadable LangChain tool usage, charging tokens only: %s", exc)
        return usage
    if fees is None:
        return usage
    return dataclasses.replace(
        usage, web_searches=fees.web_searches, web_fetches=fees.web_fetches,
        file_searches=fees.file_searches, code_containers=fees.code_containers,
        container_ids=fees.container_ids, service_tier=usage.service_tier or fees.service_tier)


def _anthropic_fees(meta: Mapping[str, Any], out: Mapping[str, Any], blocks: list[Mapping[str, Any]],
                    tools: Sequence[Any] | None) -> TokenUsage | None:
    used = [b for b in blocks if b.get("type") == "server_tool_use"]
    raw = out.get("usage") or meta.get("usage")
    if not isinstance(raw, Mapping):  # a stream: the blocks are all there is
        names = [b.get("name") for b in used]
        raw = {**_NO_TOKENS, "server_tool_use": {"web_search_requests": names.count("web_search"),
                                                 "web_fetch_requests": names.count("web_fetch")}}
    container = out.get("container") or meta.get("container")
    return usage_from_anthropic_message({"usage": raw, "container": container, "content": used}, tools=tools)
