"""The billing edge's atomic steps, on every store (memory, a SQLite file, a real Redis, a
real Cluster): ``revoke_to`` (refunds that race end at the highest total), the keyed set
of orders held for review, the grace of a failing subscription counted once across
periods, and disputes won or lost in any order. Events are Stripe's published objects,
signed the way Stripe signs them."""

from __future__ import annotations

import copy
import itertools
import threading
from decimal import Decimal

import pytest

from nasca_core import StoreError, WebhookError
from nasca_core.billing import BillingPolicy
from nasca_core.stores import Lot
from nasca_core.testing._stripe_lists import dispute_object
from tests._billing import billed, charge, event, session, signed, subscription


def deliver(n, e):
    return n.handle_stripe_webhook(*signed(e))


def buy(n, pi, pack="p10", user="u1"):
    s = session(user, namespace=n.namespace, pack=pack, amount_total=1000 if pack == "p10" else 500,
                payment_intent=pi, session_id=f"cs_{pi}")
    return deliver(n, event("checkout.session.completed", s))


def lot(n, user="u1"):
    ((x,),) = [n.credit_lots(user)]
    return x.remaining, x.revoked


def race(n, bodies):
    barrier = threading.Barrier(len(bodies))
    errors: list[Exception] = []

    def run(body):
        barrier.wait()
        try:
            n.handle_stripe_webhook(*body)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# -- the store op ---------------------------------------------------------------------------------------
def test_revoke_to_raises_never_lowers_and_stops_at_what_is_left(make_nasca):
    n = make_nasca()
    store, keys = n.store.sync, n.user_keys("u1", n.now())
    assert store.grant(keys, Lot("l1", "p", paid=10, currency="usd", granted=1000, remaining=1000))
    assert store.revoke_to(keys, "l1", 300) == 300
    assert store.revoke_to(keys, "l1", 300) == 0  # safe to run twice
    assert store.revoke_to(keys, "l1", 200) == 0  # never lowers
    assert store.revoke_to(keys, "l1", -5) == 0 and store.revoke_to(keys, "nope", 500) == 0
    (x,) = store.all_lots(keys)
    assert (x.remaining, x.taken, x.revoked) == (700, 300, False)
    assert store.revoke_to(keys, "l1", 1 << 62) == 700  # the whole lot: marked revoked
    (x,) = store.all_lots(keys)
    assert (x.remaining, x.taken, x.revoked) == (0, 1000, True)
    assert store.revoke_to(keys, "l1", 300, restore=True) == -700  # a dispute won: given back
    (x,) = store.all_lots(keys)
    assert (x.remaining, x.taken, x.revoked) == (700, 300, False)
    assert store.revoke_to(keys, "l1", 300, restore=True) == 0


def test_revoke_to_never_takes_back_what_was_spent(make_nasca):
    n = billed(make_nasca)
    buy(n, "pi_s", pack="p5")  # $3 of AI spend
    n.settle(n.reserve("2.5", user="u1"), "2.5")  # $0.10 from the tier, $2.40 from the lot
    keys = n.user_keys("u1", n.now())
    assert n.store.sync.revoke_to(keys, "cs_pi_s", 3 * 10**9) == 600_000_000
    assert lot(n) == (0, True)
    assert n.store.sync.revoke_to(keys, "cs_pi_s", 0, restore=True) == -600_000_000  # only what it took


def test_refunds_racing_on_one_lot_end_at_the_highest_total(make_nasca, backend):
    n = billed(make_nasca)
    rounds = 3 if backend in ("redis", "cluster") else 5
    for i in range(rounds):
        pi = f"pi_r{i}"
        buy(n, pi, user=f"u{i}")  # $10 of AI spend for $10
        totals = [100, 300, 500, 700, 200, 600]  # cumulative refunds of 1000, delivered at once
        race(n, [signed(event("charge.refunded", charge(pi, amount=1000, refunded=t))) for t in totals])
        (x,) = n.store.sync.all_lots(n.user_keys(f"u{i}", n.now()))
        assert (x.remaining, x.taken) == (3 * 10**9, 7 * 10**9)  # 70% refunded: $7 back, not their sum
        # a late resend of a smaller total changes nothing
        deliver(n, event("charge.refunded", charge(pi, amount=1000, refunded=300)))
        assert n.credit_lots(f"u{i}")[0].remaining == Decimal(3)


