"""Where LangChain messages carry a soft-threshold warning (``Tier.warn_at``):
``response_metadata["nasca_warning"]``, the warning as JSON-ready fields (window, fraction,
spent, limit, resets_at), beside the provider's metadata."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from langchain_core.messages import AIMessage

from nasca_core import LLMCall

WARNING_KEY = "nasca_warning"
T = TypeVar("T")


def mark(call: LLMCall, messages: Iterable[Any]) -> None:
    """Put ``call``'s warning, if any, on the first AIMessage of ``messages``."""
    if call.warning is None:
        return
    message = next((m for m in messages if isinstance(m, AIMessage)), None)
    if message is not None:
        message.response_metadata[WARNING_KEY] = call.warning.model_dump(mode="json")


def warned_response(call: LLMCall, response: T) -> T:
    """An agent step's response (a ModelResponse or an AIMessage), its reply marked."""
    mark(call, [response] if isinstance(response, AIMessage) else getattr(response, "result", ()))
    return response
