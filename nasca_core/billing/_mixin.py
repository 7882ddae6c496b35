"""Methods Nasca gains for credits and Stripe.

Each operation is written once, as a generator that yields the store, Stripe and config
requests it needs; ``_drive`` answers them with sync calls and ``_adrive`` with awaited
ones (the way httpx writes an auth flow once for Client and AsyncClient).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar, cast

from nasca_core._errors import (
    ConfigurationError,
    InvalidInputError,
    StoreError,
    UnknownTierError,
    WebhookError,
)
from nasca_core._identity import check_user_id
from nasca_core._money import Amount, check_nanos, to_nanos, to_usd
from nasca_core.billing._checkout import check_url, checkout_metadata, checkout_params
from nasca_core.billing._errors import (
    CheckoutError,
    CurrencyMismatchError,
    UnknownPackError,
    UnknownPlanError,
)
from nasca_core.billing._models import (
    BillingEvent,
    CreditGrant,
    CreditLot,
    CreditPack,
    Plan,
    StripeConfig,
    WebhookAction,
    WebhookResult,
    _check_currency,
)
from nasca_core.billing._state import async_billing_state, billing_state
from nasca_core.billing._webhook import (
    ApplyPlan,
    AwaitPayment,
    Catalog,
    Decision,
    GrantPack,
    Ignore,
    Refund,
    SubscriptionChange,
    decide,
    verify_and_parse,
)
from nasca_core.stores import Lot, UserKeys

if TYPE_CHECKING:
    from nasca_core._client import Nasca, _ConfigState

log = logging.getLogger("nasca")

T = TypeVar("T")
_Op = tuple[Any, ...]
_Flow = Generator[_Op, Any, T]
_CONFIG: _Op = ("config",)

DAY_MS = 86_400_000
EVENT_TTL_MS = 30 * DAY_MS  # Stripe retries for 3 days and can resend an event for 30
INDEX_TTL_MS = 400 * DAY_MS  # refunds come months after the payment
_MAX_KEY = 255


def _store(method: str, *args: Any) -> _Op:
    return ("store", method, args)


def _kv(method: str, *args: Any) -> _Op:
    return ("kv", method, args)


@dataclass
class _Catalog:
    state: Any
    packs: dict[str, CreditPack]
    plans: dict[str, Plan]
    retired_packs: dict[str, CreditPack]
    retired_plans: dict[str, Plan]


@dataclass
class _Billing:
    packs: dict[str, CreditPack] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)
    stripe: Any = None
    success_url: str | None = None
    cancel_url: str | None = None
    webhook_secret: str | None = None
    allow_bonus_credits: bool = True
    webhook_tolerance: int = 300
    listeners: list[Callable[[BillingEvent], None]] = field(default_factory=list)
    catalog: _Catalog | None = None


class BillingMixin:
    """Credit packs, plans, manual grants, Stripe Checkout and Stripe webhooks."""

    # -- setup ---------------------------------------------------------------------------
    def _init_billing(
        self,
        *,
        packs: Iterable[CreditPack] | Mapping[str, CreditPack] | None = None,
        plans: Iterable[Plan] | Mapping[str, Plan] | None = None,
        stripe: Any = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
        webhook_secret: str | None = None,
        allow_bonus_credits: bool = True,
    ) -> None:
        """Configure billing (Nasca.__init__ forwards its keyword arguments of these names).

        ``stripe`` is a ``stripe.StripeClient`` or a ``StripeConfig``; ``webhook_secret``
        (``whsec_...``) defaults to the StripeConfig's. Raises ConfigurationError,
        UnknownTierError for a plan naming no tier.
        """
        pack_map = _as_map(packs, CreditPack, "packs")
        plan_map = _as_map(plans, Plan, "plans")
        if not isinstance(allow_bonus_credits, bool):
            raise ConfigurationError("allow_bonus_credits must be True or False")
        for pack in pack_map.values():
            _check_bonus(pack, allow_bonus_credits)
        tiers = getattr(self, "_base_tiers", None)
        for plan in plan_map.values():
            if tiers is not None and plan.tier not in tiers:
                raise UnknownTierError(plan.tier, list(tiers))
        shared = set(pack_map) & set(plan_map)
        if shared:
            raise ConfigurationError(f"ids used by both a pack and a plan: {sorted(shared)}")
        client = None
        if isinstance(stripe, StripeConfig):
            try:
                client = stripe.client()
            except ImportError as exc:
                raise ConfigurationError("stripe= needs the stripe package: pip install 'nasca[stripe]'") \
                    from exc
            if webhook_secret is None and stripe.webhook_secret is not None:
                webhook_secret = stripe.webhook_secret.get_secret_value()
        elif stripe is not None:
            if not hasattr(stripe, "v1"):
                raise ConfigurationError("stripe= must be a stripe.StripeClient or a nasca StripeConfig, "
                                         f"got {type(stripe).__name__}")
            client = stripe
        if webhook_secret is not None and (not isinstance(webhook_secret, str) or not webhook_secret.strip()):
            raise ConfigurationError("webhook_secret must be the endpoint's signing secret (whsec_...)")
        previous: _Billing | None = getattr(self, "_billing_conf", None)
        self._billing_conf = _Billing(
            listeners=previous.listeners if previous is not None else [],  # keep who listens
            packs=pack_map, plans=plan_map, stripe=client,
            success_url=check_url(success_url, "success_url"),
            cancel_url=check_url(cancel_url, "cancel_url"),
            webhook_secret=webhook_secret, allow_bonus_credits=allow_bonus_credits,
        )

    @property
    def _bill(self) -> _Billing:
        conf: _Billing | None = getattr(self, "_billing_conf", None)
        if conf is None:
            self._init_billing()
            conf = self._billing_conf
        return conf

    @property
    def _core(self) -> Nasca:
        return cast("Nasca", self)

    @property
    def billing_listeners(self) -> list[Callable[[BillingEvent], None]]:
        """Callables receiving each BillingEvent ("checkout_started", "purchase_completed")."""
        return self._bill.listeners

    def _billing_event(self, kind: str, user: str, **data: Any) -> None:
        event = BillingEvent(kind, user, datetime.fromtimestamp(self._core._now(), UTC), data)
        for listener in self._bill.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("nasca: billing listener failed")

    # -- packs and plans ---------------------------------------------------------------------
    def _catalog(self, state: _ConfigState) -> _Catalog:
        b = self._bill
        cat = b.catalog
        if cat is not None and cat.state is state:
            return cat
        cat = _Catalog(state, dict(b.packs), dict(b.plans), {}, {})
        _load_stored(state.stored.sections.get("pack", {}), CreditPack, cat.packs, cat.retired_packs)
        _load_stored(state.stored.sections.get("plan", {}), Plan, cat.plans, cat.retired_plans)
        b.catalog = cat
        return cat

    def _webhook_catalog(self, state: _ConfigState) -> Catalog:
        cat = self._catalog(state)
        return Catalog({**cat.retired_packs, **cat.packs}, {**cat.retired_plans, **cat.plans},
                       frozenset(state.tiers), self._bill.allow_bonus_credits)

    @property
    def packs(self) -> Mapping[str, CreditPack]:
        """The credit packs on offer: the constructor's, changed by set_pack()."""
        return dict(self._catalog(self._core._config_now()).packs)

    @property
    def plans(self) -> Mapping[str, Plan]:
        """The plans on offer: the constructor's, changed by set_plan()."""
        return dict(self._catalog(self._core._config_now()).plans)

    async def aget_packs(self) -> Mapping[str, CreditPack]:
        """Async twin of the ``packs`` property."""
        return dict(self._catalog(await self._core._aconfig_now()).packs)

    async def aget_plans(self) -> Mapping[str, Plan]:
        """Async twin of the ``plans`` property."""
        return dict(self._catalog(await self._core._aconfig_now()).plans)

    def _pack_payload(self, state: _ConfigState, pack_id: str, pack: CreditPack | None) -> str:
        cat = self._catalog(state)
        if pack is None:
            current = cat.packs.get(pack_id)
            if current is None:
                raise UnknownPackError(pack_id, cat.packs)
            return json.dumps({"retired": current.model_dump(mode="json")})
        if not isinstance(pack, CreditPack):
            raise ConfigurationError(f"set_pack({pack_id!r}, ...) needs a CreditPack, "
                                     f"got {type(pack).__name__}")
        if pack.id != pack_id:
            raise ConfigurationError(f"set_pack({pack_id!r}, ...) got a pack whose id is {pack.id!r}")
        if pack_id in cat.plans:
            raise ConfigurationError(f"{pack_id!r} is already a plan id")
        _check_bonus(pack, self._bill.allow_bonus_credits)
        return pack.model_dump_json()

    def _plan_payload(self, state: _ConfigState, plan_id: str, plan: Plan | None) -> str:
        cat = self._catalog(state)
        if plan is None:
            current = cat.plans.get(plan_id)
            if current is None:
                raise UnknownPlanError(plan_id, cat.plans)
            return json.dumps({"retired": current.model_dump(mode="json")})
        if not isinstance(plan, Plan):
            raise ConfigurationError(f"set_plan({plan_id!r}, ...) needs a Plan, got {type(plan).__name__}")
        if plan.id != plan_id:
            raise ConfigurationError(f"set_plan({plan_id!r}, ...) got a plan whose id is {plan.id!r}")
        if plan_id in cat.packs:
            raise ConfigurationError(f"{plan_id!r} is already a credit pack id")
        if plan.tier not in state.tiers:
            raise UnknownTierError(plan.tier, list(state.tiers))
        return plan.model_dump_json()

    def set_pack(self, pack_id: str, pack: CreditPack | None) -> None:
        """Offer or change a credit pack for every process sharing the store; None retires it
        (no new checkouts; purchases already under way are still granted).

        Raises ConfigurationError, UnknownPackError (retiring a pack not on offer)."""
        n = self._core
        n._save_config("pack", pack_id, self._pack_payload(n._config_now(), pack_id, pack))

    async def aset_pack(self, pack_id: str, pack: CreditPack | None) -> None:
        """Async twin of set_pack()."""
        n = self._core
        await n._asave_config("pack", pack_id, self._pack_payload(await n._aconfig_now(), pack_id, pack))

    def set_plan(self, plan_id: str, plan: Plan | None) -> None:
        """Offer or change a plan for every process sharing the store; None retires it
        (no new checkouts; current subscribers keep its tier).

        Raises ConfigurationError, UnknownPlanError, UnknownTierError."""
        n = self._core
        n._save_config("plan", plan_id, self._plan_payload(n._config_now(), plan_id, plan))

    async def aset_plan(self, plan_id: str, plan: Plan | None) -> None:
        """Async twin of set_plan()."""
        n = self._core
        await n._asave_config("plan", plan_id, self._plan_payload(await n._aconfig_now(), plan_id, plan))

    # -- driving flows -------------------------------------------------------------------------
    def _drive(self, flow: _Flow[T]) -> T:
        n = self._core
        try:
            op = next(flow)
            while True:
                kind = op[0]
                if kind == "config":
                    answer: Any = n._config_now()
                elif kind == "store":
                    answer = n._sync_store(op[1], *op[2])
                elif kind == "kv":
                    answer = self._counted(getattr(billing_state(n._store.sync), op[1]), op[2])
                else:
                    answer = self._create_session(op[1])
                op = flow.send(answer)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _adrive(self, flow: _Flow[T]) -> T:
        n = self._core
        try:
            op = next(flow)
            while True:
                kind = op[0]
                if kind == "config":
                    answer: Any = await n._aconfig_now()
                elif kind == "store":
                    answer = await n._async_store(op[1], *op[2])
                elif kind == "kv":
                    method = getattr(async_billing_state(n._store.for_loop()), op[1])
                    try:
                        answer = await method(*op[2])
                    except StoreError:
                        n.stats.store_errors += 1
                        raise
                else:
                    answer = await self._acreate_session(op[1])
                op = flow.send(answer)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _counted(self, method: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        try:
            return method(*args)
        except StoreError:
            self._core.stats.store_errors += 1
            raise

    def _user_keys(self, user: str, now: float) -> UserKeys:
        n = self._core
        return n._keys(user, n._windows.at(now))

    def _bkey(self, kind: str, ident: str) -> str:
        return f"{self._core.namespace}:billing:{kind}:{ident}"

    # -- manual grants -------------------------------------------------------------------------
    def grant_credits(
        self,
        user: str,
        pack: str | CreditPack | None = None,
        *,
        spend: Amount | None = None,
        paid: Amount | None = None,
        currency: str | None = None,
        idempotency_key: str,
        expires_at: datetime | float | None = None,
    ) -> CreditGrant:
        """Give a user credits (support, promotions, purchases made elsewhere): a pack's
        (``pack=``), or ``spend=`` dollars of AI spend for ``paid=`` (default: the spend,
        in USD) in ``currency``. The ``idempotency_key`` becomes the lot id: granting
        with it again grants nothing and returns the first lot (a checkout session id
        is the key a webhook uses, so a manual grant for it is never doubled).

        Raises InvalidUserError, InvalidAmountError, InvalidInputError,
        CurrencyMismatchError, UnknownPackError, ConfigurationError, StoreError.
        """
        return self._drive(self._grant_flow(user, pack, spend, paid, currency, idempotency_key,
                                            expires_at))

    async def agrant_credits(
        self,
        user: str,
        pack: str | CreditPack | None = None,
        *,
        spend: Amount | None = None,
        paid: Amount | None = None,
        currency: str | None = None,
        idempotency_key: str,
        expires_at: datetime | float | None = None,
    ) -> CreditGrant:
        """Async twin of grant_credits()."""
        return await self._adrive(self._grant_flow(user, pack, spend, paid, currency,
                                                   idempotency_key, expires_at))

    def _grant_flow(self, user: str, pack: str | CreditPack | None, spend: Amount | None,
                    paid: Amount | None, currency: str | None, key: str,
                    expires_at: datetime | float | None) -> _Flow[CreditGrant]:
        check_user_id(user)
        if not isinstance(key, str) or not key.strip() or len(key) > _MAX_KEY \
                or any(ord(c) < 32 for c in key):
            raise InvalidInputError(f"idempotency_key must be 1-{_MAX_KEY} printable characters")
        state: _ConfigState = yield _CONFIG
        n = self._core
        now = n._now()
        now_ms = int(now * 1000)
        expires_ms = _expiry_ms(expires_at, now_ms)
        if pack is not None:
            if spend is not None:
                raise ConfigurationError("grant_credits() takes pack= or spend=, not both")
            try:
                p = self._offered(self._catalog(state).packs, pack)
            except UnknownPackError:
                self._core._config = None  # set_pack() in another process: read it once more
                state = yield _CONFIG
                p = self._offered(self._catalog(state).packs, pack)
            _check_bonus(p, self._bill.allow_bonus_credits)
            if currency is not None and _currency(currency) != p.currency:
                raise CurrencyMismatchError(p.id, p.currency, currency)
            cur, pack_id, spend_n = p.currency, p.id, to_nanos(p.spend)
            paid_n = to_nanos(p.price if paid is None else paid, what="paid")
            if expires_at is None and p.expires_in_days:
                expires_ms = now_ms + p.expires_in_days * DAY_MS
        else:
            if spend is None:
                raise ConfigurationError("grant_credits() needs pack= or spend=")
            cur, pack_id = _currency(currency or "usd"), ""
            spend_n = to_nanos(spend, what="spend", allow_zero=False)
            if paid is None and cur != "usd":
                raise InvalidInputError(f"give paid= for credits paid in {cur.upper()}")
            paid_n = spend_n if paid is None else to_nanos(paid, what="paid")
        check_nanos(spend_n, what="spend")
        check_nanos(paid_n, what="paid")
        lot = Lot(id=key, pack=pack_id, paid=paid_n, currency=cur, granted=spend_n, remaining=spend_n,
                  expires_ms=expires_ms, created_ms=now_ms)
        keys = self._user_keys(user, now)
        granted = bool((yield _store("grant", keys, lot)))
        stored = lot
        if not granted:
            lots: tuple[Lot, ...] = yield _store("all_lots", keys)
            stored = next((x for x in lots if x.id == key), lot)
        return CreditGrant(granted=granted, lot=CreditLot.from_lot(stored, now_ms))

    def _offered(self, packs: Mapping[str, CreditPack], pack: str | CreditPack) -> CreditPack:
        pack_id = pack.id if isinstance(pack, CreditPack) else pack
        found = packs.get(pack_id) if isinstance(pack_id, str) else None
        if found is None:
            raise UnknownPackError(str(pack_id), packs)
        if isinstance(pack, CreditPack) and pack != found:
            raise ConfigurationError(f"pack {pack_id!r} differs from the one on offer: set_pack() it first")
        return found

    def revoke_credits(self, user: str, lot_id: str) -> Decimal:
        """Take back what remains of one lot (a refund); returns the AI spend revoked, in
        dollars (0 when already revoked or spent). Raises InvalidUserError, StoreError."""
        return self._drive(self._revoke_flow(user, lot_id))

    async def arevoke_credits(self, user: str, lot_id: str) -> Decimal:
        """Async twin of revoke_credits()."""
        return await self._adrive(self._revoke_flow(user, lot_id))

    def _revoke_flow(self, user: str, lot_id: str) -> _Flow[Decimal]:
        check_user_id(user)
        if not isinstance(lot_id, str) or not lot_id:
            raise InvalidInputError("lot_id must be a non-empty string")
        taken = yield _store("revoke", self._user_keys(user, self._core._now()), lot_id)
        return to_usd(int(taken))

    def credit_lots(self, user: str) -> tuple[CreditLot, ...]:
        """Every credit lot of a user, oldest first, spent and revoked ones included.
        Raises InvalidUserError, StoreError."""
        return self._drive(self._lots_flow(user))

    async def acredit_lots(self, user: str) -> tuple[CreditLot, ...]:
        """Async twin of credit_lots()."""
        return await self._adrive(self._lots_flow(user))

    def _lots_flow(self, user: str) -> _Flow[tuple[CreditLot, ...]]:
        check_user_id(user)
        now = self._core._now()
        lots: tuple[Lot, ...] = yield _store("all_lots", self._user_keys(user, now))
        return tuple(CreditLot.from_lot(lot, int(now * 1000)) for lot in lots)

    # -- checkout --------------------------------------------------------------------------------
    def create_checkout(
        self,
        user: str,
        pack_or_plan: str | CreditPack | Plan,
        prompt_id: str | None = None,
        *,
        customer_email: str | None = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
    ) -> str:
        """Create a Stripe Checkout Session for a credit pack (mode payment) or a plan
        (mode subscription) and return its URL. The session's metadata carries the user,
        the pack or plan, the prompt id and the namespace back in the webhook.

        Raises InvalidUserError, UnknownPackError, UnknownPlanError, ConfigurationError
        (no Stripe client or success URL), CheckoutError (Stripe refused or is unreachable).
        """
        return self._drive(self._checkout_flow(user, pack_or_plan, prompt_id, customer_email,
                                               success_url, cancel_url))

    async def acreate_checkout(
        self,
        user: str,
        pack_or_plan: str | CreditPack | Plan,
        prompt_id: str | None = None,
        *,
        customer_email: str | None = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
    ) -> str:
        """Async twin of create_checkout()."""
        return await self._adrive(self._checkout_flow(user, pack_or_plan, prompt_id, customer_email,
                                                      success_url, cancel_url))

    def _checkout_flow(self, user: str, item: str | CreditPack | Plan, prompt_id: str | None,
                       customer_email: str | None, success_url: str | None,
                       cancel_url: str | None) -> _Flow[str]:
        check_user_id(user)
        b = self._bill
        if b.stripe is None:
            raise ConfigurationError("create_checkout() needs Nasca(stripe=StripeClient(...) "
                                     "or StripeConfig(...))")
        success = check_url(success_url, "success_url") or b.success_url
        if success is None:
            raise ConfigurationError("create_checkout() needs Nasca(success_url=...)")
        cancel = check_url(cancel_url, "cancel_url") or b.cancel_url
        state: _ConfigState = yield _CONFIG
        n = self._core
        try:
            chosen = self._checkout_item(state, item)
        except (UnknownPackError, UnknownPlanError):
            n._config = None  # set_pack() in another process: read the config once more
            state = yield _CONFIG
            chosen = self._checkout_item(state, item)
        metadata = checkout_metadata(n.namespace, user, chosen, prompt_id)
        params = checkout_params(chosen, metadata, user, success, cancel, customer_email)
        session = yield ("stripe", params)
        url = getattr(session, "url", None)
        if not isinstance(url, str):
            raise CheckoutError("Stripe answered without a checkout URL")
        kind = "pack" if isinstance(chosen, CreditPack) else "plan"
        self._billing_event("checkout_started", user, session_id=getattr(session, "id", None),
                            mode=params["mode"], **{kind: chosen.id}, amount=chosen.price,
                            currency=chosen.currency, prompt_id=prompt_id)
        return url

    def _checkout_item(self, state: _ConfigState, item: str | CreditPack | Plan) -> CreditPack | Plan:
        cat = self._catalog(state)
        if isinstance(item, CreditPack):
            return self._offered(cat.packs, item)
        if isinstance(item, Plan):
            plan = cat.plans.get(item.id)
            if plan is None:
                raise UnknownPlanError(item.id, cat.plans)
            if plan != item:
                raise ConfigurationError(f"plan {item.id!r} differs from the one on offer: "
                                         "set_plan() it first")
            return plan
        if isinstance(item, str) and item in cat.packs:
            return cat.packs[item]
        if isinstance(item, str) and item in cat.plans:
            return cat.plans[item]
        raise UnknownPackError(str(item), [*cat.packs, *cat.plans])

    def _create_session(self, params: dict[str, Any]) -> Any:
        import stripe

        try:
            return self._bill.stripe.v1.checkout.sessions.create(params=params)
        except stripe.StripeError as exc:
            raise _checkout_error(exc) from exc

    async def _acreate_session(self, params: dict[str, Any]) -> Any:
        import stripe

        try:
            return await self._bill.stripe.v1.checkout.sessions.create_async(params=params)
        except stripe.StripeError as exc:
            raise _checkout_error(exc) from exc

    # -- webhooks --------------------------------------------------------------------------------
    def handle_stripe_webhook(self, payload: bytes | str, signature_header: str | None) -> WebhookResult:
        """Verify and apply one Stripe webhook (pass the raw body and the Stripe-Signature
        header); answer Stripe 200 with the result, 400 on WebhookError, 500 on StoreError.

        ``checkout.session.completed`` (paid) grants the pack's lot, whose id is the
        session id, or applies the plan; ``customer.subscription.*`` sets or clears the
        user's tier; ``charge.refunded`` (in full) revokes what remains of the lot; other
        events are acknowledged and ignored. Duplicates, retries and concurrent
        deliveries change nothing after the first.

        Raises SignatureError, WebhookError (malformed payload, unknown pack or plan,
        currency mismatch: nothing changed), ConfigurationError (no webhook secret), StoreError.
        """
        return self._drive(self._webhook_flow(payload, signature_header))

    async def ahandle_stripe_webhook(self, payload: bytes | str,
                                     signature_header: str | None) -> WebhookResult:
        """Async twin of handle_stripe_webhook()."""
        return await self._adrive(self._webhook_flow(payload, signature_header))

    def _webhook_flow(self, payload: bytes | str, header: str | None) -> _Flow[WebhookResult]:
        b = self._bill
        if b.webhook_secret is None:
            raise ConfigurationError("handle_stripe_webhook() needs Nasca(webhook_secret='whsec_...')")
        event = verify_and_parse(payload, header, b.webhook_secret, b.webhook_tolerance)
        n = self._core
        now = n._now()
        now_ms = int(now * 1000)
        marker = self._bkey("evt", event["id"])
        prior = yield _kv("get", marker, now_ms)
        if prior is not None:
            return _replayed(prior, event)
        state: _ConfigState = yield _CONFIG
        try:
            decision = decide(event, n.namespace, self._webhook_catalog(state), now_ms)
        except WebhookError as exc:
            if not isinstance(exc.__cause__, UnknownPackError | UnknownPlanError):
                raise
            # Another process may have just added it (a webhook worker never reserves, so
            # nothing else tells it the config moved): read the config once more.
            n._config = None
            state = yield _CONFIG
            decision = decide(event, n.namespace, self._webhook_catalog(state), now_ms)
        result = yield from self._apply(decision, event, now, now_ms)
        yield _kv("put", marker, result.model_dump_json(), EVENT_TTL_MS, now_ms)
        return result

    def _apply(self, d: Decision, event: Mapping[str, Any], now: float,
               now_ms: int) -> _Flow[WebhookResult]:
        if isinstance(d, Ignore):
            return _result(event, "ignored", user_id=d.user_id, detail=d.detail)
        if isinstance(d, AwaitPayment):
            return _result(event, "awaiting_payment", user_id=d.user_id,
                           detail=f"session {d.session_id} is not paid yet")
        if isinstance(d, GrantPack):
            if d.payment_intent:
                index = json.dumps({"u": d.user_id, "l": d.lot.id})
                yield _kv("put", self._bkey("pi", d.payment_intent), index, INDEX_TTL_MS, now_ms)
            if d.customer:
                yield _kv("put", self._bkey("cus", d.customer), d.user_id, None, now_ms)
            granted = bool((yield _store("grant", self._user_keys(d.user_id, now), d.lot)))
            if granted:
                self._billing_event("purchase_completed", d.user_id, session_id=d.lot.id, pack=d.pack.id,
                                    amount=d.amount, currency=d.pack.currency, spend=to_usd(d.lot.granted),
                                    prompt_id=d.prompt_id, lot_id=d.lot.id)
            return _result(event, "granted", duplicate=not granted, user_id=d.user_id,
                           lot_id=d.lot.id)
        if isinstance(d, ApplyPlan):
            if d.customer:
                yield _kv("put", self._bkey("cus", d.customer), d.user_id, None, now_ms)
            status, tier = yield _kv("subscription", self._user_keys(d.user_id, now), d.change, now_ms)
            first = yield _kv("claim", self._bkey("once", d.session_id), INDEX_TTL_MS, now_ms)
            if first:
                self._billing_event("purchase_completed", d.user_id, session_id=d.session_id, plan=d.plan.id,
                                    tier=d.plan.tier, amount=d.amount, currency=d.plan.currency,
                                    prompt_id=d.prompt_id)
            return _result(event, "plan_applied" if status else "stale",
                           duplicate=not first, user_id=d.user_id, tier=tier)
        if isinstance(d, SubscriptionChange):
            user = d.user_id
            if user is None and d.customer:
                user = yield _kv("get", self._bkey("cus", d.customer), now_ms)
            if user is None:
                return _result(event, "ignored",
                               detail="no nasca_user_id metadata and an unknown customer")
            status, tier = yield _kv("subscription", self._user_keys(user, now), d.change, now_ms)
            action: WebhookAction = "stale" if status == 0 else "tier_set" if tier else "tier_cleared"
            return _result(event, action, duplicate=status == 2, user_id=user, tier=tier)
        assert isinstance(d, Refund)
        raw = yield _kv("get", self._bkey("pi", d.payment_intent), now_ms)
        if raw is None:
            return _result(event, "ignored", detail="no credit lot was bought with this payment")
        index = json.loads(raw)
        user, lot_id = str(index["u"]), str(index["l"])
        if not d.full:
            log.info("nasca: partial refund of %s: the credits of lot %s are kept", d.charge_id, lot_id)
            return _result(event, "ignored", user_id=user, lot_id=lot_id,
                           detail="partial refund: the credits are kept")
        taken = int((yield _store("revoke", self._user_keys(user, now), lot_id)))
        return _result(event, "revoked", user_id=user, lot_id=lot_id,
                       detail=f"revoked ${to_usd(taken)} of AI spend")


# -- helpers ---------------------------------------------------------------------------------------
def _as_map(items: Any, model: type[Any], what: str) -> dict[str, Any]:
    if items is None:
        return {}
    values = list(items.values()) if isinstance(items, Mapping) else list(items)
    out: dict[str, Any] = {}
    for value in values:
        if not isinstance(value, model):
            raise ConfigurationError(f"{what} must hold {model.__name__} objects, got {type(value).__name__}")
        if value.id in out:
            raise ConfigurationError(f"{what} has two entries with id {value.id!r}")
        out[value.id] = value
    if isinstance(items, Mapping):
        for key, value in items.items():
            if key != value.id:
                raise ConfigurationError(f"{what}[{key!r}] has id {value.id!r}")
    return out


def _check_bonus(pack: CreditPack, allowed: bool) -> None:
    if pack.is_bonus and not allowed:
        raise ConfigurationError(
            f"credit pack {pack.id!r} grants ${pack.spend} of AI spend for ${pack.price}: "
            "allow_bonus_credits=False forbids packs worth more than they cost"
        )


def _currency(value: str) -> str:
    try:
        return _check_currency(value)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def _expiry_ms(expires_at: datetime | float | None, now_ms: int) -> int:
    if expires_at is None:
        return 0
    if isinstance(expires_at, datetime):
        if expires_at.tzinfo is None:
            raise InvalidInputError("expires_at must be timezone-aware (e.g. datetime.now(UTC))")
        ms = int(expires_at.timestamp() * 1000)
    elif isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
        ms = int(expires_at * 1000)
    else:
        raise InvalidInputError(f"expires_at must be a datetime or epoch seconds, got {expires_at!r}")
    if ms <= now_ms:
        raise InvalidInputError("expires_at is in the past")
    return ms


M = TypeVar("M", CreditPack, Plan)


def _load_stored(stored: Mapping[str, str], model: type[M], live: dict[str, M],
                 retired: dict[str, M]) -> None:
    for name, text in stored.items():
        try:
            data = json.loads(text)
            if isinstance(data, dict) and "retired" in data:
                live.pop(name, None)
                retired[name] = model.model_validate(data["retired"])
            else:
                live[name] = model.model_validate(data)
        except Exception:  # one another version wrote that this one can't read
            log.exception("nasca: ignoring unreadable stored %s %r", model.__name__, name)


def _result(event: Mapping[str, Any], action: WebhookAction, **fields: Any) -> WebhookResult:
    return WebhookResult(event_id=str(event["id"]), type=str(event["type"]), action=action, **fields)


def _replayed(prior: str, event: Mapping[str, Any]) -> WebhookResult:
    try:
        return WebhookResult.model_validate_json(prior).model_copy(update={"duplicate": True})
    except Exception:
        return WebhookResult(event_id=str(event["id"]), type=str(event["type"]), action="ignored",
                             duplicate=True)


def _checkout_error(exc: Any) -> CheckoutError:
    return CheckoutError(f"Stripe did not create the checkout session: {exc}",
                         http_status=getattr(exc, "http_status", None), code=getattr(exc, "code", None),
                         request_id=getattr(exc, "request_id", None))

