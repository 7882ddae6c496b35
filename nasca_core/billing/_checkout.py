"""Checkout Session parameters, free of I/O: what ``create_checkout`` sends to Stripe."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from nasca_core._errors import ConfigurationError, InvalidInputError
from nasca_core.billing._models import CreditPack, Plan

# Stripe's limits: metadata values up to 500 characters, client_reference_id up to 200.
_MAX_METADATA = 500
_MAX_REFERENCE = 200


def check_url(url: str | None, what: str) -> str | None:
    """Raises ConfigurationError unless ``url`` is None or an absolute http(s) URL."""
    if url is None:
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{what} must be an absolute http(s) URL, got {url!r}")
    return url


def checkout_metadata(namespace: str, user_id: str, item: CreditPack | Plan,
                      prompt_id: str | None) -> dict[str, str]:
    """What the session (and its payment intent or subscription) carries back in webhooks."""
    md = {"nasca_user_id": user_id, "nasca_namespace": namespace}
    if isinstance(item, CreditPack):
        md["nasca_pack"] = item.id  # ids only: what a purchase grants comes from the pack itself
    else:
        md["nasca_plan"] = item.id
    if prompt_id is not None:
        if not isinstance(prompt_id, str) or not prompt_id or len(prompt_id) > _MAX_METADATA:
            raise InvalidInputError(f"prompt_id must be a string of 1-{_MAX_METADATA} characters")
        md["nasca_prompt_id"] = prompt_id
    return md


def line_item(item: CreditPack | Plan) -> dict[str, Any]:
    if item.stripe_price:
        return {"price": item.stripe_price, "quantity": 1}
    price_data: dict[str, Any] = {
        "currency": item.currency,
        "unit_amount": item.unit_amount,
        "product_data": {"name": item.label},
    }
    if isinstance(item, Plan):
        price_data["recurring"] = {"interval": item.interval}
    return {"price_data": price_data, "quantity": 1}


def checkout_params(item: CreditPack | Plan, metadata: dict[str, str], user_id: str,
                    success_url: str, cancel_url: str | None,
                    customer_email: str | None = None) -> dict[str, Any]:
    """The ``POST /v1/checkout/sessions`` body for one pack (mode payment) or plan
    (mode subscription). ``{CHECKOUT_SESSION_ID}`` in the URLs is left for Stripe to fill."""
    params: dict[str, Any] = {
        "mode": "payment" if isinstance(item, CreditPack) else "subscription",
        "line_items": [line_item(item)],
        "success_url": success_url,
        "metadata": dict(metadata),
    }
    if cancel_url:
        params["cancel_url"] = cancel_url
    if len(user_id) <= _MAX_REFERENCE:
        params["client_reference_id"] = user_id
    if customer_email:
        params["customer_email"] = customer_email
    if isinstance(item, CreditPack):
        params["payment_intent_data"] = {"metadata": dict(metadata)}
    else:
        params["subscription_data"] = {"metadata": dict(metadata)}
        if item.trial_days:
            params["subscription_data"]["trial_period_days"] = item.trial_days
    return params
