"""A lot's floor, on every store (memory, a SQLite file, a real Redis, a real Cluster): what
no restore gives back. An owner's revoke is sticky (a dispute won later, a resent
``funds_reinstated``, a refund, a resent completion or a reconcile run give nothing of it
back), and what refunds took stays taken when the owner changes ``on_partial_refund``
before a dispute is won. Events come from the local Stripe (real stripe-python over
HTTP), signed the way Stripe signs them, delivered in every order."""

from __future__ import annotations

import copy
import itertools
from decimal import Decimal

import pytest

from nasca_core import ConfigurationError, InvalidAmountError
from nasca_core.billing import BillingPolicy, CreditPack
from nasca_core.stores import Lot
from nasca_core.testing.stripe import StripeServer
from tests._billing import SECRET, billed, signed

SUCCESS = "https://app.example.com/ok"
STEPS = ("owner", "created", "won", "reinstated", "refund", "reconcile")


def lot(n):
    ((x,),) = [n.billing.credit_lots("u1")]
    return x.remaining, x.revoked


def test_the_floor_is_kept_atomically_and_a_restore_stops_there(make_nasca):
    n = make_nasca()
    store, keys = n.store.sync, n.user_keys("u1", n.now())
    assert store.grant(keys, Lot("l1", "p", paid=10, currency="usd", granted=1000, remaining=1000))
    assert store.revoke_to(keys, "l1", 400, floor=400) == 400  # a refund: its share is the floor
    assert store.revoke_to(keys, "l1", 1 << 62) == 600  # a dispute: the whole lot
    assert store.revoke_to(keys, "l1", 0, restore=True) == -600  # won, policy now "keep": 400 stays
    (x,) = store.all_lots(keys)
    assert (x.remaining, x.taken, x.floor, x.revoked) == (600, 400, 400, False)
    assert store.revoke_to(keys, "l1", 0, restore=True, floor=100) == 0  # the floor never drops
    n.settle(n.reserve("0.0000005", user="u1"), "0.0000005")  # spend: what is left shrinks
    assert store.revoke_to(keys, "l1", 1 << 62, floor=1 << 62) > 0  # the owner revokes: sticky
    (x,) = store.all_lots(keys)
    assert x.remaining == 0 and x.revoked and x.floor == x.taken
    assert store.revoke_to(keys, "l1", 0, restore=True) == 0
    assert store.revoke_to(keys, "l1", 0, restore=True) == 0  # safe to run twice
    (y,) = store.all_lots(keys)
    assert (y.remaining, y.taken, y.floor, y.revoked) == (0, x.taken, x.floor, True)
    assert store.revoke_to(keys, "nope", 0, restore=True, floor=5) == 0


def facts(n, srv):
    """What Stripe knows of one $5 pack ($3 of AI spend): paid, $2 refunded, disputed and the
    dispute won; each event as Stripe would deliver it (in any order)."""
    n.billing.create_checkout("u1", "p5")
    sid = srv.last_session_id
    done = srv.complete_session(sid, deliver=False)
    opened = srv.dispute(sid, deliver=False)
    won = srv.dispute(sid, status="won", deliver=False)
    reinstated = copy.deepcopy(won.event)
    reinstated.update(id=won.event["id"] + "r", type="charge.dispute.funds_reinstated")
    refund = srv.refund(sid, amount=200, deliver=False)
    return done, {"created": (opened.payload, opened.signature), "won": (won.payload, won.signature),
                  "reinstated": signed(reinstated), "refund": (refund.payload, refund.signature)}


def run(n, done, events, order):
    n.billing.handle_stripe_webhook(done.payload, done.signature)
    revoked = False
    for step in order:
        if step == "owner":
            n.billing.revoke_credits("u1", n.billing.credit_lots("u1")[0].id)
            revoked = True
        elif step == "reconcile":
            changes = n.billing.reconcile().changes
            assert not revoked or all(c.action != "restored" for c in changes), order
        else:
            r = n.billing.handle_stripe_webhook(*events[step])
            assert not revoked or not r.restored, (order, step, r)
            assert (r.revoked or 0) >= 0 and (r.restored or 0) >= 0
    n.billing.handle_stripe_webhook(done.payload, done.signature)  # a resent completion: nothing
    return lot(n)


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize("owner", [True, False], ids=["owner-revoked", "not-revoked"])
def test_every_order_of_a_revoke_a_dispute_won_reinstated_and_a_refund(make_nasca, owner):
    steps = [s for s in STEPS if s != "reconcile" and (owner or s != "owner")]
    want = (0, True) if owner else (Decimal("1.8"), False)  # $2 of $5 refunded: 3/5 of the $3 stay
    for i, order in enumerate(itertools.permutations(steps)):
        with StripeServer(webhook_secret=SECRET) as own:  # reconcile lists this order's session only
            n = billed(make_nasca, billing={"stripe": own.client(), "success_url": SUCCESS},
                       namespace=f"o{i}")
            done, events = facts(n, own)
            assert run(n, done, events, order) == want, order


