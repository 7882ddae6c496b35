"""The JSON of the ledger API under ``/v1``: request and reply bodies, and the typed errors
as they travel, shared by ``nasca serve`` (``server/_v1.py``) and the remote client.

Money travels as integer nano-dollars (``*_nanos``) or as a decimal string of dollars
(``estimate``, ``cost``, ``spend``): never as a float. Clients name the user, the tier, the
model and token counts or amounts; the server holds the tiers, limits and prices.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from nasca_core._config import Tier
from nasca_core._errors import (
    ConfigurationError,
    InvalidAmountError,
    InvalidInputError,
    InvalidUserError,
    NascaBlockedError,
    NascaBusyError,
    NascaCeilingError,
    NascaError,
    StoreError,
    UnauthorizedError,
    UnknownModelError,
    UnknownTierError,
    UsageParseError,
)
from nasca_core._thresholds import ThresholdWarning
from nasca_core._usage import Usage

_NANOS = Field(default=None, ge=0, le=10**21)
_TOKENS = Field(default=0, ge=0, le=10**12)
_ID = Field(min_length=1, max_length=512)


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReserveBody(_Body):
    """A hold of an amount (``nanos`` or ``estimate``), or of a model call the server
    estimates from its prices (``model``, ``prompt_tokens``, ``max_tokens``)."""

    user: str = _ID
    tier: str | None = None
    nanos: int | None = _NANOS
    estimate: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    prompt_tokens: int | None = Field(default=None, ge=0, le=10**12)
    max_tokens: int | None = Field(default=None, ge=0, le=10**12)
    cap_output: bool = False
    strict: bool | None = None  # amount reserves only: a model reserve follows the server's
    # model reserves: when the tier's allowance blocks and the tier falls back
    # (Tier(on_exhausted="fallback")), hold the call on its fallback model instead
    # (``astart_with_fallback``); the reply's ``model`` is then the one to call.
    fallback: bool = False


class Hold(_Body):
    """A reservation as the server admitted it: what settle and release send back, as is.

    The server signs it (``server/_v1_holds.py``): its ``hold_id`` ends in ``.<MAC>`` over
    every field, so a hold altered or rebuilt by a client (a dropped ``anchor``, another
    estimate) is refused. A hold id without one is a hold the client admitted while the
    server was unreachable (``on_store_error="allow"``), settled as unchecked."""

    user: str = _ID
    tier: str = Field(max_length=256)  # "" only for a hold admitted without the server
    hold_id: str = Field(min_length=1, max_length=128, pattern=r"^[0-9A-Za-z_.:-]+$")
    estimate_nanos: int = Field(ge=0, le=10**21)
    # The billing-cycle anchor spec the hold was checked against ("" = calendar months): the
    # settle names its month from it, on whichever server replica takes it.
    anchor: str = Field(default="", max_length=64, pattern=r"^[0-9,]*$")
    reserved_ms: int = Field(default=0, ge=0, le=10**15)  # when admitted: the boosts its settle keeps


class ReserveReply(_Body):
    hold: Hold
    room: int  # what the user could spend beside the other holds at admission; -1: no limit
    degraded: bool = False  # the server's store was down and its policy admits
    windows: tuple[str, str, str]  # the day, week and month ids the hold was taken in
    config_version: int  # the client reloads /v1/config when this moves
    warning: ThresholdWarning | None = None  # Tier(warn_at=...): the threshold the call projects to
    model: str | None = None  # a model reserve: the model to call (the fallback's, if it fell back)
    fallback: dict[str, Any] | None = None  # it fell back: ``Fallback.as_dict()`` (the block it stands for)


class Tokens(_Body):
    """A model call's token counts (``pricing.TokenUsage``), for the server to price."""

    input_tokens: int = _TOKENS
    output_tokens: int = _TOKENS
    cache_read_tokens: int = _TOKENS
    cache_write_tokens: int = _TOKENS
    reasoning_tokens: int = _TOKENS
    cache_write_1h_tokens: int = _TOKENS
    input_audio_tokens: int = _TOKENS
    input_image_tokens: int = _TOKENS
    output_audio_tokens: int = _TOKENS
    output_image_tokens: int = _TOKENS
    web_searches: int = _TOKENS
    web_fetches: int = _TOKENS
    file_searches: int = _TOKENS
    code_containers: int = _TOKENS
    service_tier: str | None = Field(default=None, max_length=64)
    # the code containers' ids (OpenAI): a container a later response reuses is charged once
    container_ids: tuple[Annotated[str, Field(min_length=1, max_length=256)], ...] = Field(default=(),
                                                                                           max_length=256)


class SettleBody(_Body):
    """The real cost of a held call: an amount (``nanos`` or ``cost``), or ``model`` and its
    ``usage`` for the server to price with its own table (then no amount), so a client's
    price table never decides a charge."""

    hold: Hold
    nanos: int | None = _NANOS
    cost: str | None = Field(default=None, max_length=64)
    input_tokens: int = _TOKENS
    output_tokens: int = _TOKENS
    model: str | None = Field(default=None, min_length=1, max_length=256)
    usage: Tokens | None = None


class ChargeReply(_Body):
    cost_nanos: int
    tier_nanos: int
    credit_nanos: int
    deferred: bool = False  # the server's store could not take it yet; the server retries it


class ReleaseBody(_Body):
    hold: Hold


class UserTierBody(_Body):
    user: str = _ID
    tier: str | None = Field(default=None, max_length=256)  # None clears it


