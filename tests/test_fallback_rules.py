"""The fallback's rules: Tier's fields, model patterns, which blocks degrade, and the
fallback account's keys; on every store where a store is involved (no provider needed:
``start_with_fallback`` is what wrap(), NascaMiddleware and guard_llm call)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from nasca_core import (
    ConfigurationError,
    Nasca,
    NascaBlockedError,
    NascaBusyError,
    Tier,
    astart_with_fallback,
    start_with_fallback,
)
from nasca_core._fallback import Account, fallback_for, same_account
from nasca_core.stores._base import user_tag

PATTERNS = {"gpt-4o-mini*": "gpt-4o-mini", "gpt-*": "gpt-4.1-nano", "claude-*": "claude-haiku-4-5"}


def falling(**kw) -> Tier:
    return Tier(**{"monthly": "0.01", "on_exhausted": "fallback", "fallback_model": PATTERNS,
                   "fallback_allowance": Tier(daily="0.002"), **kw})


def test_patterns_are_globs_and_the_first_match_in_order_wins() -> None:
    model = falling().fallback_model
    assert fallback_for(model, "gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert fallback_for(model, "gpt-4o") == "gpt-4.1-nano"  # the second pattern: the first didn't match
    assert fallback_for(model, "claude-sonnet-4-6") == "claude-haiku-4-5"
    assert fallback_for(model, "GPT-4o") is None  # case-sensitive, as model names are
    assert fallback_for(model, "gemini-2.5-pro") is None
    assert fallback_for("gpt-4o-mini", "anything") == "gpt-4o-mini"
    reordered = Tier(**{**falling().model_dump(), "fallback_model": {"gpt-*": "x", "gpt-4o-mini*": "y"}})
    assert fallback_for(reordered.fallback_model, "gpt-4o-mini") == "x"


@pytest.mark.parametrize("fields, says", [
    ({"on_exhausted": "fallback"}, "needs fallback_model and a fallback_allowance"),
    ({"on_exhausted": "fallback", "fallback_model": "gpt-4o-mini"}, "needs fallback_model and a fallback_"),
    ({"on_exhausted": "fallback", "fallback_model": "m", "fallback_allowance": Tier()}, "with a limit"),
    ({"fallback_model": "gpt-4o-mini"}, "need on_exhausted='fallback'"),
    ({"on_exhausted": "degrade"}, "on_exhausted"),
    ({"on_exhausted": "fallback", "fallback_model": {}, "fallback_allowance": {"daily": 1}}, "empty"),
    ({"on_exhausted": "fallback", "fallback_model": {"gpt-*": 3}, "fallback_allowance": {"daily": 1}},
     "str -> str"),
    ({"on_exhausted": "fallback", "fallback_model": " ", "fallback_allowance": {"daily": 1}}, "model name"),
    ({"on_exhausted": "fallback", "fallback_model": "m",
      "fallback_allowance": {"daily": 1, "on_exhausted": "fallback", "fallback_model": "n",
                             "fallback_allowance": {"daily": 1}}}, "can't fall back again"),
    ({"on_exhausted": "fallback", "fallback_model": "m", "fallback_allowance": {"daily": -1}},
     "daily: a tier limit must be > 0"),
])
def test_bad_fallback_settings_are_a_configuration_error(fields, says) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Tier(monthly=1, **fields)


def test_a_falling_tier_round_trips_through_json_the_store_and_the_environment(monkeypatch,
                                                                             make_nasca) -> None:
    tier = falling()
    assert Tier.model_validate_json(tier.model_dump_json()) == tier  # how set_tier() stores it
    assert [p for p, _ in tier.fallback_model] == list(PATTERNS)  # order kept
    hash(tier)  # frozen and hashable, like every Tier
    writer, reader = make_nasca(), make_nasca()
    writer.set_tier("lite", tier)
    assert reader.tiers["lite"] == tier
    monkeypatch.setenv("NASCA_TIERS", json.dumps({"free": {
        "monthly": "0.01", "on_exhausted": "fallback", "fallback_model": {"gpt-*": "gpt-4o-mini"},
        "fallback_allowance": {"daily": "0.002"}}}))
    monkeypatch.setenv("NASCA_DEFAULT_TIER", "free")
    env = Nasca.from_env()
    try:
        assert env.tiers["free"].fallback_allowance == Tier(daily="0.002")
    finally:
        env.close()


def test_the_fallback_account_is_on_the_users_slot_and_follows_the_windows(make_nasca, clock) -> None:
    nasca = make_nasca()
    account = Account.of(Tier(daily="0.002"))
    keys = nasca.user_keys("u_42")
    moved = account.keys(keys)
    tag = "{" + user_tag("u_42") + "}"
    for key in (moved.meta, moved.day, moved.month):
        assert tag in key and key.startswith(keys.meta + ":fallback")
    assert moved.meta != keys.meta and moved.day != keys.day
    clock.advance(86_400)
    later = nasca.user_keys("u_42")
    assert same_account(moved, later) == account.keys(later)  # a settle charges where the call ended
    assert same_account(keys, later) == later
    assert account.compiled == (2_000_000, -1, -1, 0, 0, 0, 64)


def test_the_admitted_path_is_one_reserve(make_nasca) -> None:
    nasca = make_nasca(tiers={"free": falling()}, default_tier="free")
    before = nasca.stats.reserved
    call, fell = start_with_fallback(nasca, "gpt-4o", prompt="hi", user="u1")
    assert fell is None and call.model == "gpt-4o" and nasca.stats.reserved == before + 1
    call.finish(None)


def _spend_month(nasca: Nasca, user: str) -> None:
    nasca.settle(nasca.reserve(nanos=1, user=user), "0.02")


def test_a_spent_window_falls_back_and_charges_the_fallback_allowance_only(make_nasca) -> None:
    nasca = make_nasca(tiers={"free": falling()}, default_tier="free")
    _spend_month(nasca, "u1")
    call, fell = start_with_fallback(nasca, "claude-sonnet-4-6", prompt="hi", user="u1")
    assert fell is not None and (call.model, fell.requested) == ("claude-haiku-4-5", "claude-sonnet-4-6")
    assert nasca.stats.fallbacks == 1
    assert call.reservation.tier == "free:fallback"
    call.finish(None)
    nasca.flush()
    usage = nasca.get_usage("u1")
    assert usage.monthly_spent == Decimal("0.02") and usage.fallback.tier == "free:fallback"
    assert usage.fallback.daily_spent == call.charge.cost and usage.fallback.daily_spent > 0


def test_a_hard_window_blocks_without_a_fallback(make_nasca) -> None:
    tier = falling(daily="0.005", credits_cover=frozenset({"monthly", "weekly"}))  # daily: a hard cap
    nasca = make_nasca(tiers={"free": tier}, default_tier="free")
    nasca.settle(nasca.reserve(nanos=1, user="u1"), "0.006")
    with pytest.raises(NascaBlockedError) as blocked:
        start_with_fallback(nasca, "gpt-4o", prompt="hi", user="u1")
    assert blocked.value.window == "daily" and blocked.value.__cause__ is None
    assert nasca.get_usage("u1").fallback.daily_spent == 0


def test_a_block_tier_and_a_model_no_pattern_matches_block(make_nasca) -> None:
    nasca = make_nasca(tiers={"free": Tier(monthly="0.01"), "lite": falling()}, default_tier="free")
    _spend_month(nasca, "u1")
    with pytest.raises(NascaBlockedError):
        start_with_fallback(nasca, "gpt-4o", prompt="hi", user="u1")
    assert nasca.get_usage("u1").fallback is None
    _spend_month(nasca, "u2")
    with pytest.raises(NascaBlockedError):
        start_with_fallback(nasca, "gemini-2.5-pro", prompt="hi", user="u2", tier="lite")
    with pytest.raises(NascaBlockedError):  # the adapter can't rewrite this request's model
        start_with_fallback(nasca, "gpt-4o", prompt="hi", user="u2", tier="lite", fallback=False)


def test_calls_in_flight_on_the_fallback_are_busy_not_spent(make_nasca) -> None:
    nasca = make_nasca(tiers={"free": falling(fallback_allowance=Tier(daily="0.002", max_in_flight=1))},
                       default_tier="free")
    _spend_month(nasca, "u1")
    first, _ = start_with_fallback(nasca, "gpt-4o", prompt="hi", user="u1")
    with pytest.raises(NascaBusyError):  # try again in a moment: the fallback's one call is running
        start_with_fallback(nasca, "gpt-4o", prompt="hi", user="u1")
    first.finish(None)
    again, fell = start_with_fallback(nasca, "gpt-4o", prompt="hi", user="u1")
    assert fell is not None
    again.finish(None)


async def test_async_twin_falls_back_and_blocks_when_the_fallback_is_spent(make_nasca) -> None:
    nasca = make_nasca(tiers={"free": falling()}, default_tier="free")
    _spend_month(nasca, "u1")
    call, fell = await astart_with_fallback(nasca, "gpt-4o", prompt="hi", user="u1", max_tokens=10)
    assert fell is not None and call.model == "gpt-4.1-nano"
    await call.afinish(None)
    await nasca.aflush()
    spent = await nasca.aget_usage("u1")
    assert spent.fallback.month_calls == 1 and spent.month_calls == 1  # the tier's account: its one call
    while True:  # the fallback allowance spent call by call, then the next one blocks
        try:
            more, _ = await astart_with_fallback(nasca, "gpt-4o", prompt="word " * 2000, user="u1")
        except NascaBlockedError as err:
            assert err.window == "monthly" and err.__cause__.window == "daily"
            break
        await more.afinish(None)
    assert (await nasca.aget_usage("u1")).fallback.daily_spent >= Decimal("0.002")


def test_a_users_export_and_delete_cover_the_fallback_account(make_nasca) -> None:
    from nasca_core.privacy import UserData

    nasca = make_nasca(tiers={"free": falling()}, default_tier="free")
    _spend_month(nasca, "u1")
    call, _ = start_with_fallback(nasca, "gpt-4o", prompt="hi", user="u1")
    call.finish(None)
    nasca.flush()
    assert nasca.get_usage("u1").fallback.daily_spent > 0
    records = UserData(nasca).export("u1").records
    assert any(k.startswith("fallback:d:") for k in records)
    assert any(k.startswith("fallback:m:") for k in records)
    UserData(nasca).delete("u1")
    usage = nasca.get_usage("u1")
    assert usage.fallback.daily_spent == 0 and usage.fallback.month_calls == 0


def test_concurrent_fallbacks_stay_within_the_fallback_allowance(make_nasca) -> None:
    import math
    import threading

    nasca = make_nasca(tiers={"free": falling(fallback_allowance=Tier(daily="0.0003"))}, default_tier="free")
    _spend_month(nasca, "u1")
    barrier, results, lock = threading.Barrier(40), [], threading.Lock()

    def one() -> None:
        barrier.wait()
        try:
            got: object = start_with_fallback(nasca, "gpt-4o", prompt="hello there", user="u1")
        except NascaBlockedError as err:
            got = err
        with lock:
            results.append(got)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = [r[0] for r in results if isinstance(r, tuple)]
    blocked = [r for r in results if isinstance(r, NascaBlockedError)]
    estimate = admitted[0].reservation.estimate_nanos
    # Each reserve is one atomic op on the fallback's own counters: a call starts while the
    # holds before it leave room, so exactly ceil(allowance / estimate) start, however they race.
    assert len(admitted) == math.ceil(300_000 / estimate) < 40
    # the rest wait on holds in flight, not on spend: busy, from the fallback (try again)
    assert len(blocked) == 40 - len(admitted)
    assert all(isinstance(b, NascaBusyError) and b.tier == "free:fallback" for b in blocked)
    for call in admitted:
        call.fail()
