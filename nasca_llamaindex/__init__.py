"""Nasca for LlamaIndex: per-end-user spend limits on LLM calls.

    import nasca_llamaindex
    nasca_llamaindex.instrument(nasca)            # every LLM in the process
    # or: nasca_llamaindex.guard_llm(llm, nasca)           one LLM, wherever it is used
    #     nasca_llamaindex.guard_engine(query_engine, nasca)  one query or chat engine
    #     with nasca_llamaindex.scope(nasca): ...           one block (and tasks it starts)
    with nasca.user("u_42", tier="free"):
        response = query_engine.query("...")       # NascaBlockedError when over budget

Blocking: LlamaIndex calls ``llm.rate_limiter.acquire()`` (``async_acquire()``) right
before every provider request and lets what it raises through. A ``NascaGate`` put there
(in front of any limiter the LLM had) reserves the call's estimate first, so a blocked
call never reaches the provider: in ``chat``/``complete``/``stream_*`` and their async
twins, query and chat engines (streaming too) and workflow agents, whose ``run`` re-raises
the step's ``NascaBlockedError``.

Accounting: the LLM instrumentation events settle each call with the provider's usage
(``raw.usage``, cached and reasoning tokens included) or, when a response or stream
carries none, with the prompt estimate plus the counted output text. A stream abandoned
part-way is charged the prompt plus the text streamed so far; a stream never iterated is
released when it is garbage-collected. An LLM method calling another one (``MockLLM`` /
``CustomLLM``: acomplete -> complete) is one charge. Charges are settled from the
(synchronous) event handlers, also on async paths.

Who pays: ``instrument_tags({"nasca_user_id": ..., "nasca_tier": ...})`` when set, else
``nasca.user()``; a guarded call with neither raises InvalidUserError (nothing is let
through unpriced). With ``Nasca(charge_embeddings=True)`` embedding requests (index
building, query embedding) are gated and charged the same way, through the embedding
model's ``rate_limiter`` (``guard_embedding`` for one model); see ``_embed.py``.
Retrieval, rerankers and tools are not charged.
"""

from nasca_llamaindex._embed import EmbeddingGate, unmetered_embeddings
from nasca_llamaindex._gate import TIER_TAG, USER_TAG, NascaGate
from nasca_llamaindex._hooks import (
    guard_embedding,
    guard_engine,
    guard_llm,
    instrument,
    scope,
    unguard,
    uninstrument,
)
from nasca_llamaindex._usage import usage_from_llamaindex

__all__ = [
    "TIER_TAG",
    "USER_TAG",
    "EmbeddingGate",
    "NascaGate",
    "guard_embedding",
    "guard_engine",
    "guard_llm",
    "instrument",
    "scope",
    "unguard",
    "uninstrument",
    "unmetered_embeddings",
    "usage_from_llamaindex",
]