# -- orders held for review ---------------------------------------------------------------------------
def test_orders_held_for_review_at_once_are_all_listed(make_nasca, backend):
    n = billed(make_nasca)
    count = 6 if backend in ("redis", "cluster") else 10
    bodies = [signed(event("checkout.session.completed",
                           session(f"u{i}", namespace=n.namespace, amount_total=1, session_id=f"cs_rev{i}")))
              for i in range(count)]
    race(n, bodies)
    orders = n.billing.review_orders()
    assert sorted(o.session_id for o in orders) == sorted(f"cs_rev{i}" for i in range(count))
    assert all(o.paid == Decimal("0.01") and o.expected == Decimal(5) for o in orders)
    race(n, bodies[:3])  # resends: listed once
    assert len(n.billing.review_orders()) == count


def test_the_review_list_keeps_the_newest_orders(make_nasca, monkeypatch):
    import nasca_core.billing._webhook_flow as flow

    monkeypatch.setattr(flow, "MAX_REVIEWS", 3)
    n = billed(make_nasca)
    for i in range(5):
        s = session(f"u{i}", namespace=n.namespace, amount_total=1, session_id=f"cs_old{i}")
        deliver(n, event("checkout.session.completed", s, created=1_800_000_000 + i))
    assert [o.session_id for o in n.billing.review_orders()] == ["cs_old2", "cs_old3", "cs_old4"]


# -- grace runs once across unpaid periods ---------------------------------------------------------------
PERIOD = 30 * 86400


def sub_in(n, start, status="active"):
    sub = subscription("u1", namespace=n.namespace, sub_id="sub_G", status=status)
    sub["items"]["data"][0].update(current_period_start=start, current_period_end=start + PERIOD)
    return copy.deepcopy(sub)


def test_an_unpaid_subscription_gets_its_grace_once_across_periods(make_nasca):
    n = billed(make_nasca)
    n.billing.policy = BillingPolicy(past_due_grace_days=3)
    p1 = 1_800_000_000
    deliver(n, event("customer.subscription.created", sub_in(n, p1 - PERIOD), created=p1 - PERIOD))
    assert n.get_usage("u1").tier == "pro"
    # the renewal at p1 failed: past due, within the grace
    r = deliver(n, event("customer.subscription.updated", sub_in(n, p1, "past_due"), created=p1 + 60))
    assert r.tier == "pro"
    r = deliver(n, event("customer.subscription.updated", sub_in(n, p1, "unpaid"), created=p1 + 4 * 86400))
    assert r.action == "tier_cleared"
    # a month later Stripe moves the still-unpaid subscription on to its next period: no new grace
    r = deliver(n, event("customer.subscription.updated", sub_in(n, p1 + PERIOD, "unpaid"),
                         created=p1 + PERIOD + 60))
    assert r.action == "tier_cleared" and n.get_usage("u1").tier == "free"
    # paid again: the tier is back, and the next failure has its own grace
    deliver(n, event("customer.subscription.updated", sub_in(n, p1 + PERIOD), created=p1 + PERIOD + 3600))
    assert n.get_usage("u1").tier == "pro"
    p3 = p1 + 2 * PERIOD
    r = deliver(n, event("customer.subscription.updated", sub_in(n, p3, "past_due"), created=p3 + 60))
    assert r.tier == "pro" and n.get_usage("u1").tier == "pro"
    r = deliver(n, event("customer.subscription.updated", sub_in(n, p3 + PERIOD, "past_due"),
                         created=p3 + PERIOD + 60))
    assert r.action == "tier_cleared"


def test_a_stale_failure_does_not_start_a_grace(make_nasca):
    n = billed(make_nasca)
    n.billing.policy = BillingPolicy(past_due_grace_days=3)
    p1 = 1_800_000_000
    deliver(n, event("customer.subscription.created", sub_in(n, p1), created=p1 + 100))
    # an old failure of an earlier period arrives after the newer paid state: stale, forgotten
    assert deliver(n, event("customer.subscription.updated", sub_in(n, p1 - 5 * PERIOD, "unpaid"),
                            created=p1 + 50)).action == "stale"
    p2 = p1 + PERIOD
    r = deliver(n, event("customer.subscription.updated", sub_in(n, p2, "past_due"), created=p2 + 60))
    assert r.tier == "pro"  # its grace runs from p2, not from the stale event's period


