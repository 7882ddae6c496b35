"""Billing's operations are written once, as generators free of I/O that yield typed
requests; ``drive`` answers them with sync calls and ``adrive`` with awaited ones (the
way httpx writes an auth flow once for Client and AsyncClient).

A flow asks with ``answer = yield from ask(request)``, which types the answer. Requests:

    CONFIG               the ledger's live config snapshot
    StoreOp              one store operation (``StoreOp.grant(keys, lot)`` ...)
    CreateSession        a Stripe Checkout Session
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from nasca_core._errors import CheckoutError, StoreError
from nasca_core.stores import AsyncStore, Lot, Store, SubChange, SubscriptionResult, UserKeys

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._live import ConfigSnapshot

T = TypeVar("T")


class Request(Generic[T]):
    """Something a flow needs answered; ``T`` is the answer's type."""


Flow = Generator[Request[Any], Any, T]


def ask(request: Request[T]) -> Generator[Request[Any], Any, T]:
    answer = yield request
    return cast(T, answer)  # the drivers answer each request with its own type


class _Config(Request[Any]):
    pass


CONFIG: Request[ConfigSnapshot] = _Config()


@dataclass(frozen=True, slots=True)
class CreateSession(Request[Any]):
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoreOp(Request[T]):
    """One store operation, as the sync and the async store are called (same text: an async
    store's method returns the awaitable)."""

    run: Callable[[Store], T]
    arun: Callable[[AsyncStore], Awaitable[T]]

    @staticmethod
    def grant(keys: UserKeys, lot: Lot) -> StoreOp[bool]:
        return StoreOp(lambda s: s.grant(keys, lot), lambda s: s.grant(keys, lot))

    @staticmethod
    def revoke(keys: UserKeys, lot_id: str) -> StoreOp[int]:
        return StoreOp(lambda s: s.revoke(keys, lot_id), lambda s: s.revoke(keys, lot_id))

    @staticmethod
    def all_lots(keys: UserKeys) -> StoreOp[tuple[Lot, ...]]:
        return StoreOp(lambda s: s.all_lots(keys), lambda s: s.all_lots(keys))

    @staticmethod
    def get_marker(key: str, now_ms: int) -> StoreOp[str | None]:
        return StoreOp(lambda s: s.get_marker(key, now_ms), lambda s: s.get_marker(key, now_ms))

    @staticmethod
    def put_marker(key: str, value: str, ttl_ms: int | None, now_ms: int) -> StoreOp[None]:
        return StoreOp(lambda s: s.put_marker(key, value, ttl_ms, now_ms),
                       lambda s: s.put_marker(key, value, ttl_ms, now_ms))

    @staticmethod
    def claim_marker(key: str, ttl_ms: int, now_ms: int) -> StoreOp[bool]:
        return StoreOp(lambda s: s.claim_marker(key, ttl_ms, now_ms),
                       lambda s: s.claim_marker(key, ttl_ms, now_ms))

    @staticmethod
    def apply_subscription(keys: UserKeys, change: SubChange, now_ms: int) -> StoreOp[SubscriptionResult]:
        return StoreOp(lambda s: s.apply_subscription(keys, change, now_ms),
                       lambda s: s.apply_subscription(keys, change, now_ms))


def drive(flow: Flow[T], ledger: Nasca, stripe: Any) -> T:
    """Run ``flow`` with sync calls. Raises what the flow or its requests raise."""
    try:
        request = next(flow)
        while True:
            answer: Any
            if isinstance(request, StoreOp):
                try:
                    answer = request.run(ledger.store.sync)
                except StoreError:
                    ledger.stats.store_errors += 1
                    raise
            elif isinstance(request, CreateSession):
                answer = _create_session(stripe, request.params)
            else:  # CONFIG
                answer = ledger.live.current()
            request = flow.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def adrive(flow: Flow[T], ledger: Nasca, stripe: Any) -> T:
    """Async twin of drive()."""
    try:
        request = next(flow)
        while True:
            answer: Any
            if isinstance(request, StoreOp):
                try:
                    answer = await request.arun(ledger.store.for_loop())
                except StoreError:
                    ledger.stats.store_errors += 1
                    raise
            elif isinstance(request, CreateSession):
                answer = await _acreate_session(stripe, request.params)
            else:  # CONFIG
                answer = await ledger.live.acurrent()
            request = flow.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result


def _create_session(stripe_client: Any, params: dict[str, Any]) -> Any:
    import stripe

    try:
        return stripe_client.v1.checkout.sessions.create(params=params)
    except stripe.StripeError as exc:
        raise _checkout_error(exc) from exc


async def _acreate_session(stripe_client: Any, params: dict[str, Any]) -> Any:
    import stripe

    try:
        return await stripe_client.v1.checkout.sessions.create_async(params=params)
    except stripe.StripeError as exc:
        raise _checkout_error(exc) from exc


def _checkout_error(exc: Any) -> CheckoutError:
    return CheckoutError(f"Stripe did not create the checkout session: {exc}",
                         http_status=getattr(exc, "http_status", None), code=getattr(exc, "code", None),
                         request_id=getattr(exc, "request_id", None))
