"""A switch from calendar months to a billing cycle keeps the month's spend, no window is
shorter than half a month, and a malformed anchor spec is a typed error: on every store."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nasca_core import InvalidInputError
from nasca_core._windows import anchor_parts, anchored_period, cycle_end
from tests._billing import event, session, signed, subscription
from tests.test_anchor_changes import blocked
from tests.test_anchor_stores import at, make, month, spend, subscribe

DAY = 86_400


def test_a_trial_started_and_cancelled_keeps_a_spent_free_month(make_nasca, clock):
    n = make(make_nasca)
    clock.now = at(2026, 6, 10)
    spend(n, "u1", "1")  # free: 1 a month, spent
    assert blocked(n, "0.5")
    clock.now = at(2026, 6, 20, 12)
    subscribe(n, clock, "sub_T", "pro", clock.now, status="trialing")  # a $0 trial, its cycle at once
    assert month(n) == (Decimal(1), (2026, 7, 20, 12, 0))  # June's spend went along
    clock.now = at(2026, 6, 20, 12, 1)
    assert subscribe(n, clock, "sub_T", "pro", at(2026, 6, 20, 12), kind="deleted").tier is None
    # The trial's window ends on the calendar boundary nearest its end: one allowance to then
    assert month(n) == (Decimal(1), (2026, 8, 1, 0, 0))
    assert blocked(n, "0.5")


def test_a_late_subscription_created_after_checkout_keeps_the_pro_spend(make_nasca, clock):
    n = make(make_nasca)
    clock.now = at(2026, 6, 15, 8)
    s = session("u1", namespace=n.namespace, plan="pro", subscription="sub_A", amount_total=2000)
    assert n.billing.handle_stripe_webhook(*signed(event("checkout.session.completed", s,
                                                         created=int(clock.now)))).tier == "pro"
    clock.now = at(2026, 6, 16)
    spend(n, "u1", "9")  # on pro, in the calendar month: the checkout doesn't carry the anchor
    clock.now = at(2026, 6, 17)  # customer.subscription.created delivered late (Stripe retried)
    subscribe(n, clock, "sub_A", "pro", at(2026, 6, 15, 8))
    assert month(n) == (Decimal(9), (2026, 7, 15, 8, 0))
    assert not blocked(n, "1") and (spend(n, "u1", "1") or blocked(n, "0.01"))  # 10 a month


def test_the_switch_carries_the_spend_once(make_nasca, clock):
    n = make(make_nasca)
    clock.now = at(2026, 6, 10)
    spend(n, "u1", "0.75")
    clock.now = at(2026, 6, 20, 12)
    s = subscription("u1", namespace=n.namespace, plan="pro", sub_id="sub_A", created=int(clock.now))
    s["billing_cycle_anchor"] = int(clock.now)
    payload = signed(event("customer.subscription.created", s, created=int(clock.now)))
    n.billing.handle_stripe_webhook(*payload)
    spend(n, "u1", "0.25")
    assert month(n) == (Decimal(1), (2026, 7, 20, 12, 0))
    n.billing.handle_stripe_webhook(*payload)  # delivered again: nothing carried twice
    assert month(n) == (Decimal(1), (2026, 7, 20, 12, 0))
    assert n.get_usage("u1").month_cost == Decimal("0.25")  # the window's own calls; June's stay June's


def test_a_new_anchor_a_day_in_gives_no_second_allowance(make_nasca, clock):
    n = make(make_nasca)

    def sub(anchor: float, kind: str) -> None:
        s = subscription("u1", namespace=n.namespace, plan="pro", sub_id="sub_A",
                         created=int(at(2026, 6, 15, 8)))
        s["billing_cycle_anchor"] = int(anchor)
        n.billing.handle_stripe_webhook(*signed(event(f"customer.subscription.{kind}", s,
                                                      created=int(clock.now))))

    clock.now = at(2026, 6, 15, 8)
    sub(clock.now, "created")
    clock.now = at(2026, 6, 15, 9)
    spend(n, "u1", "10")
    clock.now = at(2026, 6, 16, 10)  # the cycle reset to now (Stripe billing_cycle_anchor=now)
    sub(clock.now, "updated")
    assert month(n) == (Decimal(10), (2026, 7, 16, 10, 0))  # not a [15 July, 16 July) window
    clock.now = at(2026, 7, 15, 9)
    assert blocked(n, "0.01")
    clock.now = at(2026, 7, 16, 10)
    assert month(n) == (Decimal(0), (2026, 8, 16, 10, 0))


@pytest.mark.parametrize("bad", [",", "1,2,3,4", "abc", "1,2", "1,,3", "-1,2,3", "1,2,٣",
                                 "1" * 13 + ",0,0", " 1,2,3"])
def test_a_malformed_anchor_spec_is_a_typed_error_at_the_settle(make_nasca, clock, bad):
    n = make(make_nasca)
    clock.now = at(2026, 6, 10)
    r = n.reserve("1", user="u1")
    with pytest.raises(InvalidInputError, match="anchor spec"):
        n.settle(replace(r, anchor=bad), "1")
    assert n.get_usage("u1").monthly_spent == 0  # nothing changed
    n.settle(r, "1")
    assert n.get_usage("u1").monthly_spent == 1


def test_the_stored_spec_forms_parse():
    assert anchor_parts("") == (0, 0, 0)
    assert anchor_parts("0,0,1781503200") == (0, 0, 1781503200)
    assert anchor_parts("1781503200,1784095200,0") == (1781503200, 1784095200, 0)


def test_a_call_in_flight_at_the_switch_settles_in_the_calendar_month(make_nasca, clock):
    """The bound the README states: its reservation names the calendar month, so its cost
    counts there (kept in the month's record, not lost), not in the new window."""
    n = make(make_nasca)
    clock.now = at(2026, 6, 10)
    spend(n, "u1", "0.25")
    call = n.reserve("0.5", user="u1")
    clock.now = at(2026, 6, 20, 12)
    subscribe(n, clock, "sub_A", "pro", clock.now)
    n.settle(call, "0.5")
    assert month(n) == (Decimal("0.25"), (2026, 7, 20, 12, 0))
    report = n.analytics.month("2026-06")
    assert [(u.user_id, u.ai_cost) for u in report.users] == [("u1", Decimal("0.75"))]


@given(start=st.integers(1_750_000_000, 1_850_000_000), length=st.integers(15 * DAY, 46 * DAY),
       into=st.floats(0, 0.999), anchor=st.one_of(st.just(0), st.integers(1_700_000_000, 1_850_000_000)),
       zone=st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]))
def test_a_window_cut_for_a_new_cycle_lasts_half_a_month_to_a_month_and_a_half(start, length, into,
                                                                                 anchor, zone):
    tz = ZoneInfo(zone)
    end = start + length
    now = start + into * length
    cut = cycle_end(start, end, now, anchor, tz)
    assert cut > now and cut - start >= 15 * DAY - 3600  # an hour: a DST change
    assert cut - start <= max(46 * DAY, length + 15 * DAY) + 3600
    first, after = anchored_period(cut, anchor, tz)  # the new cycle's first window, from the cut
    assert first == cut or after - cut >= 15 * DAY - 3600