def test_a_grace_is_kept_even_when_the_store_fails_after_the_subscription_step(make_nasca, monkeypatch):
    # The grace start lives in the subscription's record, merged by the same atomic step: a
    # store failure right after it (Stripe then resends the event, seen before) loses nothing.
    n = billed(make_nasca)
    n.billing.policy = BillingPolicy(past_due_grace_days=3)
    p1 = 1_800_000_000
    deliver(n, event("customer.subscription.created", sub_in(n, p1 - PERIOD), created=p1 - PERIOD))
    store, real = n.store.sync, n.store.sync.put_marker

    def down(key, *args, **kwargs):
        if ":grace:" in key or ":cus:" in key:
            raise StoreError("down right after the subscription step")
        return real(key, *args, **kwargs)

    failing = event("customer.subscription.updated", sub_in(n, p1, "past_due"), created=p1 + 60)
    monkeypatch.setattr(store, "put_marker", down)
    with pytest.raises(StoreError):  # answered 500: Stripe resends it
        deliver(n, failing)
    monkeypatch.setattr(store, "put_marker", real)
    assert deliver(n, failing).tier == "pro"
    # next period, still unpaid: the grace from p1 is over, not a fresh one from this period
    r = deliver(n, event("customer.subscription.updated", sub_in(n, p1 + PERIOD, "past_due"),
                         created=p1 + PERIOD + 60))
    assert r.action == "tier_cleared" and n.get_usage("u1").tier == "free"


def test_failures_delivered_at_once_keep_the_earliest_grace(make_nasca, backend):
    n = billed(make_nasca)
    n.billing.policy = BillingPolicy(past_due_grace_days=3)
    p1 = 1_800_000_000
    deliver(n, event("customer.subscription.created", sub_in(n, p1 - PERIOD), created=p1 - PERIOD))
    # two failing events of one moment at once (neither is stale), each with its own first
    # failure: the record keeps the earliest, whichever step runs last
    race(n, [signed(event("customer.subscription.updated", sub_in(n, p1 + k * 86400, "past_due"),
                          created=p1 + 86400 + 60)) for k in (0, 1)])
    r = deliver(n, event("customer.subscription.updated", sub_in(n, p1 + 2 * 86400, "past_due"),
                         created=p1 + 3 * 86400 + 120))  # 3 days after p1, 2 after the second
    assert r.action == "tier_cleared"


# -- disputes -----------------------------------------------------------------------------------------------
def disputed(n, pi="pi_d", status="needs_response", dispute_id="dp_1"):
    d = dispute_object({"id": "ch_d", "amount": 1000, "currency": "usd", "payment_intent": pi},
                       "fraudulent", status)
    d["id"] = dispute_id
    return d


def dispute_events(n):
    return {
        "created": event("charge.dispute.created", disputed(n)),
        "withdrawn": event("charge.dispute.funds_withdrawn", disputed(n, status="under_review")),
        "won": event("charge.dispute.closed", disputed(n, status="won")),
        "purchase": event("checkout.session.completed",
                          session("u1", namespace=n.namespace, pack="p10", amount_total=1000,
                                  payment_intent="pi_d", session_id="cs_pi_d")),
    }


@pytest.mark.parametrize("order", list(itertools.permutations(["created", "withdrawn", "won", "purchase"])))
def test_a_won_dispute_gives_the_credits_back_in_any_order(make_nasca, order):
    n = billed(make_nasca)
    events = dispute_events(n)
    results = {name: deliver(n, events[name]) for name in order}
    assert lot(n) == (Decimal(10), False)
    at = order.index
    if max(at("purchase"), min(at("created"), at("withdrawn"))) < at("won"):  # revoked, then won
        assert results["won"].action == "restored" and results["won"].restored == Decimal(10)
    else:  # the dispute was won before the lot was revoked: nothing to give back
        assert results["won"].restored in (None, 0)
    for name in order:  # replays change nothing
        assert deliver(n, events[name]).duplicate
    assert lot(n) == (Decimal(10), False)


