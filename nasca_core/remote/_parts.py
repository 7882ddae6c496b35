"""The remote client's small parts: the server's config as the client prices with it, the
no-ops that stand for what the server does itself, and the wire bodies of a reservation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from nasca_core import _identity
from nasca_core._config import first_error
from nasca_core._errors import ConfigurationError, InvalidInputError, NascaBlockedError
from nasca_core._fallback import Fallback
from nasca_core._money import Amount
from nasca_core._types import Reservation, next_hold_id
from nasca_core.pricing import Pricer, PriceTable
from nasca_core.remote._wire import ConfigReply, GrantBody, Hold, ReserveBody, ReserveReply
from nasca_core.stores import UserKeys

if TYPE_CHECKING:
    from nasca_core._calibration import ModelStats


class OnTheServer:
    """What the server does for a remote client's calls: it calibrates their estimates (and
    fires threshold crossings where their settles land). The client's LLMCall reports to
    ``nasca.calibration``; here those reports are no-ops (any arguments: the server's side
    decides what they carry)."""

    def view(self, model: str) -> ModelStats | None:
        return None

    def observe(self, *_: object, **__: object) -> None:
        return None


class Config:
    """One version of the server's live config, as the client prices and counts with it."""

    def __init__(self, reply: ConfigReply) -> None:
        self.reply, self.version, self.tiers = reply, reply.version, reply.tiers
        table = PriceTable.default()
        if reply.prices or reply.aliases:
            table = table.with_overrides(reply.prices, reply.aliases)
        self.pricer = Pricer(table, unknown_model=reply.unknown_model)


NS = "remote"  # the namespace of the UserKeys a client's Reservation carries (never a store's)


B = TypeVar("B", bound=BaseModel)


def body(kind: type[B], /, **fields: Any) -> B:
    """A request body, or InvalidInputError (before any request) for a field past the wire's
    caps, which are the server's too."""
    try:
        return kind(**fields)
    except ValidationError as exc:
        what = kind.__name__.removesuffix("Body").lower()
        raise InvalidInputError(f"invalid {what} request: {first_error(exc)}") from None


@dataclass(frozen=True, slots=True)
class RemoteReservation(Reservation):
    """A Reservation with the hold exactly as the server returned it, which settle and
    release send back as is (the server may have signed it)."""

    hold: Hold | None = None
    fallback: Fallback | None = None  # the server held it on the tier's fallback model instead


def reservation_of(reply: ReserveReply, requested: str | None) -> RemoteReservation:
    """The Reservation of a reserve's reply (``requested``: the model a model call asked for)."""
    h = reply.hold
    fell = fallback_from(reply.fallback, requested, h.user) if reply.fallback and requested else None
    keys = UserKeys.build(NS, h.user, reply.windows)
    return RemoteReservation(h.user, h.tier, h.hold_id, h.estimate_nanos, keys, degraded=reply.degraded,
                             room=reply.room, warning=reply.warning,  # Tier.warn_at
                             reserved_ms=h.reserved_ms, anchor=h.anchor, hold=h, fallback=fell)


def fallback_from(fields: dict[str, Any], requested: str, user: str) -> Fallback:
    """A reserve reply's ``fallback`` (``Fallback.as_dict()`` on the server) as the Fallback it was."""
    resets = fields.get("resets_at")
    blocked = NascaBlockedError(
        user_id=user, tier=str(fields.get("tier") or ""), window=str(fields.get("window") or ""), usage=None,
        resets_at=datetime.fromisoformat(resets) if isinstance(resets, str) else None,
        upgrade_message=str(fields.get("upgrade_message") or ""), checkout_url=fields.get("checkout_url"),
        prompt_id=fields.get("prompt_id"))
    return Fallback(str(fields.get("model") or requested), requested, blocked)


def unchecked(body: ReserveBody, amount: int, config: Config | None) -> Reservation:
    """The reservation of a call admitted without the server (on_store_error="allow")."""
    tier = body.tier or (config.reply.default_tier if config is not None else None) or ""
    return Reservation(body.user, tier, next_hold_id(), amount, UserKeys.build(NS, body.user, ("", "", "")),
                       degraded=True)


def hold_of(r: Reservation) -> Hold:
    if isinstance(r, RemoteReservation) and r.hold is not None:
        return r.hold
    return Hold(user=r.user_id, tier=r.tier, hold_id=r.hold_id, estimate_nanos=r.estimate_nanos,
                anchor=r.anchor)


def usage_query(user: str, tier: str | None) -> dict[str, str]:
    return {"user": user, **({"tier": tier} if tier else {})}


def grant_body(user: str, pack: str | None, spend: Amount | None, paid: Amount | None,
               currency: str | None, key: str) -> GrantBody:
    def text(a: Amount | None) -> str | None:
        return None if a is None else str(a)  # parsed, in O(1), by the server's grant
    if not isinstance(key, str) or not key:
        raise InvalidInputError(f"idempotency_key must be a non-empty string, got {key!r}")
    return body(GrantBody, user=_identity.check_user_id(user), pack=pack, spend=text(spend),
                paid=text(paid), currency=currency, idempotency_key=key)


# Nasca's members a remote client does not have: the server's owner does these where its
# store is (``nasca serve`` and its admin, or a Nasca on the same store). Each raises
# ConfigurationError naming it, rather than an AttributeError deep in an app.
NOT_REMOTE = frozenset({
    "analytics", "billing", "packs", "plans", "limits", "tz", "timezone", "on_threshold",
    "grant_boost", "agrant_boost", "set_user_limits", "aset_user_limits", "set_price", "aset_price",
    "set_pack", "aset_pack", "set_plan", "aset_plan", "aget_packs", "aget_plans",
    "create_checkout", "acreate_checkout", "handle_stripe_webhook",
    "ahandle_stripe_webhook", "credit_lots", "acredit_lots", "revoke_credits", "arevoke_credits",
    "set_ceiling", "aset_ceiling",  # the app-wide ceiling is the server's: its ledger enforces it
    "ceiling_status", "aceiling_status",  # ... and its status (``nasca ceiling``, the dashboard)
})


def not_remote(name: str) -> ConfigurationError:
    hint = (" (threshold crossings fire on the server: register the hook there, or use its owner "
            "webhook; a call's warning is on its Reservation.warning)" if name == "on_threshold" else "")
    return ConfigurationError(
        f"Nasca.{name} is not available on a remote ledger: do it on the server (nasca serve, "
        f"its admin, or a Nasca on the server's store){hint}"
    )
