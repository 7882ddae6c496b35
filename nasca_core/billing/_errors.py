"""The errors credits and Stripe add to ``nasca_core._errors``.

    NascaError
    ├── ConfigurationError
    │   ├── UnknownPackError        a credit pack id no config defines
    │   └── UnknownPlanError        a plan id no config defines
    ├── InvalidInputError
    │   └── CurrencyMismatchError   money in another currency than the pack's
    ├── WebhookError                a Stripe webhook to answer with 400 (``__cause__`` says why)
    │   └── SignatureError
    └── CheckoutError               Stripe refused or could not be reached creating a session

Every error is raised before anything is written: no lot granted, no tier changed.
"""

from __future__ import annotations

from collections.abc import Iterable

from nasca_core._errors import ConfigurationError, InvalidInputError, NascaError


class UnknownPackError(ConfigurationError):
    def __init__(self, pack: str, known: Iterable[str] = ()) -> None:
        self.pack = pack
        self.known = tuple(sorted(known))
        hint = f" Known packs: {', '.join(self.known)}." if self.known else " No packs are defined."
        super().__init__(f"Unknown credit pack {pack!r}.{hint} Define it with packs=[...] or set_pack().")


class UnknownPlanError(ConfigurationError):
    def __init__(self, plan: str, known: Iterable[str] = ()) -> None:
        self.plan = plan
        self.known = tuple(sorted(known))
        hint = f" Known plans: {', '.join(self.known)}." if self.known else " No plans are defined."
        super().__init__(f"Unknown plan {plan!r}.{hint} Define it with plans=[...] or set_plan().")


class CurrencyMismatchError(InvalidInputError):
    def __init__(self, pack: str, expected: str, got: str) -> None:
        self.pack = pack
        self.expected = expected
        self.got = got
        super().__init__(f"Credit pack {pack!r} is priced in {expected.upper()}, "
                         f"but the payment is in {got.upper()}: nothing was granted.")


class CheckoutError(NascaError):
    """Stripe did not create the Checkout Session (the Stripe error is the ``__cause__``)."""

    def __init__(self, message: str, *, http_status: int | None = None, code: str | None = None,
                 request_id: str | None = None) -> None:
        self.http_status = http_status
        self.code = code
        self.request_id = request_id
        super().__init__(message)
