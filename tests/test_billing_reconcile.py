"""Reconciliation against the local Stripe (real stripe-python over HTTP, auto-pagination):
after a webhook outage, and after the store lost everything, it restores exactly the lots
Stripe says were paid and not refunded; a second run changes nothing."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from nasca_core import ConfigurationError, InvalidInputError
from nasca_core.testing.stripe import StripeServer
from tests._billing import SECRET, billed

SUCCESS = "https://app.example.com/ok"


@pytest.fixture
def srv():
    with StripeServer(webhook_secret=SECRET, max_page=3) as server:  # lists of several pages
        yield server


def shop(make_nasca, srv, **kwargs):
    return billed(make_nasca, billing={"stripe": srv.client(), "success_url": SUCCESS}, **kwargs)


def buy(n, srv, user, item="p5", **complete):
    n.billing.create_checkout(user, item)
    sid = srv.last_session_id
    srv.complete_session(sid, deliver=False, **complete)  # the webhook never arrives
    return sid


def state(n, users):
    return {u: [(x.pack, x.remaining, x.revoked) for x in n.billing.credit_lots(u)] for u in users}


USERS = ["u1", "u2", "u3", "u4", "u5", "u6"]
NOTHING = {u: [] for u in USERS}
EXPECTED = {
    "u1": [("p5", Decimal(3), False)],
    "u2": [("p10", Decimal(0), True)],  # refunded in full
    "u3": [("p5", Decimal("1.8"), False)],  # $2 of $5 refunded: 3/5 of the credits stay
    "u4": [],  # not paid yet
    "u5": [],  # paid $0 for a $5 pack: held for review
    "u6": [],  # a plan: no lot, its subscription's tier
}


def outage(n, srv):
    """Purchases and refunds whose webhooks were all lost."""
    sids = {u: buy(n, srv, u, pack) for u, pack in (("u1", "p5"), ("u2", "p10"), ("u3", "p5"))}
    buy(n, srv, "u4", payment_status="unpaid")
    sids["u5"] = buy(n, srv, "u5", amount_total=0)
    buy(n, srv, "u6", "pro")
    srv.refund(sids["u2"], deliver=False)
    srv.refund(sids["u3"], amount=100, deliver=False)
    srv.refund(sids["u3"], amount=100, deliver=False)  # two partial refunds: $2 in all
    return sids


def test_reconcile_after_a_webhook_outage_and_after_losing_the_store(make_nasca, srv, backend, tmp_path):
    n = shop(make_nasca, srv)
    other = shop(make_nasca, srv, namespace="another-app")  # same Stripe account, another app
    buy(other, srv, "u1")
    sids = outage(n, srv)
    # many sessions of others: the listing walks several pages
    for _ in range(3):
        buy(other, srv, f"x{uuid.uuid4().hex[:6]}")

    dry = n.billing.reconcile(dry_run=True)
    assert state(n, USERS) == NOTHING  # a dry run writes nothing
    got = sorted((c.action, c.user_id, c.spend) for c in dry.changes)
    want = sorted([("granted", "u1", Decimal(3)), ("granted", "u2", Decimal(10)),
                   ("revoked", "u2", Decimal(10)), ("granted", "u3", Decimal(3)),
                   ("revoked", "u3", Decimal("1.2")), ("needs_review", "u5", Decimal(0)),
                   ("tier_set", "u6", Decimal(0))])
    assert got == want
    assert (dry.sessions, dry.refunds) == (6, 3) and dry.dry_run
    assert n.get_usage("u6").tier == "free"

    pages = len(srv.requests)
    done = n.billing.reconcile()
    listed = [r for r in srv.requests[pages:] if r.method == "GET" and r.path == "/v1/checkout/sessions"]
    assert len(listed) == 4 and "starting_after" in listed[-1].params  # 10 sessions, 3 a page
    assert sorted((c.action, c.user_id, c.spend) for c in done.changes) == want
    assert state(n, USERS) == EXPECTED and n.get_usage("u6").tier == "pro"
    assert [o.session_id for o in n.billing.review_orders()] == [sids["u5"]]
    assert "Reconciliation changed 7" in done.text() and sids["u1"] in done.text()
    assert state(other, ["u1"]) == {"u1": []}  # another namespace's sessions are not ours

    again = n.billing.reconcile()
    assert again.changes == () and "Nothing to change" in again.text()
    assert n.billing.reconcile(dry_run=True).changes == ()

    # the store is restored from nothing: the same lots come back, once
    if backend == "memory":
        fresh = shop(make_nasca, srv, store=f"memory://{uuid.uuid4().hex}")
    elif backend == "sqlite":
        fresh = shop(make_nasca, srv, store=f"sqlite:///{tmp_path}/restored.db")
    else:
        wipe(n)
        fresh = n
    assert state(fresh, USERS) == NOTHING
    assert len(fresh.billing.reconcile().changes) == 7
    assert state(fresh, USERS) == EXPECTED and fresh.get_usage("u6").tier == "pro"
    assert fresh.billing.reconcile().changes == ()


def test_refunds_and_disputes_since_a_date_of_purchases_made_before_it(make_nasca, srv):
    n = shop(make_nasca, srv)
    sids = {u: buy(n, srv, u) for u in ("u1", "u2", "u3")}
    n.billing.reconcile()  # the purchases are in the store
    time.sleep(1.1)  # Stripe's times are whole seconds: what follows is after ``since``
    since = datetime.now(UTC).replace(microsecond=0)
    srv.refund(sids["u1"], deliver=False)  # the webhooks of these never arrive
    srv.refund(sids["u2"], amount=250, deliver=False)
    srv.dispute(sids["u3"], deliver=False)
    dry = n.billing.reconcile(since, dry_run=True)
    want = sorted([("revoked", "u1", Decimal(3)), ("revoked", "u2", Decimal("1.5")),
                   ("revoked", "u3", Decimal(3))])
    assert (dry.sessions, dry.refunds) == (0, 3)
    assert sorted((c.action, c.user_id, c.spend) for c in dry.changes) == want
    done = n.billing.reconcile(since)
    assert sorted((c.action, c.user_id, c.spend) for c in done.changes) == want
    assert state(n, ["u1", "u2", "u3"]) == {"u1": [("p5", 0, True)], "u2": [("p5", Decimal("1.5"), False)],
                                            "u3": [("p5", 0, True)]}
    assert any(r.path == "/v1/disputes" and "created" in r.params for r in srv.requests)
    assert n.billing.reconcile(since).changes == () and n.billing.reconcile().changes == ()


def test_a_dispute_whose_webhook_was_lost_is_reconciled(make_nasca, srv):
    n = shop(make_nasca, srv)
    sid = buy(n, srv, "u1")
    srv.dispute(sid, deliver=False)
    changes = sorted((c.action, c.spend) for c in n.billing.reconcile().changes)
    assert changes == [("granted", Decimal(3)), ("revoked", Decimal(3))]
    assert state(n, ["u1"]) == {"u1": [("p5", 0, True)]}
    late = srv.complete_session(sid, deliver=False)  # the lost webhooks, once the endpoint is back
    assert n.billing.handle_stripe_webhook(late.payload, late.signature).duplicate
    assert state(n, ["u1"]) == {"u1": [("p5", 0, True)]}


def test_a_dispute_won_while_the_webhooks_were_lost_is_reconciled(make_nasca, srv):
    n = shop(make_nasca, srv)
    sid = buy(n, srv, "u1")
    opened = srv.dispute(sid, deliver=False)
    n.billing.reconcile()
    assert state(n, ["u1"]) == {"u1": [("p5", 0, True)]}
    won = srv.dispute(sid, status="won", deliver=False)  # charge.dispute.closed, never delivered
    assert won.event["type"] == "charge.dispute.closed"
    dry = n.billing.reconcile(dry_run=True)
    assert [(c.action, c.spend) for c in dry.changes] == [("restored", Decimal(3))]
    assert state(n, ["u1"]) == {"u1": [("p5", 0, True)]}  # a dry run changes nothing
    assert [(c.action, c.spend) for c in n.billing.reconcile().changes] == [("restored", Decimal(3))]
    assert state(n, ["u1"]) == {"u1": [("p5", Decimal(3), False)]}
    assert n.billing.reconcile().changes == ()
    for late in (opened, won):  # the lost webhooks, once the endpoint is back
        n.billing.handle_stripe_webhook(late.payload, late.signature)
    assert state(n, ["u1"]) == {"u1": [("p5", Decimal(3), False)]}


def test_reconcile_gives_no_tier_for_a_plan_checkout_held_for_review(make_nasca, srv):
    n = shop(make_nasca, srv)
    buy(n, srv, "u1", "pro", amount_total=0)  # a 100%-off coupon; no webhook arrived
    changes = sorted((c.action, c.user_id) for c in n.billing.reconcile().changes)
    assert changes == [("needs_review", "u1")]
    assert n.get_usage("u1").tier == "free" and n.billing.review_orders()[0].pack == "pro"
    assert n.billing.reconcile().changes == ()


def wipe(n):
    """Delete every key of the Nasca's namespace (a Redis that lost its data)."""
    client = n.store.sync.client
    keys = list(client.scan_iter(match=f"*{n.namespace}*", count=1000))
    for key in keys:
        client.delete(key)
    n.live.invalidate()


