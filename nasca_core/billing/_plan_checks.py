"""Which plan a subscription pays for, and whether a plan's checkout charged its price:
pure checks for ``_webhook``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nasca_core._errors import UnknownPlanError, WebhookError
from nasca_core.billing._models import Plan


def unpaid_since(sub: Mapping[str, Any]) -> int:
    """When the paid period ended (epoch s) of a subscription whose renewal failed: the start
    of its current period, which Stripe advanced to the unpaid one when it invoiced it. On
    its items since API version 2025-03-31, on the subscription before; the earliest wins,
    so an item renewed later cannot stretch the grace."""
    items = sub.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    starts = [_int(i.get("current_period_start")) for i in data or () if isinstance(i, dict)]
    starts = [t for t in (*starts, _int(sub.get("current_period_start"))) if t > 0]
    return min(starts) if starts else 0


def cycle_anchor(sub: Mapping[str, Any]) -> int:
    """When the subscription's billing cycle is anchored (epoch s): ``billing_cycle_anchor``,
    which a plan switch keeps unless it resets the cycle; else the start of its current
    period (a short month's start has lost the anchor's day, so only as a fallback)."""
    return _int(sub.get("billing_cycle_anchor")) or unpaid_since(sub) or _int(sub.get("created"))


def plan_of(sub: Mapping[str, Any], md: Mapping[str, Any],
            plans: Mapping[str, Plan]) -> tuple[Plan, bool] | None:
    """The plan a subscription pays for, and whether its tier may be given: by the price it
    charges when the plan names one (the metadata stays when the Billing Portal switches
    the price), else by its metadata."""
    items = sub.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    prices = {id_of(i.get("price")) for i in data or () if isinstance(i, dict)}
    named = None
    if md.get("nasca_plan"):
        named = plans.get(str(md["nasca_plan"]))
        if named is None:
            raise UnknownPlanError(str(md["nasca_plan"]), plans)
        if not named.stripe_price or named.stripe_price in prices:
            return named, True
    priced = plan_by_price(plans, prices)
    if priced is not None:
        return priced, True
    if named is not None:  # its price was switched to one no plan names: no tier from it
        return named, False
    if md.get("nasca_user_id"):
        raise WebhookError("a Nasca subscription without nasca_plan metadata or a known price")
    return None


def plan_by_price(plans: Mapping[str, Plan], prices: set[str | None]) -> Plan | None:
    return next((p for p in plans.values() if p.stripe_price and p.stripe_price in prices), None)


def plan_mismatch(s: Mapping[str, Any], plan: Plan, currency: str) -> str | None:
    """Why a subscription checkout did not charge the plan's price, or None. A plan with
    ``trial_days`` may start at 0 (its first invoice is the trial's)."""
    total = s.get("amount_total")
    if currency != plan.currency:
        return f"paid in {currency.upper() or 'no currency'}, the plan is priced in {plan.currency.upper()}"
    if total != plan.unit_amount and not (plan.trial_days and total == 0):
        return (f"amount_total {total} {currency.upper()} is not the plan's price "
                f"{plan.unit_amount} {plan.currency.upper()}")
    items = s.get("line_items")
    data = items.get("data") if isinstance(items, dict) else None
    if plan.stripe_price and isinstance(data, list) and data:  # only when Stripe expanded them
        prices = {id_of(i.get("price")) for i in data if isinstance(i, dict)}
        if plan.stripe_price not in prices:
            return f"line items {sorted(p or '?' for p in prices)} are not the plan's {plan.stripe_price}"
    return None


def id_of(value: Any) -> str | None:
    """An id field that may be expanded into its object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
