"""Who hears about a charged model call: the DEBUG charge log and any observers
(``nasca_core.otel``), without the ledger or ``LLMCall`` knowing who they are.

Nothing here imports OpenTelemetry. With no observer and the ``nasca`` logger above DEBUG,
``settled`` is one cached level check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nasca_core._calls import LLMCall
    from nasca_core._types import Charge
    from nasca_core.pricing import TokenUsage

log = logging.getLogger("nasca")

CallObserver = Callable[["LLMCall", "TokenUsage", "Charge"], None]
# Process-wide, like logging handlers: an observer filters on ``call.nasca`` itself. A tuple,
# replaced whole, so a call being settled on another thread never sees it half-changed.
_observers: tuple[CallObserver, ...] = ()


def add_call_observer(observer: CallObserver) -> None:
    """Have ``observer(call, usage, charge)`` called after each charged model call."""
    global _observers
    _observers = (*_observers, observer)


def remove_call_observer(observer: CallObserver) -> None:
    """Stop calling ``observer`` (compared with ==, so a bound method works)."""
    global _observers
    _observers = tuple(o for o in _observers if o != observer)


def settled(call: LLMCall, usage: TokenUsage, charge: Charge) -> None:
    """``call`` was charged ``charge`` for ``usage``: log it at DEBUG and tell the observers
    (one that fails is logged, never raised: the charge is already written)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("nasca: charged %s %d nanos for %s (tier %s, %d input / %d output tokens%s)",
                  call.user_id, charge.cost_nanos, call.model, call.reservation.tier, usage.input_tokens,
                  usage.output_tokens,
                  ", deferred" if charge.deferred else ", queued" if charge.pending else "")
    for observer in _observers:
        try:
            observer(call, usage, charge)
        except Exception:
            log.exception("nasca: call observer failed")
