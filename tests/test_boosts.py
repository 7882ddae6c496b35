"""Boosts and per-user limits: bad input is a typed error with nothing changed and no store
touched; the Python rule get_usage shows (``_limits.effective_tier``) is the stores' rule
(``stores/_effective.resolve``, mirrored by ``lua/_lib.lua`` and run on every store by
tests/test_boosts_contract.py); an older SQLite file gains the columns."""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nasca_core import InvalidAmountError, InvalidInputError, InvalidUserError, Nasca, Tier
from nasca_core._limits import effective_tier, parse_until
from nasca_core._money import MAX_NANOS
from nasca_core.stores import Snapshot
from nasca_core.stores._base import StoredBoost
from nasca_core.stores._effective import encode, in_force, resolve

NOW = 1_795_003_200.0
TIERS = {"free": Tier(monthly="0.50", daily="0.10"), "pro": Tier(monthly=10, weekly=5, daily=2)}


def nasca(store="memory://"):
    return Nasca(store, tiers=TIERS, default_tier="free", clock=lambda: NOW)


BAD_BOOSTS = [
    ({"amount": "-1"}, InvalidAmountError),
    ({"amount": float("nan")}, InvalidAmountError),
    ({"amount": "0"}, InvalidAmountError),
    ({"amount": "1e400"}, InvalidAmountError),
    ({"amount": True}, InvalidAmountError),
    ({"window": "hourly"}, InvalidInputError),
    ({"window": None}, InvalidInputError),
    ({"until": timedelta(0)}, InvalidInputError),
    ({"until": NOW - 1}, InvalidInputError),
    ({"until": datetime(2030, 1, 1)}, InvalidInputError),  # naive: which zone?
    ({"until": math.inf}, InvalidInputError),
    ({"until": 10**400}, InvalidInputError),  # float() of it overflows
    ({"until": -(10**400)}, InvalidInputError),
    ({"until": "tomorrow"}, InvalidInputError),
    ({"until": timedelta(days=401)}, InvalidInputError),
    ({"id": ""}, InvalidInputError),
    ({"id": "x" * 65}, InvalidInputError),
    ({"id": "a\ud800"}, InvalidInputError),  # no UTF-8 for a lone surrogate
    ({"id": "tab\there"}, InvalidInputError),
    ({"window": "x" * 10**6}, InvalidInputError),  # refused with a short message
    ({"user": 42}, InvalidUserError),
    ({"user": ""}, InvalidUserError),
]


@pytest.mark.parametrize(("bad", "error"), BAD_BOOSTS)
def test_a_bad_boost_is_a_typed_error_before_the_store(bad, error):
    # An unreachable Redis: a typed input error, not a StoreError, proves no store call was made.
    n = nasca("redis://127.0.0.1:1/0")
    args = {"user": "u1", "window": "daily", "amount": "0.10", "until": timedelta(hours=1), **bad}
    with pytest.raises(error):
        n.grant_boost(args.pop("user"), args.pop("window"), **args)


@pytest.mark.parametrize(("limits", "error"), [
    ({"daily": 1}, InvalidInputError),
    ("pro", InvalidInputError),
    (Tier(daily=1, default_output_tokens=50), InvalidInputError),  # an estimate, not a limit
])
def test_a_bad_override_is_a_typed_error_before_the_store(limits, error):
    n = nasca("redis://127.0.0.1:1/0")
    with pytest.raises(error):
        n.set_user_limits("u1", limits)
    with pytest.raises(InvalidUserError):
        n.set_user_limits(None, Tier(daily=1))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        n.limits.clear_boosts("u1", "hourly")  # type: ignore[arg-type]


def test_bad_input_changes_nothing():
    n = nasca()
    for bad, _ in BAD_BOOSTS:
        args = {"user": "u1", "window": "daily", "amount": "0.10", "until": timedelta(hours=1), **bad}
        with pytest.raises((InvalidInputError, InvalidUserError)):
            n.grant_boost(args.pop("user"), args.pop("window"), **args)
    with pytest.raises(InvalidInputError):
        n.set_user_limits("u1", {"daily": 1})  # type: ignore[arg-type]
    u = n.get_usage("u1")
    assert u.boosts == () and u.own_limits is None and u.daily_limit == Decimal("0.10")