# reconcile (which reads what Stripe knows by then: all of it) at every place of two orders
BASES = [("owner", "created", "won", "reinstated", "refund"),
         ("created", "won", "refund", "reinstated", "owner")]
ORDERS = [(*b[:at], "reconcile", *b[at:]) for b in BASES for at in range(6)]
ORDERS += [tuple(s for s in o if s != "owner") for o in ORDERS[6:]]  # and with no revoke by hand


@pytest.mark.parametrize(("order", "backend"), [(o, "memory") for o in ORDERS] + [
    (o, b) for o in (ORDERS[1], ORDERS[10], ORDERS[15]) for b in ("sqlite", "redis", "cluster")],
    indirect=["backend"], ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_reconcile_anywhere_keeps_an_owner_revoke_and_the_refund(order, make_nasca):
    with StripeServer(webhook_secret=SECRET) as own:  # reconcile lists this test's session only
        n = billed(make_nasca, billing={"stripe": own.client(), "success_url": SUCCESS})
        done, events = facts(n, own)
        assert run(n, done, events, order) == ((0, True) if "owner" in order else (Decimal("1.8"), False))
        assert n.billing.reconcile().changes == ()  # a second run changes nothing


def test_a_won_dispute_keeps_what_refunds_took_under_the_policy_of_their_day(make_nasca):
    with StripeServer(webhook_secret=SECRET) as srv:
        keeps_the_refund(make_nasca, srv)


def keeps_the_refund(make_nasca, srv):
    n = billed(make_nasca, billing={"stripe": srv.client(), "success_url": SUCCESS})
    done, events = facts(n, srv)
    n.billing.handle_stripe_webhook(done.payload, done.signature)
    r = n.billing.handle_stripe_webhook(*events["refund"])  # 40% of $5 under "proportional"
    assert (r.action, r.revoked, lot(n)) == ("revoked", Decimal("1.2"), (Decimal("1.8"), False))
    n.billing.policy = BillingPolicy(on_partial_refund="keep")  # the owner changes the policy later
    n.billing.handle_stripe_webhook(*events["created"])
    assert lot(n) == (0, True)
    r = n.billing.handle_stripe_webhook(*events["won"])
    assert (r.action, r.restored, lot(n)) == ("restored", Decimal("1.8"), (Decimal("1.8"), False))
    for again in ("reinstated", "refund"):
        assert not n.billing.handle_stripe_webhook(*events[again]).restored
    assert n.billing.reconcile().changes == () and lot(n) == (Decimal("1.8"), False)


# -- lots stay below 10**14 nanos: Lua writes numbers with 14 significant digits ------------------
def test_the_largest_lot_stays_exact_on_every_store(make_nasca):
    n = make_nasca()
    store, keys = n.store.sync, n.user_keys("u1", n.now())
    big = 10**14 - 1  # $99,999.999999999: 14 digits, the most cjson writes back exactly
    assert store.grant(keys, Lot("l1", "p", paid=big, currency="usd", granted=big, remaining=big))
    assert store.revoke_to(keys, "l1", 1_000_000_001, floor=999) == 1_000_000_001
    (x,) = store.all_lots(keys)
    assert (x.remaining, x.taken, x.floor) == (big - 1_000_000_001, 1_000_000_001, 999)


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_a_lot_of_100_000_dollars_or_more_is_refused_with_nothing_changed(make_nasca):
    n = billed(make_nasca)
    for spend in ("100000.000000001", "250000", 10**6):
        with pytest.raises(InvalidAmountError):
            n.billing.grant_credits("u1", spend=spend, idempotency_key=f"k{spend}")
    with pytest.raises(InvalidAmountError):
        n.billing.grant_credits("u1", spend=1, paid="100000.5", idempotency_key="kp")
    assert n.billing.credit_lots("u1") == ()
    with pytest.raises((ValueError, ConfigurationError), match="100,000"):
        CreditPack(id="huge", price=5, spend="100000.01")
    n.billing.grant_credits("u1", spend="99999.999999999", idempotency_key="max")  # the largest lot
    assert n.billing.credit_lots("u1")[0].remaining == Decimal("99999.999999999")
