"""What the local Stripe's API accepts: Checkout Session parameters checked the way Stripe
checks them, its error bodies, form decoding, and the test payment page."""

from __future__ import annotations

import html
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from nasca_core.testing._stripe_events import CHECKOUT_SESSION_CREATE_PARAMS

_ZERO_DECIMAL = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)
_THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
_KEY = re.compile(r"[^\[\]]+")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {
            "error": {
                k: v
                for k, v in {"type": kind, "code": code, "param": param, "message": message}.items()
                if v is not None
            }
        }


@dataclass
class Price:
    id: str
    unit_amount: int
    currency: str
    interval: str | None


@dataclass
class SessionState:
    session: dict[str, Any]
    line_items: list[dict[str, Any]]
    subscription_metadata: dict[str, str] = field(default_factory=dict)
    payment_metadata: dict[str, str] = field(default_factory=dict)
    subscription: dict[str, Any] | None = None


def checked_session(params: dict[str, Any], prices: dict[str, Price]) -> SessionState:
    """A valid create-session request read into a SessionState whose ``session`` holds only
    the fields the request sets (to merge into a new session object).
    Raises ApiError as Stripe answers."""
    for key in params:
        if key not in CHECKOUT_SESSION_CREATE_PARAMS:
            raise ApiError(400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key)
    mode = params.get("mode")
    if mode not in ("payment", "subscription", "setup"):
        raise ApiError(400, "Missing required param: mode.", code="parameter_missing", param="mode")
    ui_mode = params.get("ui_mode", "hosted")
    if ui_mode == "hosted" and not params.get("success_url"):
        raise ApiError(
            400, "Missing required param: success_url.", code="parameter_missing", param="success_url"
        )
    items = params.get("line_items")
    if mode != "setup" and (not isinstance(items, list) or not items):
        raise ApiError(
            400, "Missing required param: line_items.", code="parameter_missing", param="line_items"
        )
    line_items = [_line_item(i, item, mode, prices) for i, item in enumerate(items or [])]
    total = sum(li["unit_amount"] * li["quantity"] for li in line_items)
    fields = {
        "mode": mode,
        "metadata": metadata(params.get("metadata"), "metadata"),
        "success_url": params.get("success_url"),
        "cancel_url": params.get("cancel_url"),
        "client_reference_id": params.get("client_reference_id"),
        "customer_email": params.get("customer_email"),
        "currency": line_items[0]["currency"] if line_items else None,
        "amount_subtotal": total,
        "amount_total": total,
    }
    state = SessionState(fields, line_items)
    state.subscription_metadata = metadata(
        dig(params, "subscription_data", "metadata"), "subscription_data[metadata]"
    )
    state.payment_metadata = metadata(
        dig(params, "payment_intent_data", "metadata"), "payment_intent_data[metadata]"
    )
    return state


def _line_item(i: int, item: Any, mode: str, prices: dict[str, Price]) -> dict[str, Any]:
    where = f"line_items[{i}]"
    if not isinstance(item, dict):
        raise ApiError(400, f"Invalid object: {where}", param=where)
    quantity = _int(item.get("quantity", "1"), f"{where}[quantity]")
    if ("price" in item) == ("price_data" in item):
        raise ApiError(400, f"You must specify either `price` or `price_data` in {where}.", param=where)
    if "price" in item:
        price = prices.get(str(item["price"]))
        if price is None:
            raise ApiError(
                400, f"No such price: '{item['price']}'", code="resource_missing", param=f"{where}[price]"
            )
        currency, unit, interval, price_id = price.currency, price.unit_amount, price.interval, price.id
    else:
        data = item["price_data"]
        if not isinstance(data, dict) or not data.get("currency"):
            raise ApiError(
                400,
                "Missing required param: currency.",
                code="parameter_missing",
                param=f"{where}[price_data][currency]",
            )
        if not (data.get("product") or dig(data, "product_data", "name")):
            raise ApiError(
                400,
                "Missing required param: product_data[name].",
                code="parameter_missing",
                param=f"{where}[price_data][product_data]",
            )
        currency = str(data["currency"]).lower()
        unit = _int(data.get("unit_amount"), f"{where}[price_data][unit_amount]")
        interval = dig(data, "recurring", "interval")
        price_id = f"price_{secrets.token_hex(12)}"
    if mode == "subscription" and not interval:
        raise ApiError(
            400,
            "You must specify at least one recurring price in `subscription` mode when using prices.",
            param=where,
        )
    if mode == "payment" and interval:
        raise ApiError(400, "You specified `payment` mode but passed a recurring price.", param=where)
    return {
        "price_id": price_id,
        "currency": currency,
        "unit_amount": unit,
        "quantity": quantity,
        "interval": interval,
    }


def pay_page(session: dict[str, Any]) -> str:
    """The test checkout page: the amount, a Pay button that posts back, and Cancel."""
    exp = _minor_exp(str(session["currency"]))
    amount = f"{int(session['amount_total']) / 10**exp:.{exp}f} {str(session['currency']).upper()}"
    cancel = session.get("cancel_url")
    cancel_link = f'<a id="cancel" href="{html.escape(cancel)}">Cancel</a>' if cancel else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Test checkout</title></head>"
        f"<body><h1>Test checkout</h1><p id='amount'>{html.escape(amount)}</p>"
        f"<form method='post'><button id='pay' type='submit'>Pay {html.escape(amount)}</button>"
        f"</form>{cancel_link}</body></html>"
    )


def _minor_exp(currency: str) -> int:
    return 0 if currency in _ZERO_DECIMAL else 3 if currency in _THREE_DECIMAL else 2


def dig(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _int(value: Any, param: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ApiError(400, f"Invalid integer: {value}", param=param) from None


def metadata(value: Any, param: str) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid object: {param}", param=param)
    for k, v in value.items():
        if len(k) > 40 or not isinstance(v, str) or len(v) > 500:
            raise ApiError(
                400,
                f"Invalid metadata {param}[{k}]: keys up to 40 characters, string values up to 500",
                param=f"{param}[{k}]",
            )
    return dict(value)


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding back into nested values: ``a[b][0][c]=v`` -> {"a": {"b": [{"c": v}]}}."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = _KEY.findall(key)
        if not parts:
            continue
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    result: dict[str, Any] = _listify(root)
    return result


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: _listify(v) for k, v in node.items()}
    if out and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out
