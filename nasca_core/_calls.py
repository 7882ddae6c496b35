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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nasca_core import _observe
from nasca_core._calibration import ModelStats
from nasca_core._config import Tier
from nasca_core._errors import ConfigurationError, UnknownModelError, UsageParseError
from nasca_core._money import MAX_OP_NANOS, check_nanos
from nasca_core._types import Charge, Reservation
from nasca_core.pricing import (
    Pricer,
    StreamTextCounter,
    TokenUsage,
    count_message_tokens,
    count_tokens,
    estimate_cost_nanos,
)
from nasca_core.pricing._usage import MAX_TOKENS

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._thresholds import ThresholdWarning


_IN_FLIGHT = Charge(0, 0, 0)  # marks a call whose first finish is in its store round trip
# The most output tokens a model writes (and accepts as max_tokens), for calls sent without
# max_tokens (Anthropic's Messages API requires one): the cap is sent unless the room pays
# for this much. Longest prefix wins; a model not listed is taken to write up to
# ``MAX_OUTPUT_UNKNOWN`` (no current model writes more; a smaller cap is sent as it is).
MAX_OUTPUT = {
    "gpt-3.5": 4_096, "gpt-4": 8_192, "gpt-4-turbo": 4_096, "gpt-4o": 16_384, "gpt-4.1": 32_768,
    "chatgpt-4o": 16_384, "gpt-5": 128_000, "o1": 100_000, "o1-mini": 65_536, "o3": 100_000, "o4": 100_000,
    "gemini-1.5": 8_192, "gemini-2.0": 8_192, "gemini-2.5": 65_536,
}
MAX_OUTPUT_UNKNOWN = 128_000
log = logging.getLogger("nasca")
_zero_input_warned: set[str] = set()


def counting_model(pricer: Pricer, model: str) -> str:
    """The name to count tokens with: what ``model`` resolves to (an Azure deployment alias
    of gpt-4o counts with o200k, like gpt-4o)."""
    return pricer.table.normalize(model) or model