def test_late_webhooks_after_reconciling_change_nothing(make_nasca, srv):
    n = shop(make_nasca, srv)
    sid = buy(n, srv, "u1")
    n.billing.reconcile()
    late = srv.complete_session(sid, deliver=False)  # Stripe's retry, once the endpoint is back
    result = n.billing.handle_stripe_webhook(late.payload, late.signature)
    assert result.action == "granted" and result.duplicate
    assert state(n, ["u1"]) == {"u1": [("p5", Decimal(3), False)]}


def test_reconcile_clears_a_tier_whose_grace_period_ended_without_an_event(make_nasca, srv):
    n = shop(make_nasca, srv)
    n.billing.create_checkout("u1", "pro")
    sid = srv.last_session_id
    done = srv.complete_session(sid, deliver=False)
    n.billing.handle_stripe_webhook(done.payload, done.signature)
    # the renewal failed 8 days ago: Stripe had moved the period on to the unpaid month
    unpaid = int(time.time()) - 8 * 86400
    srv.subscription_event(sid, status="past_due", period=(unpaid, unpaid + 30 * 86400), deliver=False)
    assert n.get_usage("u1").tier == "pro"  # that event never arrived
    assert n.billing.reconcile(dry_run=True).changes[0].action == "tier_cleared"
    (change,) = n.billing.reconcile().changes
    assert (change.action, change.user_id) == ("tier_cleared", "u1") and "past_due" in change.detail
    assert n.get_usage("u1").tier == "free" and n.billing.reconcile().changes == ()


