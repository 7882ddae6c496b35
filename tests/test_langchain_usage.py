"""usage_from_langchain against usage_metadata as the LangChain integrations produce it."""

from __future__ import annotations

from typing import Any

import pytest

from nasca_core import UsageParseError
from nasca_core.pricing import TokenUsage, usage_from_anthropic
from nasca_langchain import usage_from_langchain
from tests.test_pricing_usage import CHAT_USAGE, RESPONSES_USAGE


def test_langchain_openai_metadata_as_produced() -> None:
    base = pytest.importorskip("langchain_openai.chat_models.base")
    metadata = base._create_usage_metadata(
        {
            **CHAT_USAGE,
            "prompt_tokens_details": {"cached_tokens": 1920, "cache_write_tokens": 50},
        }
    )
    assert usage_from_langchain(metadata) == TokenUsage(
        input_tokens=2006,
        output_tokens=300,
        cache_read_tokens=1920,
        cache_write_tokens=50,
        reasoning_tokens=192,
    )
    responses = base._create_usage_metadata_responses(RESPONSES_USAGE)
    assert usage_from_langchain(responses) == TokenUsage(
        input_tokens=328, output_tokens=52, cache_read_tokens=128, reasoning_tokens=20
    )


def test_langchain_openai_priority_tier_keys() -> None:
    base = pytest.importorskip("langchain_openai.chat_models.base")
    metadata = base._create_usage_metadata(CHAT_USAGE, service_tier="priority")
    assert "priority_cache_read" in metadata["input_token_details"]
    parsed = usage_from_langchain(metadata)
    assert parsed.cache_read_tokens == 1920
    assert parsed.reasoning_tokens == 192
    assert parsed.service_tier == "priority"  # priced at the priority rates


def test_langchain_anthropic_metadata_as_produced() -> None:
    chat_models = pytest.importorskip("langchain_anthropic.chat_models")
    from anthropic.types import Usage

    usage = Usage.model_validate(
        {
            "input_tokens": 50,
            "output_tokens": 503,
            "cache_creation_input_tokens": 2051,
            "cache_read_input_tokens": 1800,
            "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 51},
        }
    )
    metadata = chat_models._create_usage_metadata(usage)
    # langchain-anthropic zeroes cache_creation when it has the TTL split.
    assert metadata["input_token_details"]["cache_creation"] == 0
    assert usage_from_langchain(metadata) == usage_from_anthropic(usage)


def test_langchain_message_usage_metadata() -> None:
    from langchain_core.messages import AIMessage

    message = AIMessage(
        content="hi",
        usage_metadata={
            "input_tokens": 350,
            "output_tokens": 240,
            "total_tokens": 590,
            "input_token_details": {"audio": 10, "cache_creation": 200, "cache_read": 100},
            "output_token_details": {"audio": 10, "reasoning": 200},
        },
    )
    assert usage_from_langchain(message.usage_metadata) == TokenUsage(
        input_tokens=350,
        output_tokens=240,
        cache_read_tokens=100,
        cache_write_tokens=200,
        reasoning_tokens=200,
        input_audio_tokens=10,  # audio is priced at its own rate where the model has one
        output_audio_tokens=10,
    )


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {},
        {"input_tokens": 3},
        {"input_tokens": 3, "output_tokens": -1},
        {"input_tokens": "3", "output_tokens": 1},
        {"input_tokens": 3, "output_tokens": 1, "input_token_details": {"cache_read": 4}},
        {"input_tokens": 3, "output_tokens": 1, "output_token_details": {"reasoning": 2}},
        {"input_tokens": 3, "output_tokens": 1, "input_token_details": [1]},
    ],
)
def test_langchain_malformed(payload: Any) -> None:
    with pytest.raises(UsageParseError):
        usage_from_langchain(payload)


# The common shapes are read at once; anything with a count or a tier prefix is read in full.
@pytest.mark.parametrize(("usage", "expected"), [
    ({"input_tokens": 25, "output_tokens": 8, "total_tokens": 33}, TokenUsage(25, 8)),
    ({"input_tokens": 25, "output_tokens": 8, "input_token_details": {"audio": 0, "cache_read": 0},
      "output_token_details": {"audio": 0, "reasoning": 0}}, TokenUsage(25, 8)),
    ({"input_tokens": 25, "output_tokens": 8, "input_token_details": {"cache_read": 5}},
     TokenUsage(25, 8, cache_read_tokens=5)),
    ({"input_tokens": 25, "output_tokens": 8, "output_token_details": {"reasoning": 3}},
     TokenUsage(25, 8, reasoning_tokens=3)),
    # a tier-prefixed detail names the tier even at 0
    ({"input_tokens": 25, "output_tokens": 8, "input_token_details": {"priority_cache_read": 0}},
     TokenUsage(25, 8, service_tier="priority")),
])
def test_plain_and_detailed_usage_read_alike(usage: dict[str, Any], expected: TokenUsage) -> None:
    assert usage_from_langchain(usage) == expected


@pytest.mark.parametrize("usage", [
    {"input_tokens": -1, "output_tokens": 8},
    {"input_tokens": True, "output_tokens": 8},
    {"input_tokens": 25},
    {"input_tokens": 25, "output_tokens": 8, "input_token_details": {"cache_read": False}},
    {"input_tokens": 25, "output_tokens": 8, "input_token_details": []},
])
def test_malformed_plain_looking_usage_is_refused(usage: dict[str, Any]) -> None:
    with pytest.raises(UsageParseError):
        usage_from_langchain(usage)
