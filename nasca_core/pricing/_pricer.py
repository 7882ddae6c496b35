"""A price table plus an explicit policy for models the table does not know."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict

from nasca_core._errors import ConfigurationError, UnknownModelError
from nasca_core.pricing._owner import ModelPrice
from nasca_core.pricing._table import PriceTable
from nasca_core.pricing._usage import TokenUsage

logger = logging.getLogger("nasca.pricing")

_POLICIES = "'block', 'warn' or 'price_as:<model>'"
# Code containers already charged, by id: OpenAI bills a container once however many
# responses reuse it. Bounded, and per process: another process charges it again.
_CONTAINERS_REMEMBERED = 4096


class Pricer:
    """Prices model calls; what happens for an unknown model is always an explicit choice.

    ``unknown_model``:

    * ``"block"`` (default): raise ``UnknownModelError`` (its message says how to fix it).
    * ``"warn"``: log one warning per unknown model on the ``nasca.pricing`` logger and
      price the call at $0. This is an explicit opt-in, never a silent default.
    * ``"price_as:<model>"``: price unknown models as ``<model>``, which must be in the table.

    Raises ConfigurationError for an unknown policy or a ``price_as`` model the table lacks.
    """

    __slots__ = ("_containers", "_fallback", "_lock", "_policy", "_priced_as", "_table", "_warned")

    def __init__(self, table: PriceTable | None = None, *, unknown_model: str = "block") -> None:
        self._table = table if table is not None else PriceTable.default()
        self._policy = unknown_model
        self._fallback: str | None = None
        self._warned: set[str] = set()
        self._priced_as: dict[str, str] = {}  # unknown model -> the model it is priced as
        self._lock = threading.Lock()
        self._containers: OrderedDict[str, None] = OrderedDict()
        if not isinstance(unknown_model, str):
            raise ConfigurationError(f"unknown_model must be {_POLICIES}, got {unknown_model!r}")
        if unknown_model.startswith("price_as:"):
            target = unknown_model.removeprefix("price_as:").strip()
            canonical = self._table.normalize(target) if target else None
            if canonical is None:
                raise ConfigurationError(
                    f"unknown_model={unknown_model!r}: {target!r} is not in the price table; "
                    "name a priced model or add its price first"
                )
            self._fallback = canonical
        elif unknown_model not in ("block", "warn"):
            raise ConfigurationError(f"unknown_model must be {_POLICIES}, got {unknown_model!r}")

    @property
    def table(self) -> PriceTable:
        return self._table

    @property
    def unknown_model(self) -> str:
        return self._policy

    def cost(self, model: str, usage: TokenUsage) -> int:
        """Cost in integer nano-dollars. Raises UnknownModelError under the "block" policy.

        A usage naming its code containers (``container_ids``) is charged only for those
        this pricer has not charged before (the last 4,096 ids)."""
        if not usage.container_ids:
            return self._cost(model, usage)
        ids = usage.container_ids
        with self._lock:
            fresh = [i for i in ids if i not in self._containers]
        per_container = usage.code_containers // len(ids)
        nanos = self._cost(model, dataclasses.replace(usage, code_containers=per_container * len(fresh),
                                                      container_ids=()))
        with self._lock:  # after pricing: a call that raised charged nothing, so remembers nothing
            for i in ids:
                self._containers[i] = None
                self._containers.move_to_end(i)
            while len(self._containers) > _CONTAINERS_REMEMBERED:
                self._containers.popitem(last=False)
        return nanos

    def text_cost(self, model: str, input_tokens: int, output_tokens: int) -> int:
        """``cost(model, TokenUsage(input_tokens, output_tokens))`` (a call's estimate, per call),
        without building the usage. Raises UnknownModelError under the "block" policy."""
        try:
            priced = self._priced_as.get(model) or model
            return self._table.text_cost_nanos(priced, input_tokens, output_tokens)
        except UnknownModelError:  # the policy decides, and remembers a price_as answer
            return self._cost(model, TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens))

    def _cost(self, model: str, usage: TokenUsage) -> int:
        known = self._priced_as.get(model)
        if known is not None:
            return self._table.cost_nanos(known, usage)
        try:
            return self._table.cost_nanos(model, usage)
        except UnknownModelError:
            if self._fallback is not None:
                # Remember the answer: building and catching the error costs more than pricing.
                if len(self._priced_as) < 4096:
                    self._priced_as[model] = self._fallback
                return self._table.cost_nanos(self._fallback, usage)
            if self._policy == "warn":
                self._warn(model)
                return 0
            raise

    def price(self, model: str) -> tuple[str, ModelPrice] | None:
        """``(canonical, price)`` used for ``model``; None when "warn" prices it at $0.

        Under ``price_as`` an unknown model returns the fallback model's entry.
        Raises UnknownModelError under the "block" policy.
        """
        canonical = self._table.normalize(model)
        if canonical is not None:
            return self._table.resolve(canonical)
        if self._fallback is not None:
            return self._table.resolve(self._fallback)
        if self._policy == "warn":
            self._warn(model)
            return None
        raise UnknownModelError(model)

    def _warn(self, model: str) -> None:
        with self._lock:
            if model in self._warned:
                return
            self._warned.add(model)
        logger.warning(
            "Model %r has no price: calls to it are counted as $0 because "
            "unknown_model='warn'. Add its price, alias it, or use 'price_as:<model>'.",
            model,
        )

    def __repr__(self) -> str:
        return f"Pricer({self._table!r}, unknown_model={self._policy!r})"