def test_since_limits_what_stripe_lists(make_nasca, srv):
    n = shop(make_nasca, srv)
    buy(n, srv, "u1")
    later = n.billing.reconcile(datetime.now(UTC) + timedelta(days=1))
    assert (later.sessions, later.changes) == (0, ())
    assert n.billing.reconcile("2020-01-01").sessions == 1
    gte = str(int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()))
    assert srv.requests[-2].params["created"] == {"gte": gte}
    with pytest.raises(InvalidInputError):
        n.billing.reconcile("last tuesday")


def test_reconcile_needs_a_stripe_client(make_nasca):
    n = billed(make_nasca)
    with pytest.raises(ConfigurationError):
        n.billing.reconcile()


async def test_async_twin(make_nasca, srv):
    n = shop(make_nasca, srv)
    buy(n, srv, "u1")
    buy(n, srv, "u2")
    report = await n.billing.areconcile()
    assert sorted(c.user_id for c in report.changes) == ["u1", "u2"]
    assert (await n.billing.areconcile()).changes == ()
    store = n.store.for_loop()
    await store.close()


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_cli_reconcile(make_nasca, srv, tmp_path, monkeypatch, capsys):
    from nasca_core.cli import main

    n = shop(make_nasca, srv, store="memory://cli-reconcile")
    buy(n, srv, "u1")
    config = tmp_path / "nasca.toml"
    config.write_text('store = "memory://cli-reconcile"\n'
                      f'namespace = "{n.namespace}"\ndefault_tier = "free"\n'
                      '[tiers.free]\nmonthly = 1\n[tiers.pro]\nmonthly = 10\n[tiers.team]\nmonthly = 50\n'
                      '[packs.p5]\nprice = 5\nspend = 3\n'
                      f'[stripe]\napi_base = "{srv.url}"\n')
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_cli")
    assert main(["billing", "reconcile", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would change 1" in out and "granted" in out and n.billing.credit_lots("u1") == ()
    assert main(["billing", "reconcile", "--config", str(config), "--since", "2020-01-01"]) == 0
    assert "changed 1" in capsys.readouterr().out and len(n.billing.credit_lots("u1")) == 1
    assert main(["billing", "reconcile", "--config", str(config)]) == 0
    assert "Nothing to change" in capsys.readouterr().out
    monkeypatch.delenv("STRIPE_API_KEY")
    assert main(["billing", "reconcile", "--config", str(config)]) == 2
    assert "STRIPE_API_KEY" in capsys.readouterr().err
