"""The billing-cycle window in force is never replaced mid-period, on every store: whatever
the order of Stripe's events, a trial, a switch between a calendar and an anchored plan or a
cancel and resubscribe keeps what was spent in it; and a settle charges the window its
reserve was checked against in any process, whatever this process's anchor cache holds."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import NascaBlockedError
from nasca_core._types import Reservation
from nasca_core.remote._wire import Hold
from nasca_core.stores import SubChange
from tests._billing import event, session, signed, subscription
from tests.test_anchor_stores import at, make, month, spend, subscribe


def spec(n: Any, clock: Any, user: str = "u1") -> str:
    return str(n.store.sync.snapshot(n.user_keys(user), int(clock.now * 1000)).anchor)


def blocked(n: Any, cost: str = "1") -> bool:
    try:
        n.release(n.reserve(cost, user="u1", strict=True))
    except NascaBlockedError:
        return True
    return False


def anchored_and_spent(make_nasca: Any, clock: Any) -> Any:
    """u1 on "pro" (10 a month) from 15 June 08:00, its allowance spent on the 18th."""
    n = make(make_nasca)
    clock.now = at(2026, 6, 15, 8)
    subscribe(n, clock, "sub_A", "pro", clock.now)
    clock.now = at(2026, 6, 18)
    spend(n, "u1", "10")
    assert blocked(n)
    return n


def test_a_trial_then_cancel_keeps_the_period_spent(make_nasca, clock):
    n = anchored_and_spent(make_nasca, clock)
    clock.now = at(2026, 6, 20, 12)
    subscribe(n, clock, "sub_B", "max", clock.now, status="trialing")  # a $0 trial, its own cycle
    # "max" (30) on the same window, ending on the trial's boundary nearest its end: no short
    # [15 July, 20 July) window with an allowance of its own
    assert month(n) == (Decimal(10), (2026, 7, 20, 12, 0))
    clock.now = at(2026, 6, 21)
    assert subscribe(n, clock, "sub_B", "max", at(2026, 6, 20, 12), kind="deleted").tier == "pro"
    assert month(n) == (Decimal(10), (2026, 7, 15, 8, 0))
    assert blocked(n)  # no fresh pro allowance for a trial cancelled
    clock.now = at(2026, 7, 15, 8)
    assert month(n) == (Decimal(0), (2026, 8, 15, 8, 0))  # A's cycle, as before the trial


def test_a_change_late_in_a_window_keeps_its_end(make_nasca, clock):
    n = anchored_and_spent(make_nasca, clock)
    clock.now = at(2026, 6, 20, 12)
    subscribe(n, clock, "sub_B", "max", clock.now)  # the 20th's cycle: A's window runs to 20 July
    subscribe(n, clock, "sub_A", "pro", at(2026, 6, 15, 8), kind="deleted")
    clock.now = at(2026, 7, 16)
    spend(n, "u1", "20")  # still in [15 June, 20 July): no first period cut short
    assert month(n) == (Decimal(30), (2026, 7, 20, 12, 0))
    # C's boundary nearest the end (16 July) is now: the window keeps its end; C's first
    # window, [20 July, 16 August), is more than half a month
    subscribe(n, clock, "sub_C", "pro", clock.now, status="trialing")
    assert month(n) == (Decimal(30), (2026, 7, 20, 12, 0))
    assert blocked(n)  # pro's 10, on the window spent
    clock.now = at(2026, 7, 17)
    subscribe(n, clock, "sub_C", "pro", at(2026, 7, 16), kind="deleted")
    assert month(n) == (Decimal(30), (2026, 7, 20, 12, 0))
    assert blocked(n, "0.5")  # back on max (30): 30 spent, not a fresh window
    clock.now = at(2026, 7, 20, 12)
    assert month(n) == (Decimal(0), (2026, 8, 20, 12, 0))


@pytest.mark.parametrize("checkout_first", [True, False])
def test_the_checkout_and_subscription_events_in_either_order(make_nasca, clock, checkout_first):
    n = anchored_and_spent(make_nasca, clock)
    clock.now = at(2026, 6, 20, 12)
    s = session("u1", namespace=n.namespace, plan="max", subscription="sub_B", amount_total=5000)
    steps = [lambda: n.billing.handle_stripe_webhook(*signed(event("checkout.session.completed", s,
                                                                   created=int(clock.now)))),
             lambda: subscribe(n, clock, "sub_B", "max", clock.now)]
    for step in steps if checkout_first else steps[::-1]:
        assert step().tier == "max"
        assert month(n)[0] == Decimal(10)  # A's window, spend kept, at each step
    start, end = int(at(2026, 6, 15, 8)), int(at(2026, 7, 20, 12))  # to B's boundary nearest A's end
    assert spec(n, clock) == f"{start},{end},{int(at(2026, 6, 20, 12))}"
    assert month(n) == (Decimal(10), (2026, 7, 20, 12, 0))
    clock.now = at(2026, 7, 20, 12)
    assert month(n) == (Decimal(0), (2026, 8, 20, 12, 0))  # then the new cycle


def test_switching_between_a_calendar_and_an_anchored_plan_keeps_the_spend(make_nasca, clock):
    n = anchored_and_spent(make_nasca, clock)
    start = int(at(2026, 6, 15, 8))
    # flat: the window ends on the calendar boundary nearest 15 July (1 July); pro: on its own
    july1, july15 = (2026, 7, 1, 0, 0), (2026, 7, 15, 8, 0)
    for day, plan, tier, end in ((20, "flat", "max", july1), (21, "pro", "pro", july15),
                                 (22, "flat", "max", july1)):
        clock.now = at(2026, 6, day)
        assert subscribe(n, clock, "sub_A", plan, at(2026, 6, 15, 8), kind="updated").tier == tier
        assert month(n) == (Decimal(10), end)  # one window: it has no other key
        assert spec(n, clock).startswith(f"{start},{int(at(*end))},")
    assert blocked(n, "21")  # "max" (30) on the 10 spent
    spend(n, "u1", "20")
    clock.now = at(2026, 7, 1)  # flat: calendar months from the end of the cycle window
    assert month(n) == (Decimal(0), (2026, 8, 1, 0, 0))


def test_cancel_and_resubscribe_a_minute_later_keeps_the_spend(make_nasca, clock):
    n = anchored_and_spent(make_nasca, clock)
    clock.now = at(2026, 6, 19)
    assert subscribe(n, clock, "sub_A", "pro", at(2026, 6, 15, 8), kind="deleted").tier is None
    # free, on the cycle window to the calendar boundary nearest its end
    assert month(n) == (Decimal(10), (2026, 7, 1, 0, 0))
    clock.now = at(2026, 6, 19, 0, 1)
    assert subscribe(n, clock, "sub_C", "pro", clock.now).tier == "pro"
    # C's boundaries: 19 June is less than half a month after the window's start, so 19 July
    assert month(n) == (Decimal(10), (2026, 7, 19, 0, 1))
    assert blocked(n)
    clock.now = at(2026, 7, 19, 0, 1)  # C's cycle from there, a whole month
    assert month(n) == (Decimal(0), (2026, 8, 19, 0, 1))


def test_a_step_made_on_a_spec_read_before_another_change_writes_nothing(make_nasca, clock):
    n = anchored_and_spent(make_nasca, clock)
    keys, now_ms = n.user_keys("u1"), int(clock.now * 1000)
    before = spec(n, clock)
    change = SubChange("sub_X", int(clock.now), "evt_x", True, "max", int(clock.now), False,
                       anchor=int(clock.now), seen="0,0,1", window=(0, 0))
    result = n.store.sync.apply_subscription(keys, change, now_ms)
    assert (result.status, result.tier) == (-3, "pro")
    assert spec(n, clock) == before and n.get_usage("u1").tier == "pro"  # nothing written
    # The webhook flow reads the spec again and applies.
    assert subscribe(n, clock, "sub_X", "max", clock.now).tier == "max"
    assert month(n) == (Decimal(10), (2026, 7, 18, 0, 0))  # to X's boundary nearest the end


def test_a_hold_settled_by_another_replica_charges_the_anchored_window(make_nasca, clock):
    a, b = make(make_nasca), make(make_nasca)  # two `nasca serve` replicas on one store
    clock.now = at(2026, 6, 15, 8)
    subscribe(a, clock, "sub_A", "pro", clock.now)
    clock.now = at(2026, 6, 18)
    r = a.reserve("4", user="u1")  # A learns the anchor; B never reserved for u1
    hold = Hold.model_validate_json(Hold(user=r.user_id, tier=r.tier, hold_id=r.hold_id,
                                         estimate_nanos=r.estimate_nanos, anchor=r.anchor).model_dump_json())
    assert hold.anchor == r.anchor != ""
    # B rebuilds the Reservation from the hold token as server/_v1.py does.
    b.settle(Reservation(hold.user, hold.tier, hold.hold_id, hold.estimate_nanos, b.user_keys(hold.user),
                         anchor=hold.anchor), "4")
    assert month(a) == (Decimal(4), (2026, 7, 15, 8, 0))
    spend(a, "u1", "6")
    assert blocked(a)  # the anchored limit holds: nothing went to the calendar month
    clock.now = at(2026, 7, 1)
    assert month(a) == (Decimal(10), (2026, 7, 15, 8, 0))


def test_a_settle_after_the_anchor_left_the_cache_charges_the_anchored_window(make_nasca, clock):
    n = make(make_nasca)
    n._windows.max_users = 1  # stands in for 65,536 other subscribers seen between reserve and settle
    clock.now = at(2026, 6, 15, 8)
    subscribe(n, clock, "sub_A", "pro", clock.now)
    other = subscription("u2", namespace=n.namespace, plan="pro", sub_id="sub_2", created=int(clock.now))
    other["billing_cycle_anchor"] = int(clock.now)
    n.billing.handle_stripe_webhook(*signed(event("customer.subscription.created", other,
                                                  created=int(clock.now))))
    clock.now = at(2026, 6, 18)
    r = n.reserve("4", user="u1")
    n.reserve("0.01", user="u2")  # another subscriber: u1's anchor leaves the cache
    assert n._windows.anchor("u1") == ""
    n.settle(r, "4")
    assert month(n) == (Decimal(4), (2026, 7, 15, 8, 0))
    report = n.analytics.month("2026-06")
    assert [(u.user_id, u.ai_cost) for u in report.users if u.user_id == "u1"] == [("u1", Decimal(4))]


def test_a_call_ending_in_the_next_window_is_charged_there(make_nasca, clock):
    a, b = make(make_nasca), make(make_nasca)
    clock.now = at(2026, 6, 15, 8)
    subscribe(a, clock, "sub_A", "pro", clock.now)
    clock.now = at(2026, 7, 15, 7, 59, 59)
    r = a.reserve("3", user="u1")
    clock.now = at(2026, 7, 15, 8, 0, 5)  # the call ends in the next period
    b.settle(Reservation(r.user_id, r.tier, r.hold_id, r.estimate_nanos, b.user_keys(r.user_id),
                         anchor=r.anchor), "3")
    assert month(a) == (Decimal(3), (2026, 8, 15, 8, 0))


def test_the_fallback_allowance_spend_is_in_the_month_report_and_the_delete_fold(make_nasca, clock):
    from nasca_core import Tier, start_with_fallback
    from nasca_core._fallback import ACCOUNT_SUFFIX
    from nasca_core.privacy import UserData
    from nasca_core.stores._base import FALLBACK_SUFFIX
    from nasca_core.stores._user_data import DELETED

    assert FALLBACK_SUFFIX == ACCOUNT_SUFFIX  # the stores' spelling of the fallback account's keys
    free = Tier(monthly="0.01", on_exhausted="fallback", fallback_model="gpt-4o-mini",
                fallback_allowance=Tier(daily="0.002"))
    n = make_nasca(tiers={"free": free}, default_tier="free", timezone="Europe/Paris")
    clock.now = at(2026, 6, 10)
    n.settle(n.reserve(nanos=1, user="u1"), "0.02")
    call, fell = start_with_fallback(n, "gpt-4o", prompt="hi", user="u1")
    assert fell is not None
    call.finish(None)
    n.flush()
    cost = call.charge.cost
    assert cost > 0 and n.get_usage("u1").fallback.daily_spent == cost
    report = n.analytics.month("2026-06")
    assert [(u.user_id, u.ai_cost) for u in report.users] == [("u1", Decimal("0.02") + cost)]
    assert UserData(n).delete("u1").deleted
    report = n.analytics.month("2026-06")
    assert [(u.user_id, u.ai_cost) for u in report.users] == [(DELETED, Decimal("0.02") + cost)]


def test_a_remote_settle_kept_for_later_keeps_its_holds_anchor() -> None:
    from nasca_core._journal import decode, encode
    from nasca_core.remote._pending import _body, _op
    from nasca_core.remote._wire import SettleBody

    hold = Hold(user="u1", tier="pro", hold_id="h1", estimate_nanos=5, anchor="1781503200,1784095200,0")
    op = _op(SettleBody(hold=hold, nanos=3), 1_000)
    again = decode(json.loads(encode(op))["s"])  # journaled, then adopted
    assert _body(again).hold == hold
    calendar = hold.model_copy(update={"anchor": ""})
    assert _body(_op(SettleBody(hold=calendar, nanos=3), 1_000)).hold == calendar
