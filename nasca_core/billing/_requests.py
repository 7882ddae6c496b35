"""Billing's operations are written once, as generators free of I/O that yield typed
requests; ``drive`` answers them with sync calls and ``adrive`` with awaited ones (the
way httpx writes an auth flow once for Client and AsyncClient).

A flow asks with ``answer = yield from ask(request)``, which types the answer. Requests:

    CONFIG               the ledger's live config snapshot
    StoreOp              one store operation (``StoreOp.grant(keys, lot)`` ...)
    CreateSession        a Stripe Checkout Session
    StripeCall           one other Stripe API call: a list (every page) or a retrieve
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from nasca_core._errors import CheckoutError, ConfigurationError, StoreError
from nasca_core.stores import AsyncStore, Lot, Snapshot, Store, SubChange, SubscriptionResult, UserKeys

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
class StripeCall(Request[Any]):
    """``client.v1.<service>.<method>(...)`` answered with plain dicts: ``list`` walks every
    page (stripe-python's auto-pagination) and answers a list; ``retrieve`` and ``create``
    answer one object. ``what`` names it in errors."""

    service: tuple[str, ...]  # ("checkout", "sessions"), ("refunds",), ("billing_portal", "sessions")
    method: str  # "list", "list_dated" (answers the list and Stripe's Date header), "retrieve", "create"
    params: dict[str, Any]
    ident: str | None = None
    what: str = "answer"
    missing_ok: bool = False  # answer None when Stripe has no such object (404)


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
    def revoke(keys: UserKeys, lot_id: str, keep: int | None = None) -> StoreOp[int]:
        return StoreOp(lambda s: s.revoke(keys, lot_id, keep), lambda s: s.revoke(keys, lot_id, keep))

    @staticmethod
    def all_lots(keys: UserKeys) -> StoreOp[tuple[Lot, ...]]:
        return StoreOp(lambda s: s.all_lots(keys), lambda s: s.all_lots(keys))

    @staticmethod
    def snapshot(keys: UserKeys, now_ms: int) -> StoreOp[Snapshot]:
        return StoreOp(lambda s: s.snapshot(keys, now_ms), lambda s: s.snapshot(keys, now_ms))

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
            elif isinstance(request, StripeCall):
                answer = _stripe_call(stripe, request)
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
            elif isinstance(request, StripeCall):
                answer = await _astripe_call(stripe, request)
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


def _service(stripe_client: Any, call: StripeCall) -> Any:
    if stripe_client is None:
        raise ConfigurationError(f"Stripe's {call.what} needs Nasca(stripe=StripeClient(...) "
                                 "or StripeConfig(...))")
    service = stripe_client.v1
    for name in call.service:
        service = getattr(service, name)
    return service


def _stripe_call(stripe_client: Any, call: StripeCall) -> Any:
    import stripe

    service = _service(stripe_client, call)
    try:
        if call.method in ("list", "list_dated"):
            page = service.list(params=call.params)
            items = [o.to_dict() for o in page.auto_paging_iter()]
            return (items, _date(page)) if call.method == "list_dated" else items
        args = () if call.ident is None else (call.ident,)
        return getattr(service, call.method)(*args, params=call.params).to_dict()
    except stripe.InvalidRequestError as exc:
        if call.missing_ok and getattr(exc, "http_status", None) == 404:
            return None
        raise _stripe_error(exc, call) from exc
    except stripe.StripeError as exc:
        raise _stripe_error(exc, call) from exc


async def _astripe_call(stripe_client: Any, call: StripeCall) -> Any:
    import stripe

    service = _service(stripe_client, call)
    try:
        if call.method in ("list", "list_dated"):
            page = await service.list_async(params=call.params)
            items = [o.to_dict() async for o in page.auto_paging_iter()]
            return (items, _date(page)) if call.method == "list_dated" else items
        args = () if call.ident is None else (call.ident,)
        return (await getattr(service, f"{call.method}_async")(*args, params=call.params)).to_dict()
    except stripe.InvalidRequestError as exc:
        if call.missing_ok and getattr(exc, "http_status", None) == 404:
            return None
        raise _stripe_error(exc, call) from exc
    except stripe.StripeError as exc:
        raise _stripe_error(exc, call) from exc


def _date(page: Any) -> int | None:
    """Stripe's clock (epoch s) when it answered: its response's Date header."""
    from email.utils import parsedate_to_datetime

    response = getattr(page, "last_response", None)
    raw = getattr(response, "headers", {}).get("Date") if response is not None else None
    try:
        return int(parsedate_to_datetime(raw).timestamp()) if raw else None
    except (TypeError, ValueError):
        return None


def _stripe_error(exc: Any, call: StripeCall) -> CheckoutError:
    return CheckoutError(f"Stripe did not give the {call.what}: {exc}",
                         http_status=getattr(exc, "http_status", None), code=getattr(exc, "code", None),
                         request_id=getattr(exc, "request_id", None))
