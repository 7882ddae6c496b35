"""Budget leases (``_leases``) on every store: the same answers as per-call holds, fewer reserves.

Each test runs the same calls on a ledger with leases on and one with leases off (each in its
own namespace of the same store) and compares what a user sees: spend, holds, blocks and their
error fields, credit splits, warnings and threshold events. Most tiers have no in-flight cap
(a capped tier's leases: ``test_an_in_flight_capped_tier_gets_a_lease`` and after it).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import NascaBlockedError, NascaBusyError, Tier
from nasca_core._fallback import Account
from nasca_core._lease_policy import LEASE_S, MAX_CALLS

TIERS = {"free": Tier(monthly="0.50", daily="0.10", max_in_flight=None),
         "pro": Tier(monthly=10, weekly=5, daily=2, max_in_flight=None)}
MICRO = 1_000_000  # $0.001 in nanos


def pair(make_nasca: Any, **kwargs: Any) -> tuple[Any, Any]:
    kwargs.setdefault("tiers", TIERS)
    on = make_nasca(leases=True, namespace=f"on{uuid.uuid4().hex[:10]}", **kwargs)
    off = make_nasca(leases=False, namespace=f"off{uuid.uuid4().hex[:10]}", **kwargs)
    return on, off


def spy_reserves(n: Any) -> list[int]:
    seen: list[int] = []
    store = n.store.sync
    real = store.reserve

    def reserve(op: Any) -> Any:  # named memory stores are shared: count this ledger's namespace only
        if op.keys.meta.startswith(f"{n.namespace}:"):
            seen.append(op.estimate)
        return real(op)

    store.reserve = reserve
    return seen


def outcome(n: Any, user: str, estimate: int, cost: int, tier: str | None = None,
            background: bool = True) -> tuple[Any, ...]:
    try:
        r = n.reserve(nanos=estimate, user=user, tier=tier)
    except NascaBlockedError as err:
        u = err.usage
        return ("blocked", err.window, err.tier, err.resets_at, err.upgrade_message, type(err).__name__,
                u.daily_spent if u else None, u.in_flight if u else None)
    charge = n.settle(r, nanos=cost, background=background)
    return ("ok", r.tier, r.estimate_nanos, r.warning and (r.warning.window, r.warning.fraction),
            charge.cost_nanos, None if charge.pending else (charge.tier_nanos, charge.credit_nanos))


def usage_view(n: Any, user: str, tier: str | None = None) -> tuple[Any, ...]:
    n.flush()
    u = n.get_usage(user, tier=tier)
    return (u.daily_spent, u.weekly_spent, u.monthly_spent, u.in_flight, u.month_cost, u.month_calls,
            u.blocked)


def test_far_user_gets_leases_and_the_same_usage(make_nasca):
    on, off = pair(make_nasca)
    seen_on, seen_off = spy_reserves(on), spy_reserves(off)
    for n in (on, off):
        for i in range(100):
            assert outcome(n, "u", 2 * MICRO, MICRO + i, tier="pro")[0] == "ok"
    assert on.stats.leases >= 1 and on.stats.leased >= 90
    assert on.stats.reserved == off.stats.reserved == 100
    assert len(seen_off) == 100 and len(seen_on) <= 100 // (MAX_CALLS // 2) + 3
    assert max(seen_on) == MAX_CALLS * 2 * MICRO  # the lease: 64 estimates, taken whole
    assert usage_view(on, "u", "pro") == usage_view(off, "u", "pro")
    # A call in flight under a lease shows as its own estimate, not the lease's hold.
    r_on, r_off = on.reserve(nanos=3 * MICRO, user="u", tier="pro"), off.reserve(nanos=3 * MICRO, user="u",
                                                                                 tier="pro")
    assert on.stats.leased >= 91
    assert usage_view(on, "u", "pro") == usage_view(off, "u", "pro")
    assert on.get_usage("u", tier="pro").in_flight == Decimal("0.003")
    on.release(r_on)
    off.release(r_off)
    assert usage_view(on, "u", "pro") == usage_view(off, "u", "pro")


def test_a_user_approaching_the_limit_is_blocked_exactly_as_without_leases(make_nasca, clock):
    on, off = pair(make_nasca)
    runs = []
    for n in (on, off):
        runs.append([outcome(n, "u", MICRO, MICRO) for _ in range(110)])
    assert runs[0] == runs[1]
    assert runs[0][99][0] == "ok" and runs[0][100][0] == "blocked"  # $0.10 a day, $0.001 a call
    assert on.stats.leases >= 1 and on.stats.leased > 0  # far at first, near at the end
    assert usage_view(on, "u") == usage_view(off, "u")


def test_a_user_near_the_limit_never_gets_a_lease(make_nasca):
    on, off = pair(make_nasca)
    runs = [[outcome(n, "u", 10 * MICRO, 10 * MICRO) for _ in range(12)] for n in (on, off)]
    assert runs[0] == runs[1] and runs[0][-1][0] == "blocked"
    assert on.stats.leases == 0 and on.stats.leased == 0


def test_strict_blocks_the_same_calls(make_nasca):
    on, off = pair(make_nasca, strict=True)
    runs = [[outcome(n, "u", 3 * MICRO, MICRO) for _ in range(110)] for n in (on, off)]
    assert runs[0] == runs[1] and on.stats.leased > 0
    assert usage_view(on, "u") == usage_view(off, "u")


def test_leases_never_touch_credits(make_nasca):
    on, off = pair(make_nasca)
    for n in (on, off):
        for _ in range(100):
            outcome(n, "u", MICRO, MICRO)  # the day's $0.10 spent
        n.flush()
        n.grant_credits("u", spend="0.05", idempotency_key="k1")
    leases_before = on.stats.leases
    runs = [[outcome(n, "u", MICRO, MICRO, background=False) for _ in range(40)] for n in (on, off)]
    assert runs[0] == runs[1]
    assert all(r[0] == "ok" and r[-1] == (0, MICRO) for r in runs[0][:40])  # paid by credits
    assert on.stats.leases == leases_before
    assert usage_view(on, "u") == usage_view(off, "u")
    assert [lot.remaining for lot in on.credit_lots("u")] == [lot.remaining for lot in off.credit_lots("u")]


def test_warnings_and_threshold_events_are_the_same(make_nasca):
    tiers = {"free": Tier(daily="0.10", warn_at=(0.5, 0.8), max_in_flight=None)}
    on, off = pair(make_nasca, tiers=tiers)
    events: dict[int, list[tuple[str, float]]] = {0: [], 1: []}
    for i, n in enumerate((on, off)):
        n.on_threshold(lambda e, i=i: events[i].append((e.window, e.fraction)))
    runs = [[outcome(n, "u", 2 * MICRO, MICRO) for _ in range(105)] for n in (on, off)]
    assert runs[0] == runs[1]
    assert {r[3] for r in runs[0] if r[0] == "ok"} == {None, ("daily", 0.5), ("daily", 0.8)}
    assert on.stats.leased > 0
    for n in (on, off):
        n.flush()
        assert n.thresholds.flush()
    assert sorted(events[0]) == sorted(events[1]) == [("daily", 0.5), ("daily", 0.8)]


def test_an_in_flight_capped_tier_gets_a_lease(make_nasca):
    n = make_nasca(leases=True, tiers={"free": Tier(daily=2)})  # max_in_flight: 64 by default
    seen = spy_reserves(n)
    for _ in range(20):
        outcome(n, "u", MICRO, MICRO)
    assert n.stats.leases == 1 and n.stats.leased == 19 and len(seen) == 2  # learn, lease, under it


def _hold_at_once(n: Any, threads: int, estimate: int, **kwargs: Any) -> tuple[list[Any], int]:
    """``threads`` reserves at once, every one held until all have answered: (admitted, busy)."""
    gate, lock = threading.Barrier(threads), threading.Lock()
    admitted: list[Any] = []
    busy = [0]

    def call() -> None:
        try:
            r = n.reserve(nanos=estimate, user="u", **kwargs)
        except NascaBusyError:
            with lock:
                busy[0] += 1
        else:
            with lock:
                admitted.append(r)
        gate.wait(timeout=30)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    return admitted, busy[0]


def test_under_a_lease_the_in_flight_cap_holds_in_this_process(make_nasca):
    n = make_nasca(leases=True, tiers={"free": Tier(daily=2, max_in_flight=4)})
    for _ in range(3):
        outcome(n, "u", MICRO, MICRO)
    assert n.stats.leases == 1  # live, its calls all ended
    admitted, busy = _hold_at_once(n, 16, MICRO)
    leased = [r for r in admitted if r.hold_id in n.leases.calls]
    # One call under the lease (the store counts a lease as one call, in every process), the
    # others reserved in the store: the cap is exact, as without leases.
    assert len(leased) == 1 and len(admitted) == 4 and busy == 16 - 4
    for r in admitted:
        n.settle(r, nanos=MICRO)
    n.flush()
    u = n.get_usage("u")
    assert u.in_flight == 0 and u.daily_spent == Decimal("0.007")


def test_near_the_limit_the_in_flight_cap_is_exact(make_nasca):
    # $0.10 a day, $0.005 calls: a quarter of the room is under 8 estimates, so never a lease.
    n = make_nasca(leases=True, tiers={"free": Tier(daily="0.10", max_in_flight=3)})
    outcome(n, "u", 5 * MICRO, 5 * MICRO)
    admitted, busy = _hold_at_once(n, 10, 5 * MICRO)
    assert len(admitted) == 3 and busy == 7 and n.stats.leases == 0
    for r in admitted:
        n.release(r)


def test_a_fallback_account_or_capped_call_gets_no_lease(make_nasca):
    n = make_nasca(leases=True, tiers=TIERS)
    seen: set[str] = set()  # hold ids: a cluster may send one reserve twice (a script loaded)
    store, real = n.store.sync, n.store.sync.reserve
    store.reserve = lambda op: seen.add(op.hold_id) or real(op)
    for _ in range(12):
        call = n.start_call("gpt-4o-mini", prompt="hi", max_tokens=20, user="u", cap_output=True)
        call.finish()
    assert n.stats.leased == 0 and len(seen) == 12
    account = Account.of(Tier(daily=1, max_in_flight=None))  # as wrap()'s fallback passes it
    for _ in range(12):
        call = n.start_call("gpt-4o-mini", prompt="hi", max_tokens=20, user="m", tier="pro:fallback",
                            account=account)
        call.finish()
    assert n.stats.leased == 0 and len(seen) == 24
    assert n.get_usage("m").daily_spent == 0  # charged to the account, not the tier


def test_close_drops_every_lease_hold(make_nasca, store_uri):
    on = make_nasca(leases=True, tiers=TIERS)
    for user in ("a", "b"):
        for _ in range(5):
            outcome(on, user, MICRO, MICRO, tier="pro")
    on.deferred.flush()  # the ledger's own flush (the blocked path's) keeps the leases
    now_ms = int(on.now() * 1000)
    assert on.stats.leases == 2
    assert on.store.sync.snapshot(on.user_keys("a"), now_ms).held == MAX_CALLS * MICRO
    reader = make_nasca(leases=False, tiers=TIERS, namespace=on.namespace)
    on.close()
    for user in ("a", "b"):
        snap = reader.store.sync.snapshot(reader.user_keys(user), now_ms)
        assert snap.held == 0 and snap.spent[0] == 5 * MICRO


def test_a_lease_ends_at_its_life_and_on_changes_here(make_nasca, clock):
    n = make_nasca(leases=True, tiers=TIERS)
    seen = spy_reserves(n)
    for _ in range(3):
        outcome(n, "u", MICRO, MICRO)
    assert len(seen) == 2 and n.stats.leased == 2  # learn, lease, under it
    clock.advance(LEASE_S)
    outcome(n, "u", MICRO, MICRO)
    assert len(seen) == 3  # expired: a plain reserve, which hints again
    outcome(n, "u", MICRO, MICRO)
    assert len(seen) == 4 and n.stats.leases == 2
    n.set_user_tier("u", "pro")  # the user's tier changed here: the lease ends at once
    outcome(n, "u", MICRO, MICRO)
    assert len(seen) == 5
    outcome(n, "u", MICRO, MICRO)
    assert len(seen) == 6 and n.stats.leases == 3
    n.set_tier("pro", Tier(daily="0.0075", max_in_flight=None))  # a new config version, lower
    assert [outcome(n, "u", MICRO, MICRO)[0] for _ in range(3)] == ["ok", "blocked", "blocked"]
    assert len(seen) >= 6 + 3 and n.stats.leases == 3  # each call a plain reserve
    n.flush()
    u = n.get_usage("u")
    assert u.in_flight == 0 and u.daily_spent == Decimal("0.008")


def test_release_under_a_lease_changes_nothing_in_the_store(make_nasca):
    on, off = pair(make_nasca)
    for n in (on, off):
        for _ in range(3):
            outcome(n, "u", MICRO, MICRO)
        r = n.reserve(nanos=5 * MICRO, user="u")
        n.release(r)
        n.settle(r, nanos=0)  # a settle after a release: nothing more to charge
    assert on.stats.leased >= 2
    assert usage_view(on, "u") == usage_view(off, "u")


def test_a_retried_settle_charges_once(make_nasca):
    on, off = pair(make_nasca)
    for n in (on, off):
        rs = [n.reserve(nanos=MICRO, user="u") for _ in range(4)]
        for r in rs:
            n.settle(r, nanos=MICRO)
            n.settle(r, nanos=MICRO)  # a retry: deduplicated by hold id
        n.flush()
    assert usage_view(on, "u") == usage_view(off, "u")
    assert on.get_usage("u").daily_spent == Decimal("0.004")


def test_the_last_call_of_a_retired_lease_drops_its_hold_and_charges_once(make_nasca):
    n = make_nasca(leases=True, tiers=TIERS)
    for _ in range(2):
        outcome(n, "u", MICRO, MICRO, tier="pro")
    r = n.reserve(nanos=MICRO, user="u", tier="pro")
    assert n.stats.leased == 2
    n.limits.set_user_limits("u", Tier(daily=3))  # ends the lease here; r is still out under it
    n.flush()
    assert n.get_usage("u", tier="pro").in_flight == Decimal("0.001")
    n.settle(r, nanos=2 * MICRO)
    n.settle(r, nanos=2 * MICRO)  # a retry of the settle that dropped the lease's hold
    n.flush()
    snap = n.store.sync.snapshot(n.user_keys("u"), int(n.now() * 1000))
    assert snap.held == 0 and snap.spent[0] == 4 * MICRO


def test_async_calls_under_a_lease(make_nasca):
    on, off = pair(make_nasca)

    async def run(n: Any) -> list[int]:
        out = []
        for i in range(30):
            r = await n.areserve(nanos=MICRO, user="u")
            out.append(r.estimate_nanos)
            if i % 5 == 4:
                await n.arelease(r)
            else:
                await n.asettle(r, nanos=MICRO, background=True)
        await n.aflush()
        return out

    assert asyncio.run(run(on)) == asyncio.run(run(off))
    assert on.stats.leased >= 25
    assert usage_view(on, "u") == usage_view(off, "u")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
@pytest.mark.parametrize("backend", ["sqlite", "redis", "cluster"])  # memory: the child's own copy
def test_a_forked_child_does_not_use_its_parents_lease(make_nasca, backend):
    n = make_nasca(leases=True, tiers=TIERS)
    for _ in range(3):
        outcome(n, "u", MICRO, MICRO)
    assert n.stats.leased == 2
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first call must go to the store
        code = 1
        try:
            seen = spy_reserves(n)
            before = n.stats.leased
            outcome(n, "u", MICRO, MICRO, background=False)
            code = 0 if (len(seen), n.stats.leased - before) == (1, 0) else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"\x00"
    os.waitpid(pid, 0)
    before = n.stats.leased
    outcome(n, "u", MICRO, MICRO)  # the parent keeps its lease
    assert n.stats.leased == before + 1
    n.flush()
    assert n.get_usage("u").daily_spent == Decimal("0.005")


def test_public_flush_ends_every_lease_and_drops_its_hold(make_nasca):
    on = make_nasca(leases=True, tiers=TIERS)
    for user in ("a", "b"):
        for _ in range(5):
            outcome(on, user, MICRO, MICRO, tier="pro")
    assert on.stats.leases == 2
    on.flush()  # a serverless request's end: every lease ended, its closing settle landed
    assert len(on.deferred) == 0 and on.leases.owed("a") == on.leases.owed("b") == (0, 0, 0)
    now_ms = int(on.now() * 1000)
    for user in ("a", "b"):
        snap = on.store.sync.snapshot(on.user_keys(user), now_ms)
        assert snap.held == 0 and snap.spent[0] == 5 * MICRO
    outcome(on, "a", MICRO, MICRO, tier="pro")  # the next request learns and leases again
    outcome(on, "a", MICRO, MICRO, tier="pro")
    assert on.stats.leases == 3
    asyncio.run(on.aflush())
    snap = on.store.sync.snapshot(on.user_keys("a"), int(on.now() * 1000))
    assert snap.held == 0 and snap.spent[0] == 7 * MICRO


def test_a_blocked_call_s_flush_keeps_other_users_leases(make_nasca):
    n = make_nasca(leases=True, tiers=TIERS)
    for _ in range(3):
        outcome(n, "u", MICRO, MICRO, tier="pro")
    seen, leased = spy_reserves(n), n.stats.leased
    with pytest.raises(NascaBlockedError):  # over the day's $2: the ledger flushes and tries again
        n.reserve(nanos=3_000 * MICRO, user="v", tier="pro", strict=True)
    reserves = len(seen)
    assert reserves >= 1
    outcome(n, "u", MICRO, MICRO, tier="pro")
    assert n.stats.leased == leased + 1 and len(seen) == reserves  # under the same lease, no reserve
    assert n.stats.leases == 1


def test_a_reserve_reads_the_lease_holds_in_its_turn(make_nasca):
    # The race engineer B found: the leases' part of ``owed`` read, then the lease's closing
    # settle queued or landed before the reserve's turn: the lease's hold came out of ``held`` twice.
    n = make_nasca(leases=True, tiers=TIERS)
    for _ in range(3):
        outcome(n, "u", MICRO, MICRO, tier="pro")  # a lease, its calls ended
    n.deferred.flush()
    other = make_nasca(leases=False, tiers=TIERS, namespace=n.namespace)  # another process
    r0 = other.reserve(nanos=5 * MICRO, user="u", tier="pro")  # in flight: held shows it
    real_owed, got = n.leases.owed, []

    def owed_then_closed(user: str, account: object = None) -> Any:
        part = real_owed(user, account)
        n.leases.drop(user)  # another thread ends the lease here: its closing settle goes
        return part

    n.leases.owed = owed_then_closed
    real = n.store.sync.reserve

    def reserve(op: Any) -> Any:
        got.append(result := real(op))
        return result

    n.store.sync.reserve = reserve
    assert real_owed("u")[1] > 0  # a part of the lease's hold this process does not count again
    r = n.reserve(nanos=2 * MICRO, user="u", tier="pro", strict=True)  # not the lease's key: plain
    assert got[-1].held == 7 * MICRO  # the other call's hold and this one's (2 with the race)
    n.settle(r, nanos=MICRO)
    other.settle(r0, nanos=MICRO)
    n.flush()
    other.flush()
    snap = n.store.sync.snapshot(n.user_keys("u"), int(n.now() * 1000))
    assert snap.held == 0 and snap.spent[0] == 5 * MICRO


def test_the_option_and_its_default(tmp_path, monkeypatch):
    from nasca_core import Nasca

    tiers = {"t": Tier(daily=1)}
    made = [Nasca("memory://", tiers=tiers, default_tier="t"),
            Nasca(f"sqlite:///{tmp_path}/a.db", tiers=tiers, default_tier="t", state_dir=str(tmp_path))]
    assert [n.leases.on for n in made] == [False, True]  # memory's reserve is in-process already
    monkeypatch.setenv("NASCA_LEASES", "false")
    made.append(Nasca.from_env(store=f"sqlite:///{tmp_path}/b.db", tiers=tiers, default_tier="t",
                               state_dir=str(tmp_path)))
    monkeypatch.setenv("NASCA_LEASES", "true")
    made.append(Nasca.from_env(store="memory://", tiers=tiers, default_tier="t"))
    assert [n.leases.on for n in made[2:]] == [False, True]
    # On exactly when the background sender is: settle_in_background=False (serverless) turns it off.
    made.append(Nasca(f"sqlite:///{tmp_path}/c.db", tiers=tiers, default_tier="t", state_dir=str(tmp_path),
                      settle_in_background=False))
    made.append(Nasca("memory://", tiers=tiers, default_tier="t", settle_in_background=True))
    assert [n.leases.on for n in made[4:]] == [False, True]
    # Never with holds too short-lived for a lease's settles (``MIN_HOLD_TTL_S``).
    made.append(Nasca(f"sqlite:///{tmp_path}/d.db", tiers=tiers, default_tier="t", state_dir=str(tmp_path),
                      hold_ttl=30, leases=True))
    made.append(Nasca("memory://", tiers=tiers, default_tier="t", hold_ttl=60, leases=True))
    assert [n.leases.on for n in made[6:]] == [False, True]
    for n in made:
        n.close()