def test_a_won_dispute_restores_exactly_once_whatever_is_spent_after(make_nasca, backend):
    n = billed(make_nasca)
    events = dispute_events(n)
    deliver(n, events["purchase"])
    n.settle(n.reserve("4.1", user="u1"), "4.1")  # $0.10 from the tier, $4 from the lot: $6 left
    r = deliver(n, events["created"])
    assert (r.action, r.revoked, lot(n)) == ("revoked", Decimal(6), (0, True))
    r = deliver(n, events["won"])
    assert (r.action, r.restored, lot(n)) == ("restored", Decimal(6), (Decimal(6), False))
    # Stripe's later dispute events for it (and a reconcile-style replay under a new id) give nothing more
    again = event("charge.dispute.funds_reinstated", disputed(n, status="won"))
    assert deliver(n, again).restored == 0 and lot(n) == (Decimal(6), False)
    late = event("charge.dispute.created", disputed(n))
    assert deliver(n, late).revoked == 0 and lot(n) == (Decimal(6), False)


@pytest.mark.parametrize("first", ["created", "lost"])
def test_a_lost_dispute_keeps_the_credits_revoked(make_nasca, first):
    n = billed(make_nasca)
    events = dispute_events(n)
    lost = event("charge.dispute.closed", disputed(n, status="lost"))
    sequence = [events["purchase"], events["created"], lost] if first == "created" else \
        [lost, events["purchase"], events["created"]]
    for e in sequence:
        deliver(n, e)
    assert lot(n) == (0, True)
    assert deliver(n, events["won"]).action == "restored" and lot(n) == (0, True)  # lost is final


def test_a_won_dispute_keeps_what_a_refund_took(make_nasca):
    n = billed(make_nasca)
    events = dispute_events(n)
    deliver(n, events["purchase"])
    deliver(n, event("charge.refunded", charge("pi_d", amount=1000, refunded=400)))  # $4 back
    deliver(n, events["created"])
    assert lot(n) == (0, True)
    r = deliver(n, events["won"])
    assert r.restored == Decimal(6) and lot(n) == (Decimal(6), False)


def test_funds_reinstated_of_a_lost_dispute_gives_nothing_back(make_nasca):
    n = billed(make_nasca)
    events = dispute_events(n)
    for name in ("purchase", "created"):
        deliver(n, events[name])
    r = deliver(n, event("charge.dispute.funds_reinstated", disputed(n, status="lost")))
    assert not r.restored and lot(n) == (0, True)  # lost is tested first: final


@pytest.mark.parametrize("status", [["won"], {"s": "won"}, 3])
def test_a_status_that_is_not_a_string_is_a_webhook_error(make_nasca, status):
    n = billed(make_nasca)
    deliver(n, dispute_events(n)["purchase"])
    with pytest.raises(WebhookError, match="status"):
        deliver(n, event("charge.dispute.closed", {**disputed(n), "status": status}))
    sub = subscription("u1", namespace=n.namespace, sub_id="sub_S", status="active")
    with pytest.raises(WebhookError, match="status"):
        deliver(n, event("customer.subscription.updated", {**sub, "status": status}))
    assert lot(n) == (Decimal(10), False) and n.get_usage("u1").tier == "free"


def test_credits_given_back_by_a_refund_event_are_reported_as_restored(make_nasca, monkeypatch):
    # the won dispute's entry was kept but the store failed before its revoke_to: the next
    # event of the payment (here a partial refund) does the restore, and says so
    n = billed(make_nasca)
    events = dispute_events(n)
    for name in ("purchase", "created"):
        deliver(n, events[name])
    store, real = n.store.sync, n.store.sync.revoke_to

    def down(*args, **kwargs):
        raise StoreError("down before the restore")

    monkeypatch.setattr(store, "revoke_to", down)
    with pytest.raises(StoreError):
        deliver(n, events["won"])
    monkeypatch.setattr(store, "revoke_to", real)
    assert lot(n) == (0, True)
    r = deliver(n, event("charge.refunded", charge("pi_d", amount=1000, refunded=400)))
    assert (r.action, r.restored, r.revoked) == ("restored", Decimal(6), None)
    assert lot(n) == (Decimal(6), False)


