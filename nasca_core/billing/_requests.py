"""Billing's operations are written once, as generators free of I/O that yield typed
requests; ``drive`` answers them with sync calls and ``adrive`` with awaited ones (the
way httpx writes an auth flow once for Client and AsyncClient).

A flow asks with ``answer = yield from ask(request)``, which types the answer. Requests:

    CONFIG               the ledger's live config snapshot
    StoreOp              one store operation (``StoreOp.grant(keys, lot)`` ...)
    CreateSession        a Stripe Checkout Session
    StripeOp             one other Stripe API call (``StripeOp.list_refunds(params)`` ...)
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


Objects = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class StripeOp(Request[T]):
    """One Stripe API call, as the sync and the async stripe-python client make it, answered
    with plain dicts: a list walks every page (auto-pagination). ``what`` names it in
    errors; ``missing_ok``: answer None when Stripe has no such object (404)."""

    run: Callable[[Any], T]
    arun: Callable[[Any], Awaitable[T]]
    what: str
    missing_ok: bool = False

    @staticmethod
    def list_checkout_sessions(params: dict[str, Any]) -> StripeOp[Objects]:
        return StripeOp(lambda c: _every(c.v1.checkout.sessions.list(params=params)),
                        lambda c: _aevery(c.v1.checkout.sessions.list_async(params=params)),
                        "checkout sessions")

    @staticmethod
    def list_refunds(params: dict[str, Any]) -> StripeOp[Objects]:
        return StripeOp(lambda c: _every(c.v1.refunds.list(params=params)),
                        lambda c: _aevery(c.v1.refunds.list_async(params=params)), "refunds")

    @staticmethod
    def list_disputes(params: dict[str, Any]) -> StripeOp[Objects]:
        return StripeOp(lambda c: _every(c.v1.disputes.list(params=params)),
                        lambda c: _aevery(c.v1.disputes.list_async(params=params)), "disputes")

    @staticmethod
    def list_subscriptions_dated(params: dict[str, Any]) -> StripeOp[tuple[Objects, int | None]]:
        """Every subscription, and Stripe's clock when it answered (its Date header)."""
        return StripeOp(lambda c: _dated(c.v1.subscriptions.list(params=params)),
                        lambda c: _adated(c.v1.subscriptions.list_async(params=params)), "subscriptions")

    @staticmethod
    def retrieve_checkout_session(ident: str, params: dict[str, Any]) -> StripeOp[dict[str, Any] | None]:
        return StripeOp(lambda c: c.v1.checkout.sessions.retrieve(ident, params=params).to_dict(),
                        lambda c: _adict(c.v1.checkout.sessions.retrieve_async(ident, params=params)),
                        f"checkout session {ident}", missing_ok=True)

    @staticmethod
    def retrieve_charge(ident: str, missing_ok: bool = False) -> StripeOp[dict[str, Any] | None]:
        return StripeOp(lambda c: c.v1.charges.retrieve(ident).to_dict(),
                        lambda c: _adict(c.v1.charges.retrieve_async(ident)), f"charge {ident}",
                        missing_ok=missing_ok)

    @staticmethod
    def create_portal_session(params: dict[str, Any]) -> StripeOp[dict[str, Any]]:
        return StripeOp(lambda c: c.v1.billing_portal.sessions.create(params=params).to_dict(),
                        lambda c: _adict(c.v1.billing_portal.sessions.create_async(params=params)),
                        "Billing Portal session")


def _every(page: Any) -> Objects:
    return [o.to_dict() for o in page.auto_paging_iter()]


async def _aevery(pending: Awaitable[Any]) -> Objects:
    page = await pending
    return [o.to_dict() async for o in page.auto_paging_iter()]


def _dated(page: Any) -> tuple[Objects, int | None]:
    return _every(page), _date(page)


async def _adated(pending: Awaitable[Any]) -> tuple[Objects, int | None]:
    page = await pending
    return [o.to_dict() async for o in page.auto_paging_iter()], _date(page)


async def _adict(pending: Awaitable[Any]) -> dict[str, Any]:
    answer: dict[str, Any] = (await pending).to_dict()
    return answer


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
    def revoke_to(keys: UserKeys, lot_id: str, target: int, restore: bool = False,
                  floor: int = 0) -> StoreOp[int]:
        return StoreOp(lambda s: s.revoke_to(keys, lot_id, target, restore, floor),
                       lambda s: s.revoke_to(keys, lot_id, target, restore, floor))

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
    def put_entry(key: str, name: str, value: str | None) -> StoreOp[None]:
        return StoreOp(lambda s: s.put_entry(key, name, value), lambda s: s.put_entry(key, name, value))

    @staticmethod
    def entries(key: str) -> StoreOp[dict[str, str]]:
        return StoreOp(lambda s: s.entries(key), lambda s: s.entries(key))

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
            elif isinstance(request, StripeOp):
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
            elif isinstance(request, StripeOp):
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


def _client(stripe_client: Any, call: StripeOp[Any]) -> Any:
    if stripe_client is None:
        raise ConfigurationError(f"Stripe's {call.what} needs Nasca(stripe=StripeClient(...) "
                                 "or StripeConfig(...))")
    return stripe_client


def _stripe_call(stripe_client: Any, call: StripeOp[Any]) -> Any:
    import stripe

    client = _client(stripe_client, call)
    try:
        return call.run(client)
    except stripe.InvalidRequestError as exc:
        if call.missing_ok and getattr(exc, "http_status", None) == 404:
            return None
        raise _stripe_error(exc, call) from exc
    except stripe.StripeError as exc:
        raise _stripe_error(exc, call) from exc


async def _astripe_call(stripe_client: Any, call: StripeOp[Any]) -> Any:
    import stripe

    client = _client(stripe_client, call)
    try:
        return await call.arun(client)
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


def _stripe_error(exc: Any, call: StripeOp[Any]) -> CheckoutError:
    return CheckoutError(f"Stripe did not give the {call.what}: {exc}",
                         http_status=getattr(exc, "http_status", None), code=getattr(exc, "code", None),
                         request_id=getattr(exc, "request_id", None))
