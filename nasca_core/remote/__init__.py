"""Remote mode: the ledger of a ``nasca serve`` over HTTP, for processes that can't reach
the store (serverless functions, edge workers, other hosts).

    nasca = Nasca("https://host/nasca", api_key=os.environ["NASCA_API_KEY"])   # a RemoteNasca

``RemoteNasca`` has Nasca's public API (reserve, settle, release, start_call, wrap,
get_usage, set_tier, set_user_tier, grant_credits and their async twins), so the LangChain
handler and the LlamaIndex integration work on it unchanged.
"""

from nasca_core.remote._client import RemoteNasca

__all__ = ["RemoteNasca"]