def test_a_won_dispute_racing_a_refund_keeps_the_refund(make_nasca, backend):
    # A lowering step (the dispute won) and a raising one (a refund) at the same moment: the
    # flows read again after each step, so the end state counts both.
    n = billed(make_nasca)
    for i in range(3 if backend in ("redis", "cluster") else 6):
        pi = f"pi_w{i}"
        buy(n, pi, user=f"w{i}")
        d = disputed(n, pi=pi, dispute_id=f"dp_w{i}")
        deliver(n, event("charge.dispute.created", d))
        race(n, [signed(event("charge.dispute.closed", {**d, "status": "won"})),
                 signed(event("charge.refunded", charge(pi, amount=1000, refunded=300)))])
        assert n.credit_lots(f"w{i}")[0].remaining == Decimal(7)


# -- a SQLite file from before lot.taken and the entry table ---------------------------------------------
@pytest.mark.parametrize("missing", [("taken", "floor"), ("floor",)])  # layout 1; the file of last week
def test_an_old_sqlite_file_gets_taken_floor_and_entries_at_open_once(tmp_path, missing):
    import multiprocessing
    import sqlite3
    import time

    from nasca_core.stores._sqlite_schema import SCHEMA, connect
    from nasca_core.stores.sqlite import SqliteStore

    old_schema = SCHEMA
    for column in missing:
        old_schema = old_schema.replace(f" {column} INTEGER NOT NULL DEFAULT 0,", "")
    assert all(f" {column} " not in old_schema for column in missing)
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(f"{old_schema} PRAGMA user_version = 1;")
    old.execute("INSERT INTO lot (user, id, seq, pack, paid, currency, granted, remaining, expires, created) "
                "VALUES ('ns:{t}:u1', 'l1', 1, 'p', 5, 'usd', 1000, 1000, 0, 0)")
    old.commit()
    old.close()
    ctx = multiprocessing.get_context("fork")
    start = time.time() + 0.3

    def opener() -> None:
        while time.time() < start:
            time.sleep(0.001)
        connect(str(path), 10).close()

    procs = [ctx.Process(target=opener) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]  # the column is added once, by one of them
    store = SqliteStore(str(path))
    try:
        from nasca_core.stores import UserKeys

        keys = UserKeys("ns:{t}:u1", "", "", "", "", "", "", "")
        assert store.revoke_to(keys, "l1", 400, floor=300) == 400
        assert store.revoke_to(keys, "l1", 0, restore=True) == -100
        (lot,) = store.all_lots(keys)
        assert (lot.remaining, lot.taken, lot.floor) == (700, 300, 300)
        store.put_entry("ns:billing:reviews:set", "cs_1", "{}")
        assert store.entries("ns:billing:reviews:set") == {"cs_1": "{}"}
    finally:
        store.close()


def test_a_partial_refund_taken_before_lots_kept_their_total_is_not_taken_twice(make_nasca, backend):
    # A store written by the previous release: 30% refunded, $3 of the $10 lot taken, the
    # running figures in an ``rv:`` marker and the lot holding no total of its own.
    import json

    n = billed(make_nasca)
    store, keys, now_ms = n.store.sync, n.user_keys("u1", n.now()), int(n.now() * 1000)
    store.grant(keys, Lot("cs_old", "p10", paid=10 * 10**9, currency="usd", granted=10 * 10**9,
                          remaining=7 * 10**9))
    base = f"{n.namespace}:billing"
    index = {"u": "u1", "l": "cs_old", "g": 10 * 10**9}
    store.put_marker(f"{base}:pi:pi_old", json.dumps(index), None, now_ms)
    store.put_marker(f"{base}:rf:pi_old:0", json.dumps({"r": 300, "a": 1000, "f": False}), None, now_ms)
    store.put_marker(f"{base}:rv:cs_old", json.dumps({"t": 3 * 10**9, "a": 3 * 10**9, "k": 7 * 10**9}), None,
                     now_ms)
    r = deliver(n, event("charge.refunded", charge("pi_old", amount=1000, refunded=500)))
    assert r.revoked == Decimal(2) and lot(n) == (Decimal(5), False)  # 50% in all: $2 more, not $5
    r = deliver(n, event("charge.refunded", charge("pi_old", amount=1000, refunded=1000)))
    assert r.revoked == Decimal(5) and lot(n) == (0, True)
