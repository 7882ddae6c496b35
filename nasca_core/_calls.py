"""One model call, from budget check to charge: what every integration drives.

    call = nasca.start_call("gpt-4o-mini", messages=[...], max_tokens=200)   # reserve or raise
    for chunk in stream: call.add_text(chunk.text)                           # streamed text
    call.finish(usage)        # the provider's usage; None = prompt + counted text
    call.fail()               # the provider call failed: release the hold
    call.abort()              # the consumer stopped a stream: charge prompt + text so far

The LangChain handler, the LlamaIndex integration and ``nasca.wrap()`` are adapters
that translate their framework's events into these five calls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nasca_core._calibration import ModelStats
from nasca_core._config import Tier
from nasca_core._errors import ConfigurationError, UsageParseError
from nasca_core._types import Charge, Reservation
from nasca_core.pricing import (
    Pricer,
    StreamTextCounter,
    TokenUsage,
    count_message_tokens,
    count_tokens,
    estimate_cost_nanos,
)

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca


_PENDING = Charge(0, 0, 0)
log = logging.getLogger("nasca")
_zero_input_warned: set[str] = set()


def counting_model(pricer: Pricer, model: str) -> str:
    """The name to count tokens with: what ``model`` resolves to (an Azure deployment alias
    of gpt-4o counts with o200k, like gpt-4o)."""
    return pricer.table.normalize(model) or model


class LLMCall:
    """A reserved model call. Ending it twice is harmless: the first end wins (frameworks
    may report both an error and an end for one call)."""

    __slots__ = ("_charge", "_lock", "counter", "model", "nasca", "prompt_tokens", "reservation")

    def __init__(self, nasca: Nasca, reservation: Reservation, model: str, prompt_tokens: int) -> None:
        self.nasca = nasca
        self.reservation = reservation
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.counter = StreamTextCounter(counting_model(nasca.pricer, model))
        self._charge: Charge | None = None
        self._lock = threading.Lock()

    @property
    def user_id(self) -> str:
        return self.reservation.user_id

    @property
    def done(self) -> bool:
        return self._charge is not None

    @property
    def charge(self) -> Charge | None:
        return self._charge

    def add_text(self, text: str | None) -> None:
        """Record a streamed text delta (counted only if the provider reports no usage)."""
        self.counter.add(text)

    def _usage(self, usage: TokenUsage | None) -> TokenUsage:
        if usage is None:
            return self.counter.usage(self.prompt_tokens)
        if not isinstance(usage, TokenUsage):
            raise UsageParseError(
                f"finish() needs a TokenUsage (or None: the counted prompt and text), got "
                f"{type(usage).__name__}: read the provider's usage with nasca_core.pricing first")
        if usage.input_tokens == 0 and self.prompt_tokens > 0:
            # Some framework streams report input_tokens 0 (langchain-anthropic's older stream
            # shape): the prompt was sent and billed, so charge the counted prompt.
            if self.model not in _zero_input_warned and len(_zero_input_warned) < 1024:
                _zero_input_warned.add(self.model)
                log.warning("nasca: %r reported input_tokens=0 for a %d-token prompt; charging the "
                            "counted prompt", self.model, self.prompt_tokens)
            return dataclasses.replace(usage, input_tokens=self.prompt_tokens)
        return usage

    def _claim(self) -> bool:
        with self._lock:
            if self._charge is not None:
                return False
            self._charge = _PENDING  # until the store answers
            return True

    def finish(self, usage: TokenUsage | None = None) -> Charge:
        """Charge the call: ``usage`` as the provider reported it, else prompt + streamed text.

        Raises UnknownModelError (under "block") or UsageParseError (``usage`` is not a
        TokenUsage) before anything is written."""
        if not self._claim():
            assert self._charge is not None
            return self._charge
        try:  # nothing is written, and the call can be finished again, if this raises
            u = self._usage(usage)
            cost = self.nasca.pricer.cost(self.model, u)
        except Exception:
            self._charge = None
            raise
        self._charge = self.nasca.settle(
            self.reservation, nanos=cost, tokens=(u.input_tokens, u.output_tokens)
        )
        if usage is not None:  # the provider's own count: what calibration learns from
            self.nasca.calibration.observe(self.model, self.prompt_tokens, u.input_tokens, u.output_tokens)
        return self._charge

    async def afinish(self, usage: TokenUsage | None = None) -> Charge:
        """Async twin of finish()."""
        if not self._claim():
            assert self._charge is not None
            return self._charge
        try:  # nothing is written, and the call can be finished again, if this raises
            u = self._usage(usage)
            cost = self.nasca.pricer.cost(self.model, u)
        except Exception:
            self._charge = None
            raise
        self._charge = await self.nasca.asettle(
            self.reservation, nanos=cost, tokens=(u.input_tokens, u.output_tokens)
        )
        if usage is not None:
            self.nasca.calibration.observe(self.model, self.prompt_tokens, u.input_tokens, u.output_tokens)
        return self._charge

    def abort(self) -> Charge:
        """The consumer stopped early: charge the prompt plus the text streamed so far."""
        return self.finish(None)

    async def aabort(self) -> Charge:
        return await self.afinish(None)

    def fail(self) -> None:
        """The provider call failed before producing output: drop the hold."""
        if self._claim():
            self.nasca.release(self.reservation)

    async def afail(self) -> None:
        if self._claim():
            await self.nasca.arelease(self.reservation)


def estimate_call(
    pricer: Pricer,
    model: str,
    *,
    messages: Iterable[Mapping[str, Any]] | None,
    prompt: str | None,
    prompt_tokens: int | None,
    tools: Sequence[Mapping[str, Any]] | None,
    max_tokens: int | None,
    tier: Tier | None,
    default_output_tokens: int,
    calibration: ModelStats | None = None,
    strict: bool = False,
) -> tuple[int, int]:
    """The prompt's tokens and the call's estimated cost in nanos (what reserve() holds);
    without ``max_tokens`` the output is the tier's default, else ``default_output_tokens``.
    A warm ``calibration`` (``_calibration``) scales the prompt by the model's learned input
    ratio and holds its learned output quantile (``min(max_tokens, p90)``; strict: max_tokens).

    Raises ConfigurationError for a missing model name, UnknownModelError."""
    if not isinstance(model, str) or not model:
        raise ConfigurationError("start_call() needs the model name")
    if prompt_tokens is None:
        counted = counting_model(pricer, model)
        # Tool schemas are prompt tokens too: counted as one more system message.
        schemas = json.dumps(list(tools), default=str) if tools else None
        if messages is not None:
            if schemas is not None:
                messages = [*messages, {"role": "system", "content": schemas}]
            prompt_tokens = count_message_tokens(messages, counted)
        else:
            prompt_tokens = count_tokens(prompt or "", counted)
            if schemas is not None:
                prompt_tokens += count_tokens(schemas, counted)
    output = (tier.default_output_tokens if tier is not None else None) or default_output_tokens
    if calibration is not None and calibration.warm:
        return prompt_tokens, estimate_cost_nanos(pricer, model, calibration.prompt_hold(prompt_tokens),
                                                  calibration.output_hold(max_tokens, strict), output)
    return prompt_tokens, estimate_cost_nanos(pricer, model, prompt_tokens, max_tokens, output)
