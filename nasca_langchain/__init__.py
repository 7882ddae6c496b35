"""Nasca for LangChain: per-end-user spend limits on every model call of a chain or agent.

    from nasca_langchain import NascaCallbackHandler
    handler = NascaCallbackHandler(nasca)
    chain.invoke(question, config={"callbacks": [handler],
                                   "metadata": {"nasca_user_id": "u_42", "nasca_tier": "free"}})

What a call is charged:

- a finished call: the usage the provider reported (``AIMessage.usage_metadata``, the final
  streamed chunk's included: cache reads/writes and reasoning priced as such); a stream
  without usage: the prompt and the streamed text, counted with the model's tokenizer;
- a stream the consumer abandons, or a cancelled call: the prompt plus the text streamed so
  far (an LCEL chain's ``stream()`` finishes its model's stream anyway: that is charged in
  full, as the provider bills it);
- a provider error: nothing (the hold is released), unless output had already streamed,
  which is charged like an abandoned stream;
- a LangChain LLM-cache hit: nothing (no provider request; the hold is released). The
  budget is still checked first: a blocked user is blocked even when the answer is cached.

Agents (``langchain.agents.create_agent``) can enforce the budget with a middleware
instead of the handler: ``middleware=[NascaMiddleware(nasca, exit_behavior="end")]`` (the user
from ``context=``, metadata or ``nasca.user()``). ``NascaMiddleware`` and
``UpgradePromptMiddleware`` are imported on first use: they pull in ``langchain.agents``.
"""

import typing

from nasca_langchain._handler import NascaCallbackHandler
from nasca_langchain._streaming import astarted, started
from nasca_langchain._upgrade import upgrade_fields, upgrade_reply, with_upgrade_prompt
from nasca_langchain._usage import usage_from_langchain

if typing.TYPE_CHECKING:
    from nasca_langchain._enforce import NascaMiddleware
    from nasca_langchain._middleware import UpgradePromptMiddleware

__all__ = [
    "NascaCallbackHandler",
    "NascaMiddleware",
    "UpgradePromptMiddleware",
    "astarted",
    "started",
    "upgrade_fields",
    "upgrade_reply",
    "usage_from_langchain",
    "with_upgrade_prompt",
]


def __getattr__(name: str) -> typing.Any:
    if name == "NascaMiddleware":
        from nasca_langchain._enforce import NascaMiddleware

        return NascaMiddleware
    if name == "UpgradePromptMiddleware":
        from nasca_langchain._middleware import UpgradePromptMiddleware

        return UpgradePromptMiddleware
    raise AttributeError(f"module 'nasca_langchain' has no attribute {name!r}")
