"""Data-protection requests (``nasca_core.privacy``): export lists what was written about an
end user, and delete leaves nothing in the store that names them while the month's
revenue totals stay. On every store: memory, a SQLite file, a real Redis and a real Cluster;
each store is then read whole (keys and values, every table's rows) for the user's id."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from nasca_core import InvalidUserError, Nasca
from nasca_core.billing import ReviewOrder, WebhookResult
from nasca_core.privacy import UserData
from nasca_core.stores import SubChange
from nasca_core.stores._user_data import DELETED

SUB = "sub_" + uuid.uuid4().hex[:8]


def _billing(n: Nasca, kind: str, ident: str) -> str:
    return f"{n.namespace}:billing:{kind}:{ident}"


def populate(n: Nasca, user: str) -> None:
    """What a user leaves behind: calls, a call in flight, a stored tier, a purchase with its
    billing indexes and webhook result, a subscription, analytics, an order held for review."""
    n.settle(n.reserve("0.04", user=user), "0.03")
    n.reserve("0.02", user=user)  # still in flight
    n.set_user_tier(user, "pro")
    n.billing.grant_credits(user, spend="2", paid="1.5", idempotency_key="lot-" + user[-4:])
    now_ms = int(n.now() * 1000)
    store = n.store.sync
    store.apply_subscription(n.user_keys(user), SubChange(SUB, 1, "evt_s1", True, "pro", 1, False), now_ms)
    store.put_marker(_billing(n, "cus", "cus_" + user[-4:]), user, None, now_ms)
    store.put_marker(_billing(n, "portal", user), "cus_" + user[-4:], None, now_ms)
    store.put_marker(_billing(n, "pi", "pi_" + user[-4:]), json.dumps({"u": user, "l": "lot", "g": 1}),
                     86_400_000, now_ms)
    result = WebhookResult(event_id="evt_" + user[-4:], type="checkout.session.completed", action="granted",
                           user_id=user, lot_id="lot-" + user[-4:])
    store.put_marker(_billing(n, "evt", "evt_" + user[-4:]), result.model_dump_json(), 86_400_000, now_ms)
    order = ReviewOrder(session_id="cs_" + user[-4:], user_id=user, pack="p", reason="amount", paid=1,
                        currency="usd", expected=2, expected_currency="usd", at=datetime.now(UTC))
    store.put_entry(_billing(n, "reviews", "set"), order.session_id, order.model_dump_json())
    n.analytics.record("blocked", user)
    n.analytics.record("prompt_shown", user, "p-" + user[-4:])
    n.analytics.record("purchase_completed", user, "p-" + user[-4:], amount="1.50")


def everything(n: Nasca, *, ours: bool = False) -> str:
    """Every key and value (every row) the store holds, as one text; ``ours``: on a (shared)
    Redis, only the keys of this test's namespace, whose other keys may expire meanwhile."""
    store = n.store.sync
    path = getattr(store, "path", None)
    if path is not None:
        conn = sqlite3.connect(path)
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        text = "\n".join(repr(row) for t in tables for row in conn.execute(f"SELECT * FROM {t}"))
        conn.close()
        return text
    client = getattr(store, "client", None)
    if client is not None:
        out = []
        for key in client.scan_iter(match=f"*{n.namespace}*" if ours else None, count=1000):
            kind = client.type(key).decode()
            # the Redis is shared with other tests: any type, and keys that expire mid-scan ("none")
            value = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
                     "list": lambda k: client.lrange(k, 0, -1), "none": lambda k: "",
                     "stream": lambda k: client.xrange(k),
                     "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}[kind](key)
            out.append(f"{_text(key)} {_text(value)}")
        return "\n".join(sorted(out))
    return _walk(store)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return " ".join(f"{_text(k)}={_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return " ".join(map(_text, value))
    return str(value)


def _walk(obj: Any, seen: set[int] | None = None) -> str:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return ""
    seen.add(id(obj))
    if isinstance(obj, dict):
        return " ".join(_walk(k, seen) + " " + _walk(v, seen) for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset):
        return " ".join(_walk(v, seen) for v in obj)
    fields = getattr(obj, "__dict__", None) or {s: getattr(obj, s) for s in getattr(obj, "__slots__", ())
                                                 if hasattr(obj, s)}
    if fields and not isinstance(obj, type):
        return " ".join(_walk(v, seen) for k, v in fields.items() if k != "_lock")
    return repr(obj)


@pytest.fixture
def user() -> str:
    return f"gdpr:{{{uuid.uuid4().hex[:6]}}}-ü"  # a colon, braces and unicode, as ids may have


def test_export_lists_what_was_written(make_nasca: Any, user: str) -> None:
    n = make_nasca()
    populate(n, user)
    populate(n, "bystander")
    export = UserData(n).export(user)
    month = n.windows_at().ids[2]
    r = export.records
    assert {"", "c", "s", "subs", f"m:{month}"} <= set(r) and any(k.startswith("d:") for k in r)
    assert "h" in r  # the call still in flight
    def text(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    assert "pro" in text(r[""]) and "lot-" + user[-4:] in text(r["c"]) and SUB in text(r["subs"])
    assert "30000000" in text(r[f"m:{month}"])  # the month's cost, in nanos
    assert "bystander" not in text(r)
    assert export.analytics == {month: {"seen": 1, "blocked": 1, "orders": 1, "revenue:usd": 1_500_000_000}}
    assert set(export.billing) == {_billing(n, k, i) for k, i in (
        ("cus", "cus_" + user[-4:]), ("portal", user), ("pi", "pi_" + user[-4:]), ("evt", "evt_" + user[-4:]),
        ("reviews", "set"))}
    assert list(export.billing[_billing(n, "reviews", "set")]) == ["cs_" + user[-4:]]  # not the bystander's
    assert json.loads(export.model_dump_json())["user_id"] == user
    assert UserData(n).export("never-seen").empty


def test_delete_leaves_a_fresh_user_the_month_s_totals_and_no_trace(make_nasca: Any, user: str) -> None:
    n = make_nasca()
    populate(n, user)
    populate(n, "bystander")
    before = n.analytics.month()
    bystander = n.get_usage("bystander")
    assert user in everything(n)
    removed = UserData(n).delete(user)
    assert removed.deleted and not removed.empty
    u = n.get_usage(user)
    assert (u.tier, u.month_cost, u.month_calls, u.daily_spent, u.in_flight, u.credit_balance) == (
        "free", 0, 0, 0, 0, 0)
    after = n.analytics.month()
    totals = ("revenue", "orders", "funnel", "events", "ai_cost", "credit_cost", "calls", "input_tokens",
              "output_tokens", "profit")
    assert [getattr(after, t) for t in totals] == [getattr(before, t) for t in totals]
    assert after.revenue_usd == Decimal("3.00")  # both users' purchases, the deleted one's too
    assert user not in everything(n)
    # The user's AI cost stays in the month, under no one's id.
    assert {x.user_id: x.ai_cost for x in after.users} == {"bystander": Decimal("0.03"),
                                                           DELETED: Decimal("0.03")}
    populate(n, "another")
    UserData(n).delete("another")
    assert {x.user_id: x.calls for x in n.analytics.month().users} == {"bystander": 1, DELETED: 2}
    assert n.get_usage("bystander") == bystander
    # Billing's records that keep a retried webhook from granting twice keep their place.
    assert n.store.sync.get_marker(_billing(n, "evt", "evt_" + user[-4:]), int(n.now() * 1000)) is not None
    assert n.store.sync.get_marker(_billing(n, "cus", "cus_" + user[-4:]), int(n.now() * 1000)) is None
    assert UserData(n).export(user).empty
    assert UserData(n).delete(user).empty  # twice is harmless
    n.settle(n.reserve("0.01", user=user), "0.01")  # and the user starts again from nothing
    assert n.get_usage(user).month_cost == Decimal("0.01")


async def test_async_twins(make_nasca: Any, user: str) -> None:
    n = make_nasca()
    await n.asettle(await n.areserve("0.01", user=user), "0.01")
    data = UserData(n)
    assert f"m:{n.windows_at().ids[2]}" in (await data.aexport(user)).records
    assert (await data.adelete(user)).deleted
    assert (await data.aexport(user)).empty


def test_a_bad_user_id_is_refused_with_nothing_changed(make_nasca: Any) -> None:
    n = make_nasca()
    populate(n, "bystander")
    before = everything(n, ours=True)
    for bad in ("", "a\nb", "x" * 300, DELETED):
        with pytest.raises(InvalidUserError):
            UserData(n).delete(bad)
    assert everything(n, ours=True) == before


def test_sqlite_deletes_leave_no_bytes_of_the_id_in_the_file(tmp_path: Any, user: str) -> None:
    """Deleted rows are overwritten (``secure_delete``), so the id is gone from the file's
    pages too, not only from its rows."""
    from nasca_core import Tier

    path = tmp_path / "gone.db"
    n = Nasca(f"sqlite:///{path}", tiers={"free": Tier(daily=1), "pro": Tier(daily=5)}, default_tier="free")
    populate(n, user)
    UserData(n).delete(user)
    n.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = path.read_bytes() + (path.with_name("gone.db-wal").read_bytes() if path.with_name(
        "gone.db-wal").exists() else b"")
    assert user.encode() not in data



def test_only_the_fields_that_hold_a_user_id_count(make_nasca: Any) -> None:
    """A bystander's record whose other fields happen to equal a user id (a lot id, a
    currency) is neither exported with that user nor touched by their delete."""
    n = make_nasca()
    populate(n, "bystander")
    now_ms = int(n.now() * 1000)
    store = n.store.sync
    pi = _billing(n, "pi", "pi_by")
    store.put_marker(pi, json.dumps({"u": "bystander", "l": "lot-by", "g": 1}), 86_400_000, now_ms)
    before = everything(n, ours=True)
    for other in ("lot-by", "usd", "pro", "amount", "granted", "p", "cs_ander"):
        assert UserData(n).export(other).billing == {}, other
        UserData(n).delete(other)
    assert store.get_marker(pi, now_ms) is not None
    assert UserData(n).export("bystander").billing.keys() >= {pi, _billing(n, "reviews", "set")}
    after = everything(n, ours=True)
    for kept in ("lot-by", '"currency":"usd"', '"lot_id":"lot-ander"'):
        assert after.count(kept) == before.count(kept), kept


@pytest.mark.parametrize("user", ["42", "true", "null", "1.5"])
def test_ids_that_parse_as_json_numbers_are_found_and_deleted(make_nasca: Any, user: str) -> None:
    n = make_nasca()
    populate(n, user)
    export = UserData(n).export(user)
    assert set(export.billing) == {_billing(n, k, i) for k, i in (
        ("cus", "cus_" + user[-4:]), ("portal", user), ("pi", "pi_" + user[-4:]), ("evt", "evt_" + user[-4:]),
        ("reviews", "set"))}
    UserData(n).delete(user)
    now_ms = int(n.now() * 1000)
    assert n.store.sync.get_marker(_billing(n, "cus", "cus_" + user[-4:]), now_ms) is None
    assert UserData(n).export(user).empty


def test_the_deleted_users_row_is_no_user(make_nasca: Any) -> None:
    n = make_nasca()
    populate(n, "gone")
    UserData(n).delete("gone")
    for call in (lambda: n.reserve("0.01", user=DELETED), lambda: n.get_usage(DELETED),
                 lambda: UserData(n).export(DELETED)):
        with pytest.raises(InvalidUserError):
            call()
    data = getattr(n.store.sync, "_data", {})  # the memory store's folded row has every field
    month = [v for k, v in data.items() if k.endswith(f"{DELETED}:m:{n.windows_at().ids[2]}")]
    assert all(set(m) == {"s", "c", "k", "n", "ti", "to"} for m in month)


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)  # several round trips there
@pytest.mark.parametrize("cut", [0, 1, 2])  # the delete's writes: tag and read, add, delete
def test_redis_delete_retried_after_a_failed_round_trip_never_counts_the_cost_twice(
        make_nasca: Any, monkeypatch: pytest.MonkeyPatch, cut: int) -> None:
    from nasca_core import StoreError

    n = make_nasca()
    store = n.store.sync
    n.settle(n.reserve("0.04", user="bob"), "0.03")
    real, writes, failed = store._pipeline, [], []

    def flaky(cmds: Any) -> Any:
        cmds = list(cmds)
        if cmds and cmds[0][0] in ("EVAL", "DEL", "HINCRBY") and not failed:
            writes.append(cmds)
            if len(writes) > cut:
                failed.append(cmds)
                raise StoreError("connection reset")
        return real(cmds)

    monkeypatch.setattr(store, "_pipeline", flaky)
    with pytest.raises(StoreError):
        UserData(n).delete("bob")
    UserData(n).delete("bob")  # the owner runs it again
    assert failed
    month = n.analytics.month()
    # Cut before the totals moved: they move on the retry. Cut after: never a second time.
    assert {u.user_id: u.ai_cost for u in month.users} == {DELETED: Decimal("0.03")}
    assert month.ai_cost == Decimal("0.03")


def test_sqlite_delete_leaves_no_bytes_of_the_id_in_the_wal_while_others_have_it_open(tmp_path: Any) -> None:
    """Another worker's connection is open (as in a live app): the delete still checkpoints
    the write-ahead log, so the id's old frames leave the -wal file too."""
    from nasca_core import Tier

    path, user = tmp_path / "live.db", "alice-secret-id@example.com"
    n = Nasca(f"sqlite:///{path}", tiers={"free": Tier(daily=1), "pro": Tier(daily=5)}, default_tier="free")
    other = sqlite3.connect(path)
    other.execute("SELECT 1").fetchall()
    populate(n, user)
    UserData(n).delete(user)
    assert UserData(n).export(user).empty
    wal = path.with_name("live.db-wal")
    data = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert user.encode() not in data
    other.close()
    n.close()
