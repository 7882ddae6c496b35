"""A remote client's model call: priced by the server, not by the client.

``LLMCall.finish`` prices a call with ``nasca.pricer`` and settles the amount. On a remote
client that pricer would be the client's shipped table plus the server's overrides: a
client on another release of the table would charge differently from the server, and a
model only the server prices would raise after the provider ran. So a remote call's finish
sends the model and the provider's token counts (``SettleBody.model``/``usage``), and the
server prices them with the table it reserved the call with. The charge is the server's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

from nasca_core import _observe
from nasca_core._calls import LLMCall
from nasca_core._types import Charge, Reservation
from nasca_core.remote._parts import body
from nasca_core.remote._wire import SettleBody, Tokens

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core.pricing import TokenUsage
    from nasca_core.remote._wire import Hold


class PricedSettles(Protocol):
    def settle_call(self, reservation: Reservation, model: str, usage: TokenUsage) -> Charge: ...

    async def asettle_call(self, reservation: Reservation, model: str, usage: TokenUsage) -> Charge: ...


def priced_body(hold: Hold, model: str, usage: TokenUsage) -> SettleBody:
    """The settle of ``usage`` on ``model``, for the server to price. Raises InvalidInputError
    for counts past the wire's caps (the server's too), before anything is sent."""
    counts = body(Tokens, **{name: getattr(usage, name) for name in Tokens.model_fields})
    return body(SettleBody, hold=hold, model=model, usage=counts,
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)


class RemoteCall(LLMCall):
    """``LLMCall`` whose finish is priced by the server (``remote`` is the client)."""

    __slots__ = ("remote",)

    def __init__(self, remote: PricedSettles, reservation: Reservation, model: str,
                 prompt_tokens: int) -> None:
        super().__init__(cast("Nasca", remote), reservation, model, prompt_tokens)
        self.remote = remote

    def finish(self, usage: TokenUsage | None = None) -> Charge:
        """Send the call's token counts (``usage`` as the provider reported it, else prompt +
        streamed text) for the server to price and charge. Raises UsageParseError (nothing sent)."""
        if not self._claim():
            assert self._charge is not None
            return self._charge
        try:
            u = self._usage(usage)
        except Exception:
            self._charge = None
            raise
        self._charge = self.remote.settle_call(self.reservation, self.model, u)
        _observe.settled(self, u, self._charge)
        return self._charge

    async def afinish(self, usage: TokenUsage | None = None) -> Charge:
        """Async twin of finish()."""
        if not self._claim():
            assert self._charge is not None
            return self._charge
        try:
            u = self._usage(usage)
        except Exception:
            self._charge = None
            raise
        self._charge = await self.remote.asettle_call(self.reservation, self.model, u)
        _observe.settled(self, u, self._charge)
        return self._charge
