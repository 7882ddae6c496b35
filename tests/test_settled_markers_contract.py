"""Settled markers (the dedupe of retried settles) on every store, by settle.lua's rule: a
settle is refused while its own marker lives, and applied once it has lapsed, whatever order
the markers landed in. And an export shows no holds once none is in flight."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nasca_core import StoreError, Tier
from nasca_core.privacy import UserData

HOUR_MS = 3_600_000


def _caught_settle(n: Any, user: str) -> Any:
    """The settle the ledger makes for one call of ``user``, caught before the store applies it."""
    store, caught = n.store.sync, []

    def catch(op: Any) -> Any:
        caught.append(op)
        raise StoreError("caught on its way")

    def refuse(ops: Any) -> Any:
        raise StoreError("caught on its way")

    store.settle, store.settle_many = catch, refuse
    try:
        n.settle(n.reserve("0.01", user=user), "0.01")
    finally:
        del store.settle, store.settle_many
    return caught[0]


def test_a_marker_counts_until_its_own_expiry_in_any_order(make_nasca, backend):
    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t", settle_in_background=False)
    store = n.store.sync
    a = _caught_settle(n, "u")
    t0 = a.now_ms
    a = replace(a, marker_expiry_ms=t0 + HOUR_MS)
    b = replace(a, hold_id=f"{a.hold_id}-b", marker_expiry_ms=t0 + 1000)  # e.g. a replayed settle's
    assert store.settle(a).status == store.settle(b).status == 1
    later = t0 + 2000  # b's marker has lapsed behind a's, which lives on
    again = replace(b, now_ms=later, marker_expiry_ms=later + 1000)
    assert store.settle(again).status == 1  # as settle.lua: applied again
    last = later + 2000  # the marker set last has lapsed too: a's alone lives
    if backend == "memory":  # the store sweeps what expired every 10,000 ops: make it run now
        for _ in range(10_000):
            store.claim_marker(f"{n.namespace}:tick", 1, last)
    assert store.settle(replace(a, now_ms=last)).status == 2  # a's marker lives: refused
    assert store.snapshot(a.keys, last).spent == (30_000_000,) * 3  # the store's own (a is still queued)


def test_an_export_shows_no_holds_once_none_is_in_flight(make_nasca):
    n = make_nasca(tiers={"t": Tier(monthly=100)}, default_tier="t", settle_in_background=False)
    first, second = n.reserve("0.01", user="u"), n.reserve("0.01", user="u")
    n.settle(first, "0.01")
    assert len(UserData(n).export("u").records["h"]) == 1  # one still in flight
    n.settle(second, "0.01")
    assert "h" not in UserData(n).export("u").records
    n.release(n.reserve("0.01", user="u"))
    assert "h" not in UserData(n).export("u").records