class TierBody(_Body):
    name: str = Field(min_length=1, max_length=256)
    tier: Tier | None = None  # None removes the stored override


class GrantBody(_Body):
    user: str = _ID
    idempotency_key: str = Field(min_length=1, max_length=256)
    pack: str | None = Field(default=None, max_length=256)
    spend: str | None = Field(default=None, max_length=64)
    paid: str | None = Field(default=None, max_length=64)
    currency: str | None = Field(default=None, max_length=8)


class ConfigReply(_Body):
    """What a client prices and counts with: the server's live config at ``version``."""

    version: int
    namespace: str
    default_tier: str | None
    strict: bool
    tiers: dict[str, Tier]
    prices: dict[str, dict[str, Any]]  # the owner's prices over the shipped table
    aliases: dict[str, str]
    unknown_model: str


class OkReply(_Body):
    ok: bool = True


class ErrorReply(_Body):
    """Every error: ``error`` is the code, the other fields say more where they apply."""

    error: str
    message: str
    # blocked / busy: the upgrade prompt's fields
    user_id: str | None = None
    tier: str | None = None
    window: str | None = None
    resets_at: datetime | None = None
    upgrade_message: str | None = None
    checkout_url: str | None = None  # the signed upgrade link
    prompt_id: str | None = None
    limit: Decimal | None = None
    spent: Decimal | None = None
    usage: Usage | None = None
    retry_after: float | None = None  # busy and rate_limited
    reason: str | None = None  # busy: "in_flight" or "cap"; blocked: "ceiling" (the app's, NascaCeilingError)
    known: list[str] | None = None  # unknown_tier: the tiers defined
    model: str | None = None  # unknown_model


# code -> HTTP status; the client maps each code back to its exception.
STATUS = {
    "blocked": 402,
    "busy": 409,
    "unauthorized": 401,
    "forbidden": 403,  # a plain API key on an admin route (NASCA_ADMIN_API_KEYS)
    "rate_limited": 429,
    "store_error": 503,
    "invalid_user": 422,
    "invalid_amount": 422,
    "invalid_usage": 422,
    "invalid_input": 422,
    "unknown_tier": 422,
    "unknown_model": 422,
    "configuration": 422,
}
_CODES: tuple[tuple[type[NascaError], str], ...] = (
    (NascaBusyError, "busy"),
    (NascaBlockedError, "blocked"),
    (InvalidUserError, "invalid_user"),
    (InvalidAmountError, "invalid_amount"),
    (UsageParseError, "invalid_usage"),
    (InvalidInputError, "invalid_input"),
    (UnknownTierError, "unknown_tier"),
    (UnknownModelError, "unknown_model"),
    (ConfigurationError, "configuration"),
    (StoreError, "store_error"),
    (UnauthorizedError, "unauthorized"),
)


def error_reply(exc: NascaError) -> ErrorReply:
    """The JSON of a Nasca error (a code for any NascaError; ``store_error`` by default)."""
    code = next((c for kind, c in _CODES if isinstance(exc, kind)), "store_error")
    fields: dict[str, Any] = {}
    if isinstance(exc, NascaBlockedError):
        fields = {
            k: getattr(exc, k)
            for k in (
                "user_id",
                "tier",
                "window",
                "resets_at",
                "upgrade_message",
                "checkout_url",
                "prompt_id",
                "limit",
                "spent",
                "usage",
            )
        }
        if isinstance(exc, NascaBusyError):
            fields.update(retry_after=exc.retry_after, reason=exc.reason)
        elif isinstance(exc, NascaCeilingError):  # code "blocked": an older client still blocks
            fields.update(reason=exc.reason)
    elif isinstance(exc, UnknownTierError):
        fields = {"tier": exc.tier, "known": list(exc.known)}
    elif isinstance(exc, UnknownModelError):
        fields = {"model": exc.model}
    return ErrorReply(error=code, message=str(exc), **fields)


def error_of(reply: ErrorReply) -> NascaError:
    """The exception an error reply stands for (an unknown code is a StoreError)."""
    code, msg = reply.error, reply.message
    if code in ("blocked", "busy"):
        fields: dict[str, Any] = {
            "user_id": reply.user_id or "",
            "tier": reply.tier or "",
            "window": reply.window or "",
            "usage": reply.usage,
            "resets_at": reply.resets_at,
            "upgrade_message": reply.upgrade_message or msg,
            "checkout_url": reply.checkout_url,
            "prompt_id": reply.prompt_id,
            "limit": reply.limit,
            "spent": reply.spent,
        }
        if code == "busy":
            return NascaBusyError(
                retry_after=reply.retry_after or 0.0, reason=reply.reason or "in_flight", **fields
            )
        if reply.reason == "ceiling":
            return NascaCeilingError(**fields)
        return NascaBlockedError(**fields)
    if code == "unknown_tier":
        return UnknownTierError(reply.tier or "", reply.known or ())
    if code == "unknown_model":
        return UnknownModelError(reply.model or "")
    simple: dict[str, type[NascaError]] = {
        "invalid_user": InvalidUserError,
        "invalid_amount": InvalidAmountError,
        "invalid_usage": UsageParseError,
        "invalid_input": InvalidInputError,
        "configuration": ConfigurationError,
        "unauthorized": UnauthorizedError,
        "forbidden": UnauthorizedError,
    }
    return simple.get(code, StoreError)(msg)
