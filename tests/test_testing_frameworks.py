"""LangChain and LlamaIndex, pointed at nasca_core.testing.ProviderServer: smoke tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nasca_core.testing import DEFAULT_REPLY_TEXT, ProviderServer, Reply, ToolCall

GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server
        assert server.errors == []


def merged(chunks: list[Any]) -> Any:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def assert_usage_metadata(srv: ProviderServer, usage_metadata: Any) -> None:
    usage = srv.last_request.usage
    assert usage is not None
    assert usage_metadata["input_tokens"] == usage.input_tokens
    assert usage_metadata["output_tokens"] == usage.output_tokens
    assert usage_metadata["total_tokens"] == usage.total_tokens


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def test_langchain_chat_openai_invoke_and_stream(srv: ProviderServer) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    model = langchain_openai.ChatOpenAI(
        base_url=srv.base_url, api_key="x", model=GPT, stream_usage=True, max_retries=0
    )
    message = model.invoke("Hello there")
    assert message.content == DEFAULT_REPLY_TEXT
    assert_usage_metadata(srv, message.usage_metadata)
    assert message.usage_metadata["input_tokens"] == srv.count_tokens("Hello there")

    chunks = list(model.stream("Hello there"))
    assert len(chunks) > 3
    assert srv.last_request.json["stream_options"] == {"include_usage": True}
    assert_usage_metadata(srv, merged(chunks).usage_metadata)


def test_langchain_chat_anthropic_invoke_and_stream(srv: ProviderServer) -> None:
    langchain_anthropic = pytest.importorskip("langchain_anthropic")
    model = langchain_anthropic.ChatAnthropic(
        base_url=srv.anthropic_base_url, api_key="x", model=CLAUDE, max_retries=0
    )
    message = model.invoke("Hello there")
    assert message.content == DEFAULT_REPLY_TEXT
    assert_usage_metadata(srv, message.usage_metadata)
    chunks = list(model.stream("Hello there"))
    assert len(chunks) > 3
    assert_usage_metadata(srv, merged(chunks).usage_metadata)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_langchain_agent_calls_a_tool_through_the_server(srv: ProviderServer, provider: str) -> None:
    agents = pytest.importorskip("langchain.agents")
    if provider == "openai":
        model: Any = pytest.importorskip("langchain_openai").ChatOpenAI(
            base_url=srv.base_url, api_key="x", model=GPT
        )
    else:
        model = pytest.importorskip("langchain_anthropic").ChatAnthropic(
            base_url=srv.anthropic_base_url, api_key="x", model=CLAUDE, streaming=True
        )
    srv.queue(
        Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
        Reply("It is sunny in Paris."),
    )
    agent = agents.create_agent(model, tools=[get_weather])
    result = agent.invoke({"messages": [{"role": "user", "content": "Weather in Paris?"}]})
    assert [type(m).__name__ for m in result["messages"]] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    assert result["messages"][2].content == "Sunny in Paris"
    assert srv.request_count == 2
    # the tool's result went back to the model in the provider's own format
    assert "Sunny in Paris" in (srv.last_request.prompt or "")


def test_llamaindex_openai_chat_and_stream_chat(srv: ProviderServer) -> None:
    llms_openai = pytest.importorskip("llama_index.llms.openai")
    from llama_index.core.llms import ChatMessage

    llm = llms_openai.OpenAI(api_base=srv.base_url, api_key="x", model=GPT, max_retries=0)
    response = llm.chat([ChatMessage(role="user", content="Hello there")])
    assert response.message.content == DEFAULT_REPLY_TEXT
    assert response.raw.usage.prompt_tokens == srv.last_request.usage.input_tokens
    assert response.additional_kwargs["completion_tokens"] == srv.last_request.usage.output_tokens

    streaming = llms_openai.OpenAI(
        api_base=srv.base_url,
        api_key="x",
        model=GPT,
        max_retries=0,
        additional_kwargs={"stream_options": {"include_usage": True}},
    )
    *_, last = streaming.stream_chat([ChatMessage(role="user", content="Hello there")])
    assert last.message.content == DEFAULT_REPLY_TEXT
    assert last.raw.usage.completion_tokens == srv.last_request.usage.output_tokens


# FunctionAgent's workflow reads deprecated pydantic attributes (inspect.getmembers)
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")
async def test_llamaindex_function_agent_calls_a_tool(srv: ProviderServer) -> None:
    llms_openai = pytest.importorskip("llama_index.llms.openai")
    from llama_index.core.agent.workflow import FunctionAgent

    srv.queue(
        Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
        Reply("It is sunny in Paris."),
    )
    agent = FunctionAgent(
        tools=[get_weather], llm=llms_openai.OpenAI(api_base=srv.base_url, api_key="x", model=GPT)
    )
    result = await agent.run("Weather in Paris?")
    assert str(result) == "It is sunny in Paris."
    assert srv.request_count == 2
    assert srv.last_request.json["messages"][-1]["content"] == "Sunny in Paris"
