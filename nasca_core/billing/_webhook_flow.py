"""A Stripe webhook as a flow (see ``_requests``): verify it, skip a replay, decide
(``_webhook``), then do what the decision asks and remember the result for replays.

What billing keeps beside the ledger, as store markers under ``<namespace>:billing:``:
``evt:<event id>`` the result of each handled event, ``pi:<payment intent>`` the lot it
bought (for refunds), ``cus:<customer>`` the user, ``once:<session id>`` that a plan's
purchase was reported.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from nasca_core._errors import UnknownPackError, UnknownPlanError, WebhookError
from nasca_core._money import to_usd
from nasca_core.billing._models import WebhookAction, WebhookResult
from nasca_core.billing._requests import CONFIG, Flow, StoreOp, ask
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

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._live import ConfigSnapshot

log = logging.getLogger("nasca")

DAY_MS = 86_400_000
EVENT_TTL_MS = 30 * DAY_MS  # Stripe retries for 3 days and can resend an event for 30
INDEX_TTL_MS = 400 * DAY_MS  # refunds come months after the payment

Emit = Callable[..., None]


def webhook_flow(payload: bytes | str, header: str | None, secret: str, tolerance: int, *, ledger: Nasca,
                 catalog: Callable[[ConfigSnapshot], Catalog], emit: Emit) -> Flow[WebhookResult]:
    """Raises SignatureError, WebhookError (nothing changed), StoreError."""
    event = verify_and_parse(payload, header, secret, tolerance)
    now = ledger.now()
    now_ms = int(now * 1000)
    marker = _key(ledger, "evt", event["id"])
    prior = yield from ask(StoreOp.get_marker(marker, now_ms))
    if prior is not None:
        return _replayed(prior, event)
    snapshot = yield from ask(CONFIG)
    try:
        decision = decide(event, ledger.namespace, catalog(snapshot), now_ms)
    except WebhookError as exc:
        if not isinstance(exc.__cause__, UnknownPackError | UnknownPlanError):
            raise
        # Another process may have just added it (a webhook worker never reserves, so
        # nothing else tells it the config moved): read the config once more.
        ledger.live.invalidate()
        decision = decide(event, ledger.namespace, catalog((yield from ask(CONFIG))), now_ms)
    result = yield from _apply(decision, event, now, now_ms, ledger, emit)
    yield from ask(StoreOp.put_marker(marker, result.model_dump_json(), EVENT_TTL_MS, now_ms))
    return result


def _apply(d: Decision, event: Mapping[str, Any], now: float, now_ms: int, ledger: Nasca,
           emit: Emit) -> Flow[WebhookResult]:
    if isinstance(d, Ignore):
        return _result(event, "ignored", user_id=d.user_id, detail=d.detail)
    if isinstance(d, AwaitPayment):
        return _result(event, "awaiting_payment", user_id=d.user_id,
                       detail=f"session {d.session_id} is not paid yet")
    if isinstance(d, GrantPack):
        if d.payment_intent:
            index = json.dumps({"u": d.user_id, "l": d.lot.id})
            yield from ask(StoreOp.put_marker(_key(ledger, "pi", d.payment_intent), index, INDEX_TTL_MS,
                                              now_ms))
        if d.customer:
            yield from ask(StoreOp.put_marker(_key(ledger, "cus", d.customer), d.user_id, None, now_ms))
        granted = yield from ask(StoreOp.grant(ledger.user_keys(d.user_id, now), d.lot))
        if granted:
            emit("purchase_completed", d.user_id, session_id=d.lot.id, pack=d.pack.id, amount=d.amount,
                 currency=d.pack.currency, spend=to_usd(d.lot.granted), prompt_id=d.prompt_id,
                 lot_id=d.lot.id)
        return _result(event, "granted", duplicate=not granted, user_id=d.user_id, lot_id=d.lot.id)
    if isinstance(d, ApplyPlan):
        if d.customer:
            yield from ask(StoreOp.put_marker(_key(ledger, "cus", d.customer), d.user_id, None, now_ms))
        applied = yield from ask(StoreOp.apply_subscription(ledger.user_keys(d.user_id, now), d.change,
                                                            now_ms))
        first = yield from ask(StoreOp.claim_marker(_key(ledger, "once", d.session_id), INDEX_TTL_MS, now_ms))
        if first:
            emit("purchase_completed", d.user_id, session_id=d.session_id, plan=d.plan.id, tier=d.plan.tier,
                 amount=d.amount, currency=d.plan.currency, prompt_id=d.prompt_id)
        return _result(event, "plan_applied" if applied.status else "stale", duplicate=not first,
                       user_id=d.user_id, tier=applied.tier)
    if isinstance(d, SubscriptionChange):
        user = d.user_id
        if user is None and d.customer:
            user = yield from ask(StoreOp.get_marker(_key(ledger, "cus", d.customer), now_ms))
        if user is None:
            return _result(event, "ignored", detail="no nasca_user_id metadata and an unknown customer")
        applied = yield from ask(StoreOp.apply_subscription(ledger.user_keys(user, now), d.change, now_ms))
        action: WebhookAction = ("stale" if applied.status == 0
                                 else "tier_set" if applied.tier else "tier_cleared")
        return _result(event, action, duplicate=applied.status == 2, user_id=user, tier=applied.tier)
    assert isinstance(d, Refund)
    raw = yield from ask(StoreOp.get_marker(_key(ledger, "pi", d.payment_intent), now_ms))
    if raw is None:
        return _result(event, "ignored", detail="no credit lot was bought with this payment")
    index = json.loads(raw)
    user, lot_id = str(index["u"]), str(index["l"])
    if not d.full:
        log.info("nasca: partial refund of %s: the credits of lot %s are kept", d.charge_id, lot_id)
        return _result(event, "ignored", user_id=user, lot_id=lot_id,
                       detail="partial refund: the credits are kept")
    taken = yield from ask(StoreOp.revoke(ledger.user_keys(user, now), lot_id))
    return _result(event, "revoked", user_id=user, lot_id=lot_id,
                   detail=f"revoked ${to_usd(taken)} of AI spend")


def _key(ledger: Nasca, kind: str, ident: str) -> str:
    return f"{ledger.namespace}:billing:{kind}:{ident}"


def _result(event: Mapping[str, Any], action: WebhookAction, **fields: Any) -> WebhookResult:
    return WebhookResult(event_id=str(event["id"]), type=str(event["type"]), action=action, **fields)


def _replayed(prior: str, event: Mapping[str, Any]) -> WebhookResult:
    try:
        return WebhookResult.model_validate_json(prior).model_copy(update={"duplicate": True})
    except Exception:
        return WebhookResult(event_id=str(event["id"]), type=str(event["type"]), action="ignored",
                             duplicate=True)
