"""The Redis safety check on first use: real servers that can evict or forget ledger keys
are named in one loud warning, or refused with ``require_durable=True``; a durable one
passes quietly."""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path

import pytest

import nasca_core.stores._redis_safety as safety
from nasca_core import ConfigurationError, Nasca, Tier
from tests.conftest import RedisProcess, _free_port, _need_redis

TIERS = {"t": Tier(daily=1)}


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(safety, "_warned", set())


@pytest.fixture
def server():
    _need_redis()
    started: list[RedisProcess] = []
    with tempfile.TemporaryDirectory(prefix="nasca-safety-") as tmp:

        def start(*extra: str) -> str:
            # RedisProcess passes --save "" --appendonly no first; later flags win.
            workdir = Path(tmp) / str(len(started))
            workdir.mkdir()
            p = RedisProcess(_free_port(), workdir, *extra)
            started.append(p)
            return f"redis://127.0.0.1:{p.port}/0"

        yield start
        for p in started:
            p.stop()


def _use(uri: str, **kw) -> Nasca:
    n = Nasca(uri, tiers=TIERS, default_tier="t", namespace=f"s{uuid.uuid4().hex[:8]}", **kw)
    n.get_usage("u")
    return n


def test_an_unpersisted_redis_is_named_once_or_refused(server, caplog):
    uri = server()
    with caplog.at_level(logging.WARNING, logger="nasca"):
        _use(uri).close()
        _use(uri).close()
    loud = [r for r in caplog.records if "CAN LOSE MONEY" in r.getMessage()]
    assert len(loud) == 1 and "neither AOF nor RDB" in loud[0].getMessage()
    with pytest.raises(ConfigurationError, match="require_durable"):
        _use(uri, require_durable=True)


def test_a_durable_redis_passes_and_an_evicting_one_is_named(server, caplog):
    durable = server("--appendonly", "yes", "--appendfsync", "everysec")
    with caplog.at_level(logging.WARNING, logger="nasca"):
        _use(durable, require_durable=True).close()
    assert "CAN LOSE MONEY" not in caplog.text
    evicting = server("--appendonly", "yes", "--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru")
    with pytest.raises(ConfigurationError, match="maxmemory-policy is allkeys-lru"):
        _use(evicting, require_durable=True)


def test_config_refused_by_the_provider_still_reads_info(server, caplog):
    locked = server("--rename-command", "CONFIG", "")
    with caplog.at_level(logging.WARNING, logger="nasca"):
        _use(locked).close()
    assert "CONFIG is not allowed" in caplog.text


async def test_the_async_store_checks_too(server):
    uri = server()
    n = Nasca(uri, tiers=TIERS, default_tier="t", require_durable=True)
    with pytest.raises(ConfigurationError, match="neither AOF nor RDB"):
        await n.aget_usage("u")


@pytest.mark.cluster
def test_every_cluster_primary_is_checked(cluster_url):
    with pytest.raises(ConfigurationError, match="neither AOF nor RDB"):
        _use(cluster_url, require_durable=True)


def test_the_rules():
    ok = [{"maxmemory_policy": "noeviction"}], [{"aof_enabled": 1}]
    assert safety.problems(*ok, None) == []
    assert safety.problems([{"maxmemory_policy": "volatile-lru"}], [{"aof_enabled": 1}], "on") != []
    assert safety.problems([{}], [{"aof_enabled": 0}], "3600 1") == []  # RDB snapshots: persisted
    assert safety.problems([{}], [{"aof_enabled": 1}, {"aof_enabled": 0}], "") != []  # one primary of two
