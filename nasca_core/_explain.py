"""What the ledger tells people, built from what the store returned (pure, no I/O):
``Usage`` for a user's spend, ``NascaBlockedError`` with its upgrade message."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from nasca_core import _policy, _thresholds
from nasca_core._config import Tier
from nasca_core._display import money
from nasca_core._errors import NascaBlockedError, NascaBusyError, NascaCeilingError, UnknownTierError
from nasca_core._identity import current
from nasca_core._limits import effective_tier, own_limits, public_boost
from nasca_core._money import to_usd
from nasca_core._usage import Usage
from nasca_core._windows import WINDOWS, Window, WindowSet
from nasca_core.stores import ReserveResult, Snapshot

DEFAULT_UPGRADE_MESSAGE = (
    "You've used your {window} AI allowance on the {tier} plan "
    "({spent} of {limit}). It resets {resets}. {action}"
)


CEILING_MESSAGE = "This app's AI budget for {period} is used up; it resets {resets}."
_PERIODS = ("today", "this week", "this month")
BUSY_MESSAGE = "Your other AI requests are still running. Try again in a moment."
BUSY_RETRY_AFTER = 1.0  # seconds: about one model call, after which a hold has settled


def usage_of(user_id: str, tier_name: str, tier: Tier, snap: Snapshot, ws: WindowSet, tz: ZoneInfo) -> Usage:
    """A user's ``Usage`` from a store snapshot, under ``tier`` as the user's own limits and
    boosts make it (``_limits.effective_tier``)."""
    tier = effective_tier(tier, snap)
    compiled = tier.compiled()
    limits, hard = compiled["l"], compiled["h"]
    credits = sum(lot.remaining for lot in snap.lots)
    blocked = _policy.admit(limits, hard, snap.spent, snap.held, 0, credits, False)
    fields: dict[str, Any] = {}
    crossed = _thresholds.crossed(limits, snap.spent, tier.warn_at) if tier.warn_at else [[], [], []]
    for i, w in enumerate(WINDOWS):
        limit = tier.limit(w)
        if limit is None:
            continue
        spent = to_usd(snap.spent[i])
        fields[f"{w}_spent"] = spent
        fields[f"{w}_limit"] = limit
        fields[f"{w}_percent"] = float(spent / limit * 100)
        fields[f"{w}_resets_at"] = ws.end_datetime(i, tz)
        fields[f"{w}_crossed"] = tuple(crossed[i])
    # In what the user paid: each lot converts at its own price, rounded down per lot so
    # the balance never shows more than was paid.
    display = sum(lot.remaining * lot.paid // lot.granted for lot in snap.lots if lot.granted)
    currencies = {lot.currency for lot in snap.lots}
    return Usage(
        user_id=user_id, tier=tier_name, **fields,
        resets_at=ws.end_datetime(2, tz),
        month_cost=to_usd(snap.month_cost), month_credit_spend=to_usd(snap.month_credit),
        month_calls=snap.month_calls, in_flight=to_usd(snap.held),
        month_input_tokens=snap.month_input_tokens, month_output_tokens=snap.month_output_tokens,
        credit_balance=to_usd(credits),
        credit_balance_display=to_usd(display),
        credit_currency=currencies.pop() if len(currencies) == 1 else "usd",
        blocked=blocked >= 0,
        blocked_reason=(f"{WINDOWS[blocked]} limit reached" if blocked >= 0 else None),
        blocked_window=WINDOWS[blocked] if blocked >= 0 else None,
        hard_windows=frozenset(w for w, h in zip(WINDOWS, hard, strict=True) if h),
        own_limits=own_limits(snap), boosts=tuple(public_boost(b, tz) for b in snap.boosts),
    )


def asked_tier(user: str | None, tier: str | None) -> str | None:
    """The tier a ``get_usage`` caller asked for: ``tier=``, else the ``nasca.user(..., tier=)``
    context's when it names the user (as ``_identity.resolve`` reads it)."""
    context = current() if tier is None and user is None else None
    return context[1] if context is not None else tier


def usage_in(tiers: Mapping[str, Tier], user_id: str, tier_name: str, snap: Snapshot, ws: WindowSet,
             tz: ZoneInfo, asked: str | None = None, named: str | None = None) -> Usage:
    """``usage_of`` under the tier stored for the user if it exists; else the tier asked for
    (``asked_tier``: ``asked``, or the context's when the caller ``named`` no user);
    else the tier the caller gave the user's calls this month (``Snapshot.ran_tier``); else
    ``tier_name``: the tier the user's calls run on, resolved as the reserve does.

    Raises UnknownTierError."""
    ran = snap.ran_tier if asked_tier(named, asked) is None else None
    name = next((t for t in (snap.stored_tier, ran) if t is not None and t in tiers), tier_name)
    if name not in tiers:
        raise UnknownTierError(tier_name, list(tiers))
    return usage_of(user_id, name, tiers[name], snap, ws, tz)


