"""``Billing``: credit packs, plans, manual grants, Stripe Checkout and Stripe webhooks,
as a service over the ledger's public port (docs/ARCHITECTURE.md).

Every operation is a flow written once (``_requests``) and run by ``drive`` (sync) or
``adrive`` (async). What a webhook asks for is decided in ``_webhook`` and done in
``_webhook_flow``; what is on offer is ``_catalog``; a manual grant's lot is ``_grants``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from nasca_core._errors import (
    CheckoutError,
    ConfigurationError,
    InvalidInputError,
    UnknownPackError,
    UnknownPlanError,
    UnknownTierError,
)
from nasca_core._identity import check_user_id
from nasca_core._money import Amount, to_usd
from nasca_core.billing._catalog import Offer, as_map, check_bonus
from nasca_core.billing._checkout import check_url, checkout_metadata, checkout_params
from nasca_core.billing._grants import check_idempotency_key, expiry_ms, pack_lot, spend_lot
from nasca_core.billing._models import (
    BillingEvent,
    BillingPolicy,
    CreditGrant,
    CreditLot,
    CreditPack,
    Plan,
    ReviewOrder,
    StripeConfig,
    WebhookResult,
)
from nasca_core.billing._reconcile import ReconcileReport, reconcile_flow, since_of
from nasca_core.billing._refunds import WHOLE_LOT
from nasca_core.billing._requests import CONFIG, CreateSession, Flow, StoreOp, StripeOp, adrive, ask, drive
from nasca_core.billing._webhook_flow import reviews_key, webhook_flow

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._live import ConfigSnapshot

log = logging.getLogger("nasca")


class Billing:
    """Credit packs, plans, manual grants, Stripe Checkout and Stripe webhooks for one ledger.

    ``stripe`` is a ``stripe.StripeClient`` or a ``StripeConfig``; ``webhook_secret``
    (``whsec_...``) defaults to the StripeConfig's. ``listeners`` receive each
    ``BillingEvent`` ("checkout_started", "purchase_completed").

    Raises ConfigurationError, UnknownTierError for a plan naming none of the ledger's tiers.
    """

    webhook_tolerance = 300  # seconds a signed webhook stays acceptable (Stripe's default)

    def __init__(
        self,
        ledger: Nasca,
        *,
        packs: Iterable[CreditPack] | Mapping[str, CreditPack] | None = None,
        plans: Iterable[Plan] | Mapping[str, Plan] | None = None,
        stripe: Any = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
        webhook_secret: str | None = None,
        allow_bonus_credits: bool = True,
        policy: BillingPolicy | None = None,
    ) -> None:
        pack_map = as_map(packs, CreditPack, "packs")
        plan_map = as_map(plans, Plan, "plans")
        if not isinstance(allow_bonus_credits, bool):
            raise ConfigurationError("allow_bonus_credits must be True or False")
        for pack in pack_map.values():
            check_bonus(pack, allow_bonus_credits)
        tiers = ledger.live.base_tiers
        for plan in plan_map.values():
            if plan.tier not in tiers:
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
        self._ledger = ledger
        self._packs = pack_map
        self._plans = plan_map
        self._stripe = client
        self._success_url = check_url(success_url, "success_url")
        self._cancel_url = check_url(cancel_url, "cancel_url")
        self._webhook_secret: str | None = None
        self.webhook_secret = webhook_secret
        self._allow_bonus = allow_bonus_credits
        self.listeners: list[Callable[[BillingEvent], None]] = []
        self._offer: Offer | None = None
        self._policy = BillingPolicy()
        if policy is not None:
            self.policy = policy

    @property
    def webhook_secret(self) -> str | None:
        """The webhook endpoint's signing secret (``whsec_...``), None until one is set."""
        return self._webhook_secret

    @webhook_secret.setter
    def webhook_secret(self, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigurationError("webhook_secret must be the endpoint's signing secret (whsec_...)")
        self._webhook_secret = value

    @property
    def policy(self) -> BillingPolicy:
        """What webhooks do with amounts that don't match the offer, partial refunds and
        unpaid subscriptions (``BillingPolicy``); assign a new one to change it."""
        return self._policy

    @policy.setter
    def policy(self, value: BillingPolicy) -> None:
        if not isinstance(value, BillingPolicy):
            raise ConfigurationError(f"policy must be a BillingPolicy, got {type(value).__name__}")
        self._policy = value

    @property
    def stripe(self) -> Any:
        """The ``stripe.StripeClient`` checkouts go through, or None."""
        return self._stripe

    def __repr__(self) -> str:
        return (f"Billing(packs={sorted(self._packs)}, plans={sorted(self._plans)}, "
                f"stripe={self._stripe is not None}, webhook_secret={self._webhook_secret is not None})")

    def _emit(self, kind: str, user: str, **data: Any) -> None:
        event = BillingEvent(kind, user, datetime.fromtimestamp(self._ledger.now(), UTC), data)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("nasca: billing listener failed")

    # -- packs and plans -------------------------------------------------------------------
    def _offered(self, snapshot: ConfigSnapshot) -> Offer:
        offer = self._offer
        if offer is None or offer.snapshot is not snapshot:
            offer = self._offer = Offer.build(snapshot, self._packs, self._plans)
        return offer

    @property
    def packs(self) -> Mapping[str, CreditPack]:
        """The credit packs on offer: the constructor's, changed by set_pack(). Raises StoreError."""
        return dict(self._offered(self._ledger.live.current()).packs)

    @property
    def plans(self) -> Mapping[str, Plan]:
        """The plans on offer: the constructor's, changed by set_plan(). Raises StoreError."""
        return dict(self._offered(self._ledger.live.current()).plans)

    async def aget_packs(self) -> Mapping[str, CreditPack]:
        """Async twin of the ``packs`` property."""
        return dict(self._offered(await self._ledger.live.acurrent()).packs)

    async def aget_plans(self) -> Mapping[str, Plan]:
        """Async twin of the ``plans`` property."""
        return dict(self._offered(await self._ledger.live.acurrent()).plans)

    def set_pack(self, pack_id: str, pack: CreditPack | None) -> None:
        """Offer or change a credit pack for every process sharing the store; None retires it
        (no new checkouts; purchases already under way are still granted).

        Raises ConfigurationError, UnknownPackError (retiring a pack not on offer), StoreError."""
        live = self._ledger.live
        live.save("pack", pack_id, self._offered(live.current()).pack_payload(
            pack_id, pack, self._allow_bonus))

    async def aset_pack(self, pack_id: str, pack: CreditPack | None) -> None:
        """Async twin of set_pack()."""
        live = self._ledger.live
        await live.asave("pack", pack_id, self._offered(await live.acurrent()).pack_payload(
            pack_id, pack, self._allow_bonus))

    def set_plan(self, plan_id: str, plan: Plan | None) -> None:
        """Offer or change a plan for every process sharing the store; None retires it
        (no new checkouts; current subscribers keep its tier).

        Raises ConfigurationError, UnknownPlanError, UnknownTierError, StoreError."""
        live = self._ledger.live
        live.save("plan", plan_id, self._offered(live.current()).plan_payload(plan_id, plan))

    async def aset_plan(self, plan_id: str, plan: Plan | None) -> None:
        """Async twin of set_plan()."""
        live = self._ledger.live
        await live.asave("plan", plan_id, self._offered(await live.acurrent()).plan_payload(plan_id, plan))

    # -- manual grants -----------------------------------------------------------------------
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
        flow = self._grant_flow(user, pack, spend, paid, currency, idempotency_key, expires_at)
        return drive(flow, self._ledger, self._stripe)

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
        flow = self._grant_flow(user, pack, spend, paid, currency, idempotency_key, expires_at)
        return await adrive(flow, self._ledger, self._stripe)

    def _grant_flow(self, user: str, pack: str | CreditPack | None, spend: Amount | None,
                    paid: Amount | None, currency: str | None, key: str,
                    expires_at: datetime | float | None) -> Flow[CreditGrant]:
        check_user_id(user)
        check_idempotency_key(key)
        snapshot = yield from ask(CONFIG)
        now = self._ledger.now()
        now_ms = int(now * 1000)
        expires_ms = expiry_ms(expires_at, now_ms)
        if pack is not None:
            if spend is not None:
                raise ConfigurationError("grant_credits() takes pack= or spend=, not both")
            try:
                chosen = self._offered(snapshot).pack(pack)
            except UnknownPackError:
                self._ledger.live.invalidate()  # set_pack() in another process: read it once more
                chosen = self._offered((yield from ask(CONFIG))).pack(pack)
            lot = pack_lot(chosen, key, paid, currency, expires_ms, now_ms, self._allow_bonus)
        else:
            lot = spend_lot(key, spend, paid, currency, expires_ms, now_ms)
        keys = self._ledger.user_keys(user, now)
        granted = yield from ask(StoreOp.grant(keys, lot))
        stored = lot
        if not granted:
            lots = yield from ask(StoreOp.all_lots(keys))
            stored = next((x for x in lots if x.id == key), lot)
        return CreditGrant(granted=granted, lot=CreditLot.from_lot(stored, now_ms))

    def revoke_credits(self, user: str, lot_id: str) -> Decimal:
        """Take back what remains of one lot (a refund); returns the AI spend revoked, in
        dollars (0 when already revoked or spent). Raises InvalidUserError, StoreError."""
        return drive(self._revoke_flow(user, lot_id), self._ledger, self._stripe)

    async def arevoke_credits(self, user: str, lot_id: str) -> Decimal:
        """Async twin of revoke_credits()."""
        return await adrive(self._revoke_flow(user, lot_id), self._ledger, self._stripe)

    def _revoke_flow(self, user: str, lot_id: str) -> Flow[Decimal]:
        check_user_id(user)
        if not isinstance(lot_id, str) or not lot_id:
            raise InvalidInputError("lot_id must be a non-empty string")
        keys = self._ledger.user_keys(user, self._ledger.now())
        # the whole lot as its floor too: a dispute won later gives nothing of it back
        taken = yield from ask(StoreOp.revoke_to(keys, lot_id, WHOLE_LOT, floor=WHOLE_LOT))
        return to_usd(taken)

    def credit_lots(self, user: str) -> tuple[CreditLot, ...]:
        """Every credit lot of a user, oldest first, spent and revoked ones included.
        Raises InvalidUserError, StoreError."""
        return drive(self._lots_flow(user), self._ledger, self._stripe)

    async def acredit_lots(self, user: str) -> tuple[CreditLot, ...]:
        """Async twin of credit_lots()."""
        return await adrive(self._lots_flow(user), self._ledger, self._stripe)

    def _lots_flow(self, user: str) -> Flow[tuple[CreditLot, ...]]:
        check_user_id(user)
        now = self._ledger.now()
        lots = yield from ask(StoreOp.all_lots(self._ledger.user_keys(user, now)))
        return tuple(CreditLot.from_lot(lot, int(now * 1000)) for lot in lots)

    # -- checkout --------------------------------------------------------------------------
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
        flow = self._checkout_flow(user, pack_or_plan, prompt_id, customer_email, success_url, cancel_url)
        return drive(flow, self._ledger, self._stripe)

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
        flow = self._checkout_flow(user, pack_or_plan, prompt_id, customer_email, success_url, cancel_url)
        return await adrive(flow, self._ledger, self._stripe)

    def _checkout_flow(self, user: str, item: str | CreditPack | Plan, prompt_id: str | None,
                       customer_email: str | None, success_url: str | None,
                       cancel_url: str | None) -> Flow[str]:
        check_user_id(user)
        if self._stripe is None:
            raise ConfigurationError("create_checkout() needs Nasca(stripe=StripeClient(...) "
                                     "or StripeConfig(...))")
        success = check_url(success_url, "success_url") or self._success_url
        if success is None:
            raise ConfigurationError("create_checkout() needs Nasca(success_url=...)")
        cancel = check_url(cancel_url, "cancel_url") or self._cancel_url
        snapshot = yield from ask(CONFIG)
        try:
            chosen = self._offered(snapshot).checkout_item(item)
        except (UnknownPackError, UnknownPlanError):
            self._ledger.live.invalidate()  # set_pack() in another process: read it once more
            chosen = self._offered((yield from ask(CONFIG))).checkout_item(item)
        metadata = checkout_metadata(self._ledger.namespace, user, chosen, prompt_id)
        params = checkout_params(chosen, metadata, user, success, cancel, customer_email)
        session = yield from ask(CreateSession(params))
        url = getattr(session, "url", None)
        if not isinstance(url, str):
            raise CheckoutError("Stripe answered without a checkout URL")
        kind = "pack" if isinstance(chosen, CreditPack) else "plan"
        self._emit("checkout_started", user, session_id=getattr(session, "id", None), mode=params["mode"],
                   **{kind: chosen.id}, amount=chosen.price, currency=chosen.currency, prompt_id=prompt_id)
        return url

    # -- the customer portal ------------------------------------------------------------------
    def create_portal_session(self, user: str, return_url: str) -> str | None:
        """The URL of a Stripe Billing Portal session where a subscriber manages or cancels
        their subscription (then back to ``return_url``); None when Nasca knows no
        subscription of the user. Raises InvalidUserError, ConfigurationError (no Stripe
        client, a bad URL), CheckoutError (Stripe refused or is unreachable), StoreError."""
        return drive(self._portal_flow(user, return_url), self._ledger, self._stripe)

    async def acreate_portal_session(self, user: str, return_url: str) -> str | None:
        """Async twin of create_portal_session()."""
        return await adrive(self._portal_flow(user, return_url), self._ledger, self._stripe)

    def _portal_flow(self, user: str, return_url: str) -> Flow[str | None]:
        check_user_id(user)
        back = check_url(return_url, "return_url")
        key = f"{self._ledger.namespace}:billing:portal:{user}"
        customer = yield from ask(StoreOp.get_marker(key, int(self._ledger.now() * 1000)))
        if customer is None:
            return None
        session = yield from ask(StripeOp.create_portal_session({"customer": customer, "return_url": back}))
        url = session.get("url") if isinstance(session, dict) else None
        if not isinstance(url, str):
            raise CheckoutError("Stripe answered without a billing portal URL")
        return url

    # -- webhooks --------------------------------------------------------------------------
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
        return drive(self._webhook_flow(payload, signature_header), self._ledger, self._stripe)

    async def ahandle_stripe_webhook(self, payload: bytes | str,
                                     signature_header: str | None) -> WebhookResult:
        """Async twin of handle_stripe_webhook()."""
        return await adrive(self._webhook_flow(payload, signature_header), self._ledger, self._stripe)

    def _webhook_flow(self, payload: bytes | str, header: str | None) -> Flow[WebhookResult]:
        if self._webhook_secret is None:
            raise ConfigurationError("handle_stripe_webhook() needs Nasca(webhook_secret='whsec_...')")
        policy = self._policy
        return webhook_flow(
            payload, header, self._webhook_secret, self.webhook_tolerance, ledger=self._ledger,
            catalog=lambda snap: self._offered(snap).webhook_catalog(self._allow_bonus, policy),
            emit=self._emit, policy=policy, refetch=self._stripe is not None)

    # -- reconciliation ------------------------------------------------------------------------
    def reconcile(self, since: datetime | str | None = None, *, dry_run: bool = False) -> ReconcileReport:
        """Apply what Stripe says was paid and refunded that the store misses (after a store
        restore or a webhook outage): completed Checkout Sessions of this namespace since
        ``since`` (a datetime, or ``"2026-11-01"`` in UTC; default: all) are granted as their
        webhooks would be, refunds revoke. Exactly once: a second run changes nothing.
        ``dry_run=True`` only reports what it would change.

        Raises ConfigurationError (no Stripe client), InvalidInputError (bad ``since``),
        CheckoutError (Stripe refused or is unreachable), StoreError."""
        return drive(self._reconcile_flow(since, dry_run), self._ledger, self._stripe)

    async def areconcile(self, since: datetime | str | None = None, *,
                         dry_run: bool = False) -> ReconcileReport:
        """Async twin of reconcile()."""
        return await adrive(self._reconcile_flow(since, dry_run), self._ledger, self._stripe)

    def _reconcile_flow(self, since: datetime | str | None, dry_run: bool) -> Flow[ReconcileReport]:
        if self._stripe is None:
            raise ConfigurationError("reconcile() needs Nasca(stripe=StripeClient(...) or StripeConfig(...))")
        policy = self._policy
        return reconcile_flow(
            ledger=self._ledger, emit=self._emit, policy=policy, since=since_of(since), dry_run=bool(dry_run),
            catalog=lambda snap: self._offered(snap).webhook_catalog(self._allow_bonus, policy))

    def review_orders(self) -> tuple[ReviewOrder, ...]:
        """Paid checkouts held for review (``BillingPolicy.on_amount_mismatch="review"``),
        oldest first. Raises StoreError."""
        return drive(self._reviews_flow(), self._ledger, self._stripe)

    async def areview_orders(self) -> tuple[ReviewOrder, ...]:
        """Async twin of review_orders()."""
        return await adrive(self._reviews_flow(), self._ledger, self._stripe)

    def _reviews_flow(self) -> Flow[tuple[ReviewOrder, ...]]:
        legacy = f"{self._ledger.namespace}:billing:reviews"  # a JSON list, before the keyed set
        raw = yield from ask(StoreOp.get_marker(legacy, int(self._ledger.now() * 1000)))
        orders = {x["session_id"]: x for x in (json.loads(raw) if raw else ())}
        listed = yield from ask(StoreOp.entries(reviews_key(self._ledger)))
        orders.update({session: json.loads(text) for session, text in listed.items()})
        return tuple(sorted((ReviewOrder.model_validate(x) for x in orders.values()), key=lambda o: o.at))
