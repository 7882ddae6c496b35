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

import json
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from nasca_core._errors import ConfigurationError
from nasca_core._types import Charge, Reservation
from nasca_core.pricing import (
    ModelPrice,
    Pricer,
    PriceTable,
    StreamTextCounter,
    TokenUsage,
    count_message_tokens,
    count_tokens,
    estimate_cost_nanos,
    parse_price,
)

if TYPE_CHECKING:
    from nasca_core._client import Nasca


_PENDING = Charge(0, 0, 0)


class LLMCall:
    """A reserved model call. Ending it twice is harmless: the first end wins (frameworks
    may report both an error and an end for one call)."""

    __slots__ = ("_charge", "_lock", "counter", "model", "nasca", "prompt_tokens", "reservation")

    def __init__(self, nasca: Nasca, reservation: Reservation, model: str, prompt_tokens: int) -> None:
        self.nasca = nasca
        self.reservation = reservation
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.counter = StreamTextCounter(model)
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
        return usage if usage is not None else self.counter.usage(self.prompt_tokens)

    def _claim(self) -> bool:
        with self._lock:
            if self._charge is not None:
                return False
            self._charge = _PENDING  # until the store answers
            return True

    def finish(self, usage: TokenUsage | None = None) -> Charge:
        """Charge the call: ``usage`` as the provider reported it, else prompt + streamed text.

        Raises UnknownModelError (under "block") before anything is written."""
        if not self._claim():
            assert self._charge is not None
            return self._charge
        u = self._usage(usage)
        try:
            cost = self.nasca.pricer.cost(self.model, u)
        except Exception:
            self._charge = None
            raise
        self._charge = self.nasca.settle(
            self.reservation, nanos=cost, tokens=(u.input_tokens, u.output_tokens)
        )
        return self._charge

    async def afinish(self, usage: TokenUsage | None = None) -> Charge:
        """Async twin of finish()."""
        if not self._claim():
            assert self._charge is not None
            return self._charge
        u = self._usage(usage)
        try:
            cost = self.nasca.pricer.cost(self.model, u)
        except Exception:
            self._charge = None
            raise
        self._charge = await self.nasca.asettle(
            self.reservation, nanos=cost, tokens=(u.input_tokens, u.output_tokens)
        )
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


class CallsMixin:
    """Pricing and call tracking on Nasca (prices live in the store like tiers)."""

    _pricer: Pricer | None
    _config: Any
    _pricer_args: tuple[dict[str, Any], dict[str, str], str]
    default_output_tokens: int

    def _init_pricing(
        self,
        prices: Mapping[str, ModelPrice | Mapping[str, Any]] | None,
        model_aliases: Mapping[str, str] | None,
        unknown_model: str,
        default_output_tokens: int,
    ) -> None:
        if isinstance(default_output_tokens, bool) or not isinstance(default_output_tokens, int) \
                or default_output_tokens <= 0:
            raise ConfigurationError("default_output_tokens must be a positive int")
        self._pricer_args = (dict(prices or {}), dict(model_aliases or {}), unknown_model)
        self.default_output_tokens = default_output_tokens
        self._pricer = None
        self._build_pricer({})  # validate prices, aliases and policy now, not on the first call

    def _build_pricer(self, stored: Mapping[str, str]) -> Pricer:
        prices, aliases, policy = self._pricer_args
        live: dict[str, Any] = dict(prices)
        for model, text in stored.items():
            live[model] = json.loads(text)
        table = PriceTable.default()
        if live or aliases:
            table = table.with_overrides(live, aliases)
        self._pricer = Pricer(table, unknown_model=policy)
        return self._pricer

    @property
    def pricer(self) -> Pricer:
        """The prices in force: shipped table + constructor prices + set_price() overrides."""
        self._config_now()  # type: ignore[attr-defined]
        assert self._pricer is not None
        return self._pricer

    def _price_payload(self, model: str, price: ModelPrice | Mapping[str, Any] | None) -> str | None:
        if not isinstance(model, str) or not model:
            raise ConfigurationError("set_price() needs a model name")
        if price is None:
            return None
        mp = price if isinstance(price, ModelPrice) else parse_price(model, dict(price))
        PriceTable.default().with_overrides({model: mp})  # raises ConfigurationError if unusable
        return json.dumps(mp.to_dict())

    def set_price(self, model: str, price: ModelPrice | Mapping[str, Any] | None) -> None:
        """Add or change a model's price for every process sharing the store (None removes
        the override). Raises ConfigurationError."""
        self._save_config("price", model, self._price_payload(model, price))  # type: ignore[attr-defined]

    async def aset_price(self, model: str, price: ModelPrice | Mapping[str, Any] | None) -> None:
        await self._asave_config("price", model, self._price_payload(model, price))  # type: ignore[attr-defined]

    def _call_estimate(
        self,
        model: str,
        messages: Iterable[Mapping[str, Any]] | None,
        prompt: str | None,
        prompt_tokens: int | None,
        max_tokens: int | None,
        tier: str,
    ) -> tuple[int, int]:
        if not isinstance(model, str) or not model:
            raise ConfigurationError("start_call() needs the model name")
        if prompt_tokens is None:
            if messages is not None:
                prompt_tokens = count_message_tokens(messages, model)
            else:
                prompt_tokens = count_tokens(prompt or "", model)
        state = self._config_now()  # type: ignore[attr-defined]
        tier_cfg = state.tiers.get(tier)
        default_out = (tier_cfg.default_output_tokens if tier_cfg is not None else None) \
            or self.default_output_tokens
        return prompt_tokens, estimate_cost_nanos(self.pricer, model, prompt_tokens, max_tokens, default_out)

    def start_call(
        self,
        model: str,
        *,
        messages: Iterable[Mapping[str, Any]] | None = None,
        prompt: str | None = None,
        prompt_tokens: int | None = None,
        max_tokens: int | None = None,
        user: str | None = None,
        tier: str | None = None,
        ctx: Any = None,
    ) -> LLMCall:
        """Estimate a model call and reserve it. Raises NascaBlockedError (the call must not
        be made), UnknownModelError, InvalidInputError, StoreError."""
        user_id, tier_name = self.resolve_user(user, tier, ctx)  # type: ignore[attr-defined]
        tokens, estimate = self._call_estimate(model, messages, prompt, prompt_tokens, max_tokens, tier_name)
        reservation = self._reserve(estimate, user_id, tier_name, None)  # type: ignore[attr-defined]
        return LLMCall(self, reservation, model, tokens)  # type: ignore[arg-type]

    async def astart_call(
        self,
        model: str,
        *,
        messages: Iterable[Mapping[str, Any]] | None = None,
        prompt: str | None = None,
        prompt_tokens: int | None = None,
        max_tokens: int | None = None,
        user: str | None = None,
        tier: str | None = None,
        ctx: Any = None,
    ) -> LLMCall:
        """Async twin of start_call()."""
        user_id, tier_name = self.resolve_user(user, tier, ctx)  # type: ignore[attr-defined]
        await self._aconfig_now()  # type: ignore[attr-defined]
        tokens, estimate = self._call_estimate(model, messages, prompt, prompt_tokens, max_tokens, tier_name)
        reservation = await self._areserve(estimate, user_id, tier_name, None)  # type: ignore[attr-defined]
        return LLMCall(self, reservation, model, tokens)  # type: ignore[arg-type]

    def cost_of(self, model: str, usage: TokenUsage) -> int:
        """What ``usage`` on ``model`` costs, in nano-dollars. Raises UnknownModelError."""
        return self.pricer.cost(model, usage)
