"""Usage parsers against payloads shaped like the providers' API references and SDK objects."""

from __future__ import annotations

from typing import Any

import pytest

from nasca_core._errors import InvalidInputError, UsageParseError
from nasca_core.pricing import (
    AnthropicStreamUsage,
    TokenUsage,
    usage_from_anthropic,
    usage_from_anthropic_stream,
    usage_from_gemini,
    usage_from_openai,
)

# --------------------------------------------------------------------------- TokenUsage


def test_token_usage_defaults_and_add() -> None:
    a = TokenUsage(input_tokens=10, output_tokens=5, cache_read_tokens=4, reasoning_tokens=2)
    b = TokenUsage(input_tokens=1, output_tokens=1, cache_write_tokens=1)
    total = a + b
    assert total == TokenUsage(
        input_tokens=11,
        output_tokens=6,
        cache_read_tokens=4,
        cache_write_tokens=1,
        reasoning_tokens=2,
    )
    assert total.total_tokens == 17
    assert TokenUsage() == TokenUsage(0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_tokens": -1},
        {"output_tokens": -5},
        {"input_tokens": "10"},
        {"input_tokens": 1.0},
        {"input_tokens": True},
        {"input_tokens": None},
        {"input_tokens": 2**60},
        {"input_tokens": 5, "cache_read_tokens": 6},
        {"input_tokens": 5, "cache_read_tokens": 3, "cache_write_tokens": 3},
        {"output_tokens": 5, "reasoning_tokens": 6},
    ],
)
def test_token_usage_rejects_bad_counts(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageParseError):
        TokenUsage(**kwargs)


def test_usage_parse_error_is_invalid_input() -> None:
    assert issubclass(UsageParseError, InvalidInputError)
    assert not issubclass(UsageParseError, ValueError)  # frameworks swallow ValueErrors


def test_token_usage_is_frozen_and_slotted() -> None:
    usage = TokenUsage(input_tokens=1)
    with pytest.raises(AttributeError):
        usage.input_tokens = 2  # type: ignore[misc]
    assert not hasattr(usage, "__dict__")


# --------------------------------------------------------------------------- OpenAI

CHAT_USAGE = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 192,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
RESPONSES_USAGE = {
    "input_tokens": 328,
    "input_tokens_details": {"cached_tokens": 128, "cache_write_tokens": 0},
    "output_tokens": 52,
    "output_tokens_details": {"reasoning_tokens": 20},
    "total_tokens": 380,
}


def test_openai_chat_completions_dict() -> None:
    assert usage_from_openai(CHAT_USAGE) == TokenUsage(
        input_tokens=2006, output_tokens=300, cache_read_tokens=1920, reasoning_tokens=192
    )


def test_openai_chat_completions_minimal_and_null_details() -> None:
    plain = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29}
    assert usage_from_openai(plain) == TokenUsage(input_tokens=19, output_tokens=10)
    nulls = {**plain, "prompt_tokens_details": None, "completion_tokens_details": None}
    assert usage_from_openai(nulls) == TokenUsage(input_tokens=19, output_tokens=10)


def test_openai_sdk_objects() -> None:
    from openai.types import CompletionUsage
    from openai.types.chat import ChatCompletionChunk
    from openai.types.responses import ResponseUsage

    sdk = CompletionUsage.model_validate(CHAT_USAGE)
    assert usage_from_openai(sdk) == usage_from_openai(CHAT_USAGE)
    responses = ResponseUsage.model_validate(RESPONSES_USAGE)
    assert usage_from_openai(responses) == TokenUsage(
        input_tokens=328, output_tokens=52, cache_read_tokens=128, reasoning_tokens=20
    )
    # The last chunk of a stream with stream_options={"include_usage": True}.
    chunk = ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        }
    )
    assert usage_from_openai(chunk.usage) == TokenUsage(input_tokens=12, output_tokens=7)


def test_openai_cache_writes_are_a_subset_of_input() -> None:
    usage = {
        **RESPONSES_USAGE,
        "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 200},
    }
    assert usage_from_openai(usage).cache_write_tokens == 200


def test_deepseek_cache_hits_in_openai_shape() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "total_tokens": 110,
        "prompt_cache_hit_tokens": 64,
        "prompt_cache_miss_tokens": 36,
    }
    assert usage_from_openai(usage).cache_read_tokens == 64


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"prompt_tokens": 10},
        {"completion_tokens": 10},
        {"prompt_tokens": -1, "completion_tokens": 1},
        {"prompt_tokens": "12", "completion_tokens": 1},
        {"prompt_tokens": None, "completion_tokens": 1},
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 11},
        },
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "completion_tokens_details": {"reasoning_tokens": 6},
        },
        {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": "cached"},
        {"input_tokens": 5},
        {"total_tokens": 5},
        None,
        "usage",
        42,
        [1, 2],
    ],
)
def test_openai_malformed(payload: Any) -> None:
    with pytest.raises(UsageParseError):
        usage_from_openai(payload)


# --------------------------------------------------------------------------- Anthropic

