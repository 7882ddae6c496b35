"""The LlamaIndex adapter's per-call shortcuts give the answers of the long way round."""

from __future__ import annotations

from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock, ToolCallBlock

from nasca_llamaindex._track import message_dicts

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def test_message_dicts_reads_what_content_and_the_blocks_say() -> None:
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content=""),
        ChatMessage(role="user", blocks=[TextBlock(text="first"), TextBlock(text="second")]),
        ChatMessage(role="user", blocks=[ImageBlock(image=PNG, image_mimetype="image/png"),
                                         TextBlock(text="what is this?")]),
        ChatMessage(role="assistant", blocks=[
            TextBlock(text="looking"),
            ToolCallBlock(tool_name="search", tool_kwargs={"q": "lighthouse"}),
            ToolCallBlock(tool_name="echo", tool_kwargs='{"x": 1}')]),
        ChatMessage(role="assistant", blocks=[]),
    ]
    out = message_dicts(messages)
    assert [d["content"] for d in out] == [m.content or "" for m in messages]
    assert [d["role"] for d in out] == ["system", "user", "user", "user", "assistant", "assistant"]
    assert out[2]["content"] == "first\nsecond"
    assert out[4]["tool_calls"] == [{"name": "search", "arguments": '{"q": "lighthouse"}'},
                                    {"name": "echo", "arguments": '{"x": 1}'}]
    assert all("tool_calls" not in d for i, d in enumerate(out) if i != 4)
