"""The local Stripe's list endpoints and the objects only reads need: Stripe's cursor
pagination (newest first; ``limit``, ``starting_after``, ``ending_before``, ``created``
ranges, exact-match filters), line items, Billing Portal sessions and invoices, each
built from Stripe's published example or its OpenAPI shape."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any

from nasca_core.testing._stripe_api import ApiError
from nasca_core.testing._stripe_events import OBJECTS, new_id

_RANGE = ("gt", "gte", "lt", "lte")


def list_page(objects: Sequence[Mapping[str, Any]], params: Mapping[str, Any], url: str,
              filters: Sequence[str] = (), max_page: int = 100) -> dict[str, Any]:
    """One page of a Stripe list: ``objects`` in creation order, served newest first, at
    most ``max_page`` a page (below 100 to make tests walk pages). Raises ApiError for a
    bad ``limit``, ``created`` or cursor, as Stripe answers."""
    limit = _int(params.get("limit", 10), "limit")
    if not 1 <= limit <= 100:
        raise ApiError(400, "This value must be less than or equal to 100 (it currently is "
                            f"'{limit}').", param="limit")
    limit = min(limit, max_page)
    newest = [o for _, o in sorted(enumerate(objects), key=lambda p: (int(p[1].get("created") or 0), p[0]),
                                   reverse=True)]
    newest = [o for o in newest if _created_ok(o, params.get("created"))
              and all(params.get(f) in (None, "") or _field(o, f) == params[f] for f in filters)]
    after, before = params.get("starting_after"), params.get("ending_before")
    if after:
        start = _index(newest, str(after), "starting_after") + 1
        page, more = newest[start:start + limit], len(newest) > start + limit
    elif before:
        end = _index(newest, str(before), "ending_before")
        page, more = newest[max(0, end - limit):end], end - limit > 0
    else:
        page, more = newest[:limit], len(newest) > limit
    return {"object": "list", "data": [copy.deepcopy(dict(o)) for o in page], "has_more": more, "url": url}


def _field(obj: Mapping[str, Any], name: str) -> Any:
    value = obj.get(name)
    return value.get("id") if isinstance(value, dict) else value


def _created_ok(obj: Mapping[str, Any], created: Any) -> bool:
    if created in (None, ""):
        return True
    at = int(obj.get("created") or 0)
    if not isinstance(created, dict):
        return at == _int(created, "created")
    for op, value in created.items():
        if op not in _RANGE:
            raise ApiError(400, f"Received unknown parameter: created[{op}]", param=f"created[{op}]")
        bound = _int(value, f"created[{op}]")
        if not {"gt": at > bound, "gte": at >= bound, "lt": at < bound, "lte": at <= bound}[op]:
            return False
    return True


def _index(objects: Sequence[Mapping[str, Any]], ident: str, param: str) -> int:
    for i, o in enumerate(objects):
        if o.get("id") == ident:
            return i
    raise ApiError(400, f"Invalid {param}: no such object '{ident}' in this list.", param=param)


def _int(value: Any, param: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ApiError(400, f"Invalid integer: {value}", param=param) from None


def wants(params: Mapping[str, Any], field: str) -> bool:
    """Whether ``expand[]`` asks for ``field``."""
    expand = params.get("expand")
    return field in (expand if isinstance(expand, list) else [expand])


def line_items(items: Sequence[Mapping[str, Any]], session_id: str) -> dict[str, Any]:
    """A session's ``line_items`` list (item objects carrying their price)."""
    data = []
    for li in items:
        price = copy.deepcopy(OBJECTS["price"])
        price.update(id=li["price_id"], unit_amount=li["unit_amount"], currency=li["currency"],
                     unit_amount_decimal=str(li["unit_amount"]),
                     type="recurring" if li["interval"] else "one_time")
        if li["interval"]:
            price["recurring"]["interval"] = li["interval"]
        else:
            price["recurring"] = None
        amount = li["unit_amount"] * li["quantity"]
        data.append({"id": new_id("li"), "object": "item", "amount_discount": 0, "amount_subtotal": amount,
                     "amount_tax": 0, "amount_total": amount, "currency": li["currency"],
                     "description": "Nasca credits", "price": price, "quantity": li["quantity"]})
    return {"object": "list", "data": data, "has_more": False,
            "url": f"/v1/checkout/sessions/{session_id}/line_items"}


def portal_session(params: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """``POST /v1/billing_portal/sessions``: the shape of Stripe's billing_portal.session.
    Raises ApiError without a customer."""
    customer = params.get("customer")
    if not customer:
        raise ApiError(400, "Missing required param: customer.", code="parameter_missing", param="customer")
    ident = new_id("bps")
    return {"id": ident, "object": "billing_portal.session", "configuration": new_id("bpc"),
            "created": int(time.time()), "customer": customer, "flow": None, "livemode": False,
            "locale": None, "on_behalf_of": None, "return_url": params.get("return_url"),
            "url": f"{base_url}/p/session/{ident}"}


def paid_invoice(sub: Mapping[str, Any], amount: int, billing_reason: str, period: tuple[int, int],
                 metadata: Mapping[str, str]) -> dict[str, Any]:
    """A paid subscription invoice from the published example: ``parent.subscription_details``
    carries the subscription and its metadata (API 2025-03-31 and later)."""
    inv = copy.deepcopy(OBJECTS["invoice"])
    now = int(time.time())
    ident = new_id("in")
    line = inv["lines"]["data"][0]
    line.update(id=new_id("il"), invoice=ident, amount=amount, currency=sub["currency"], subtotal=amount,
                period={"start": period[0], "end": period[1]}, subscription=sub["id"])
    line["parent"] = {"type": "subscription_item_details", "invoice_item_details": None,
                      "subscription_item_details": {"invoice_item": None, "proration": False,
                                                    "proration_details": None, "subscription": sub["id"],
                                                    "subscription_item": sub["items"]["data"][0]["id"]}}
    inv["lines"].update(data=[line], url=f"/v1/invoices/{ident}/lines")
    inv.update(id=ident, customer=sub["customer"], subscription=None, status="paid",
               billing_reason=billing_reason, currency=sub["currency"], amount_due=amount, amount_paid=amount,
               amount_remaining=0, subtotal=amount, total=amount, created=now, period_start=period[0],
               period_end=period[1], livemode=False,
               parent={"type": "subscription_details", "quote_details": None,
                       "subscription_details": {"metadata": dict(metadata), "subscription": sub["id"]}},
               status_transitions={"finalized_at": now, "marked_uncollectible_at": None, "paid_at": now,
                                   "voided_at": None})
    return inv


def dispute_object(charge: Mapping[str, Any], reason: str, status: str) -> dict[str, Any]:
    """A ``dispute`` of a whole charge, in the shape of Stripe's API reference (Disputes)."""
    now = int(time.time())
    return {
        "id": new_id("dp"), "object": "dispute", "amount": int(charge["amount"]), "balance_transactions": [],
        "charge": charge["id"], "created": now, "currency": charge["currency"],
        "enhanced_eligibility_types": [], "evidence": {"customer_name": None, "product_description": None,
                                                      "uncategorized_text": None},
        "evidence_details": {"due_by": now + 7 * 86_400, "enhanced_eligibility": {}, "has_evidence": False,
                             "past_due": False, "submission_count": 0},
        "is_charge_refundable": False, "livemode": False, "metadata": {},
        "payment_intent": charge.get("payment_intent"),
        "payment_method_details": {"type": "card", "card": {"brand": "visa", "case_type": "chargeback",
                                                            "network_reason_code": "10.4"}},
        "reason": reason, "status": status,
    }