ANTHROPIC_USAGE = {
    "input_tokens": 50,
    "cache_creation_input_tokens": 2051,
    "cache_read_input_tokens": 1800,
    "cache_creation": {"ephemeral_5m_input_tokens": 2051, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 503,
    "service_tier": "standard",
}


def test_anthropic_adds_cache_counts_to_input() -> None:
    # Anthropic's input_tokens excludes cache reads and writes: the three are disjoint.
    assert usage_from_anthropic(ANTHROPIC_USAGE) == TokenUsage(
        input_tokens=50 + 2051 + 1800,
        output_tokens=503,
        cache_read_tokens=1800,
        cache_write_tokens=2051,
    )


def test_anthropic_sdk_object_and_thinking() -> None:
    from anthropic.types import Usage

    usage = Usage.model_validate(
        {**ANTHROPIC_USAGE, "output_tokens_details": {"thinking_tokens": 300}}
    )
    parsed = usage_from_anthropic(usage)
    assert parsed.reasoning_tokens == 300
    assert parsed.input_tokens == 3901


def test_anthropic_without_cache_fields() -> None:
    assert usage_from_anthropic({"input_tokens": 25, "output_tokens": 10}) == TokenUsage(
        input_tokens=25, output_tokens=10
    )


def test_anthropic_ttl_breakdown_only() -> None:
    usage = {
        "input_tokens": 10,
        "output_tokens": 1,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 50},
    }
    assert usage_from_anthropic(usage).cache_write_tokens == 150


@pytest.mark.parametrize(
    "payload",
    [
        {"input_tokens": 10},
        {"output_tokens": 10},
        {"input_tokens": -1, "output_tokens": 1},
        {"input_tokens": 1, "output_tokens": "3"},
        {"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": -5},
        {"input_tokens": 1, "output_tokens": 1, "output_tokens_details": {"thinking_tokens": 2}},
        {"input_tokens": 1, "output_tokens": 1, "cache_creation": 5},
        None,
    ],
)
def test_anthropic_malformed(payload: Any) -> None:
    with pytest.raises(UsageParseError):
        usage_from_anthropic(payload)


ANTHROPIC_EVENTS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5-20250929",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1800,
                "output_tokens": 1,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 40},
    },
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 89, "input_tokens": None},
    },
    {"type": "message_stop"},
]


def test_anthropic_stream_deltas_are_cumulative() -> None:
    # Two message_delta events (server tools can send several): the last total wins.
    usage = usage_from_anthropic_stream(ANTHROPIC_EVENTS)
    assert usage == TokenUsage(input_tokens=1825, output_tokens=89, cache_read_tokens=1800)


def test_anthropic_stream_sdk_events() -> None:
    from anthropic.types import RawMessageDeltaEvent, RawMessageStartEvent

    start = RawMessageStartEvent.model_validate(ANTHROPIC_EVENTS[0])
    delta = RawMessageDeltaEvent.model_validate(ANTHROPIC_EVENTS[5])
    acc = AnthropicStreamUsage()
    assert acc.usage is None
    acc.add(start)
    assert acc.usage == TokenUsage(input_tokens=1825, output_tokens=1, cache_read_tokens=1800)
    acc.add(delta)
    assert acc.usage == TokenUsage(input_tokens=1825, output_tokens=40, cache_read_tokens=1800)


def test_anthropic_stream_delta_may_update_input() -> None:
    # Some Anthropic-compatible gateways send input counts only on message_delta.
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 0, "output_tokens": 0}}},
        {"type": "message_delta", "usage": {"input_tokens": 9, "output_tokens": 3}},
    ]
    assert usage_from_anthropic_stream(events) == TokenUsage(input_tokens=9, output_tokens=3)


def test_anthropic_stream_not_started_and_malformed() -> None:
    assert usage_from_anthropic_stream([{"type": "ping"}]) is None
    with pytest.raises(UsageParseError):
        usage_from_anthropic_stream([{"type": "message_start", "message": {}}])
    with pytest.raises(UsageParseError):
        usage_from_anthropic_stream(
            [{"type": "message_start", "message": {"usage": {"input_tokens": -1}}}]
        )


# --------------------------------------------------------------------------- Gemini


def test_gemini_thoughts_are_output_not_in_candidates() -> None:
    metadata = {
        "promptTokenCount": 11500,
        "candidatesTokenCount": 1000,
        "cachedContentTokenCount": 10000,
        "thoughtsTokenCount": 10000,
        "totalTokenCount": 22500,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 11500}],
    }
    assert usage_from_gemini(metadata) == TokenUsage(
        input_tokens=11500,
        output_tokens=11000,
        cache_read_tokens=10000,
        reasoning_tokens=10000,
    )


def test_gemini_snake_case_and_tool_use_prompt() -> None:
    metadata = {
        "prompt_token_count": 100,
        "candidates_token_count": 20,
        "tool_use_prompt_token_count": 30,
        "total_token_count": 150,
    }
    assert usage_from_gemini(metadata) == TokenUsage(input_tokens=130, output_tokens=20)


def test_gemini_omitted_zero_counts() -> None:
    # Proto3 JSON omits zero fields: a first stream chunk may carry only the prompt.
    assert usage_from_gemini({"promptTokenCount": 8, "totalTokenCount": 8}) == TokenUsage(
        input_tokens=8
    )


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"foo": 1},
        {"promptTokenCount": -3},
        {"promptTokenCount": "8"},
        {"promptTokenCount": 5, "cachedContentTokenCount": 6},
        [],
    ],
)
def test_gemini_malformed(payload: Any) -> None:
    with pytest.raises(UsageParseError):
        usage_from_gemini(payload)