def blocked_error(
    *,
    user_id: str,
    result: ReserveResult,
    tier: Tier,
    snap: Snapshot | None,
    ws: WindowSet,
    tz: ZoneInfo,
    prompt_id: str,
    template: str,
    checkout_url: Callable[[NascaBlockedError], str | None] | None,
    log: Any,
    estimate: int = 0,
    strict: bool = False,
) -> NascaBlockedError:
    """The error a blocked reserve raises, with the message that says what unblocks it: a
    NascaBusyError when only calls in flight stand in the way (``is_busy``)."""
    usage = None if snap is None else usage_of(user_id, result.tier, tier, snap, ws, tz)
    tier = effective_tier(tier, snap)  # the limits the store applied, when the snapshot says them
    reason = busy_reason(result, tier, snap, estimate, strict)
    if reason is not None:
        limits = tier.compiled()["l"]
        index = result.window - 1 if result.window else max(
            (i for i in range(3) if limits[i] >= 0), default=2)
        return NascaBusyError(
            retry_after=BUSY_RETRY_AFTER, reason=reason, user_id=user_id, tier=result.tier,
            window=WINDOWS[index], usage=usage, resets_at=None, upgrade_message=BUSY_MESSAGE,
            prompt_id=prompt_id, limit=tier.limit(WINDOWS[index]), spent=to_usd(result.spent[index]))
    index = result.window - 1
    window: Window = WINDOWS[index]
    resets_at = ws.end_datetime(index, tz)
    spent = to_usd(result.spent[index])
    limit = tier.limit(window) or Decimal(0)
    # Credits can't lift a hard cap, so the message must not offer them there.
    action = ("Upgrade your plan to keep going now." if tier.hard_windows()[index]
              else "Upgrade or buy credits to keep going now.")
    message = template.format(
        window=window, tier=result.tier, spent=money(spent), limit=money(limit),
        resets=f"on {resets_at:%b %d at %H:%M %Z}", user=user_id, action=action,
    )
    err = NascaBlockedError(
        user_id=user_id, tier=result.tier, window=window, usage=usage, resets_at=resets_at,
        upgrade_message=message, prompt_id=prompt_id, limit=limit, spent=spent,
    )
    if checkout_url is not None:
        try:
            err.checkout_url = checkout_url(err)
        except Exception:
            log.exception("nasca: checkout_url factory failed")
    return err


def ceiling_error(*, user_id: str, tier: str, limits: tuple[int, int, int], spent: tuple[int, int, int],
                  window: int, ws: WindowSet, tz: ZoneInfo, prompt_id: str) -> NascaCeilingError:
    """The error of a call the app-wide ceiling blocks: ``window`` 1..3 the window the pool
    refused in (0: not known, the tightest limited one is named). Not an upgrade prompt."""
    index = window - 1 if window else min(
        (i for i in range(3) if limits[i] >= 0), key=lambda i: limits[i] - spent[i], default=2)
    resets_at = ws.end_datetime(index, tz)
    message = CEILING_MESSAGE.format(period=_PERIODS[index], resets=f"on {resets_at:%b %d at %H:%M %Z}")
    return NascaCeilingError(
        user_id=user_id, tier=tier, window=WINDOWS[index], usage=None, resets_at=resets_at,
        upgrade_message=message, prompt_id=prompt_id, limit=to_usd(max(limits[index], 0)),
        spent=to_usd(spent[index]))


def busy_reason(result: ReserveResult, tier: Tier, snap: Snapshot | None, estimate: int,
                strict: bool) -> str | None:
    """"cap" for the in-flight cap, "in_flight" when the settled spend alone would admit the
    call (holds in flight block it), None for a real block."""
    if result.status == 2:
        return "cap"
    if result.held <= 0:
        return None
    compiled = tier.compiled()
    credits = result.credits if result.credits >= 0 else (
        sum(lot.remaining for lot in snap.lots) if snap is not None else 0)
    busy = _policy.busy(compiled["l"], compiled["h"], result.spent, estimate, credits, strict)
    return "in_flight" if busy else None


def tell_listeners(listeners: list[Callable[[NascaBlockedError], None]], err: NascaBlockedError,
                   log: Any) -> None:
    """Log the block at INFO and tell each block listener; one that fails is logged, never raised."""
    log.info("nasca: blocked %s on tier %s (%s window, %s)", err.user_id, err.tier, err.window,
             getattr(err, "reason", "limit"))
    for listener in listeners:
        try:
            listener(err)
        except Exception:
            log.exception("nasca: block listener failed")
