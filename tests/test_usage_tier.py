"""get_usage(user) reports the tier the user's calls actually run on: the settle records the
tier its call ran on (unless it was the user's stored tier) in the user's month record, and
get_usage without tier= resolves as the reserve does: a stored tier first, then that. Every store."""

from __future__ import annotations

from nasca_core import Tier
from nasca_core.pricing import TokenUsage

TIERS = {"free": Tier(daily="0.10"), "pro": Tier(daily=2), "team": Tier(daily=5)}


def _call(n, user, tier=None):
    call = n.start_call("gpt-4o-mini", prompt="hello", user=user, tier=tier)
    call.finish(TokenUsage(input_tokens=10, output_tokens=5))
    n.flush()


def test_calls_run_as_pro_show_pro(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="free")
    assert n.get_usage("p").tier == "free"  # no calls yet: the default
    _call(n, "p", tier="pro")  # e.g. the tier from LangChain metadata or nasca.user(..., tier=)
    u = n.get_usage("p")
    assert u.tier == "pro" and u.daily_limit == 2
    assert n.get_usage("p", tier="team").tier == "team"  # asked for another: that one
    other = make_nasca(tiers=TIERS, default_tier="free", namespace=n.namespace)
    assert other.get_usage("p").tier == "pro"  # recorded in the store: every process sees it


def test_the_latest_call_and_a_stored_tier_win(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="free")
    _call(n, "q", tier="pro")
    _call(n, "q", tier="team")
    assert n.get_usage("q").tier == "team"
    n.set_user_tier("q", "free")  # a stored tier beats the caller's, in calls and in get_usage
    assert n.get_usage("q").tier == "free"
    _call(n, "q", tier="team")  # runs as free: the stored tier wins (and is not recorded)
    n.set_user_tier("q", None)  # e.g. a subscription ended: not shown as its old tier
    assert n.get_usage("q").tier == "free"
    _call(n, "q", tier="pro")
    assert n.get_usage("q").tier == "pro"


async def test_async_twin(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="free")
    call = await n.astart_call("gpt-4o-mini", prompt="hello", user="r", tier="pro")
    await call.afinish(TokenUsage(input_tokens=10, output_tokens=5))
    await n.aflush()
    assert (await n.aget_usage("r")).tier == "pro"


def test_a_tier_removed_since_falls_back_to_the_default(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="free")
    _call(n, "s", tier="team")
    n2 = make_nasca(tiers={"free": Tier(daily="0.10")}, default_tier="free", namespace=n.namespace)
    assert n2.get_usage("s").tier == "free"


def test_a_tier_from_the_context_is_counted_as_asked(make_nasca):
    n = make_nasca(tiers=TIERS, default_tier="free")
    _call(n, "c", tier="pro")
    with n.user("c", tier="team"):  # the caller says which tier: that one, not the recorded
        assert n.get_usage().tier == "team"
        assert n.get_usage(tier="free").tier == "free"
    with n.user("c"):  # no tier in the context: the recorded one
        assert n.get_usage().tier == "pro"
