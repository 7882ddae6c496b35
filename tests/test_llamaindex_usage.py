"""usage_from_llamaindex against LlamaIndex responses carrying OpenAI- and Anthropic-shaped usage."""

from __future__ import annotations

from typing import Any

import pytest

from nasca_core import UsageParseError
from nasca_core.pricing import TokenUsage, usage_from_anthropic, usage_from_openai
from nasca_llamaindex import usage_from_llamaindex
from tests.test_pricing_usage import ANTHROPIC_USAGE, CHAT_USAGE


def _chat_response(raw: Any = None, additional_kwargs: dict[str, Any] | None = None) -> Any:
    types = pytest.importorskip("llama_index.core.base.llms.types")
    return types.ChatResponse(
        message=types.ChatMessage(role="assistant", content="hello"),
        raw=raw,
        additional_kwargs=additional_kwargs or {},
    )


def test_llamaindex_raw_openai_completion() -> None:
    from openai.types.chat import ChatCompletion

    completion = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello"},
                    "finish_reason": "stop",
                }
            ],
            "usage": CHAT_USAGE,
        }
    )
    response = _chat_response(
        raw=completion,
        additional_kwargs={"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306},
    )
    # raw.usage wins: only it has the cached and reasoning counts.
    assert usage_from_llamaindex(response) == usage_from_openai(CHAT_USAGE)


def test_llamaindex_raw_dict_and_anthropic_shape() -> None:
    assert usage_from_llamaindex(_chat_response(raw={"usage": CHAT_USAGE})) == usage_from_openai(
        CHAT_USAGE
    )
    anthropic_raw = {"type": "message", "usage": ANTHROPIC_USAGE}
    assert usage_from_llamaindex(_chat_response(raw=anthropic_raw)) == usage_from_anthropic(
        ANTHROPIC_USAGE
    )


def test_llamaindex_additional_kwargs_fallback() -> None:
    response = _chat_response(
        raw={"id": "x"},
        additional_kwargs={"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    )
    assert usage_from_llamaindex(response) == TokenUsage(input_tokens=12, output_tokens=5)


def test_llamaindex_no_usage_is_none() -> None:
    assert usage_from_llamaindex(_chat_response()) is None
    assert usage_from_llamaindex(_chat_response(raw={"usage": None})) is None
    assert usage_from_llamaindex(object()) is None


def test_llamaindex_malformed_usage_raises() -> None:
    with pytest.raises(UsageParseError):
        usage_from_llamaindex(_chat_response(raw={"usage": {"prompt_tokens": -4}}))
    with pytest.raises(UsageParseError):
        usage_from_llamaindex(_chat_response(additional_kwargs={"prompt_tokens": 4}))


def test_llamaindex_raw_anthropic_message_with_a_code_execution_container() -> None:
    raw = {"type": "message", "usage": ANTHROPIC_USAGE,
           "container": {"id": "container_011CPR5CNjB747bTd36fQLFk", "expires_at": "2025-05-23T21:13:31Z"}}
    usage = usage_from_llamaindex(_chat_response(raw=raw))
    assert usage is not None and usage.code_containers == 1
    assert usage.input_tokens == usage_from_anthropic(ANTHROPIC_USAGE).input_tokens
