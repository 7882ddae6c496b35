"""The admin login throttle over HTTP, shared through the store: every worker and process
counts the same wrong tokens, counted before they are answered (concurrent guesses share one
burst), the client is the peer unless a trusted proxy forwarded it (an IPv6 client by its
/64), and guesses from many addresses never lock the real admin out."""

from __future__ import annotations

import asyncio
import ipaddress

import httpx
import pytest

from nasca_core import ConfigurationError
from nasca_core.server import ServeConfig, build_settings, create_app
from nasca_core.server._throttle import LoginThrottle, client_ip, client_key
from tests._webapp import ADMIN, PUBLIC, billed, settings

ORIGIN = {"Origin": PUBLIC}
PROXY = "10.1.2.3"


def peer(app, address):
    transport = httpx.ASGITransport(app=app, client=(address, 50_000))
    return httpx.AsyncClient(transport=transport, base_url=PUBLIC)


async def guess(c, token="wrong-guess", forwarded=None):
    headers = {**ORIGIN, **({"X-Forwarded-For": forwarded} if forwarded else {})}
    return await c.post("/admin/login", data={"token": token}, headers=headers)


async def test_every_worker_counts_the_same_failures(make_nasca, backend):
    # two workers (two Nasca, two apps) on one store: the guesses add up
    one, two = create_app(billed(make_nasca), settings()), create_app(billed(make_nasca), settings())
    async with peer(one, "198.51.100.7") as a, peer(two, "198.51.100.7") as b:
        codes = [(await guess(c)).status_code for c in (a, b, a, b, a)]
        assert codes == [401] * 5
        for c in (a, b):
            r = await guess(c, ADMIN)  # even the right token waits
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            r = await c.get("/admin/report.json", headers={"Authorization": "Bearer nope"})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    async with peer(two, "198.51.100.8") as other:  # another client is not held up
        assert (await guess(other)).status_code == 401


@pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)
async def test_a_trusted_proxy_forwards_the_client_an_untrusted_peer_does_not(make_nasca):
    app = create_app(billed(make_nasca), settings(trusted_proxies=["10.0.0.0/8"]))
    async with peer(app, PROXY) as proxy:
        for _ in range(5):
            assert (await guess(proxy, forwarded="203.0.113.5")).status_code == 401
        assert (await guess(proxy, forwarded="203.0.113.5")).status_code == 429
        # another client behind the same proxy still may try; so may the proxy's own address
        assert (await guess(proxy, forwarded="203.0.113.6")).status_code == 401
        assert (await guess(proxy, ADMIN, forwarded="203.0.113.6")).status_code == 303
    async with peer(app, "198.51.100.9") as spoofer:  # not a proxy: its X-Forwarded-For is ignored
        codes = [(await guess(spoofer, forwarded=f"203.0.113.{i}")).status_code for i in range(20, 26)]
        assert codes == [401] * 5 + [429]


@pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)
async def test_guesses_from_many_addresses_never_lock_the_admin_out(make_nasca):
    # No cap over all clients: an attacker sending wrong tokens from many addresses can't
    # keep the real admin, or a bearer API client, out (the token's entropy stops guessing).
    app = create_app(billed(make_nasca), settings(trusted_proxies=[PROXY]))
    async with peer(app, PROXY) as proxy:
        for i in range(40):
            for _ in range(6):
                await guess(proxy, forwarded=f"192.0.2.{i}")
        assert (await guess(proxy, forwarded="192.0.2.0")).status_code == 429  # each guesser is held
        assert (await guess(proxy, ADMIN, forwarded="192.0.2.200")).status_code == 303
        r = await proxy.get("/admin/report.json", headers={"Authorization": f"Bearer {ADMIN}",
                                                           "X-Forwarded-For": "192.0.2.201"})
        assert r.status_code == 200
        for _ in range(20):  # a bearer client's own calls are never counted against it
            r = await proxy.get("/admin/report.json", headers={"Authorization": f"Bearer {ADMIN}",
                                                               "X-Forwarded-For": "192.0.2.201"})
            assert r.status_code == 200


