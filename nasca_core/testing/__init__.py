"""A local OpenAI + Anthropic compatible provider server, for tests, demos and notebooks.

    from nasca_core.testing import ProviderServer, Reply, ToolCall, Usage

    with ProviderServer(reply="Hello!") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x")   # or srv.openai_client()
        claude = anthropic.Anthropic(base_url=srv.anthropic_base_url, api_key="x")
        srv.queue(Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]))
        srv.fail_next(429)
        ...
        assert srv.counts["chat.completions"] == 1
        assert srv.last_request.usage == Usage(input_tokens=..., output_tokens=...)

The server itself uses the standard library only (tiktoken when it loads offline);
the SDK conveniences import ``openai``/``anthropic`` when called.
"""

from nasca_core.testing._http import ENDPOINTS
from nasca_core.testing._replies import DEFAULT_REPLY_TEXT, Reply, ToolCall, Usage
from nasca_core.testing._server import DEFAULT_MODELS, ProviderServer, Responder
from nasca_core.testing._state import RecordedRequest

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REPLY_TEXT",
    "ENDPOINTS",
    "ProviderServer",
    "RecordedRequest",
    "Reply",
    "Responder",
    "ToolCall",
    "Usage",
]
