"""The key layout: a Redis store written by the previous release (layout 1, the user id as
the hash tag) is refused until ``nasca migrate`` moves it, and after the move every
purchased lot, spend, hold and stored tier is where it was: on a real Redis and a real Cluster.

``tests/data/layout1_snapshot.json`` was written by the release before this layout
(commit 5ee8551, ``nasca_core`` at that commit against a loopback Redis): six users, among
them ids with braces, colons, unicode and 256 characters, each with a credit purchase, a
settled call partly paid by credits, and a hold in flight; one stored tier; a live config.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from nasca_core import ConfigurationError, Nasca, Tier
from nasca_core.cli import main
from nasca_core.stores._base import layout_key

SNAPSHOT = json.loads((Path(__file__).parent / "data" / "layout1_snapshot.json").read_text(encoding="utf-8"))
USERS = ["alice", "}brace-first", "a}b{c}", "colon:s:h", "名前", "x" * 256]
NOW = 1_795_003_200.0  # the snapshot's clock: Wednesday 2026-11-18 12:00 UTC


def _load(client: Any) -> None:
    for key, item in SNAPSHOT.items():
        kind, value, ttl = item["type"], item["value"], item["pttl"]
        if kind == "string":
            client.set(key, value)
        elif kind == "hash":
            client.hset(key, mapping=value)
        elif kind == "zset":
            client.zadd(key, {member: score for member, score in value})
        if ttl > 0:
            client.pexpire(key, ttl)


def _nasca(uri: str) -> Nasca:
    return Nasca(uri, tiers={"free": Tier(daily="0.10", monthly=1), "pro": Tier(monthly=20)},
                 default_tier="free", namespace="shop", clock=lambda: NOW)


def _check_migrates(uri: str, client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _load(client)
    with pytest.raises(ConfigurationError, match="nasca migrate"):
        _nasca(uri).get_usage("alice")
    assert main(["migrate", "--store", uri, "--namespace", "shop"]) == 0  # a dry run
    out = capsys.readouterr().out
    assert "48 keys of 6 users in key layout 1 -> layout 2" in out and "dry run: nothing changed" in out
    assert all(client.exists(key) for key in SNAPSHOT) and not client.exists(layout_key("shop"))
    assert main(["migrate", "--store", uri, "--namespace", "shop", "--apply"]) == 0
    assert "moved" in capsys.readouterr().out
    n = _nasca(uri)
    assert n.tiers["free"].monthly == 2  # the live config set before the move (not a user key)
    for i, user in enumerate(USERS):
        u = n.get_usage(user)
        bought = Decimal(i) + Decimal("1.5")
        assert u.credit_balance == bought - Decimal("0.15"), user  # the purchase, less what it paid
        assert u.month_cost == Decimal("0.25") and u.month_calls == 1 and u.in_flight == Decimal("0.01")
        assert (u.daily_spent if user != "alice" else u.monthly_spent) == Decimal("0.10")
    assert n.get_usage("alice").tier == "pro"
    n.settle(n.reserve("0.01", user="}brace-first"), "0.01")  # the day is spent: credits pay
    u = n.get_usage("}brace-first")
    assert u.month_cost == Decimal("0.26") and u.credit_balance == Decimal("2.34")
    assert not any(client.exists(key) for key in SNAPSHOT if not key.startswith("{shop:cfg}"))
    assert main(["migrate", "--store", uri, "--namespace", "shop"]) == 0
    assert "0 keys of 0 users" in capsys.readouterr().out
    n.close()


@pytest.mark.redis
def test_a_layout1_redis_is_refused_then_migrated(redis_server_factory, capsys):
    server = redis_server_factory()
    uri = f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(uri)
    _check_migrates(uri, client, capsys)
    client.close()


@pytest.mark.cluster
def test_a_layout1_cluster_is_refused_then_migrated(cluster_url, capsys):
    nodes = cluster_url.split("://", 1)[1].split(",")
    host, port = nodes[0].rsplit(":", 1)
    client = RedisCluster(host=host, port=int(port))
    for key in client.scan_iter(match="shop:*"):  # a namespace of this test's own
        client.delete(key)
    client.delete("{shop:cfg}", "{shop:cfg}:v", layout_key("shop"))
    _check_migrates(cluster_url, client, capsys)
    client.close()


def test_a_fresh_namespace_is_stamped_and_a_newer_layout_refused(redis_url):
    import uuid

    namespace = f"lay{uuid.uuid4().hex[:8]}"
    n = Nasca(redis_url, tiers={"t": Tier(daily=1)}, default_tier="t", namespace=namespace)
    n.get_usage("u")
    client = redis.Redis.from_url(redis_url)
    assert client.get(layout_key(namespace)) == b"2"
    client.set(layout_key(namespace), 3)
    with pytest.raises(ConfigurationError, match=r"layout 3.*upgrade Nasca"):
        Nasca(redis_url, tiers={"t": Tier(daily=1)}, default_tier="t", namespace=namespace).get_usage("u")
    n.close()
    client.close()


def test_migrate_on_embedded_stores_has_nothing_to_do(tmp_path, capsys):
    assert main(["migrate", "--store", f"sqlite:///{tmp_path}/m.db", "--namespace", "x"]) == 0
    assert "nothing to migrate" in capsys.readouterr().out


@pytest.mark.redis
def test_an_interrupted_migration_resumes_and_a_conflict_moves_nothing(redis_server_factory, capsys):
    from nasca_core.stores._layout import new_key

    server = redis_server_factory()
    uri = f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(uri)
    _load(client)
    lots = "shop:{a}b{c}}:c"
    client.restore(new_key("shop", "a}b{c}", ":c"), 0, client.dump(lots))  # moved, then the run died
    assert main(["migrate", "--store", uri, "--namespace", "shop", "--apply"]) == 0
    assert not client.exists(lots)
    assert _nasca(uri).get_usage("a}b{c}").credit_balance == Decimal("3.35")
    client.flushall()
    _load(client)
    client.set(new_key("shop", "alice", ":c"), "something else")
    assert main(["migrate", "--store", uri, "--namespace", "shop", "--apply"]) == 1
    assert "target keys exist already" in capsys.readouterr().err
    assert all(client.exists(key) for key in SNAPSHOT)  # nothing moved
    client.close()


class _Expiring:
    """A client whose key ``after`` expires the moment the migration has read its DUMP, and
    whose key ``before`` expires just before: the two races of a key's TTL running out
    mid-migration, made deterministic."""

    def __init__(self, client: Any, *, after: str, before: str) -> None:
        self.client, self.after, self.before = client, after, before

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def _reading(self, key: Any) -> None:
        if key == self.before:
            self.client.delete(key)

    def _read(self, key: Any) -> None:
        if key == self.after:
            self.client.delete(key)

    def dump(self, key: str) -> Any:
        self._reading(key)
        value = self.client.dump(key)
        self._read(key)
        return value

    def eval(self, script: str, numkeys: int, key: str, *args: Any) -> Any:  # the one-step read
        self._reading(key)
        result = self.client.eval(script, numkeys, key, *args)
        self._read(key)
        return result


@pytest.mark.redis
def test_a_key_expiring_mid_migration_keeps_its_ttl_or_is_skipped(redis_server_factory):
    from nasca_core.stores._layout import migrate, new_key

    server = redis_server_factory()
    client = redis.Redis(port=server.port)
    _load(client)
    day, week = "shop:{alice}:d:20261118", "shop:{alice}:w:2026W47"
    plan = migrate(_Expiring(client, after=day, before=week), "shop", apply=True)
    assert plan.applied and len(plan.moves) == 48
    # Its DUMP and PTTL were read together: it moved with the TTL it had (it would have come
    # back with no expiry, money that never resets, had they been two reads).
    assert 0 < client.pttl(new_key("shop", "alice", ":d:20261118")) <= SNAPSHOT[day]["pttl"]
    assert not client.exists(new_key("shop", "alice", ":w:2026W47"))  # gone before its read: skipped
    for key, item in SNAPSHOT.items():
        if key in (day, week) or key.startswith("{shop:cfg}"):
            continue
        moved = client.pttl(next(n for o, n in plan.moves if o == key))
        assert moved == -1 if item["pttl"] < 0 else 0 < moved <= item["pttl"], key
    assert not any(client.exists(key) for key, _ in plan.moves)
    client.close()