@pytest.mark.parametrize("text", ["²d", "١٢h", "", "7", "7w", "d", "1" * 9 + "d", "soon"])
def test_parse_until_refuses_what_is_not_ascii_digits_and_a_unit_or_an_iso_moment(text):
    with pytest.raises(InvalidInputError):  # "²".isdigit() is true, and int("²") a ValueError
        parse_until(text)


def test_parse_until_reads_durations_and_moments():
    assert parse_until(" 12h ") == timedelta(hours=12) and parse_until("30m") == timedelta(minutes=30)
    assert parse_until("2026-12-01T00:00+00:00") == datetime(2026, 12, 1, tzinfo=UTC)


def test_a_granted_boost_reads_in_the_ledger_timezone():
    n = Nasca(tiers=TIERS, default_tier="free", clock=lambda: NOW, timezone="Europe/Paris")
    b = n.grant_boost("u1", "monthly", amount="1", until=datetime(2026, 12, 1, tzinfo=n.tz))
    assert b.until == datetime(2026, 12, 1, tzinfo=n.tz) and str(b.until.tzinfo) == "Europe/Paris"


limits = st.one_of(st.none(), st.integers(1, 10**12),
                   st.integers(MAX_NANOS - 10**14, MAX_NANOS))  # where boosts pass the cap
tiers = st.builds(lambda d, w, m, hard_d, cap: Tier(
    daily=None if d is None else Decimal(d) / 10**9, weekly=None if w is None else Decimal(w) / 10**9,
    monthly=None if m is None else Decimal(m) / 10**9, max_in_flight=cap,
    credits_cover=frozenset({"monthly", "weekly"} | (set() if hard_d else {"daily"}))),
    limits, limits, limits, st.booleans(), st.one_of(st.none(), st.integers(1, 100)))
boosts = st.lists(st.builds(StoredBoost, st.text("ab", min_size=1, max_size=3), st.integers(0, 2),
                            st.integers(1, 10**14), st.integers(0, 2000)), max_size=6)


@given(tier=tiers, stored=tiers, own=st.one_of(st.none(), tiers), boosts=boosts,
       stored_name=st.sampled_from([None, "asked", "stored", "gone"]), now=st.integers(0, 2000))
@example(tier=Tier(daily=Decimal(MAX_NANOS) / 10**9), stored=Tier(), own=None,  # past the cap
         boosts=[StoredBoost("a", 0, 10**14, 1)], stored_name=None, now=0)
def test_get_usage_shows_the_limits_the_stores_apply(tier, stored, own, boosts, stored_name, now):
    compiled = tier.compiled()
    flat = (*compiled["l"], *compiled["h"], compiled["f"])
    tiers_json = json.dumps({"asked": compiled, "stored": stored.compiled()})
    override = None if own is None else json.dumps(own.compiled())
    name, got_l, got_h, got_f = resolve(stored_name, override, encode(boosts), "asked", flat, tiers_json, now)
    base = stored if stored_name == "stored" else tier
    assert name == ("stored" if stored_name == "stored" else "asked")
    snap = Snapshot(None, 0, (0, 0, 0), 0, 0, 0, override=override, boosts=in_force(encode(boosts), now))
    shown = effective_tier(base, snap).compiled()
    assert (list(got_l), list(got_h), got_f) == (shown["l"], shown["h"], shown["f"])
    # a boost adds only to a window that has a limit, and only while in force
    plain = (own or base).compiled()["l"]
    for i in range(3):
        extra = sum(b.amount for b in boosts if b.window == i and b.until_ms > now)
        assert got_l[i] == (-1 if plain[i] == -1 else min(plain[i] + extra, MAX_NANOS))


def test_an_older_sqlite_file_gains_the_columns(tmp_path):
    path = tmp_path / "old.db"
    nasca(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as c:  # as layout 1 shipped: meta without lim and bo
        c.execute("ALTER TABLE meta DROP COLUMN lim")
        c.execute("ALTER TABLE meta DROP COLUMN bo")
    n = nasca(f"sqlite:///{path}")
    n.set_user_limits("u1", Tier(daily=1))
    n.grant_boost("u1", "daily", amount="0.5", until=timedelta(hours=1))
    assert n.get_usage("u1").daily_limit == Decimal("1.5")
    n.close()
