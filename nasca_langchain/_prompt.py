"""What a LangChain model call asks for, in the core's terms: OpenAI-style messages, tool
schemas, the model's name and its output cap. Shared by the callback handler and the
agent middleware."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

ROLES = {"human": "user", "ai": "assistant"}  # message.type -> OpenAI role
MAX_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
MODEL_FIELDS = ("model_name", "model", "model_id")

# Set while NascaMiddleware accounts for a model call, so a NascaCallbackHandler on the same
# run leaves that call alone instead of reserving and charging it a second time.
accounted_by_middleware: ContextVar[bool] = ContextVar("nasca_langchain_middleware", default=False)

_schemas: dict[int, tuple[BaseTool, dict[str, Any]]] = {}


def chat_messages(messages: Iterable[BaseMessage]) -> list[dict[str, Any]]:
    """OpenAI-style dicts for the core's token count."""
    # Not langchain_core's convert_to_openai_messages: it costs ~2.5 µs a message on every
    # call (a chat resends its history), for the same text counts.
    return [
        {"role": ROLES.get(m.type, m.type), "content": m.content, "name": m.name,
         "tool_calls": m.tool_calls if isinstance(m, AIMessage) else None}
        for m in messages
    ]


def tool_schemas(tools: Sequence[BaseTool | Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """The tools' JSON schemas as the provider receives them (they are billed as prompt)."""
    out: list[dict[str, Any]] = []
    for t in tools:
        if isinstance(t, BaseTool):
            cached = _schemas.get(id(t))
            if cached is None or cached[0] is not t:
                if len(_schemas) > 1024:
                    _schemas.clear()
                # The tool object is kept with its schema, so its id can't be reused meanwhile.
                cached = _schemas[id(t)] = (t, dict(convert_to_openai_tool(t)))
            out.append(cached[1])
        else:
            out.append(dict(t))
    return out or None


def output_cap(*sources: Mapping[str, Any]) -> int | None:
    """The first int output-token cap any source names."""
    for source in sources:
        for key in MAX_TOKEN_PARAMS:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def model_of(chat_model: Any) -> str:
    """The model a chat model object calls (unpriced names go to the unknown-model policy)."""
    for field in MODEL_FIELDS:
        name = getattr(chat_model, field, None)
        if isinstance(name, str) and name:
            return name
    return type(chat_model).__name__


def model_fields(chat_model: Any) -> dict[str, Any]:
    """The chat model's own settings that bear on the estimate (its output cap)."""
    return {k: v for k in MAX_TOKEN_PARAMS if (v := getattr(chat_model, k, None)) is not None}
