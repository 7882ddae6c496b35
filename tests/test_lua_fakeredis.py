"""Quick unit checks of the shipped Lua scripts on fakeredis (the real servers run the
contract suite; this catches a script that doesn't parse in a second, without a server)."""

from decimal import Decimal

import fakeredis
import pytest

from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core.stores import _scripts


@pytest.mark.parametrize("name", _scripts.NAMES)
def test_every_script_loads(name):
    client = fakeredis.FakeRedis()
    sha = client.script_load(_scripts.source(name))
    assert client.script_exists(sha) == [True]


def test_reserve_settle_and_block_on_fakeredis():
    n = Nasca(fakeredis.FakeRedis(), tiers={"t": Tier(daily="0.10")}, default_tier="t")
    n.settle(n.reserve("0.06", user="u"), "0.10")
    with pytest.raises(NascaBlockedError):
        n.reserve("0.01", user="u")
    u = n.get_usage("u")
    assert u.daily_spent == Decimal("0.10") and u.blocked and u.in_flight == 0
