"""Analytics on every backend (memory, a real Redis, a real Redis Cluster): events from the
block and billing listeners, per-user AI cost from the ledger, months apart, async, and
nothing written on an admitted call."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from nasca_core import InvalidInputError, NascaBlockedError
from nasca_core.analytics import analytics_for
from nasca_core.billing import BillingEvent
from nasca_core.stores import MemoryStore
from nasca_core.stores.redis import AsyncRedisStore, RedisStore
from nasca_core.stores.sqlite import SqliteStore
from nasca_core.testing.stripe import completed_session_event
from tests._webapp import billed, block


def buy(n, user, pack="p5", prompt_id=None):
    signed = completed_session_event(n, user, pack, prompt_id=prompt_id)
    return n.handle_stripe_webhook(signed.payload, signed.signature)


def test_funnel_revenue_and_cost_per_user(make_nasca, clock):
    n = billed(make_nasca)
    a = analytics_for(n)
    assert analytics_for(n) is a and n.block_listeners.count(a.on_block) == 1  # attached once
    err = block(n, "ann")
    assert err.prompt_id
    a.record("prompt_shown", "ann", err.prompt_id)
    a.record("prompt_shown", "ann", err.prompt_id)  # a reload: one prompt
    started = BillingEvent("checkout_started", "ann", datetime.fromtimestamp(clock.now, UTC),
                           {"prompt_id": err.prompt_id, "amount": Decimal(5), "currency": "usd"})
    for listener in n.billing.listeners:
        listener(started)
    assert buy(n, "ann", "p5", err.prompt_id).action == "granted"
    assert buy(n, "bo", "e5").action == "granted"  # no prompt: revenue, not funnel
    other = block(n, "cy")
    a.record("prompt_shown", "cy", other.prompt_id)
    a.record("dismissed", "cy", other.prompt_id)
    for i in range(30):  # enough users to land on every cluster primary
        r = n.reserve(Decimal("0.001"), user=f"light{i}")
        n.settle(r, Decimal("0.002"), tokens=(10, 5))
    report = a.month("2026-11")
    f = report.funnel
    assert counts(f) == (2, 2, 1, 1, 1)
    assert report.events["prompt_shown"] == 3
    assert report.revenue_usd == Decimal(5) and report.orders == 2
    assert {(c.currency, c.revenue) for c in report.revenue} == {("usd", Decimal(5)), ("eur", Decimal("4.5"))}
    by = {u.user_id: u for u in report.users}
    assert len(by) == 33 and by["light7"].ai_cost == Decimal("0.002") and by["light7"].input_tokens == 10
    assert by["ann"].blocked == 1 and by["ann"].revenue == 5 and by["ann"].orders == 1
    assert by["ann"].profit == 5 - by["ann"].ai_cost and by["ann"].ai_cost > Decimal("0.09")
    assert by["bo"].other_revenue == {"eur": Decimal("4.5")}
    assert report.ai_cost == sum(u.ai_cost for u in report.users)
    # a month later: a new month, the old one still readable
    clock.advance(20 * 86400)
    assert a.month().month == "2026-12" and a.month().funnel.blocked == 0
    assert a.month("2026-11").funnel.purchase_completed == 1
    trend = a.trend(3)
    assert [t.month for t in trend] == ["2026-10", "2026-11", "2026-12"] and trend[1].orders == 2


def test_record_rejects_bad_input_and_dates_events(make_nasca, clock):
    n = billed(make_nasca)
    a = analytics_for(n)
    with pytest.raises(InvalidInputError):
        a.record("clicked", "u1")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        a.record("purchase_completed", "u1", amount="-1")
    with pytest.raises(InvalidInputError):
        a.record("dismissed", "u1", "x" * 501)
    with pytest.raises(InvalidInputError):
        a.month("2026/11")
    a.record("purchase_completed", "u1", "p", amount="7.5", at=clock.now - 40 * 86400)
    assert a.month("2026-10").revenue_usd == Decimal("7.5") and a.month("2026-11").orders == 0


async def test_async_twins(make_nasca):
    n = billed(make_nasca)
    a = analytics_for(n)
    try:
        await n.areserve(Decimal(5), user="u1", strict=True)
    except NascaBlockedError as err:
        prompt = err.prompt_id
    await a.aflush()  # on Redis the listener's write was a task on this loop
    await a.arecord("prompt_shown", "u1", prompt)
    report = await a.amonth()
    assert report.funnel.blocked == 1 and report.funnel.prompt_shown == 1
    assert (await a.atrend(2))[-1].blocked == 1


def test_admitted_calls_write_no_analytics(make_nasca, monkeypatch):
    writes = []
    for cls in (MemoryStore, RedisStore, AsyncRedisStore, SqliteStore):
        original = cls.record_event

        def counted(self, *args, _original=original):
            writes.append(args)
            return _original(self, *args)

        monkeypatch.setattr(cls, "record_event", counted)
    n = billed(make_nasca)
    analytics_for(n)
    for _ in range(5):
        r = n.reserve(Decimal("0.001"), user="u1")
        n.settle(r, Decimal("0.001"))
    assert writes == []
    block(n, "u1")
    assert len(writes) == 1 and writes[0][1].kind == "blocked"


def test_a_failing_store_never_breaks_the_blocked_call(make_nasca, monkeypatch, caplog):
    n = billed(make_nasca)
    analytics_for(n)

    def broken(*args):
        raise RuntimeError("analytics down")

    for cls in (MemoryStore, RedisStore, SqliteStore):
        monkeypatch.setattr(cls, "record_event", broken)
    err = block(n, "u1")  # still the NascaBlockedError, not the analytics failure
    assert isinstance(err, NascaBlockedError)
    assert "could not record" in caplog.text


def counts(f):
    return f.blocked, f.prompt_shown, f.checkout_started, f.purchase_completed, f.dismissed