async def test_concurrent_wrong_tokens_get_one_burst_between_them(make_nasca, backend):
    # Counted before they are answered: of 300 wrong tokens sent at once by one client, at
    # most the burst (5) and the one that starts the block are answered; none fails.
    app = create_app(billed(make_nasca), settings())
    async with peer(app, "198.51.100.70") as c:
        codes = await asyncio.gather(*[guess(c) for _ in range(300)])
        answered = [r.status_code for r in codes]
        assert set(answered) <= {401, 429} and 5 <= answered.count(401) <= 6
        assert (await guess(c, ADMIN)).status_code == 429  # the right token waits with them


def test_client_ip_reads_forwarded_for_only_from_trusted_proxies():
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    assert client_ip("10.0.0.1", ["203.0.113.5"], ()) == "10.0.0.1"  # default: trust none
    assert client_ip("198.51.100.1", ["203.0.113.5"], nets) == "198.51.100.1"
    assert client_ip("10.0.0.1", ["203.0.113.5"], nets) == "203.0.113.5"
    # the nearest untrusted hop, read from the right; what the client wrote further left is not believed
    assert client_ip("10.0.0.1", ["6.6.6.6, 203.0.113.5, 10.9.9.9"], nets) == "203.0.113.5"
    assert client_ip("10.0.0.1", ["6.6.6.6", "203.0.113.5"], nets) == "203.0.113.5"
    assert client_ip("10.0.0.1", ["junk, 10.2.2.2"], nets) == "10.2.2.2"
    assert client_ip("2001:db8::1", ["2001:db8::2, 2001:db9::7"], nets) == "2001:db9::7"
    assert client_ip("10.0.0.1", [], nets) == "10.0.0.1" and client_ip(None, [], nets) == "?"
    # an IPv4-mapped peer is its IPv4 address; hops may carry ports and brackets
    assert client_ip("::ffff:10.0.0.1", ["203.0.113.5"], nets) == "203.0.113.5"
    assert client_ip("::ffff:198.51.100.1", [], nets) == "198.51.100.1"
    assert client_ip("10.0.0.1", ["203.0.113.5:4711"], nets) == "203.0.113.5"
    assert client_ip("10.0.0.1", ["[2001:db9::1]:443"], nets) == "2001:db9::1"
    assert client_ip("10.0.0.1", ["203.0.113.9, [2001:db8::5]"], nets) == "203.0.113.9"
    assert client_ip("10.0.0.1", ["::ffff:10.3.3.3, 10.0.0.2"], nets) == "10.3.3.3"  # all proxies


def test_an_ipv6_client_is_counted_by_its_64():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("203.0.113.5") == "203.0.113.5" and client_key("?") == "?"


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_one_host_rotating_its_ipv6_addresses_shares_one_count(make_nasca):
    app = create_app(billed(make_nasca), settings())
    codes = []
    for i in range(6):  # a fresh address of one /64 for each guess
        async with peer(app, f"2001:db8:7:7::{i + 1:x}") as c:
            codes.append((await guess(c)).status_code)
    assert codes == [401] * 5 + [429]


def test_trusted_proxies_are_checked_and_come_from_nasca_toml():
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        settings(trusted_proxies=["not-an-address"])
    config = ServeConfig.parse({"server": {"trusted_proxies": ["10.0.0.0/8", "192.0.2.7"]}})
    s = build_settings(config, {"NASCA_SECRET": "s" * 32})
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "192.0.2.7/32"]
    assert settings().trusted_proxies == ()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_right_token_reads_the_throttle_without_the_write_lock(make_nasca, tmp_path):
    import sqlite3
    import time

    n = make_nasca()
    t = LoginThrottle(n.store, n.namespace)
    assert await t.attempt("203.0.113.1", False, n.now()) == 0  # the file and its tables exist
    other = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writes for a while
    try:
        started = time.perf_counter()
        assert await t.attempt("203.0.113.1", True, n.now()) == 0
        assert time.perf_counter() - started < 0.5
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_the_memory_store_forgets_counters_of_clients_long_gone():
    from nasca_core.stores import open_store

    store = open_store("memory://").sync
    for i in range(5000):  # one wrong token each from many addresses, an hour before now
        store.tally(f"ns:admin:login:fail:198.51.{i // 256}.{i % 256}", 1, 60_000, 1_000 + i)
    store.tally("ns:admin:login:fail:203.0.113.9", 1, 60_000, 3_600_000)
    for i in range(6000):  # the store sweeps every 10,000 operations
        store.tally("ns:admin:login:block:203.0.113.9", 0, 0, 3_600_000 + i)
    assert store.entries("x") == {} and len(store._data) < 100  # swept
