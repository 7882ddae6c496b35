"""User ids built to break keys: braces anywhere (a leading ``}`` used to empty the hash tag
and split a user over cluster slots), colons that mimic key suffixes, unicode, 256
characters. Each stays on one slot, apart from every other user, on every backend incl.
a real Cluster; ids the validator refuses never reach a key."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from nasca_core import InvalidUserError, Tier
from nasca_core.stores import UserKeys

CRAFTED = ["}", "{", "{}", "}{", "}x", "x{", "{x}", "a}b{c}", "{{}}", "}}}{{{", "u1", "u1:h", "u1}:h",
           "u1}", "{u1}", ":", "::{}", ":d:20261118", "u1:m:202611", "名前{}", "😀}{", "a" * 256, "}" * 256,
           "{" + "x" * 254 + "}", "e\u0301", "\u00e9", "u1 ", "*", "?[]\\", "%_"]
REFUSED = ["", "   ", "a\x00b", "line\nbreak", "tab\t", "\x1b[31m", "a" * 257, "\u2028", "\ud800"]


def _slots(keys: UserKeys) -> set[int]:
    names = [keys.meta, keys.holds, keys.settled, keys.day, keys.week, keys.month, keys.credits, keys.held,
             keys.subscriptions]
    return {key_slot(name.encode("utf-8")) for name in names}


def test_every_key_of_a_crafted_id_is_on_one_slot_and_apart_from_others():
    seen: dict[str, str] = {}
    for user in CRAFTED:
        keys = UserKeys.build("ns", user, ("20261118", "2026W47", "202611"))
        assert len(_slots(keys)) == 1, user
        for name in (keys.meta, keys.holds, keys.settled, keys.day, keys.week, keys.month, keys.credits,
                     keys.held, keys.subscriptions):
            assert seen.setdefault(name, user) == user, f"{user!r} and {seen[name]!r} share {name!r}"


def test_the_ledger_keeps_each_crafted_user_apart(make_nasca):
    n = make_nasca(tiers={"t": Tier(daily=1, monthly=10)}, default_tier="t")
    for i, user in enumerate(CRAFTED):
        n.billing.grant_credits(user, spend=Decimal(i + 1) / 100, idempotency_key=f"k{i}")
        n.settle(n.reserve(nanos=1000 + i, user=user), nanos=1000 + i)
        n.reserve(nanos=7, user=user)  # a hold in flight
    n.set_user_tier("}x", "t")
    for i, user in enumerate(CRAFTED):
        u = n.get_usage(user)
        assert u.daily_spent * 10**9 == 1000 + i and u.month_calls == 1, user
        assert u.credit_balance == Decimal(i + 1) / 100 and u.in_flight * 10**9 == 7, user
        assert [lot.remaining for lot in n.billing.credit_lots(user)] == [Decimal(i + 1) / 100], user


@pytest.mark.parametrize("user", REFUSED)
def test_refused_ids_never_reach_a_key(make_nasca, user):
    n = make_nasca()
    for call in (lambda: n.reserve("0.01", user=user), lambda: n.get_usage(user),
                 lambda: n.set_user_tier(user, None), lambda: n.user_keys(user),
                 lambda: n.billing.grant_credits(user, spend="1", idempotency_key="k")):
        with pytest.raises(InvalidUserError):
            call()


ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=256).filter(
    lambda s: s.strip() and s.isprintable())


@pytest.mark.cluster
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ids, min_size=2, max_size=4, unique=True))
def test_random_ids_on_a_real_cluster(cluster_nasca, users):
    n = cluster_nasca
    for i, user in enumerate(users):
        n.settle(n.reserve(nanos=10 + i, user=user), nanos=10 + i)
    for i, user in enumerate(users):
        assert n.get_usage(user).month_cost * 10**9 >= 10 + i  # examples share one namespace


@pytest.fixture
def cluster_nasca(cluster_url):
    import uuid

    from nasca_core import Nasca

    n = Nasca(cluster_url, tiers={"t": Tier(monthly=1000)}, default_tier="t",
              namespace=f"ids{uuid.uuid4().hex[:8]}")
    yield n
    n.close()
