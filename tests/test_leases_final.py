"""Budget leases where the final review found them apart from per-call holds (real stores).

Each test failed before its fix; the review's repro is named in its docstring (/tmp/rv6c/).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import Tier
from nasca_core._errors import StoreError
from nasca_core._lease_policy import LEASE_S

from .test_leases import pair

ONE = {"t": Tier(daily=1, max_in_flight=None)}
E = 1_000_000  # $0.001
SHARED = pytest.mark.parametrize("backend", ["sqlite", "redis"])  # a sender, so leases by default


def _held(n: Any) -> int:
    return int(n.store.sync.snapshot(n.user_keys("u"), int(n.now() * 1000)).held)


@SHARED
def test_a_cancelled_settle_then_retried_is_charged_once(make_nasca):
    """cancel.py: the retry was answered pending and nothing was ever charged."""
    on, off = pair(make_nasca, tiers=ONE, default_tier="t")

    async def run(n: Any) -> tuple[Any, ...]:
        await n.asettle(await n.areserve(nanos=E, user="u"), nanos=E)
        r = await n.areserve(nanos=E, user="u")
        store = n.store.for_loop()
        real, slow = store.settle, [True]

        async def settle(op: Any) -> Any:
            if slow.pop() if slow else False:
                await asyncio.sleep(1)  # the store is slow and the request times out
            return await real(op)

        store.settle = settle
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(n.asettle(r, nanos=E), 0.05)
        again = await n.asettle(r, nanos=E)
        await n.aflush()
        return again.cost_nanos, again.pending

    assert asyncio.run(run(on)) == asyncio.run(run(off)) == (E, False)
    assert on.stats.leased == 1
    for n in (on, off):
        assert n.get_usage("u").daily_spent == Decimal("0.002") and _held(n) == 0


@SHARED
def test_a_reserve_under_another_key_sees_the_user_as_without_leases(make_nasca):
    """warn.py: a live lease's free part gave a strict call a spurious warning and less room."""
    tiers = {"t": Tier(daily="0.2", warn_at=(0.5,), max_in_flight=None)}
    on, off = pair(make_nasca, tiers=tiers, default_tier="t")
    seen = []
    for n in (on, off):
        n.settle(n.reserve(nanos=E, user="u"), nanos=E)
        a = n.reserve(nanos=E, user="u")  # under a lease when on
        b = n.reserve(nanos=50 * E, user="u", strict=True)  # another key: a plain reserve
        seen.append((b.room, b.warning))
        n.settle(a, nanos=E)
        n.settle(b, nanos=E)
    assert on.stats.leased == 1
    assert seen[0] == seen[1] and seen[0][1] is None
    assert usage_of(on) == usage_of(off)


@SHARED
def test_a_capped_output_call_gets_the_room_it_gets_without_leases(make_nasca):
    """room4.py: the output cap of a cap_output call was 24% smaller beside a live lease."""
    on, off = pair(make_nasca, tiers={"t": Tier(daily="0.05", max_in_flight=None)}, default_tier="t")
    seen = []
    for n in (on, off):
        n.start_call("gpt-4o-mini", prompt="hi", max_tokens=1000, user="u").finish()
        b = n.start_call("gpt-4o-mini", prompt="hi", max_tokens=1000, user="u")  # leased when on
        c = n.start_call("gpt-4o-mini", prompt="hi", max_tokens=1000, user="u", cap_output=True)
        seen.append((c.reservation.room, c.output_cap(10_000_000)))
        c.finish()
        b.finish()
    assert on.stats.leased == 1 and seen[0] == seen[1]
    assert usage_of(on) == usage_of(off)


def usage_of(n: Any) -> tuple[Any, ...]:
    n.flush()
    u = n.get_usage("u")
    return u.daily_spent, u.in_flight


@SHARED
def test_a_lease_reserve_whose_reply_was_lost_leaves_no_hold(make_nasca):
    """lost.py: a StoreError after the store applied the lease's reserve left it held for hold_ttl."""
    n = make_nasca(leases=True, tiers=ONE, default_tier="t")
    n.settle(n.reserve(nanos=E, user="u"), nanos=E, background=True)  # hints
    store = n.store.sync
    real = store.reserve

    def reserve(op: Any) -> Any:
        result = real(op)
        if op.estimate > E:  # the lease's
            store.reserve = real
            raise StoreError("timed out (the reply was lost; the store applied it)")
        return result

    store.reserve = reserve
    r = n.reserve(nanos=E, user="u")  # the lease is missed: a plain reserve
    assert n.stats.lease_misses == 1 and n.stats.leased == 0
    n.settle(r, nanos=E, background=True)
    n.deferred.flush()
    assert _held(n) == 0 and n.get_usage("u").daily_spent == Decimal("0.002")


@SHARED
def test_a_cancelled_lease_reserve_leaves_no_hold(make_nasca):
    """lost.py, async: a cancellation while awaiting the lease's reserve left it held."""
    n = make_nasca(leases=True, tiers=ONE, default_tier="t")

    async def run() -> None:
        await n.asettle(await n.areserve(nanos=E, user="u"), nanos=E)
        store = n.store.for_loop()
        real = store.reserve

        async def reserve(op: Any) -> Any:
            result = await real(op)
            if op.estimate > E:  # the lease's: applied, then the caller gives up
                await asyncio.sleep(1)
            return result

        store.reserve = reserve
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(n.areserve(nanos=E, user="u"), 0.2)
        await n.deferred.aflush()

    asyncio.run(run())
    assert _held(n) == 0 and n.stats.leased == 0


