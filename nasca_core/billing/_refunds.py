"""Refunds and disputes as flow steps (see ``_requests``): remember what Stripe gave back
of a payment, and take the refunded share of a lot's credits back, exactly once.

What is remembered, as store markers under ``<namespace>:billing:``:

``rf:<payment intent>:<n>`` one entry per refund or dispute event, appended by claiming
the first free ``n`` (``claim_marker`` is atomic, so two events handled at once never
overwrite each other) and then writing the event's figures into it; the entries are
merged when read. Stripe's figures are running totals (``charge.amount_refunded``), so the
merge keeps the largest and the order the events arrive in does not matter.

``rv:<lot id>`` what a proportional refund took back of a lot: the refunded target it
applied (``t``), the credits taken for it so far (``a``) and the cap it put on what is
left (``k``). The cap is written before the store is asked to apply it, and applying a cap
twice is harmless, so a run that stopped between the two is finished by the next one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nasca_core._errors import WebhookError
from nasca_core.billing._models import BillingPolicy
from nasca_core.billing._requests import Flow, StoreOp, ask
from nasca_core.stores import UserKeys

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca

INDEX_TTL_MS = 400 * 86_400_000  # refunds come months after the payment
MAX_ENTRIES = 64  # refund and dispute events of one payment
_PENDING = "1"  # what claim_marker writes: the entry's figures are still being written


def billing_key(ledger: Nasca, kind: str, ident: str) -> str:
    return f"{ledger.namespace}:billing:{kind}:{ident}"


def merge_refund(prior: Mapping[str, Any] | None, refunded: int, amount: int, full: bool) -> dict[str, Any]:
    """What is known refunded of one payment: keep the largest running totals."""
    prior = prior or {}
    return {"r": max(int(prior.get("r", 0)), refunded), "a": max(int(prior.get("a", 0)), amount),
            "f": bool(prior.get("f")) or full}


def read_refunds(ledger: Nasca, payment_intent: str, now_ms: int) -> Flow[tuple[dict[str, Any] | None, int]]:
    """Everything remembered refunded of a payment (None: nothing), and the first free entry."""
    base = billing_key(ledger, "rf", payment_intent)
    legacy = yield from ask(StoreOp.get_marker(base, now_ms))  # one merged memo, before the entries
    memo = json.loads(legacy) if legacy else None
    for n in range(MAX_ENTRIES):
        raw = yield from ask(StoreOp.get_marker(f"{base}:{n}", now_ms))
        if raw is None:
            return memo, n
        if raw != _PENDING:  # a pending entry's own handler applies it
            e = json.loads(raw)
            memo = merge_refund(memo, int(e.get("r", 0)), int(e.get("a", 0)), bool(e.get("f")))
    return memo, MAX_ENTRIES


def remember_refund(ledger: Nasca, payment_intent: str, refunded: int, amount: int, full: bool,
                    now_ms: int) -> Flow[dict[str, Any]]:
    """Append this event's figures; answer everything known refunded of the payment.
    Raises WebhookError when the payment already has MAX_ENTRIES refund events."""
    memo, n = yield from read_refunds(ledger, payment_intent, now_ms)
    merged = merge_refund(memo, refunded, amount, full)
    if merged == memo:  # known already (a resend, a reconcile run): nothing to append
        return merged
    base = billing_key(ledger, "rf", payment_intent)
    entry = json.dumps({"r": refunded, "a": amount, "f": full})
    while n < MAX_ENTRIES:
        if (yield from ask(StoreOp.claim_marker(f"{base}:{n}", INDEX_TTL_MS, now_ms))):
            yield from ask(StoreOp.put_marker(f"{base}:{n}", entry, INDEX_TTL_MS, now_ms))
            return merged
        n += 1  # another event took it at the same moment: merge its figures when they are read
    raise WebhookError(f"payment {payment_intent} has more than {MAX_ENTRIES} refund and dispute events")


def refund_target(policy: BillingPolicy, memo: Mapping[str, Any], granted: int) -> int | None:
    """How much of a lot's ``granted`` nanos the refunds in ``memo`` take back in all:
    None = all that remains. Proportional: the refunded share of what was granted, rounded
    up (nothing is kept that was not paid for), whatever of it was spent already; what was
    spent is not taken back, what is left is."""
    if memo.get("f") or policy.on_partial_refund == "revoke":
        return None
    amount = int(memo.get("a", 0))
    if amount <= 0:
        return None
    if policy.on_partial_refund == "keep":
        return 0
    return granted - granted * (amount - min(int(memo.get("r", 0)), amount)) // amount


def plan_share(state: Mapping[str, Any] | None, remaining: int,
               target: int) -> tuple[int, dict[str, Any] | None]:
    """What a proportional refund takes of a lot with ``remaining`` nanos left, given what
    earlier ones took (``state``, the ``rv:`` marker): min(what is left, target − taken so
    far), and the marker to write (None: this target was applied before)."""
    state = state or {}
    applied, taken = int(state.get("t", 0)), int(state.get("a", 0))
    if target <= applied:
        return 0, None
    take = max(0, min(remaining, target - taken))
    return take, {"t": target, "a": taken + take, "k": remaining - take}


def revoke_share(ledger: Nasca, keys: UserKeys, lot_id: str, target: int | None,
                 now_ms: int) -> Flow[int]:
    """Take back what ``target`` (``refund_target``) asks of the lot; answer the nanos taken."""
    if target is None:
        return (yield from ask(StoreOp.revoke(keys, lot_id, None)))
    if target <= 0:
        return 0
    key = billing_key(ledger, "rv", lot_id)
    raw = yield from ask(StoreOp.get_marker(key, now_ms))
    state = json.loads(raw) if raw else None
    taken = 0
    if state and state.get("k") is not None:  # finish what a run that stopped part-way planned
        taken += yield from ask(StoreOp.revoke(keys, lot_id, int(state["k"])))
    lots = yield from ask(StoreOp.all_lots(keys))
    lot = next((x for x in lots if x.id == lot_id), None)
    if lot is None:
        return taken
    _, new = plan_share(state, lot.remaining, target)
    if new is None:
        return taken
    yield from ask(StoreOp.put_marker(key, json.dumps(new), INDEX_TTL_MS, now_ms))
    return taken + (yield from ask(StoreOp.revoke(keys, lot_id, int(new["k"]))))
