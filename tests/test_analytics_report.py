"""Analytics arithmetic and models, free of any store: funnel rates, revenue per currency,
per-user profit, records for pandas, HTML, text, and the key layout."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from nasca_core import ConfigurationError, InvalidInputError, Nasca, NascaBlockedError, Tier
from nasca_core.analytics import Analytics, Funnel
from nasca_core.analytics._aggregate import build_report, month_totals
from nasca_core.analytics._events import month_id, previous_months
from nasca_core.analytics._text import report_text
from nasca_core.stores import AnalyticsEvent, LedgerMonth, MonthRaw
from nasca_core.stores._base import month_owner
from nasca_core.stores._redis_codec import MonthKeys, event_commands, ledger_pattern

N = 1_000_000_000
AT = datetime(2026, 11, 20, tzinfo=UTC)


def raw() -> MonthRaw:
    return MonthRaw(
        counters={"e:blocked": 10, "e:prompt_shown": 9, "e:checkout_started": 4, "e:purchase_completed": 3,
                  "e:dismissed": 2, "r:usd": 25 * N, "o:usd": 3, "r:eur": 4_500_000_000, "o:eur": 1},
        steps={"prompt_shown": 8, "checkout_started": 4, "purchase_completed": 2, "dismissed": 3},
        users={"ann", "bo", "cy"},
        user_blocked={"ann": 6, "bo": 4},
        user_revenue={("usd", "ann"): 20 * N, ("usd", "bo"): 5 * N, ("eur", "cy"): 4_500_000_000},
        user_orders={"ann": 2, "bo": 1, "cy": 1},
        ledger={"ann": LedgerMonth(3 * N, N, 120, 50_000, 9_000), "dee": LedgerMonth(7 * N, 0, 300, 1, 2),
                "bo": LedgerMonth(N // 2, 0, 10, 5, 6)},
    )


def test_report_arithmetic():
    r = build_report(raw(), namespace="app", month="202611", timezone="UTC", generated_at=AT)
    assert r.month == "2026-11"
    f = r.funnel
    assert counts(f) == (10, 8, 4, 2, 3)
    assert f.show_rate == 0.8 and f.checkout_rate == 0.5 and f.purchase_rate == 0.5
    assert f.conversion_rate == 0.2 and f.dismiss_rate == 3 / 8
    assert r.events["prompt_shown"] == 9  # every event, where the funnel counts prompts
    assert r.revenue_usd == Decimal(25) and r.orders == 4 and r.average_order_value == Decimal("8.333333")
    eur = next(c for c in r.revenue if c.currency == "eur")
    assert (eur.revenue, eur.orders, eur.average_order_value) == (Decimal("4.5"), 1, Decimal("4.5"))
    assert r.ai_cost == Decimal("10.5") and r.credit_cost == Decimal(1) and r.calls == 430
    assert r.profit == Decimal("14.5")
    assert [u.user_id for u in r.users] == ["dee", "ann", "bo", "cy"]  # most expensive first
    by = {u.user_id: u for u in r.users}
    assert by["ann"].profit == Decimal(17) and by["dee"].profit == Decimal(-7)
    assert by["cy"].revenue == 0 and by["cy"].profit == 0
    assert by["cy"].other_revenue == {"eur": Decimal("4.5")}
    assert r.active_users == 3 and r.paying_users == 3
    assert [u.user_id for u in r.top_users("profit", 2)] == ["ann", "bo"]
    assert [u.user_id for u in r.least_profitable(1)] == ["dee"]


def test_rates_are_none_without_a_denominator():
    f = Funnel()
    assert f.show_rate is None and f.conversion_rate is None and f.dismiss_rate is None
    assert [s.rate_from_previous for s in f.steps()] == [None] * 5
    r = build_report(MonthRaw(), namespace="x", month="202601", timezone="UTC", generated_at=AT)
    assert r.users == [] and r.average_order_value is None and r.profit == 0


def test_records_are_flat_and_pandas_ready():
    pd = pytest.importorskip("pandas")
    r = build_report(raw(), namespace="app", month="202611", timezone="UTC", generated_at=AT)
    records = r.to_records()
    assert records[0] == {"user_id": "dee", "ai_cost": 7.0, "credit_cost": 0.0, "calls": 300,
                          "input_tokens": 1, "output_tokens": 2, "blocked": 0, "orders": 0, "revenue": 0.0,
                          "profit": -7.0, "month": "2026-11"}
    assert next(x for x in records if x["user_id"] == "cy")["revenue_eur"] == 4.5
    frame = pd.DataFrame(records)
    assert frame["profit"].sum() == pytest.approx(14.5 + 0)  # cy's EUR revenue is not USD profit
    funnel = pd.DataFrame(r.funnel.to_records())
    assert list(funnel["step"]) == ["blocked", "prompt_shown", "checkout_started", "purchase_completed",
                                    "dismissed"]
    assert r.summary()["conversion_rate"] == 0.2 and r.summary()["revenue_usd"] == 25.0


def test_html_and_text_escape_and_show_the_figures():
    data = raw()
    data.ledger["<b>x</b>"] = LedgerMonth(20 * N)
    r = build_report(data, namespace="app", month="202611", timezone="UTC", generated_at=AT)
    html = r._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert "$25.00" in html and "20.0%" in html
    text = report_text(r, top=3)
    assert "purchase completed" in text and "conversion (purchases per block): 20.0%" in text
    assert "Revenue   $25.00  (4 orders" in text and "+ 4.50 EUR" in text
    assert "Least profitable users" in text and "-$20.00" in text


def test_month_totals_and_months():
    t = month_totals("202611", raw().counters, raw().steps)
    assert (t.month, t.blocked, t.prompts_shown, t.purchases, t.orders, t.revenue_usd) == (
        "2026-11", 10, 8, 2, 4, Decimal(25))
    assert previous_months("202602", 4) == ["202511", "202512", "202601", "202602"]
    assert month_id("2026-11") == month_id("202611") == month_id(date(2026, 11, 3)) == "202611"
    for bad in ("2026-13", "26-11", "november", 202611):
        with pytest.raises(InvalidInputError):
            month_id(bad)  # type: ignore[arg-type]


def test_a_month_is_one_cluster_slot_and_events_touch_only_it():
    from redis.crc import key_slot

    keys = MonthKeys.build("app", "202611")
    assert len({key_slot(k.encode()) for k in keys.all()}) == 1
    cmds = event_commands(keys, AnalyticsEvent("purchase_completed", "u1", "202611", "p1", 5 * N, "usd"))
    assert {c[1] for c in cmds} <= set(keys.all())
    assert ("SADD", keys.steps["purchase_completed"], "p1") in cmds
    assert ("HINCRBY", keys.user_revenue, "usd:u1", 5 * N) in cmds
    blocked = event_commands(keys, AnalyticsEvent("blocked", "u1", "202611", "p2"))
    assert ("HINCRBY", keys.user_blocked, "u1", 1) in blocked
    assert not any(c[0] == "SADD" and c[2] == "p2" for c in blocked)  # each block is its own prompt


def test_ledger_keys_are_found_and_parsed():
    from nasca_core.stores import UserKeys

    def month_key(namespace: str, user: str, month: str) -> str:
        return UserKeys.build(namespace, user, ("20261118", "2026W47", month)).month

    assert ledger_pattern("a*b", "202611") == r"a\*b:{*}:*:m:202611*"  # and billing-cycle months
    for user in ("u:1", "}x", "a}:m:202611", "7:m:20261115000000"):
        assert month_owner(month_key("app", user, "202611"), "app", "202611") == user
        assert month_owner(month_key("app", user, "20261115093000"), "app", "202611") == user
        assert month_owner(month_key("app", user, "20261215093000"), "app", "202611") is None
    assert month_owner(month_key("app", "u1", "202610"), "app", "202611") is None
    assert month_owner("app:billing:x", "app", "202611") is None
    assert month_owner(month_key("other", "u1", "202611"), "app", "202611") is None
    assert month_owner("app:{u1}:m:202611", "app", "202611") is None  # the old layout's key


def counts(f):
    return f.blocked, f.prompt_shown, f.checkout_started, f.purchase_completed, f.dismissed


def test_one_analytics_per_ledger_records_each_block_once() -> None:
    n = Nasca("memory://", tiers={"free": Tier(daily="0.01")}, default_tier="free")
    assert n.analytics is n.analytics
    with pytest.raises(ConfigurationError, match=r"nasca\.analytics"):
        Analytics(n)
    n.settle(n.reserve("0.01", user="u1"), "0.01")
    with pytest.raises(NascaBlockedError):
        n.reserve("0.001", user="u1")
    assert n.analytics.month().funnel.blocked == 1
