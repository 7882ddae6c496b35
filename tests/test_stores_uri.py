"""Stores chosen by URI or client, and their bad-input errors."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis

from nasca_core import ConfigurationError, Nasca, Tier

TIERS = {"free": Tier(daily=1)}


@pytest.mark.parametrize(
    "uri",
    ["mysql://x", "redis://", "redis+cluster://", "redis+cluster://host", "redis+cluster://h:p",
     "no-scheme", "", "redis://[::1"],
)
def test_malformed_uris_are_configuration_errors(uri):
    with pytest.raises(ConfigurationError) as info:
        Nasca(uri, tiers=TIERS, default_tier="free")
    assert "URI" in str(info.value) or "scheme" in str(info.value) or "node" in str(info.value)


def test_non_store_object_is_rejected():
    with pytest.raises(ConfigurationError, match="redis-py client"):
        Nasca(object(), tiers=TIERS)


def test_named_memory_store_is_shared_in_process():
    a = Nasca("memory://shared-test", tiers=TIERS, default_tier="free")
    b = Nasca("memory://shared-test", tiers=TIERS, default_tier="free")
    a.settle(a.reserve("0.5", user="u"), "0.5")
    assert b.get_usage("u").daily_spent == Decimal("0.5")
    c = Nasca("memory://", tiers=TIERS, default_tier="free")
    assert c.get_usage("u").daily_spent == 0


@pytest.mark.redis
def test_existing_clients_and_unix_socket(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    n = Nasca(client, tiers=TIERS, default_tier="free", namespace="clients")
    n.settle(n.reserve("0.25", user="u"), "0.25")
    aclient = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    m = Nasca(aclient, tiers=TIERS, default_tier="free", namespace="clients")
    assert m.get_usage("u").daily_spent == Decimal("0.25")

    async def via_async():
        r = await m.areserve("0.25", user="u")
        await m.asettle(r, "0.25")
        return await m.aget_usage("u")

    import asyncio

    assert asyncio.run(via_async()).daily_spent == Decimal("0.5")
    assert repr(n).startswith("Nasca(store='redis (client)'")


@pytest.mark.cluster
def test_existing_cluster_client(cluster_url):
    from redis.cluster import ClusterNode, RedisCluster

    host, port = cluster_url.removeprefix("redis+cluster://").split(",")[0].split(":")
    client = RedisCluster(startup_nodes=[ClusterNode(host, int(port))])
    n = Nasca(client, tiers=TIERS, default_tier="free", namespace="cclient")
    for user in ("a", "b", "c", "d"):  # users hash to different slots
        n.settle(n.reserve("0.1", user=user), "0.1")
    assert all(n.get_usage(u).daily_spent == Decimal("0.1") for u in "abcd")
    slots = {client.keyslot(n.user_keys(u, n.now()).meta) for u in "abcd"}
    assert len(slots) > 1


@pytest.mark.redis
def test_unix_socket_uri(tmp_path):
    from tests.conftest import REDIS_SERVER, RedisProcess, _free_port

    if REDIS_SERVER is None:
        pytest.fail("redis-server missing")
    sock = tmp_path / "redis.sock"
    server = RedisProcess(_free_port(), tmp_path, "--unixsocket", str(sock), "--unixsocketperm", "700")
    try:
        n = Nasca(f"unix://{sock}?db=0", tiers=TIERS, default_tier="free", namespace="unix")
        n.settle(n.reserve("0.3", user="u"), "0.3")
        assert n.get_usage("u").daily_spent == Decimal("0.3")
        assert redis.Redis(unix_socket_path=str(sock)).exists(n.user_keys("u", n.now()).day)
        n.close()
    finally:
        server.stop()


@pytest.mark.redis
def test_rediss_tls_uri(tmp_path):
    import shutil
    import subprocess

    from tests.conftest import REDIS_SERVER, RedisProcess, _free_port

    if REDIS_SERVER is None or shutil.which("openssl") is None:
        pytest.fail("redis-server and openssl are needed for the TLS store test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls_port = _free_port()
    server = RedisProcess(_free_port(), tmp_path, "--tls-port", str(tls_port), "--tls-cert-file",
                          str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                          "--tls-auth-clients", "no")
    try:
        n = Nasca(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}", tiers=TIERS,
                  default_tier="free", namespace="tls")
        n.settle(n.reserve("0.2", user="u"), "0.2")
        assert n.get_usage("u").daily_spent == Decimal("0.2")
        n.close()
        plain = Nasca(f"redis://127.0.0.1:{server.port}/0", tiers=TIERS, default_tier="free",
                      namespace="tls")
        assert plain.get_usage("u").daily_spent == Decimal("0.2")  # the same server, in clear
        plain.close()
    finally:
        server.stop()
