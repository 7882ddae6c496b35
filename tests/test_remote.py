"""Remote mode: the ledger API of ``nasca serve`` (/v1) and ``Nasca(url, api_key=...)``,
against a real uvicorn on loopback over a real Redis: the wire (keys, rate limit, typed
errors, the schema), the client's API and integrations, concurrency and faults."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from nasca_core import (
    ConfigurationError,
    InvalidUserError,
    Nasca,
    NascaBlockedError,
    NascaBusyError,
    StoreError,
    Tier,
    UnauthorizedError,
    UnknownTierError,
)
from nasca_core.pricing import TokenUsage
from nasca_core.remote import RemoteNasca
from nasca_core.server import ApiKeys
from nasca_core.testing import ProviderServer, Reply, Usage
from tests import _remote
from tests._remote import KEY, OTHER_KEY

serve, make_remote = _remote.serve, _remote.make_remote  # fixtures

pytestmark = pytest.mark.redis
AUTH = {"Authorization": f"Bearer {KEY}"}


def raw(url: str, path: str, body: dict | None = None, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is None:
        return httpx.get(url + path, headers=headers)
    return httpx.post(url + path, json=body, headers=headers)


def test_reserve_settle_usage_round_trip(make_remote):
    n = make_remote()
    assert isinstance(n, RemoteNasca) and isinstance(n, Nasca) is False
    r = n.reserve("0.03", user="u1")
    assert r.estimate_nanos == 30_000_000 and r.tier == "free" and not r.degraded
    c = n.settle(r, "0.02", tokens=(10, 5))
    assert c.cost_nanos == 20_000_000 and (c.tier_nanos, c.credit_nanos) == (20_000_000, 0)
    u = n.get_usage("u1")
    assert u.daily_spent == Decimal("0.02") and u.in_flight == 0 and u.month_input_tokens == 10
    assert n.tiers["free"].daily == Decimal("0.10") and n.namespace == n.served.nasca.namespace


def test_settle_over_http_is_idempotent_by_hold_id(serve):
    s = serve()
    hold = raw(s.url, "/v1/reserve", {"user": "u1", "estimate": "0.02"}).json()["hold"]
    settle = {"hold": hold, "nanos": 15_000_000, "input_tokens": 100, "output_tokens": 20}
    first, again = raw(s.url, "/v1/settle", settle), raw(s.url, "/v1/settle", settle)
    assert first.status_code == again.status_code == 200
    assert first.json()["cost_nanos"] == again.json()["cost_nanos"] == 15_000_000
    u = s.nasca.get_usage("u1")
    assert u.daily_spent == Decimal("0.015") and u.month_calls == 1 and u.in_flight == 0


def test_block_is_402_with_the_upgrade_fields_and_the_signed_link(serve):
    s = serve(public_url="https://app.example/nasca")
    s.nasca.settle(s.nasca.reserve("0.10", user="u1"), "0.10")
    reply = raw(s.url, "/v1/reserve", {"user": "u1", "estimate": "0.01"})
    assert reply.status_code == 402
    body = reply.json()
    assert body["error"] == "blocked" and body["window"] == "daily" and body["tier"] == "free"
    assert body["checkout_url"].startswith("https://app.example/nasca/u/")
    assert Decimal(body["spent"]) == Decimal(body["limit"]) == Decimal("0.10")
    assert body["usage"]["blocked"] is True
    client = Nasca(s.url, api_key=KEY)
    try:
        with pytest.raises(NascaBlockedError) as info:
            client.reserve("0.01", user="u1")
    finally:
        client.close()
    err = info.value
    assert (err.user_id, err.window) == ("u1", "daily") and err.spent == err.limit == Decimal("0.10")
    assert err.checkout_url.startswith("https://app.example/nasca/u/") and "$0.10" in err.upgrade_message
    assert err.resets_at.isoformat() == "2026-11-19T00:00:00+00:00"
    assert err.usage.daily_spent == Decimal("0.10")
    assert client.stats.blocked == 1 and s.nasca.get_usage("u1").in_flight == 0


def test_busy_is_409_and_a_nasca_busy_error(make_remote):
    n = make_remote(tiers={"one": Tier(daily=1, max_in_flight=1)}, default_tier="one")
    n.reserve("0.01", user="u1")
    with pytest.raises(NascaBusyError) as info:
        n.reserve("0.01", user="u1")
    assert info.value.reason == "cap" and info.value.checkout_url is None


def test_a_wrong_key_is_typed_and_changes_nothing(serve):
    s = serve()
    wrong = Nasca(s.url, api_key="not-the-key-0123456789")
    try:
        for call in (lambda: wrong.reserve("0.01", user="u1"), lambda: wrong.get_usage("u1"),
                     lambda: wrong.set_user_tier("u1", "pro"),
                     lambda: wrong.grant_credits("u1", spend="5", idempotency_key="k1")):
            with pytest.raises(UnauthorizedError):
                call()
    finally:
        wrong.close()
    assert raw(s.url, "/v1/usage?user=u1", key=None).status_code == 401
    assert raw(s.url, "/v1/usage?user=u1", key=KEY[:-1]).status_code == 401
    assert raw(s.url, "/v1/usage?user=u1", key=OTHER_KEY).status_code == 200  # a second key: rotation
    u = s.nasca.get_usage("u1")
    assert u.tier == "free" and u.in_flight == 0 and u.credit_balance == 0 and u.month_calls == 0


def test_no_keys_configured_refuses_everything(serve):
    s = serve(keys=ApiKeys(()))
    reply = raw(s.url, "/v1/usage?user=u1")
    assert reply.status_code == 401 and "NASCA_API_KEYS" in reply.json()["message"]


def test_weak_keys_and_bad_rates_are_configuration_errors():
    with pytest.raises(ConfigurationError):
        ApiKeys(["short"])
    with pytest.raises(ConfigurationError):
        ApiKeys.from_env({"NASCA_API_KEYS": KEY, "NASCA_API_RATE": "fast"})
    keys = ApiKeys.from_env({"NASCA_API_KEYS": f" {KEY} ,{OTHER_KEY},", "NASCA_API_RATE": "10"})
    assert keys.find(f"Bearer {OTHER_KEY}") == 1 and keys.find(f"Basic {KEY}") is None and keys.rate == 10


def test_rate_limit_per_key(serve):
    now = [0.0]
    s = serve(keys=ApiKeys([KEY, OTHER_KEY], rate=1, burst=3, clock=lambda: now[0]))
    statuses = [raw(s.url, "/v1/usage?user=u1").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = raw(s.url, "/v1/usage?user=u1")
    assert limited.json()["error"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    assert raw(s.url, "/v1/usage?user=u1", key=OTHER_KEY).status_code == 200  # each key its own bucket
    now[0] += 1.0
    assert raw(s.url, "/v1/usage?user=u1").status_code == 200
    client = Nasca(s.url, api_key=KEY)
    try:
        with pytest.raises(StoreError):  # rate limited: the client's on_store_error decides
            client.reserve("0.01", user="u1")
    finally:
        client.close()


@pytest.mark.parametrize("body, code", [
    ({"user": "u1", "nanos": -5}, "invalid_input"),
    ({"user": "u1", "estimate": "-0.01"}, "invalid_amount"),
    ({"user": "u1", "estimate": "nan"}, "invalid_amount"),
    ({"user": "u1", "estimate": "0.01", "limit": 100}, "invalid_input"),  # clients never send limits
    ({"user": "", "estimate": "0.01"}, "invalid_input"),
    ({"user": "u1", "tier": "gold"}, "unknown_tier"),
    ({"user": "u1", "model": "no-such-model", "prompt_tokens": 10}, "unknown_model"),
])
def test_bad_input_over_http_is_422_and_changes_nothing(serve, body, code):
    s = serve()
    reply = raw(s.url, "/v1/reserve", body)
    assert reply.status_code == 422 and reply.json()["error"] == code and reply.json()["message"]
    assert s.nasca.get_usage("u1").in_flight == 0
    assert raw(s.url, "/v1/reserve", None).status_code == 405
    assert httpx.post(s.url + "/v1/settle", content=b"{not json", headers=AUTH).status_code == 422


def test_openapi_schema(serve):
    s = serve()
    schema = raw(s.url, "/v1/openapi.json", key=None).json()
    assert schema["openapi"].startswith("3.")
    assert {"/v1/reserve", "/v1/settle", "/v1/release", "/v1/usage", "/v1/tiers", "/v1/user-tier",
            "/v1/credits", "/v1/config"} <= set(schema["paths"])
    reserve = schema["paths"]["/v1/reserve"]["post"]
    assert reserve["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ReserveBody")
    assert {"200", "401", "402", "409", "422", "429"} <= set(reserve["responses"])
    components = schema["components"]["schemas"]
    assert {"ReserveBody", "SettleBody", "ErrorReply", "Usage", "Hold"} <= set(components)
    assert "limit" not in components["ReserveBody"]["properties"]


def test_server_owned_options_are_refused_on_the_client(serve):
    s = serve()
    with pytest.raises(ConfigurationError, match="tiers"):
        Nasca(s.url, api_key=KEY, tiers={"free": Tier(daily=1)})
    with pytest.raises(ConfigurationError, match="namespace"):
        Nasca(s.url, api_key=KEY, namespace="x")
    with pytest.raises(ConfigurationError, match="api_key"):
        Nasca(s.url)
    with pytest.raises(ConfigurationError, match="api_key"):
        Nasca("memory://", api_key=KEY, tiers={"t": Tier()})


def test_tiers_user_tiers_and_credits_through_the_client(make_remote):
    n = make_remote(api_key=_remote.ADMIN_KEY)  # the owner's key: NASCA_ADMIN_API_KEYS
    n.set_tier("team", Tier(monthly=50))
    n.set_user_tier("u2", "team")
    assert n.get_usage("u2").tier == "team" and "team" in n.tiers
    with pytest.raises(UnknownTierError):
        n.set_user_tier("u2", "gold")
    n.set_user_tier("u2", None)
    assert n.get_usage("u2").tier == "free"
    first = n.grant_credits("u3", spend="2.00", paid="4", idempotency_key="support-1")
    again = n.grant_credits("u3", spend="2.00", paid="4", idempotency_key="support-1")
    assert first.granted and not again.granted and again.lot.id == first.lot.id
    u = n.get_usage("u3")
    assert u.credit_balance == Decimal(2) and u.credit_balance_display == Decimal(4)
    n.settle(n.reserve("0.10", user="u3"), "0.30")  # credits cover what the daily allowance can't
    assert n.get_usage("u3").credit_balance == Decimal("1.80")


async def test_async_twins(make_remote):
    n = make_remote(api_key=_remote.ADMIN_KEY)
    r = await n.areserve("0.02", user="u1")
    await n.asettle(r, "0.01")
    await n.arelease(await n.areserve("0.05", user="u1"))
    await n.aset_user_tier("u1", "pro")
    await n.aset_tier("pro", Tier(daily=3))
    u = await n.aget_usage("u1")
    assert u.tier == "pro" and u.daily_limit == Decimal(3) and u.daily_spent == Decimal("0.01")
    assert u.in_flight == 0
    grant = await n.agrant_credits("u1", spend="1", idempotency_key="a1")
    assert grant.granted
    await n.aclose()


def test_the_client_prices_with_the_servers_prices(make_remote):
    n = make_remote()
    n.served.nasca.set_price("house-model", {"input": "1.00", "output": "2.00"})  # $ per million tokens
    call = n.start_call("house-model", prompt_tokens=1000, max_tokens=100, user="u1")
    charge = call.finish(TokenUsage(input_tokens=1000, output_tokens=500))
    assert charge.cost_nanos == 1000 * 1000 + 500 * 2000
    assert n.get_usage("u1").month_cost == Decimal("0.002")
    n.served.nasca.set_price("house-model", {"input": "2.00", "output": "2.00"})
    call = n.start_call("house-model", prompt_tokens=1000, user="u1")  # a new config version
    assert call.finish(TokenUsage(input_tokens=1000, output_tokens=0)).cost_nanos == 2_000_000


@pytest.fixture(scope="module")
def srv():
    with ProviderServer() as server:
        yield server


def test_wrap_on_the_remote_client(make_remote, srv):
    n = make_remote(tiers={"t": Tier(daily="0.50")}, default_tier="t")
    create = n.wrap(srv.openai_client(max_retries=0).chat.completions.create)
    srv.queue(Reply(text="twelve", usage=Usage(input_tokens=1200, output_tokens=300)))
    before = srv.request_count
    create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], user="u1")
    u = n.get_usage("u1")
    expected = n.served.nasca.cost_of("gpt-4o-mini", TokenUsage(input_tokens=1200, output_tokens=300))
    assert u.month_cost == Decimal(expected) / 10**9 and u.in_flight == 0 and u.month_input_tokens == 1200
    n.served.nasca.settle(n.served.nasca.reserve("0.50", user="broke"), "0.50")
    with pytest.raises(NascaBlockedError):
        create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], user="broke")
    assert srv.request_count == before + 1


async def test_langchain_handler_on_the_remote_client(make_remote, srv):
    from langchain_openai import ChatOpenAI

    from nasca_langchain import NascaCallbackHandler

    n = make_remote()
    handler = NascaCallbackHandler(n)
    sync_http, async_http = httpx.Client(), httpx.AsyncClient()  # closed here, on this loop
    model = ChatOpenAI(model="gpt-4o-mini", base_url=srv.base_url, api_key="x", max_retries=0,
                       http_client=sync_http, http_async_client=async_http)
    cfg = {"callbacks": [handler], "metadata": {"nasca_user_id": "lc"}}
    srv.queue(Reply(text="a", usage=Usage(input_tokens=100, output_tokens=10)))
    model.invoke("hello", config=cfg)
    srv.queue(Reply(text="b", usage=Usage(input_tokens=100, output_tokens=10)))
    await model.ainvoke("hello", config=cfg)
    u = n.get_usage("lc")
    one = n.served.nasca.cost_of("gpt-4o-mini", TokenUsage(input_tokens=100, output_tokens=10))
    assert u.month_calls == 2 and u.month_cost == Decimal(2 * one) / 10**9 and u.in_flight == 0
    n.served.nasca.settle(n.served.nasca.reserve("0.10", user="lc"), "0.10")
    before = srv.request_count
    with pytest.raises(NascaBlockedError):
        model.invoke("hello", config=cfg)
    with pytest.raises(NascaBlockedError):
        await model.ainvoke("hello", config=cfg)
    assert srv.request_count == before
    await n.aclose()
    sync_http.close()
    await async_http.aclose()


async def test_llamaindex_on_the_remote_client(make_remote):
    from llama_index.core.llms import MockLLM

    import nasca_llamaindex

    n = make_remote(unknown_model="price_as:gpt-4o-mini")
    llm = nasca_llamaindex.guard_llm(MockLLM(max_tokens=5), n)
    with n.user("li"):
        await llm.acomplete("hello there")
        llm.complete("hello again")
    u = n.get_usage("li")
    assert u.month_calls == 2 and u.month_cost > 0 and u.in_flight == 0
    n.served.nasca.settle(n.served.nasca.reserve("0.10", user="li"), "0.10")
    with n.user("li"), pytest.raises(NascaBlockedError):
        llm.complete("blocked")
    assert n.get_usage("li").month_calls == 3


async def test_100_concurrent_remote_callers_overspend_within_the_bound(make_remote):
    n = make_remote(tiers={"t": Tier(monthly=1)}, default_tier="t")
    cost = Decimal("0.03")

    async def caller():
        for _ in range(10):
            try:
                r = await n.areserve(cost, user="hot")
            except NascaBlockedError:
                return
            await asyncio.sleep(0)
            await n.asettle(r, cost)

    await asyncio.gather(*(caller() for _ in range(100)))
    u = await n.aget_usage("hot")
    # a call is admitted only while spent + holds < $1: the spend ends below $1 + one call
    assert Decimal(1) <= u.monthly_spent < Decimal(1) + cost and u.in_flight == 0
    assert n.stats.store_errors == 0


def test_100_concurrent_threads_on_one_client(make_remote):
    n = make_remote(tiers={"t": Tier(monthly=1)}, default_tier="t", strict=True)
    barrier = threading.Barrier(100)
    admitted = []

    def worker():
        barrier.wait()
        try:
            r = n.reserve("0.03", user="hot")
        except NascaBlockedError:
            return
        admitted.append(n.settle(r, "0.03"))

    threads = [threading.Thread(target=worker) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 33 and n.get_usage("hot").monthly_spent == Decimal("0.99")  # strict: never over


def _journal_lines(state_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in state_dir.rglob("*.jsonl"))


def test_server_stopped_mid_run_block_policy_and_nothing_lost(make_remote, tmp_path):
    n = make_remote(state_dir=str(tmp_path / "j"), timeout=2.0)
    open_calls = [n.reserve("0.01", user="u1") for _ in range(3)]
    n.settle(n.reserve("0.01", user="u1"), "0.01")
    n.served.stop()
    with pytest.raises(StoreError):  # on_store_error="block": no call starts unchecked
        n.reserve("0.01", user="u1")
    charges = [n.settle(r, "0.02") for r in open_calls]
    assert all(c.deferred and c.cost_nanos == 20_000_000 for c in charges)
    assert len(n.pending) == 3 and _journal_lines(tmp_path / "j") >= 3  # on disk before settle returned
    n.release(open_calls[0])  # logged, not raised
    n.served.restart()
    assert n.flush() == 3 and len(n.pending) == 0
    u = n.get_usage("u1")
    assert u.daily_spent == Decimal("0.07") and u.month_calls == 4 and u.in_flight == 0
    n.flush()
    assert n.get_usage("u1").daily_spent == Decimal("0.07")  # a replay charges nothing twice


def test_server_stopped_allow_policy_admits_and_charges_after_restart(make_remote, tmp_path):
    n = make_remote(on_store_error="allow", state_dir=str(tmp_path / "j"), timeout=2.0)
    assert "free" in n.tiers  # the server's config seen: a degraded hold takes its default tier
    n.served.stop()
    r = n.reserve("0.02", user="u1")
    assert r.degraded and r.tier == "free"
    assert n.settle(r, "0.04").deferred
    n.served.restart()
    n.settle(n.reserve("0.01", user="u1"), "0.01")  # the next call sends what is owed first
    u = n.get_usage("u1")
    assert u.daily_spent == Decimal("0.05") and u.month_calls == 2


def test_a_dead_clients_journal_is_adopted(make_remote, serve, tmp_path):
    state = str(tmp_path / "shared")
    n = make_remote(state_dir=state, timeout=2.0)
    r = n.reserve("0.01", user="u1")
    n.served.stop()
    assert n.settle(r, "0.03").deferred
    n.close()  # the server is still down: the journal stays on disk
    n.served.restart()
    heir = Nasca(n.served.url, api_key=KEY, state_dir=state)
    try:
        assert len(heir.pending) == 1 and heir.stats.deferred_replayed == 1
        assert heir.flush() == 1
        assert heir.get_usage("u1").daily_spent == Decimal("0.03")
    finally:
        heir.close()
    again = Nasca(n.served.url, api_key=KEY, state_dir=state)
    try:
        assert len(again.pending) == 0
    finally:
        again.close()


def test_invalid_user_is_refused_before_any_request(make_remote):
    n = make_remote()
    with pytest.raises(InvalidUserError):
        n.reserve("0.01")
    with pytest.raises(InvalidUserError):
        n.get_usage("")


def test_nasca_serve_process_serves_v1_with_the_keys_from_the_environment(redis_url, tmp_path):
    import uuid

    config = _remote.serve_config(tmp_path / "nasca.toml", redis_url, f"p{uuid.uuid4().hex[:10]}")
    env = {"NASCA_ADMIN_API_KEYS": _remote.ADMIN_KEY}
    with _remote.ServeProcess(config, keys=f"{OTHER_KEY},{KEY}", env=env) as served:
        n = Nasca(served.url, api_key=KEY, state_dir=str(tmp_path / "j"))
        try:
            r = n.reserve("0.04", user="u1")
            assert n.settle(r, "0.03").cost_nanos == 30_000_000
            u = n.get_usage("u1")
            assert u.daily_spent == Decimal("0.03") and u.daily_limit == Decimal("0.10")
        finally:
            n.close()
        assert raw(served.url, "/v1/usage?user=u1", key="wrong-key-0123456789abc").status_code == 401
        tier = {"user": "u1", "tier": "pro"}
        assert raw(served.url, "/v1/user-tier", tier).status_code == 403  # a plain key
        assert raw(served.url, "/v1/user-tier", tier, key=_remote.ADMIN_KEY).status_code == 200


def test_mounted_under_a_path(serve):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from tests._webapp import LiveServer

    s = serve()
    host = Starlette(routes=[Mount("/nasca", app=s.app)])
    with LiveServer(host) as live:
        n = Nasca(live.url + "/nasca/", api_key=KEY)
        try:
            n.settle(n.reserve("0.01", user="u1"), "0.01")
            assert n.get_usage("u1").daily_spent == Decimal("0.01")
        finally:
            n.close()


def test_the_remote_client_has_the_ledgers_public_api_the_integrations_use():
    from nasca_core import Nasca as Local

    used = ["reserve", "areserve", "settle", "asettle", "release", "arelease", "start_call", "astart_call",
            "wrap", "get_usage", "aget_usage", "set_tier", "aset_tier", "set_user_tier", "aset_user_tier",
            "grant_credits", "agrant_credits", "user", "resolve_user", "flush", "aflush", "close", "aclose",
            "cost_of", "now"]
    for name in used:
        assert callable(getattr(Local, name)) and callable(getattr(RemoteNasca, name)), name
    for name in ("tiers", "pricer", "live"):
        assert isinstance(getattr(RemoteNasca, name), property), name


def test_a_settle_older_than_the_servers_memory_is_kept_aside_not_replayed(tmp_path):
    from nasca_core._types import LedgerStats
    from nasca_core.remote._pending import SETTLED_MEMORY_MS, PendingSettles
    from nasca_core.remote._wire import Hold, SettleBody

    now = [1_000_000]
    stats = LedgerStats()
    pending = PendingSettles("http://127.0.0.1:1", str(tmp_path), stats, lambda: now[0])
    body = SettleBody(hold=Hold(user="u1", tier="free", hold_id="h1", estimate_nanos=5), nanos=7)
    pending.defer(body)
    pending.defer(body)  # the same hold twice is owed once
    assert len(pending) == 1 and stats.deferred_pending_nanos == 7
    now[0] += SETTLED_MEMORY_MS + 1  # the server may have forgotten it took this settle
    sent = []
    assert pending.flush(sent.append) == 0 and sent == [] and len(pending) == 0
    assert stats.deferred_refused == 1 and list(tmp_path.rglob("*.refused"))
    pending.close()


async def test_model_calls_while_the_server_is_down_under_allow(make_remote, tmp_path):
    n = make_remote(on_store_error="allow", state_dir=str(tmp_path / "j"), timeout=2.0)
    usage = TokenUsage(input_tokens=500, output_tokens=50)
    first = await n.astart_call("gpt-4o-mini", prompt="hello " * 100, max_tokens=50, user="u1")
    await first.afinish(usage)
    n.served.stop()
    call = await n.astart_call("gpt-4o-mini", prompt="hello " * 100, max_tokens=50, user="u1")
    assert call.reservation.degraded and call.reservation.estimate_nanos > 0  # the last prices seen
    assert (await call.afinish(usage)).deferred
    n.served.restart()
    assert await n.aflush() == 1
    one = n.served.nasca.cost_of("gpt-4o-mini", usage)
    u = await n.aget_usage("u1")
    assert u.month_calls == 2 and u.month_cost == Decimal(2 * one) / 10**9 and u.in_flight == 0


def test_the_servers_store_down_is_a_503_store_error_and_its_settles_are_kept(serve, redis_server_factory,
                                                                             tmp_path):
    redis_proc = redis_server_factory()
    s = serve(store=f"redis://127.0.0.1:{redis_proc.port}/0", state_dir=str(tmp_path / "server"),
              settle_in_background=False)
    n = Nasca(s.url, api_key=KEY, state_dir=str(tmp_path / "client"))
    try:
        r = n.reserve("0.02", user="u1")
        redis_proc.stop()
        reply = raw(s.url, "/v1/reserve", {"user": "u1", "estimate": "0.01"})
        assert reply.status_code == 503 and reply.json()["error"] == "store_error"
        with pytest.raises(StoreError):
            n.reserve("0.01", user="u1")
        charge = n.settle(r, "0.02")  # the server took it and journaled it for its store
        assert charge.deferred and charge.cost_nanos == 20_000_000 and len(n.pending) == 0
        assert s.nasca.stats.deferred == 1
    finally:
        n.close()


def test_nasca_serve_killed_mid_run_and_restarted_loses_nothing(redis_url, tmp_path):
    import uuid

    config = _remote.serve_config(tmp_path / "nasca.toml", redis_url, f"k{uuid.uuid4().hex[:10]}")
    first = _remote.ServeProcess(config).__enter__()
    n = Nasca(first.url, api_key=KEY, state_dir=str(tmp_path / "j"), timeout=2.0)
    try:
        holds = [n.reserve("0.01", user="u1") for _ in range(4)]
        n.settle(holds[0], "0.01")
        first.kill()
        with pytest.raises(StoreError):
            n.reserve("0.01", user="u1")
        assert all(n.settle(r, "0.02").deferred for r in holds[1:])
        with _remote.ServeProcess(config, port=first.port):
            n.settle(n.reserve("0.01", user="u1"), "0.01")  # sends the three owed first
            assert len(n.pending) == 0
            u = n.get_usage("u1")
            assert u.daily_spent == Decimal("0.08") and u.month_calls == 5 and u.in_flight == 0
    finally:
        n.close()
        first.__exit__()
