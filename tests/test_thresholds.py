"""Soft thresholds: ``Tier(warn_at=...)``, the warning a call carries from its reserve (a
projection), and the ``threshold_crossed`` event and hooks, decided from what settles returned,
once per user, window id and threshold, on every store. Events run on the threshold worker:
``nasca.thresholds.flush()`` waits for them."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import ConfigurationError, InvalidAmountError, NascaBlockedError, ThresholdEvent, Tier
from nasca_core.pricing import TokenUsage

MODEL = "thr-model"
PRICES = {MODEL: {"input": 1000, "output": 1000}}  # $0.001 a token: a 10 + 10 token call is $0.02
TIERS = {"free": Tier(daily=1, warn_at=(0.95, 0.8)), "plain": Tier(daily=1)}
USAGE = TokenUsage(input_tokens=10, output_tokens=10)


def call(n: Any, user: str = "u1") -> Any:
    c = n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user=user)
    c.finish(USAGE)
    return c


def threshold_nasca(make_nasca: Callable[..., Any], **kw: Any) -> Any:
    return make_nasca(tiers=TIERS, prices=PRICES, **kw)


# -- Tier(warn_at=...) ------------------------------------------------------------------
@pytest.mark.parametrize("bad", [(1.0,), (0,), (-0.2,), (0.5, 1.5), ("0.8",), (True,), (float("nan"),),
                                 "0.8", 0.8, tuple(i / 10 for i in range(1, 10))])
def test_warn_at_refuses_anything_but_a_few_fractions(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="warn_at"):
        Tier(daily=1, warn_at=bad)


def test_warn_at_is_sorted_and_deduplicated() -> None:
    assert Tier(daily=1, warn_at=[0.95, 0.8, 0.8]).warn_at == (0.8, 0.95)
    assert Tier(daily=1).warn_at == ()


# -- on every store -------------------------------------------------------------------------
def test_warning_travels_with_the_call_and_hooks_run_once_per_threshold(make_nasca, clock) -> None:
    n = threshold_nasca(make_nasca)
    events: list[ThresholdEvent] = []
    n.on_threshold(events.append)
    calls = [call(n) for _ in range(48)]
    n.flush()
    assert n.thresholds.flush()
    warned = [i for i, c in enumerate(calls, 1) if c.warning is not None]
    assert warned == list(range(40, 49))  # 40 x $0.02 = $0.80: the call that reaches 80% is warned
    w40, w48 = calls[39].warning, calls[47].warning
    assert (w40.window, w40.fraction, w40.spent, w40.limit) == ("daily", 0.8, Decimal("0.8"), Decimal(1))
    assert w40.resets_at == datetime(2026, 11, 19, tzinfo=UTC)
    assert (w48.fraction, w48.spent) == (0.95, Decimal("0.96"))
    assert calls[39].reservation.warning == w40
    assert [(e.fraction, e.spent, e.window_id, e.user_id) for e in events] == [
        (0.8, Decimal("0.8"), "20261118", "u1"), (0.95, Decimal("0.96"), "20261118", "u1")]
    assert [e.prompt_id for e in events] == [w40.prompt_id, w48.prompt_id]
    assert w40.prompt_id == "w:" + calls[39].reservation.hold_id
    call(n)
    n.flush()
    assert n.thresholds.flush()
    assert len(events) == 2  # past a mark, later calls are warned but no event repeats
    assert n.get_usage("u1").daily_crossed == (0.8, 0.95)
    assert "daily_crossed=(0.8, 0.95)" in str(n.get_usage("u1"))
    assert n.analytics.month().events["threshold_crossed"] == 2
    # A new day is a new window id: its thresholds fire again.
    clock.advance(86400)
    for _ in range(40):
        call(n)
    n.flush()
    assert n.thresholds.flush()
    assert [(e.fraction, e.window_id) for e in events[2:]] == [(0.8, "20261119")]


def test_a_second_process_on_the_store_does_not_fire_again(make_nasca) -> None:
    first, second = threshold_nasca(make_nasca), threshold_nasca(make_nasca)
    got: list[str] = []
    first.on_threshold(lambda e: got.append(f"first {e.fraction}"))
    second.on_threshold(lambda e: got.append(f"second {e.fraction}"))
    for _ in range(40):
        call(first)
    first.flush()
    assert first.thresholds.flush()
    for _ in range(8):
        call(second)
    second.flush()
    assert second.thresholds.flush()
    assert got == ["first 0.8", "second 0.95"]


def test_tiers_without_warn_at_warn_nothing_and_set_tier_adds_it(make_nasca) -> None:
    n = threshold_nasca(make_nasca)
    calls = [n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="p2", tier="plain") for _ in range(45)]
    assert all(c.warning is None for c in calls)
    for c in calls:
        c.fail()
    n.set_tier("plain", Tier(daily=1, warn_at=(0.5,)))  # live config, through the store's JSON
    warned = [call_on(n, "p3", "plain").warning for _ in range(25)]
    assert [w is not None for w in warned] == [False] * 24 + [True]
    assert warned[-1] is not None and warned[-1].fraction == 0.5


def call_on(n: Any, user: str, tier: str) -> Any:
    c = n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user=user, tier=tier)
    c.finish(USAGE)
    return c


class _Counting:
    """The store, with each call's name and whether it ran on the caller's thread."""

    def __init__(self, store: Any, seen: list[tuple[str, bool]], caller: threading.Thread) -> None:
        self._store, self._seen, self._caller = store, seen, caller

    def __getattr__(self, name: str) -> Any:
        self._seen.append((name, threading.current_thread() is self._caller))
        return getattr(self._store, name)


@pytest.mark.parametrize("background", [False, True])
def test_a_warned_call_makes_only_its_reserve_and_settle_on_the_callers_path(make_nasca, background) -> None:
    n = threshold_nasca(make_nasca, settle_in_background=background)
    for _ in range(39):
        call(n)
    n.flush()
    assert n.thresholds.flush()
    seen: list[tuple[str, bool]] = []
    caller = threading.current_thread()
    n.store.see_sync = lambda s: _Counting(s, seen, caller)
    c = n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1")
    assert c.warning is not None and c.warning.fraction == 0.8
    c.finish(USAGE)
    on_caller = [name for name, here in seen if here]
    assert on_caller == (["reserve"] if background else ["reserve", "settle"])
    n.flush()
    assert n.thresholds.flush()
    off = [name for name, here in seen if not here]
    assert off.count("claim_marker") == 1 and off.count("record_event") == 1
    seen.clear()
    call(n)  # past the mark, this process knows it is claimed: no claim again
    n.flush()
    assert n.thresholds.flush()
    assert "claim_marker" not in [name for name, _ in seen]


def test_200_concurrent_calls_fire_each_threshold_exactly_once(make_nasca) -> None:
    ledgers = [threshold_nasca(make_nasca) for _ in range(4)]
    events: list[ThresholdEvent] = []
    lock = threading.Lock()

    def hook(e: ThresholdEvent) -> None:
        with lock:
            events.append(e)

    for n in ledgers:
        n.on_threshold(hook)
    for _ in range(38):
        call(ledgers[0])
    ledgers[0].flush()
    start = threading.Barrier(200)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        start.wait()
        try:
            call(ledgers[k % 4])
        except NascaBlockedError:
            pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for n in ledgers:
        n.flush()
    for n in ledgers:
        assert n.thresholds.flush()
    assert sorted(e.fraction for e in events) == [0.8, 0.95]
    assert ledgers[0].analytics.month().events["threshold_crossed"] == 2


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_200_concurrent_async_calls_fire_each_threshold_exactly_once(make_nasca) -> None:
    ledgers = [threshold_nasca(make_nasca) for _ in range(4)]
    events: list[float] = []

    async def hook(e: ThresholdEvent) -> None:
        await asyncio.sleep(0)
        events.append(e.fraction)

    for n in ledgers:
        n.on_threshold(hook)
    for _ in range(38):
        c = await ledgers[0].astart_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1")
        await c.afinish(USAGE)
    await ledgers[0].aflush()

    async def one(k: int) -> None:
        try:
            c = await ledgers[k % 4].astart_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1")
        except NascaBlockedError:
            return
        await c.afinish(USAGE)

    await asyncio.gather(*(one(k) for k in range(200)))
    for n in ledgers:
        await n.aflush()
    for n in ledgers:
        assert await asyncio.to_thread(n.thresholds.flush)
    assert sorted(events) == [0.8, 0.95]
    assert (await ledgers[0].analytics.amonth()).events["threshold_crossed"] == 2


# -- hooks --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_hooks_sync_and_async_on_a_sync_path_and_a_failing_hook_is_logged(make_nasca, caplog) -> None:
    n = threshold_nasca(make_nasca)
    got: list[str] = []

    async def later(e: ThresholdEvent) -> None:
        await asyncio.sleep(0)
        got.append(f"async {e.fraction}")

    def broken(e: ThresholdEvent) -> None:
        raise RuntimeError("the owner's bug")

    n.on_threshold(broken)
    assert n.on_threshold(later) is later
    n.on_threshold(lambda e: got.append(f"sync {e.fraction}"))
    with caplog.at_level(logging.ERROR, logger="nasca"):
        charges = [call(n).charge for _ in range(40)]
        assert n.thresholds.flush()
    assert charges[-1] is not None and charges[-1].cost == Decimal("0.02")
    assert got == ["async 0.8", "sync 0.8"]
    assert "on_threshold hook" in caplog.text and "the owner's bug" in caplog.text
    with pytest.raises(ConfigurationError):
        n.on_threshold("not callable")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)
async def test_slow_hooks_never_hold_up_the_caller_and_are_cut_off(make_nasca, caplog) -> None:
    import time

    n = threshold_nasca(make_nasca)
    n.thresholds.hook_timeout = 0.5
    got: list[str] = []

    def slow_sync(e: ThresholdEvent) -> None:
        time.sleep(2)

    async def slow_async(e: ThresholdEvent) -> None:
        await asyncio.sleep(2)
        got.append("late")  # pragma: no cover - cut off

    n.on_threshold(slow_sync)
    n.on_threshold(slow_async)
    n.on_threshold(lambda e: got.append(f"after {e.fraction}"))
    longest = 0.0
    with caplog.at_level(logging.ERROR, logger="nasca"):
        for _ in range(40):
            c = await n.astart_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1")
            t = time.perf_counter()
            await c.afinish(USAGE)
            longest = max(longest, time.perf_counter() - t)
        await n.aflush()
        assert await asyncio.to_thread(n.thresholds.flush, 10)
    assert longest < 0.3
    assert got == ["after 0.8"]  # both slow hooks were cut off at 0.5 s, the next one ran
    assert caplog.text.count("ran past 0.5 s") == 2


def test_a_sync_finish_does_not_wait_for_a_slow_hook(make_nasca) -> None:
    import time

    n = threshold_nasca(make_nasca)
    n.on_threshold(lambda e: time.sleep(2))
    for _ in range(40):
        c = n.start_call(MODEL, prompt_tokens=10, max_tokens=10, user="u1")
        t = time.perf_counter()
        c.finish(USAGE)
        assert time.perf_counter() - t < 0.5
    n.flush()
    assert n.thresholds.flush(10)


# -- the funnel: warning-led apart from block-led ------------------------------------------
def test_the_funnel_counts_warning_led_conversions_apart(make_nasca) -> None:
    from datetime import UTC, datetime

    from nasca_core.billing import BillingEvent
    from nasca_core.testing.stripe import completed_session_event
    from tests._webapp import PACKS, WHSEC, block

    n = make_nasca(tiers=TIERS, prices=PRICES, packs=PACKS, webhook_secret=WHSEC)
    a = n.analytics
    warned = [call(n, "wendy") for _ in range(40)][-1].warning
    assert warned is not None and warned.prompt_id.startswith("w:")
    blocked = block(n, "bob")
    for user, prompt in (("wendy", warned.prompt_id), ("bob", blocked.prompt_id)):
        a.record("prompt_shown", user, prompt)
        a.record("prompt_shown", user, prompt)  # a reload: one prompt
        started = BillingEvent("checkout_started", user, datetime.fromtimestamp(n.now(), UTC),
                               {"prompt_id": prompt, "amount": Decimal(5), "currency": "usd"})
        for listener in n.billing.listeners:
            listener(started)
        signed = completed_session_event(n, user, "p5", prompt_id=prompt)  # the prompt id rides in Stripe
        assert n.handle_stripe_webhook(signed.payload, signed.signature).action == "granted"
    warned_only = [call(n, "walt") for _ in range(40)][-1].warning
    assert warned_only is not None
    a.record("prompt_shown", "walt", warned_only.prompt_id)
    a.record("dismissed", "walt", warned_only.prompt_id)
    n.flush()
    assert n.thresholds.flush()
    report = a.month()
    f, w = report.funnel, report.warning_funnel
    assert (f.blocked, f.prompt_shown, f.checkout_started, f.purchase_completed, f.dismissed) == (
        1, 1, 1, 1, 0)
    # Crossed: wendy's 80%, walt's 80%, and bob's 80% and 95% on his way to the block.
    assert (w.thresholds_crossed, w.prompt_shown, w.checkout_started, w.purchase_completed, w.dismissed) == (
        4, 2, 1, 1, 1)
    assert w.conversion_rate == 0.25 and f.conversion_rate == 1.0
    assert report.revenue_usd == Decimal(10) and report.orders == 2  # revenue counted once
    assert report.summary()["warning_purchases"] == 1


def test_a_warning_led_step_is_one_store_write_on_every_store(make_nasca) -> None:
    n = make_nasca(tiers=TIERS, prices=PRICES)
    seen: list[tuple[str, bool]] = []
    n.store.see_sync = lambda s: _Counting(s, seen, threading.current_thread())
    n.analytics.record("prompt_shown", "wendy", "w:abc")
    n.analytics.record("prompt_shown", "wendy", "w:abc")  # a reload: the same prompt
    n.analytics.record("checkout_started", "wendy", "w:abc")
    n.analytics.record("prompt_shown", "bob", "p:block")
    assert [name for name, _ in seen if name != "store_id"] == ["record_event"] * 4
    n.store.see_sync = None
    w, f = n.analytics.month().warning_funnel, n.analytics.month().funnel
    assert (w.prompt_shown, w.checkout_started) == (1, 1)
    assert (f.prompt_shown, f.checkout_started) == (1, 0)


async def test_an_async_warning_led_step_is_one_store_write(make_nasca) -> None:
    n = make_nasca(tiers=TIERS, prices=PRICES)
    seen: list[tuple[str, bool]] = []
    n.store.see_async = lambda s: _Counting(s, seen, threading.current_thread())
    await n.analytics.arecord("dismissed", "walt", "w:xyz")
    assert [name for name, _ in seen if name != "store_id"] == ["record_event"]
    n.store.see_async = None
    assert (await n.analytics.amonth()).warning_funnel.dismissed == 1


def test_spend_credits_pay_takes_no_window_to_a_threshold(make_nasca) -> None:
    # Monthly: 50% is $0.25. Once the day's $0.20 is spent, credits pay every $0.06 call, and the
    # month's counter stays at $0.20: no call may warn of, or fire, the monthly threshold.
    n = make_nasca(tiers={"free": Tier(daily="0.2", monthly="0.5", warn_at=(0.5,))}, prices=PRICES)
    n.grant_credits("u1", spend="20", paid="0", idempotency_key="support-1")
    events: list[ThresholdEvent] = []
    n.on_threshold(events.append)
    calls = []
    for _ in range(20):
        c = n.start_call(MODEL, prompt_tokens=30, max_tokens=30, user="u1")
        c.finish(TokenUsage(input_tokens=30, output_tokens=30))
        calls.append(c)
    n.flush()
    assert n.thresholds.flush()
    usage = n.get_usage("u1")
    assert usage.monthly_spent == Decimal("0.2") and usage.month_credit_spend == Decimal(1)
    assert [(e.window, e.spent) for e in events] == [("daily", Decimal("0.12"))]
    assert {c.warning.window for c in calls if c.warning is not None} == {"daily"}
    # Once credits pay (the day's allowance is spent by the 4th call), no call is warned.
    assert [c.warning is not None for c in calls] == [False, True, True, True] + [False] * 16
    assert usage.daily_crossed == (0.5,) and usage.monthly_crossed == ()


def test_the_owner_cli_shows_the_thresholds_passed(tmp_path, capsys) -> None:
    from nasca_core import Nasca
    from nasca_core.cli import main

    store = f"sqlite:///{tmp_path}/ledger.db"
    (tmp_path / "nasca.toml").write_text(
        f'store = "{store}"\nnamespace = "clithr"\ndefault_tier = "free"\n\n'
        '[tiers.free]\ndaily = "0.10"\nwarn_at = [0.3, 0.6]\n')
    n = Nasca(store, namespace="clithr", default_tier="free", tiers={"free": Tier(daily="0.10")})
    n.settle(n.reserve("0.01", user="u_42"), "0.04")
    n.close()
    assert main(["user", "show", "u_42", "--config", str(tmp_path / "nasca.toml")]) == 0
    assert "daily: $0.04 of $0.1" in (out := capsys.readouterr().out) and "past 30%" in out
    assert "60%" not in out


# -- the server: the page at a threshold, the dashboard's warning-led line ----------------------
@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_the_upgrade_page_at_a_threshold_and_the_dashboard(make_nasca) -> None:
    from nasca_core.server import UpgradeLinks, create_app
    from tests._webapp import ADMIN, PACKS, WHSEC, client, settings

    n = make_nasca(tiers=TIERS, prices=PRICES, packs=PACKS, webhook_secret=WHSEC)
    s = settings()
    app = create_app(n, s)
    warning = [await _acall(n, "wendy") for _ in range(40)][-1].warning
    assert warning is not None
    links = UpgradeLinks(s)
    async with client(app) as c:
        page = (await c.get(links.url("wendy", prompt_id=warning.prompt_id).removeprefix(s.public_url))).text
        assert 'data-state="warning"' in page and "You're close to your daily limit" in page
        assert "You've used <b>80%</b> of your" in page and "keep going for now" in page
        # A link without the warning's prompt id reads as a warning only with reason=warning.
        plain = links.url("wendy").removeprefix(s.public_url)
        assert 'data-state="within"' in (await c.get(plain)).text
        assert 'data-state="warning"' in (await c.get(plain + "?reason=warning")).text
        # Blocked by now: the blocked page, whatever the link says.
        for _ in range(12):
            try:
                await _acall(n, "wendy")
            except NascaBlockedError:
                break
        assert 'data-state="blocked"' in (await c.get(plain + "?reason=warning")).text
        await n.analytics.aflush()
        assert await asyncio.to_thread(n.thresholds.flush)
        board = (await c.get("/admin", headers={"Authorization": f"Bearer {ADMIN}"})).text
        assert 'id="warning-funnel"' in board and "<b>2</b> thresholds crossed" in board
        assert "<b>1</b> prompts shown" in board


async def _acall(n: Any, user: str) -> Any:
    c = await n.astart_call(MODEL, prompt_tokens=10, max_tokens=10, user=user)
    await c.afinish(USAGE)
    return c


def test_the_core_api_warns_at_reserve_and_its_settle_fires_the_events(make_nasca) -> None:
    n = threshold_nasca(make_nasca)
    events: list[ThresholdEvent] = []
    n.on_threshold(events.append)
    reservations = []
    for _ in range(40):
        r = n.reserve(nanos=20_000_000, user="core")
        n.settle(r, nanos=20_000_000)  # nothing more to call: the settle fires the threshold step
        reservations.append(r)
    n.flush()
    assert n.thresholds.flush()
    assert [r.warning is not None for r in reservations] == [False] * 39 + [True]
    assert [(e.fraction, e.spent) for e in events] == [(0.8, Decimal("0.8"))]
    assert not hasattr(n.thresholds, "settled")  # the old extra step is gone
    r = n.reserve(nanos=0, user="core")
    for bad in ("x", Decimal("NaN"), -1):
        with pytest.raises(InvalidAmountError):  # typed, and nothing written
            n.settle(r, bad)
    assert n.get_usage("core").daily_spent == Decimal("0.8")


# -- the store's first-time marker -------------------------------------------------------------
async def test_claim_marker_with_a_token_survives_a_retry_on_every_store(make_nasca) -> None:
    import time
    import uuid

    n = threshold_nasca(make_nasca)
    key = f"{n.user_keys('u1').day}:warn:0.8:{uuid.uuid4().hex}"
    now = int(time.time() * 1000)
    sync, aio = n.store.sync, n.store.for_loop()
    assert sync.claim_marker(key, 150, now, "call-a") is True
    assert sync.claim_marker(key, 150, now, "call-a") is True  # its own retry: still its claim
    assert await aio.claim_marker(key, 150, now, "call-a") is True
    assert sync.claim_marker(key, 150, now, "call-b") is False
    assert await aio.claim_marker(key, 150, now, "call-b") is False
    assert sync.claim_marker(key, 150, now) is False  # untokened claims: first one only, as before
    time.sleep(0.3)  # the marker expires with its life (Redis by its own clock, the others by now_ms)
    assert sync.claim_marker(key, 150, now + 300, "call-b") is True
    plain = f"{key}:plain"
    assert await aio.claim_marker(plain, 60_000, now) is True
    assert sync.claim_marker(plain, 60_000, now) is False


async def test_the_serve_demo_host_page_opens_the_page_at_a_warning() -> None:
    import time

    from nasca_core.server import _demo, create_app
    from nasca_core.server._links import verify
    from nasca_core.testing.stripe import StripeServer
    from tests._webapp import WHSEC, client, settings

    with StripeServer(webhook_secret=WHSEC) as stripe:
        store = "memory://thresholds-demo"
        _demo.seed(store, stripe, WHSEC, time.time())
        n = _demo.demo_nasca(store, stripe, WHSEC)
        assert n.analytics.month().warning_funnel.purchase_completed == 1  # wendy, seeded
        crossed: list[ThresholdEvent] = []
        n.on_threshold(crossed.append)
        s = settings()
        app = create_app(n, s)
        _demo.add_demo_routes(app, n)
        async with client(app) as c:
            assert "Nasca.open(w.checkout_url, { reason: \"warning\" })" in (await c.get("/demo.js")).text
            for _ in range(10):
                body = (await c.post("/demo/ask", data={"user": "newcomer"})).json()
                if "warning" in body:
                    break
            warning = body["warning"]
            assert warning["window"] == "daily" and warning["percent"] >= 80
            token = verify(warning["checkout_url"].rsplit("/", 1)[1], s.secrets, time.time())
            assert token is not None and token.user_id == "newcomer" and token.prompt_id.startswith("w:")
        # The live demo's settle records the crossing too (its estimate is the call's real cost).
        assert await asyncio.to_thread(n.thresholds.flush)
        assert [(e.user_id, e.fraction) for e in crossed] == [("newcomer", 0.8)]
        assert n.get_usage("newcomer").daily_crossed == (0.8,)
        n.close()
