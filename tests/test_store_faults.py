"""What the ledger does when Redis is unreachable: an explicit policy, and no lost spend."""

from __future__ import annotations

import logging
import os
from decimal import Decimal

import pytest

from nasca_core import ConfigurationError, Nasca, StoreError, Tier

TIERS = {"free": Tier(daily="0.10", monthly=1)}
DEAD = "redis://127.0.0.1:1/0?socket_connect_timeout=0.2"


def test_block_policy_refuses_the_call():
    n = Nasca(DEAD, tiers=TIERS, default_tier="free", on_store_error="block")
    with pytest.raises(StoreError, match="unavailable"):
        n.reserve("0.01", user="u1")
    assert n.stats.store_errors >= 1


async def test_allow_policy_admits_unchecked_and_logs(caplog):
    n = Nasca(DEAD, tiers=TIERS, default_tier="free", on_store_error="allow")
    with caplog.at_level(logging.WARNING, logger="nasca"):
        r = n.reserve("0.01", user="u1")
        ra = await n.areserve("0.01", user="u1")
    assert r.degraded and ra.degraded
    assert "admitting" in caplog.text


def test_bad_policy_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        Nasca("memory://", tiers=TIERS, on_store_error="maybe")


@pytest.mark.redis
def test_settle_during_an_outage_is_deferred_then_applied(redis_server_factory, caplog):
    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0?socket_connect_timeout=0.5&socket_timeout=0.5"
    n = Nasca(url, tiers=TIERS, default_tier="free", namespace="faults")
    r1 = n.reserve("0.02", user="u1")
    r2 = n.reserve("0.03", user="u1")
    server.stop()
    with caplog.at_level(logging.WARNING, logger="nasca"):
        c1 = n.settle(r1, "0.02")
        c2 = n.settle(r2, "0.03")
    assert c1.deferred and c2.deferred
    assert n.stats.deferred == 2 and n.stats.deferred_pending == 2
    assert "deferred a settle" in caplog.text
    with pytest.raises(StoreError):
        n.get_usage("u1")
    # The server comes back (empty: it kept nothing on disk) and the queued spend lands.
    server.__init__(server.port, server.workdir)
    n.store.sync.client.connection_pool.disconnect()
    assert n.flush_deferred() == 2
    assert n.stats.deferred_pending == 0
    assert n.get_usage("u1").daily_spent == Decimal("0.05")
    assert n.flush_deferred() == 0
    n.close()


def _settles_fail(monkeypatch, n, *, applied):
    """The store's settles fail from now on: refused, or ``applied`` and their reply lost."""
    store = n.store.sync
    real = store.settle

    def failing(op):
        if applied:
            real(op)
        raise StoreError("Redis unavailable: the reply was lost")

    monkeypatch.setattr(store, "settle", failing)


@pytest.mark.redis
def test_retried_settle_is_not_charged_twice(redis_url, monkeypatch):
    n = Nasca(redis_url, tiers=TIERS, default_tier="free", namespace="retry")
    r = n.reserve("0.02", user="u9")
    with monkeypatch.context() as m:
        _settles_fail(m, n, applied=True)  # as if the first reply had been lost
        assert n.settle(r, "0.02").deferred
    assert n.flush_deferred() == 1
    assert n.get_usage("u9").daily_spent == Decimal("0.02")
    n.close()


def test_concurrent_flushes_apply_every_deferred_settle_once(monkeypatch):
    import threading

    n = Nasca("memory://", tiers={"free": Tier(monthly=100)}, default_tier="free")
    with monkeypatch.context() as m:
        _settles_fail(m, n, applied=False)  # as if the store had been down
        for _ in range(400):
            r = n.reserve("0.01", user="u1")
            n.settle(r, "0.01")
    threads = [threading.Thread(target=n.flush_deferred) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    u = n.get_usage("u1")
    assert u.monthly_spent == Decimal(4) and u.month_calls == 400 and u.in_flight == 0
    assert not n.deferred


@pytest.mark.redis
async def test_async_settle_during_an_outage_is_deferred_then_applied(redis_server_factory):
    server = redis_server_factory()
    url = f"redis://127.0.0.1:{server.port}/0?socket_connect_timeout=0.5&socket_timeout=0.5"
    n = Nasca(url, tiers=TIERS, default_tier="free", namespace="afaults", on_store_error="allow")
    r = await n.areserve("0.02", user="u1")
    server.stop()
    charge = await n.asettle(r, "0.02")
    degraded = await n.areserve("0.03", user="u1")  # admitted unchecked under "allow"
    assert charge.deferred and degraded.degraded
    late = await n.asettle(degraded, "0.03")
    assert late.deferred and n.stats.deferred_pending == 2
    server.__init__(server.port, server.workdir)
    await n.store.aclose()  # drop the dead connections; the next call opens new ones
    assert await n.aflush_deferred() == 2
    assert (await n.aget_usage("u1")).daily_spent == Decimal("0.05")
    await n.aclose()


def test_every_failed_store_call_is_counted(tmp_path):
    n = Nasca(DEAD, tiers=TIERS, default_tier="free", on_store_error="allow", state_dir=str(tmp_path))
    r1, r2 = n.reserve("0.01", user="u1"), n.reserve("0.01", user="u1")
    n.settle(r1, "0.01")  # deferred
    before = n.stats.store_errors
    # One error per failed store call: the live config's reload (under "allow" it is retried
    # on every call), the queued settle's retry, then this settle, which is deferred too.
    n.settle(r2, "0.01")
    assert n.stats.store_errors == before + 3
    assert n.stats.deferred_pending == 2
    assert n.flush_deferred() == 0 and n.stats.store_errors == before + 4


@pytest.mark.redis
def test_a_retry_after_the_settled_marker_expired_is_set_aside_not_charged_twice(
        redis_url, monkeypatch, tmp_path, caplog):
    # The store applied the settle but the reply was lost; by the time the store answers
    # again it no longer remembers that hold as settled, so a retry would charge it twice.
    clock = {"now": 1_795_003_200.0}
    n = Nasca(redis_url, tiers=TIERS, default_tier="free", namespace=f"late{os.getpid()}",
              state_dir=str(tmp_path), clock=lambda: clock["now"])
    r = n.reserve("0.02", user="u1")
    with monkeypatch.context() as m:
        _settles_fail(m, n, applied=True)
        assert n.settle(r, "0.02").deferred
    clock["now"] += 2 * 3600
    with caplog.at_level(logging.ERROR, logger="nasca"):
        assert n.flush_deferred() == 0
    assert n.stats.deferred_refused == 1 and not n.deferred
    assert n.get_usage("u1").month_cost == Decimal("0.02")  # once, not twice
    assert list(tmp_path.rglob("*.refused"))  # kept for the owner to review
    assert "not applied" in caplog.text
    n.close()