@SHARED
def test_a_lease_taken_by_plain_settles_is_reaped_too(make_nasca, clock, tmp_path):
    """idle.py: with only settle() (not background) no sender thread ran, so no reaper."""
    n = make_nasca(leases=True, tiers=ONE, default_tier="t")
    other = make_nasca(leases=False, tiers=ONE, default_tier="t", state_dir=str(tmp_path / "other"))
    for _ in range(2):
        n.settle(n.reserve(nanos=E, user="u"), nanos=E)
    assert n.stats.leased == 1
    assert other.get_usage("u").in_flight > 0  # the lease's hold, to another process
    clock.advance(LEASE_S)
    deadline = time.monotonic() + LEASE_S + 1
    while other.get_usage("u").in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    u = other.get_usage("u")
    assert u.in_flight == 0 and u.daily_spent == Decimal("0.002")


@SHARED
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_change_whose_write_failed_still_ends_the_leases(make_nasca, is_async):
    """A set_user_limits whose reply was lost (the store may have applied it) left the lease live."""
    n = make_nasca(leases=True, tiers=ONE, default_tier="t")
    for _ in range(2):
        n.settle(n.reserve(nanos=E, user="u"), nanos=E, background=True)
    assert n.stats.leased == 1 and n.leases.owed("u") != (0, 0, 0)

    def fail(*args: Any) -> Any:
        raise StoreError("timed out")

    async def afail(*args: Any) -> Any:
        raise StoreError("timed out")

    with pytest.raises(StoreError):
        if is_async:
            async def run() -> None:
                n.store.for_loop().set_user_limits = afail
                await n.aset_user_limits("u", Tier(daily="0.001"))
            asyncio.run(run())
        else:
            n.store.sync.set_user_limits = fail
            n.set_user_limits("u", Tier(daily="0.001"))
    n.settle(n.reserve(nanos=E, user="u"), nanos=E, background=True)
    assert n.stats.leased == 1  # the next call went to the store


@SHARED
def test_a_retry_the_lease_side_no_longer_remembers_is_charged_once(make_nasca, monkeypatch):
    """evict.py: past ``MAX_SETTLED`` a retry went out as a plain settle and was charged again;
    it goes out under the call's own hold id, which the (folded) settle marked in the store."""
    import nasca_core._lease_book as book

    monkeypatch.setattr(book, "MAX_SETTLED", 4)  # stands for 65,536 later leased settles
    on, off = pair(make_nasca, tiers=ONE, default_tier="t")
    for n in (on, off):
        rs = [n.reserve(nanos=E, user="u") for _ in range(4)]
        for r in rs:
            n.settle(r, nanos=E, background=True)
        n.deferred.flush()  # folded, landed
        for i in range(6):  # later calls of other users under leases evict u's from memory
            for _ in range(4):
                n.settle(n.reserve(nanos=E, user=f"v{i}"), nanos=E, background=True)
        n.deferred.flush()
        assert rs[1].hold_id not in n.leases.settled
        n.settle(rs[1], nanos=E, background=True)  # a late retry of a leased call's settle
    assert on.stats.leased > 10
    assert usage_of(on) == usage_of(off) == (Decimal("0.004"), 0)


@SHARED
def test_a_retry_while_the_first_settle_is_still_on_its_way_is_sent_and_charged_once(make_nasca):
    """cancel.py's other half: a retry was answered pending while the first, not yet landed,
    might still fail; it goes out under the call's hold id, and the store settles it once."""
    on, off = pair(make_nasca, tiers=ONE, default_tier="t")

    async def run(n: Any) -> tuple[Any, ...]:
        await n.asettle(await n.areserve(nanos=E, user="u"), nanos=E)
        r = await n.areserve(nanos=E, user="u")
        store = n.store.for_loop()
        real, slow = store.settle, [True]

        async def settle(op: Any) -> Any:
            if slow.pop() if slow else False:
                await asyncio.sleep(0.3)  # the first is slow: the caller retries meanwhile
            return await real(op)

        store.settle = settle
        first = asyncio.ensure_future(n.asettle(r, nanos=E))
        await asyncio.sleep(0.05)
        again = await n.asettle(r, nanos=E)
        await first
        await n.aflush()
        return again.cost_nanos, again.pending

    assert asyncio.run(run(on)) == asyncio.run(run(off)) == (E, False)
    assert on.stats.leased == 1
    for n in (on, off):
        assert n.get_usage("u").daily_spent == Decimal("0.002") and _held(n) == 0


@SHARED
def test_a_reaped_lease_is_closed_while_the_config_cannot_be_read(make_nasca, clock, tmp_path):
    """rev6c/reap.py: the reaper built the closing settle from the live config; with the snapshot
    invalidated and the store refusing, it raised and the lease was forgotten with its hold held."""
    n = make_nasca(leases=True, tiers=ONE, default_tier="t")
    for _ in range(2):
        n.settle(n.reserve(nanos=E, user="u"), nanos=E)
    assert n.stats.leased == 1 and _held(n) > 0
    real = n.store.sync.load_config

    def down(*args: Any) -> Any:
        raise StoreError("down")

    n.live.invalidate()
    n.store.sync.load_config = down
    clock.advance(LEASE_S)
    try:
        n.leases.reap()
    finally:
        n.store.sync.load_config = real
    n.deferred.flush()
    assert _held(n) == 0 and n.get_usage("u").daily_spent == Decimal("0.002")
