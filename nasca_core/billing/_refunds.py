"""Refunds and disputes as flow steps (see ``_requests``): remember what Stripe gave back
or took back of a payment, and bring the lot it bought to what that asks, exactly once.

What is remembered, as store markers under ``<namespace>:billing:``:

``rf:<payment intent>:<n>`` one entry per refund or dispute event, appended by claiming
the first free ``n`` (``claim_marker`` is atomic, so two events handled at once never
overwrite each other) and then writing the event's figures into it; the entries are
merged when read, and the merge does not depend on their order. A refund's figures are
running totals (``charge.amount_refunded``): the largest is kept. A dispute's entry is its
state: open, then won or lost; a closed state is final, so a ``charge.dispute.created``
that arrives after the ``charge.dispute.closed`` changes nothing.

What a lot owes back is a target for the store's ``revoke_to``, which keeps the running
total in the lot itself: an open or lost dispute asks for the whole lot, refunds for their
share (``BillingPolicy.on_partial_refund``); a won dispute lowers the target back to the
refunds' share (``restore``), giving back what the dispute took. Raising to a target is
atomic and idempotent, so two refunds of one lot at the same moment end at the higher
total, and a replay changes nothing. Every step also passes the refunds' share as the
lot's floor, which the store keeps at the highest seen: a restore never gives back what
refunds took under the policy of their day (an owner who switches ``on_partial_refund``
to "keep" later does not hand back refunded credits), nor what the owner revoked by hand
(``revoke_credits`` floors the whole lot).
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
_RANK = {"open": 0, "won": 1, "lost": 2}  # a closed dispute never reopens; lost is the safe side
WHOLE_LOT = 1 << 62  # a revoke_to target above any lot: take all that is left
_CONVERGE = 4  # rounds of "apply, read again" before a flow stops (see settle_lot)


def billing_key(ledger: Nasca, kind: str, ident: str) -> str:
    return f"{ledger.namespace}:billing:{kind}:{ident}"


def merge_entry(prior: Mapping[str, Any] | None, entry: Mapping[str, Any]) -> dict[str, Any]:
    """What is known of one payment after one more entry: the largest refunded totals, and
    each dispute's furthest state."""
    memo = dict(prior or {})
    if "d" in entry:
        disputes = dict(memo.get("d") or {})
        old = disputes.get(str(entry["d"]))
        state = str(entry.get("s", "open"))
        if old is None or _RANK.get(state, 0) > _RANK.get(old, 0):
            disputes[str(entry["d"])] = state
        memo["d"] = disputes
        return memo
    memo.update(r=max(int(memo.get("r", 0)), int(entry.get("r", 0))),
                a=max(int(memo.get("a", 0)), int(entry.get("a", 0))),
                f=bool(memo.get("f")) or bool(entry.get("f")))
    return memo


def read_refunds(ledger: Nasca, payment_intent: str, now_ms: int) -> Flow[tuple[dict[str, Any] | None, int]]:
    """Everything remembered of a payment's refunds and disputes (None: nothing), and the
    first free entry."""
    base = billing_key(ledger, "rf", payment_intent)
    legacy = yield from ask(StoreOp.get_marker(base, now_ms))  # one merged memo, before the entries
    memo = json.loads(legacy) if legacy else None
    for n in range(MAX_ENTRIES):
        raw = yield from ask(StoreOp.get_marker(f"{base}:{n}", now_ms))
        if raw is None:
            return memo, n
        if raw != _PENDING:  # a pending entry's own handler applies it
            memo = merge_entry(memo, json.loads(raw))
    return memo, MAX_ENTRIES


def remember_refund(ledger: Nasca, payment_intent: str, entry: Mapping[str, Any],
                    now_ms: int) -> Flow[dict[str, Any]]:
    """Append this event's entry; answer everything known of the payment.
    Raises WebhookError when the payment already has MAX_ENTRIES refund and dispute events."""
    memo, n = yield from read_refunds(ledger, payment_intent, now_ms)
    merged = merge_entry(memo, entry)
    if merged == memo:  # known already (a resend, a reconcile run): nothing to append
        return merged
    base = billing_key(ledger, "rf", payment_intent)
    while n < MAX_ENTRIES:
        if (yield from ask(StoreOp.claim_marker(f"{base}:{n}", INDEX_TTL_MS, now_ms))):
            yield from ask(StoreOp.put_marker(f"{base}:{n}", json.dumps(entry), INDEX_TTL_MS, now_ms))
            return merged
        n += 1  # another event took it at the same moment: merge its figures when they are read
    raise WebhookError(f"payment {payment_intent} has more than {MAX_ENTRIES} refund and dispute events")


def lot_target(policy: BillingPolicy, memo: Mapping[str, Any], granted: int) -> tuple[int, bool]:
    """What of a lot's ``granted`` nanos the payment's refunds and disputes take back in all,
    and whether that may be less than was taken (a dispute was won). Proportional refunds:
    the refunded share of what was granted, rounded up (nothing is kept that was not paid
    for); what was spent is not taken back, what is left is (``revoke_to``)."""
    disputes = memo.get("d") or {}
    if any(state != "won" for state in disputes.values()):
        return granted, False
    return refund_share(policy, memo, granted), bool(disputes)


def refund_share(policy: BillingPolicy, memo: Mapping[str, Any], granted: int) -> int:
    """What of a lot the payment's refunds take back (a dispute aside): the lot's floor."""
    refunded, amount = int(memo.get("r", 0)), int(memo.get("a", 0))
    if memo.get("f") or (refunded > 0 and (policy.on_partial_refund == "revoke" or amount <= 0)):
        return granted
    if refunded <= 0 or policy.on_partial_refund == "keep":
        return 0
    return granted - granted * (amount - min(refunded, amount)) // amount


def legacy_taken(ledger: Nasca, lot_id: str, now_ms: int) -> Flow[int]:
    """What partial refunds took of a lot before lots kept their own total (an ``rv:<lot
    id>`` marker, no longer written): the lot's ``taken`` counts only what came after."""
    raw = yield from ask(StoreOp.get_marker(billing_key(ledger, "rv", lot_id), now_ms))
    return int(json.loads(raw).get("a", 0)) if raw else 0


def store_target(target: int, granted: int, legacy: int) -> int:
    """``lot_target``'s figure as the store's ``revoke_to`` target, net of ``legacy_taken``."""
    return target if target >= granted else max(0, target - legacy)


def settle_lot(ledger: Nasca, keys: UserKeys, payment_intent: str, lot_id: str, granted: int,
               policy: BillingPolicy, memo: Mapping[str, Any], now_ms: int) -> Flow[int]:
    """Bring the lot to what ``memo`` asks; answer the nanos taken (negative: given back).

    Raising is safe against any other event's flow (the store keeps the highest target);
    lowering is not, if another event was appended after ``memo`` was read. So after each
    step the memo is read again and applied again until it holds still: whichever flow
    applies last has read every entry appended before its step."""
    total = 0
    legacy = yield from legacy_taken(ledger, lot_id, now_ms)
    want = (*lot_target(policy, memo, granted), refund_share(policy, memo, granted))
    for _ in range(_CONVERGE):
        total += yield from ask(StoreOp.revoke_to(keys, lot_id, store_target(want[0], granted, legacy),
                                                  want[1], store_target(want[2], granted, legacy)))
        fresh, _ = yield from read_refunds(ledger, payment_intent, now_ms)
        again = (*lot_target(policy, fresh or {}, granted), refund_share(policy, fresh or {}, granted))
        if again == want:
            break
        want = again
    return total
