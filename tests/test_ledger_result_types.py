"""The ledger's public results stay immutable values (hashable, shareable, subclassable as
frozen dataclasses), a call finished twice at once never reports a final $0, and the ops
the ledger builds by position carry each value in the field of its name."""

from __future__ import annotations

import dataclasses
import pickle
import threading
from typing import Any

import pytest

from nasca_core import Charge, Nasca, Reservation, Tier, _calls
from nasca_core.remote._parts import RemoteReservation
from nasca_core.stores import ReserveOp, SettleOp

NOW = 1_767_225_600.25  # 2026-01-01, a fixed clock: every time field is known


def _ledger() -> Nasca:
    return Nasca("memory://", tiers={"t": Tier(daily=1)}, default_tier="t", settle_in_background=False,
                 clock=lambda: NOW)


def test_reservation_and_charge_refuse_assignment_and_keep_their_hash() -> None:
    n = _ledger()
    r = n.reserve(nanos=5, user="u")
    c = n.settle(r, nanos=4)
    held = {r}
    for obj, name, value in ((r, "estimate_nanos", 6), (r, "user_id", "v"), (c, "cost_nanos", 123)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, value)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(obj, name)
    assert r in held and r.estimate_nanos == 5 and c.cost_nanos == 4
    assert hash(r) == hash(dataclasses.replace(r))
    assert hash(c) == hash(Charge(4, c.tier_nanos, c.credit_nanos))
    assert pickle.loads(pickle.dumps(r)) == r and pickle.loads(pickle.dumps(c)) == c


def test_a_remote_reservation_is_frozen_too() -> None:
    r = RemoteReservation("u", "t", "h1", 5, _ledger().user_keys("u"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.estimate_nanos = 6  # type: ignore[misc]
    assert {r: 1}[dataclasses.replace(r)] == 1


def test_a_users_frozen_subclass_of_reservation_can_be_declared() -> None:
    @dataclasses.dataclass(frozen=True)
    class Tagged(Reservation):
        note: str = ""

    t = Tagged("u", "t", "h1", 5, _ledger().user_keys("u"), note="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.note = "y"  # type: ignore[misc]
    assert t.note == "x" and isinstance(t, Reservation)


def test_a_second_finish_while_the_first_is_in_flight_is_pending_not_a_final_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    n = _ledger()
    call = n.start_call("gpt-4o-mini", prompt="hi", max_tokens=10, user="u")
    in_store, go_on = threading.Event(), threading.Event()
    real = n.settle

    def slow_settle(*args: Any, **kw: Any) -> Charge:  # the first finish's store round trip
        in_store.set()
        assert go_on.wait(5)
        return real(*args, **kw)

    monkeypatch.setattr(n, "settle", slow_settle)
    first: list[Charge] = []
    t = threading.Thread(target=lambda: first.append(call.finish()))
    t.start()
    assert in_store.wait(5)
    second, seen = call.finish(), call.charge
    go_on.set()
    t.join(5)
    for c in (second, seen):
        assert c is not None and c.pending and not c.deferred and c.cost_nanos == 0
    assert second is not seen  # each caller gets its own object
    assert first[0].cost_nanos > 0 and not first[0].pending
    assert call.finish() == first[0] == call.charge  # once landed, the real charge


def _spy(monkeypatch: pytest.MonkeyPatch, n: Nasca, method: str) -> list[Any]:
    seen: list[Any] = []
    real = getattr(n.store.sync, method)

    def spy(op: Any) -> Any:
        seen.append(op)
        return real(op)

    monkeypatch.setattr(n.store.sync, method, spy)
    return seen


def test_the_ops_built_by_position_match_their_fields_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    n = _ledger()
    snap, now_ms = n.live.current(), int(NOW * 1000)
    reserves, settles = _spy(monkeypatch, n, "reserve"), _spy(monkeypatch, n, "settle")
    r = n.reserve(nanos=5_000, user="u", strict=not n.strict)
    n.settle(r, nanos=4_000, tokens=(11, 22))
    want_reserve = ReserveOp(
        keys=n.user_keys("u", NOW), now_ms=now_ms, hold_id=r.hold_id, estimate=5_000,
        hold_expiry_ms=now_ms + n.hold_ttl_ms, strict=not n.strict, tier="t", tiers_json=snap.tiers_json,
        config_version=snap.version, tier_compiled=snap.compiled["t"], owed=(0, 0, 0), ceiling=0, anchor="")
    want_settle = SettleOp(
        keys=n.user_keys("u", NOW), now_ms=now_ms, hold_id=r.hold_id, estimate=5_000, cost=4_000, tier="t",
        tiers_json=snap.tiers_json, tier_compiled=snap.compiled["t"],
        ttls_ms=n.windows_at(NOW).ttls_from(NOW), marker_expiry_ms=now_ms + 3_600_000,
        input_tokens=11, output_tokens=22, reserved_ms=r.reserved_ms)
    assert r.reserved_ms > 0 and len(reserves) == len(settles) == 1
    for got, want in ((reserves[0], want_reserve), (settles[0], want_settle)):
        for f in dataclasses.fields(want):
            assert getattr(got, f.name) == getattr(want, f.name), f.name


def test_the_in_flight_marker_is_not_the_public_pending_charge() -> None:
    assert not _calls._IN_FLIGHT.pending  # a finisher is handed a fresh pending Charge instead
