"""Tool fees genai-prices does not carry, from the providers' published prices.

genai-prices (0.2.3) prices web searches (OpenAI, Anthropic, Gemini grounding) and OpenAI
file searches. Its ``code_executions`` unit is per 1,000 executions, while providers bill
code execution by container (session size or time): the units differ, so it is never
read as a container price. Code-execution containers are priced here, per
``TokenUsage.code_containers`` unit, for every model of the provider.

Free allowances (Anthropic's monthly free container hours) are the owner's, not a user's:
a user is charged the listed price.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple


class Fee(NamedTuple):
    usd: Decimal  # per unit of TokenUsage.code_containers
    unit: str
    source: str
    as_of: str


CODE_CONTAINER_FEES: dict[str, Fee] = {
    # $0.03 per GB for a 20-minute session (4 GB $0.12, 16 GB $0.48, 64 GB $1.92: linear in
    # GB). Since 2026-06-02 OpenAI bills eligible sessions per minute at the same rate with a
    # 5-minute minimum ($0.0075 per GB); no response says how long a container ran, so a
    # new container is charged the 20-minute rate: an upper estimate for a session of up to
    # 20 minutes, never less than OpenAI bills it. A container is charged once per Pricer
    # however many responses reuse it (``Pricer.cost``).
    "openai": Fee(Decimal("0.03"), "GB of a code_interpreter container, 20 minutes (upper estimate)",
                  "https://platform.openai.com/docs/pricing (Built-in tools: Code Interpreter); "
                  "https://developers.openai.com/api/docs/changelog (2026-06-02 per-minute billing)",
                  "2026-06-02"),
    # $0.05 per container-hour with a 5-minute minimum; no response reports the time.
    "anthropic": Fee(Decimal("0.05") / 12, "5 minutes of a code execution container",
                     "https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/code-execution-tool "
                     "(Usage and pricing)", "2026-11"),
}


def code_container_usd(provider: str) -> Decimal:
    """USD per code-container unit for ``provider``'s models ($0 when it bills none)."""
    fee = CODE_CONTAINER_FEES.get(provider)
    return Decimal(0) if fee is None else fee.usd