class LLMCall:
    """A reserved model call. Ending it twice is harmless: the first end wins (frameworks
    may report both an error and an end for one call)."""

    __slots__ = ("_charge", "_counter", "_lock", "model", "nasca", "prompt_tokens", "reservation")

    def __init__(self, nasca: Nasca, reservation: Reservation, model: str, prompt_tokens: int) -> None:
        self.nasca = nasca
        self.reservation = reservation
        self.model = model
        self.prompt_tokens = prompt_tokens
        self._counter: StreamTextCounter | None = None  # made on first use: most calls report usage
        self._charge: Charge | None = None
        self._lock = threading.Lock()

    @property
    def counter(self) -> StreamTextCounter:
        """The streamed text, counted only if the provider reports no usage."""
        counter = self._counter
        if counter is None:  # made once under the lock: two threads' first texts both kept
            with self._lock:
                if (counter := self._counter) is None:
                    counter = self._counter = StreamTextCounter(counting_model(self.nasca.pricer, self.model))
        return counter

    @property
    def user_id(self) -> str:
        return self.reservation.user_id

    @property
    def warning(self) -> ThresholdWarning | None:
        """The soft threshold (``Tier.warn_at``) this call's estimate projects the user to, at its reserve."""
        return self.reservation.warning

    @property
    def done(self) -> bool:
        return self._charge is not None

    @property
    def charge(self) -> Charge | None:
        return None if self._charge is None else self._finished()

    def output_cap(self, max_tokens: int | None) -> int | None:
        """The ``max_tokens`` to send so the call can't spend past what the user had left at
        admission (``Reservation.room``: allowance and credits beside the other calls in
        flight), after its prompt's cost at the model's prices; None: send ``max_tokens`` as
        it is (the room buys it, or the model's most output, ``max_output_of``, when it is
        None, or there is no limit).
        At least 1: a prompt that alone fills the room still gets a one-token answer."""
        room = self.reservation.room
        if room < 0:
            return None
        stats, prompt = self.nasca.calibration.view(self.model), self.prompt_tokens
        if stats is not None and stats.warm:
            prompt = stats.prompt_hold(prompt)
        return output_cap(self.nasca.pricer, self.model, prompt, room, max_tokens)

    def add_text(self, text: str | None) -> None:
        """Record a streamed text delta (counted only if the provider reports no usage)."""
        if text:
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
            self._charge = _IN_FLIGHT  # until the store answers
            return True

    def _finished(self) -> Charge:
        # A second finish while the first is in flight: the cost is not known yet, only that
        # the call is being charged (a fresh object: the marker is never handed out).
        assert self._charge is not None
        return Charge(0, 0, 0, pending=True) if self._charge is _IN_FLIGHT else self._charge

    def finish(self, usage: TokenUsage | None = None) -> Charge:
        """Charge the call: ``usage`` as the provider reported it, else prompt + streamed text.

        Raises UnknownModelError (under "block") or UsageParseError (``usage`` is not a
        TokenUsage) before anything is written."""
        if not self._claim():
            return self._finished()
        try:  # nothing is written, and the call can be finished again, if this raises
            u = self._usage(usage)
            cost = self.nasca.pricer.cost(self.model, u)
        except Exception:
            self._charge = None
            raise
        self._charge = self.nasca.settle(
            self.reservation, nanos=cost, tokens=(u.input_tokens, u.output_tokens), background=True
        )
        _observe.settled(self, u, self._charge)
        if usage is not None:  # the provider's own count: what calibration learns from
            self.nasca.calibration.observe(self.model, self.prompt_tokens, u.input_tokens, u.output_tokens)
        return self._charge

    async def afinish(self, usage: TokenUsage | None = None) -> Charge:
        """Async twin of finish()."""
        if not self._claim():
            return self._finished()
        try:  # nothing is written, and the call can be finished again, if this raises
            u = self._usage(usage)
            cost = self.nasca.pricer.cost(self.model, u)
        except Exception:
            self._charge = None
            raise
        self._charge = await self.nasca.asettle(
            self.reservation, nanos=cost, tokens=(u.input_tokens, u.output_tokens), background=True
        )
        _observe.settled(self, u, self._charge)
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
    capped: bool = False,
) -> tuple[int, int, int]:
    """The prompt's tokens, the call's estimated cost in nanos (what reserve() holds), and (when
    ``capped``, else 0) the most it may cost uncapped (its prompt with ``max_tokens``, or
    ``max_output_of``, of output);
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
    held_prompt, held_output = prompt_tokens, max_tokens
    if calibration is not None and calibration.warm:
        if max_tokens is not None and not (type(max_tokens) is int and 0 <= max_tokens <= MAX_TOKENS):
            estimate_cost_nanos(pricer, model, 0, max_tokens)  # refused as when cold, not held as p90
        held_prompt = calibration.prompt_hold(prompt_tokens)
        held_output = calibration.output_hold(max_tokens, strict)
    estimate = estimate_cost_nanos(pricer, model, held_prompt, held_output, output)
    if estimate > MAX_OP_NANOS:  # what reserve(nanos=...) refuses, refused before any store
        check_nanos(estimate, what="the call's estimate")
    if not capped:  # no room asked for: the reserve never reads credits for one
        return prompt_tokens, estimate, 0
    # The most the call may cost uncapped: the reserve reads the user's credits for the room
    # (``LLMCall.output_cap``) only when the allowance left is below it. Not money: an upper
    # bound from the rates, so no second pricing on the call's path.
    more = (max_tokens if max_tokens is not None else max_output_of(pricer, model)) - (
        held_output if held_output is not None else output)
    return prompt_tokens, estimate, estimate + (-(-more * _rates(pricer, model, held_prompt)[1] // _M)
                                                if more > 0 else 0)


_M = 1_000_000
_HALF = _M // 2  # Rates.cost rounds half up


def max_output_of(pricer: Pricer, model: str) -> int:
    """The most output tokens ``model`` writes (``MAX_OUTPUT``, by its longest prefix)."""
    name = counting_model(pricer, model)
    found = max((p for p in MAX_OUTPUT if name.startswith(p)), key=len, default=None)
    return MAX_OUTPUT[found] if found is not None else MAX_OUTPUT_UNKNOWN


def _rates(pricer: Pricer, model: str, prompt_tokens: int) -> tuple[int, int, int]:
    """Nanos per million input and output tokens, and the per-request fee times a million,
    of the rates in force now for a ``prompt_tokens`` prompt (the table's own lookup: dated
    and time-of-day prices, live price changes). Not cached: the table's lookup is a dict's."""
    try:
        rates = pricer.table.rates(model)
    except UnknownModelError:
        found = pricer.price(model)  # "price_as:" prices it as another; "warn": $0; "block" raises
        if found is None:
            return 0, 0, 0
        rates = pricer.table.rates(found[0])
    tier = next((r for threshold, r in rates.tiers if prompt_tokens > threshold), rates.base)
    # reasoning tokens count in max_tokens: the dearer of the two prices
    return tier[0], max(tier[6], tier[7]), tier[13]


def output_cap(pricer: Pricer, model: str, prompt_tokens: int, room: int,
               max_tokens: int | None) -> int | None:
    """The most output tokens (≥ 1) a call of ``prompt_tokens`` may ask for so it costs at most
    ``room`` nanos, or None when it may ask for ``max_tokens`` (None: the model's most,
    ``max_output_of``) as it is."""
    want = max_tokens if max_tokens is not None else max_output_of(pricer, model)
    in_rate, out_rate, fee = _rates(pricer, model, prompt_tokens)
    if want < 1 or out_rate <= 0:
        return None

    def fits(output: int) -> bool:
        return pricer.cost(model, TokenUsage(input_tokens=prompt_tokens, output_tokens=output)) <= room

    # The closed form of Rates.cost for a text call (the rates the table prices it at, so far
    # from the limit no pricing at all), checked by pricing near it:
    # cost(o) ≤ room ⇔ prompt·in + o·out + fee + ½M < (room + 1)·M.
    guess = ((room + 1) * _M - 1 - _HALF - prompt_tokens * in_rate - fee) // out_rate
    if guess >= want:
        return None
    low, high = max(1, min(guess, want - 1)), want - 1
    if fits(low):  # the largest that fits: the guess, or one past it
        return low if low >= high or not fits(low + 1) else _largest(fits, low + 1, high)
    return _largest(fits, 1, low - 1) if low > 1 else 1


def _largest(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The largest output in [low, high] that fits, given that ``low`` fits (bisection: only
    when the rates' closed form is off, e.g. a fallback pricer)."""
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low
