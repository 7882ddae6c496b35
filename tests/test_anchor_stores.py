"""Monthly allowances anchored to the Stripe subscription's billing cycle, on every store:
the subscription webhook stores the anchor in the user's slot, keys and resets follow it,
and a process holding a stale anchor is told so by the reserve and retries once."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from nasca_core import NascaBlockedError, Tier
from nasca_core.billing import Plan
from nasca_core.privacy import UserData
from nasca_core.stores._user_data import DELETED
from tests._billing import SECRET, event, signed, subscription

PARIS = ZoneInfo("Europe/Paris")
TIERS = {"free": Tier(monthly=1), "pro": Tier(monthly=10), "max": Tier(monthly=30)}
PLANS = [Plan(id="pro", tier="pro", price=20, anchor="subscription"),
         Plan(id="max", tier="max", price=50, anchor="subscription"),
         Plan(id="flat", tier="max", price=50)]


def at(*parts: int) -> float:
    return datetime(*parts, tzinfo=PARIS).timestamp()  # type: ignore[misc]


def paris(when: datetime | None) -> tuple[int, ...] | None:
    if when is None:
        return None
    t = when.astimezone(PARIS)
    return t.year, t.month, t.day, t.hour, t.minute


def make(make_nasca: Any, **kwargs: Any) -> Any:
    return make_nasca(tiers=TIERS, default_tier="free", timezone="Europe/Paris", plans=PLANS,
                      webhook_secret=SECRET, **kwargs)


def subscribe(n: Any, clock: Any, sub_id: str, plan: str, anchor: float, *, kind: str = "created",
              status: str = "active") -> Any:
    sub = subscription("u1", namespace=n.namespace, plan=plan, sub_id=sub_id, created=int(anchor),
                       status=status)
    sub["billing_cycle_anchor"] = int(anchor)
    return n.billing.handle_stripe_webhook(*signed(event(f"customer.subscription.{kind}", sub,
                                                         created=int(clock.now))))


def spend(n: Any, user: str, cost: str) -> None:
    n.settle(n.reserve(cost, user=user), cost)


def month(n: Any, user: str = "u1") -> tuple[Decimal, tuple[int, ...] | None]:
    u = n.get_usage(user)
    return u.monthly_spent, paris(u.monthly_resets_at)


def test_anchored_on_the_15th_resets_on_the_15th_across_a_month_and_dst(make_nasca, clock):
    n = make(make_nasca)
    clock.now = at(2026, 3, 15, 10, 0)  # winter time; summer time starts on 29 March
    assert subscribe(n, clock, "sub_A", "pro", clock.now).tier == "pro"
    clock.now = at(2026, 3, 20, 12)
    spend(n, "u1", "4")
    spend(n, "free_user", "0.25")
    assert month(n) == (Decimal(4), (2026, 4, 15, 10, 0))
    assert month(n, "free_user") == (Decimal("0.25"), (2026, 4, 1, 0, 0))  # free: calendar months
    clock.now = at(2026, 4, 1, 0, 0, 1)  # the calendar month turned: the free user's only
    assert month(n) == (Decimal(4), (2026, 4, 15, 10, 0))
    assert month(n, "free_user") == (Decimal(0), (2026, 5, 1, 0, 0))
    spend(n, "u1", "6")
    clock.now = at(2026, 4, 15, 9, 59, 59)  # after the DST change, still 10:00 local
    with pytest.raises(NascaBlockedError) as blocked:
        n.reserve("1", user="u1")
    assert blocked.value.window == "monthly" and paris(blocked.value.resets_at) == (2026, 4, 15, 10, 0)
    assert month(n) == (Decimal(10), (2026, 4, 15, 10, 0))
    clock.now = at(2026, 4, 15, 10, 0)
    assert month(n) == (Decimal(0), (2026, 5, 15, 10, 0))
    spend(n, "u1", "1")  # admitted again: the new period's allowance
    # The settle used the anchored window too: the spend is in the new period.
    assert month(n) == (Decimal(1), (2026, 5, 15, 10, 0))
    assert n.user_keys("u1").month.endswith(":m:20260415100000")


def test_a_process_with_a_stale_anchor_retries_once(make_nasca, clock):
    clock.now = at(2026, 5, 15, 9)
    owner, other = make(make_nasca), make(make_nasca)  # two processes on one store
    spend(other, "u1", "0.5")  # calendar month: nothing anchored yet; the cycle takes it on
    subscribe(owner, clock, "sub_A", "pro", clock.now)
    clock.now = at(2026, 5, 20)
    reserves: list[Any] = []
    real = other.deferred.reserve

    def counted(op: Any) -> Any:
        result = real(op)
        reserves.append((op.anchor, result.status))
        return result

    other.deferred.reserve = counted
    spend(other, "u1", "2")
    anchor = f"0,0,{int(at(2026, 5, 15, 9))}"
    assert reserves == [("", -2), (anchor, 1)]  # told once, then in the anchored window
    spend(other, "u1", "1")
    assert reserves[2:] == [(anchor, 1)]  # steady state: one round trip
    assert month(owner) == (Decimal("3.5"), (2026, 6, 15, 9, 0))
    assert owner.get_usage("u1").month_cost == Decimal(3)  # the anchored window's own record
    # The cached anchor itself goes stale: another subscription, cycled on the 25th, takes over.
    clock.now = at(2026, 5, 25, 16)
    subscribe(owner, clock, "sub_B", "max", clock.now)
    spend(other, "u1", "1")
    moved = f"{int(at(2026, 5, 15, 9))},{int(at(2026, 6, 25, 16))},{int(clock.now)}"  # to B's boundary
    assert reserves[3:] == [(anchor, -2), (moved, 1)]
    assert month(owner) == (Decimal("4.5"), (2026, 6, 25, 16, 0))  # the period running keeps its spend
    clock.now = at(2026, 6, 25, 16)
    spend(other, "u1", "1")
    assert reserves[5:] == [(moved, 1)]  # the same spec names the next window: no retry
    assert month(owner) == (Decimal(1), (2026, 7, 25, 16, 0))


def test_a_plan_change_keeps_the_spend_until_the_next_anchor_day(make_nasca, clock):
    n = make(make_nasca)
    clock.now = at(2026, 6, 15, 8)
    subscribe(n, clock, "sub_A", "pro", clock.now)
    clock.now = at(2026, 6, 18)
    spend(n, "u1", "10")
    with pytest.raises(NascaBlockedError):
        n.reserve("1.5", user="u1")
    clock.now = at(2026, 6, 20)  # the same subscription moved to "max"; Stripe keeps its anchor
    assert subscribe(n, clock, "sub_A", "max", at(2026, 6, 15, 8), kind="updated").tier == "max"
    u = n.get_usage("u1")
    assert (u.tier, u.monthly_spent, u.monthly_limit) == ("max", Decimal(10), Decimal(30))
    assert paris(u.monthly_resets_at) == (2026, 7, 15, 8, 0)
    spend(n, "u1", "1.5")  # the new limit applies from the change
    assert month(n) == (Decimal("11.5"), (2026, 7, 15, 8, 0))
    clock.now = at(2026, 7, 15, 8)
    assert month(n) == (Decimal(0), (2026, 8, 15, 8, 0))


def test_a_new_cycle_waits_for_the_end_of_the_current_period(make_nasca, clock):
    n = make(make_nasca)
    clock.now = at(2026, 6, 15, 8)
    subscribe(n, clock, "sub_A", "pro", clock.now)
    clock.now = at(2026, 6, 20, 12)
    spend(n, "u1", "6")
    # Upgraded through a new checkout on the 20th: a new subscription, its cycle on the 20th.
    assert subscribe(n, clock, "sub_B", "max", clock.now).tier == "max"
    assert subscribe(n, clock, "sub_A", "pro", at(2026, 6, 15, 8), kind="deleted").tier == "max"
    # The spend stays to B's boundary nearest the next 15th: no [15 July, 20 July) window
    assert month(n) == (Decimal(6), (2026, 7, 20, 12, 0))
    clock.now = at(2026, 7, 16)
    spend(n, "u1", "2")
    assert month(n) == (Decimal(8), (2026, 7, 20, 12, 0))
    clock.now = at(2026, 7, 21)
    assert month(n) == (Decimal(0), (2026, 8, 20, 12, 0))


def test_free_and_calendar_plans_keep_calendar_months(make_nasca, clock):
    n = make(make_nasca)
    clock.now = at(2026, 9, 10, 14)
    subscribe(n, clock, "sub_F", "flat", clock.now)  # a plan that doesn't anchor
    spend(n, "u1", "2")
    assert month(n) == (Decimal(2), (2026, 10, 1, 0, 0))
    clock.now = at(2026, 9, 12)
    subscribe(n, clock, "sub_A", "pro", clock.now)
    # A first cycle starts with its subscription, taking on the calendar month's spend
    assert month(n) == (Decimal(2), (2026, 10, 12, 0, 0))
    spend(n, "u1", "3")  # in the cycle month from 12 September
    clock.now = at(2026, 9, 20)
    subscribe(n, clock, "sub_A", "pro", at(2026, 9, 12), kind="deleted")
    # The cycle's window keeps its spend to the calendar boundary nearest its end, then calendar months.
    assert month(n) == (Decimal(5), (2026, 10, 1, 0, 0))
    clock.now = at(2026, 10, 13)
    assert month(n) == (Decimal(0), (2026, 11, 1, 0, 0))
    spend(n, "u1", "0.5")
    clock.now = at(2026, 11, 2)
    assert month(n) == (Decimal(0), (2026, 12, 1, 0, 0))
    assert n.user_keys("u1").month.endswith(":m:202611")  # calendar ids again
    clock.now = at(2026, 9, 20)
    # The owner's report counts both of the user's September records.
    report = n.analytics.month("2026-09")
    assert [(u.user_id, u.ai_cost) for u in report.users] == [("u1", Decimal(5))]
    # Forgetting the user keeps both in the month's totals, under the deleted pseudo-user.
    assert UserData(n).delete("u1").deleted
    report = n.analytics.month("2026-09")
    assert [(u.user_id, u.ai_cost) for u in report.users] == [(DELETED, Decimal(5))]


async def test_the_async_twins_follow_the_anchor_too(make_nasca, clock):
    clock.now = at(2026, 10, 31, 18)  # anchored on the 31st: November's window turns on the 30th
    owner, other = make(make_nasca), make(make_nasca)
    subscribe(owner, clock, "sub_A", "pro", clock.now)
    clock.now = at(2026, 11, 29)  # winter time since 25 October
    u = await other.aget_usage("u1")  # a stale process reads the stored anchor, then the window
    assert (u.monthly_spent, paris(u.monthly_resets_at)) == (Decimal(0), (2026, 11, 30, 18, 0))
    r = await other.areserve("3", user="u1")
    await other.asettle(r, "3")
    assert month(owner) == (Decimal(3), (2026, 11, 30, 18, 0))
    clock.now = at(2026, 11, 30, 18)
    assert (await other.aget_usage("u1")).monthly_spent == Decimal(0)
    await other.aclose()


def test_a_stale_anchor_is_refused_before_anything_is_written(make_nasca, clock):
    from nasca_core.stores import ReserveOp

    n = make(make_nasca)
    clock.now = at(2026, 1, 10, 7)
    subscribe(n, clock, "sub_A", "pro", clock.now)
    stored = f"0,0,{int(clock.now)}"
    snap, now_ms = n.live.current(), int(clock.now * 1000)
    for sent in ("", "0,0,1", f"{stored},1"):
        op = ReserveOp(keys=n.user_keys("u1"), now_ms=now_ms, hold_id=f"h{len(sent)}", estimate=10**9,
                       hold_expiry_ms=now_ms + 60_000, strict=False, tier="pro", tiers_json=snap.tiers_json,
                       config_version=snap.version, tier_compiled=snap.compiled["pro"], anchor=sent)
        result = n.store.sync.reserve(op)
        assert (result.status, result.anchor) == (-2, stored)
    assert n.store.sync.snapshot(n.user_keys("u1"), now_ms).held == 0
    assert n.store.sync.snapshot(n.user_keys("u1"), now_ms).anchor == stored
    ok = n.store.sync.reserve(ReserveOp(**{**{f: getattr(op, f) for f in op.__dataclass_fields__},
                                           "anchor": stored, "hold_id": "h_ok"}))
    assert ok.status == 1 and ok.held == 10**9
