"""cap_output=True: near the limit, wrap() lowers the request's max tokens to what the user's
allowance and credits still buy, so the call can't overshoot on output. Real openai and
anthropic clients against the local provider server; every store."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from nasca_core import Tier
from nasca_core._calls import max_output_of
from nasca_core.testing import ProviderServer, Reply

MSG = [{"role": "user", "content": "Tell me a long story."}]
LONG = "word " * 3000  # what the model would say, unless max tokens stop it
LIMIT = 2_000_000  # nanos: $0.002 a day
PRE_SPENT = 1_500_000
FIELD = {"chat": "max_completion_tokens", "responses": "max_output_tokens", "messages": "max_tokens"}


@pytest.fixture(scope="module")
def srv():
    with ProviderServer() as server:
        yield server


def _client(srv, kind, is_async):
    if kind == "messages":
        c = srv.async_anthropic_client() if is_async else srv.anthropic_client()
        return c.messages.create, "claude-haiku-4-5-20251001"
    c = srv.async_openai_client(max_retries=0) if is_async else srv.openai_client(max_retries=0)
    return (c.chat.completions.create if kind == "chat" else c.responses.create), "gpt-4o-mini"


def _request(kind, model, max_tokens):
    body = {"model": model, "input": MSG[0]["content"]} if kind == "responses" else {"model": model,
                                                                                   "messages": MSG}
    if max_tokens is not None:
        body[FIELD[kind]] = max_tokens
    return body


def _call(fn, is_async, stream=False, **kw):
    if not is_async:
        result = fn(**kw, stream=True) if stream else fn(**kw)
        return list(result) if stream else result

    async def go():
        result = await (fn(**kw, stream=True) if stream else fn(**kw))
        return [e async for e in result] if stream else result

    return asyncio.run(go())


def _spend(n, user, nanos):
    n.settle(n.reserve(nanos=nanos, user=user), nanos=nanos)


def _spent(n, user) -> int:
    n.flush()
    return int(n.get_usage(user).daily_spent * 10**9)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", ["chat", "responses", "messages"])
def test_near_the_limit_the_provider_gets_a_lower_cap_and_spend_stays_within(srv, make_nasca, kind,
                                                                           is_async):
    n = make_nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t")
    fn, model = _client(srv, kind, is_async)
    wrapped = n.wrap(fn, cap_output=True)
    _spend(n, "near", PRE_SPENT)
    srv.queue(Reply(text=LONG))
    _call(wrapped, is_async, user="near", **_request(kind, model, 4000))
    sent = srv.last_request.json[FIELD[kind]]
    # what the room buys after the prompt, at the model's output price (within a token or two
    # of rounding): far below the 4,000 asked for, and more than nothing
    per_token = n.cost_of(model, _usage(output=1_000_000)) / 1_000_000
    assert 1 <= sent < 4000 and abs(sent - (LIMIT - PRE_SPENT) / per_token) < 50
    assert srv.last_request.usage.output_tokens <= sent
    assert _spent(n, "near") <= LIMIT  # the call could not overshoot on output
    # without the cap the same call overshoots: the cap is what held it
    uncapped = n.wrap(_client(srv, kind, is_async)[0])  # a new client: an async one is bound to its loop
    _spend(n, "again", PRE_SPENT)
    srv.queue(Reply(text=LONG))
    _call(uncapped, is_async, user="again", **_request(kind, model, 4000))
    assert srv.last_request.json[FIELD[kind]] == 4000 and _spent(n, "again") > LIMIT


def _usage(**kw):
    from nasca_core.pricing import TokenUsage

    return TokenUsage(input_tokens=kw.get("input", 0), output_tokens=kw.get("output", 0))


def test_far_from_the_limit_nothing_is_changed(srv, make_nasca):
    n = make_nasca(tiers={"t": Tier(daily=10)}, default_tier="t", cap_output=True)  # the Nasca's default
    for kind in ("chat", "responses", "messages"):
        fn, model = _client(srv, kind, False)
        wrapped = n.wrap(fn)
        _call(wrapped, False, user="far", **_request(kind, model, 50))
        assert srv.last_request.json[FIELD[kind]] == 50
        if kind != "messages":  # Anthropic requires max_tokens; OpenAI's stays unset
            _call(wrapped, False, user="far", **_request(kind, model, None))
            assert FIELD[kind] not in srv.last_request.json and "max_tokens" not in srv.last_request.json


def test_a_call_without_max_tokens_gets_one_near_the_limit_and_streams_too(srv, make_nasca):
    n = make_nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    fn, model = _client(srv, "chat", False)
    _spend(n, "nomax", PRE_SPENT)
    srv.queue(Reply(text=LONG))
    _call(n.wrap(fn), False, stream=True, user="nomax", **_request("chat", model, None))
    sent = srv.last_request.json["max_completion_tokens"]
    assert 1 <= sent < max_output_of(n.pricer, model) and _spent(n, "nomax") <= LIMIT


def test_credits_count_in_the_room(srv, make_nasca):
    n = make_nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    fn, model = _client(srv, "chat", False)
    per_token = n.cost_of(model, _usage(output=1_000_000)) / 1_000_000
    _spend(n, "rich", PRE_SPENT)
    n.billing.grant_credits("rich", spend=Decimal(1_000_000) / 10**9, paid="0", idempotency_key="cap-1")
    srv.queue(Reply(text=LONG))
    _call(n.wrap(fn), False, user="rich", **_request("chat", model, 4000))
    sent = srv.last_request.json["max_completion_tokens"]
    assert abs(sent - (LIMIT - PRE_SPENT + 1_000_000) / per_token) < 50  # allowance left + credits
    n.flush()
    u = n.get_usage("rich")
    assert u.daily_spent <= Decimal(LIMIT) / 10**9 and u.credit_balance >= 0


def test_a_prompt_that_fills_the_room_gets_one_token(srv, make_nasca):
    n = make_nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    fn, model = _client(srv, "messages", False)
    _spend(n, "full", LIMIT - 1)  # one nano left: admitted (default admission), the prompt alone overshoots
    _call(n.wrap(fn), False, user="full", **_request("messages", model, 500))
    assert srv.last_request.json["max_tokens"] == 1


def test_the_nascas_default_comes_from_the_environment_too(monkeypatch):
    from nasca_core import Nasca

    monkeypatch.setenv("NASCA_CAP_OUTPUT", "true")
    assert Nasca.from_env(tiers={"t": Tier(daily=1)}).cap_output is True
    monkeypatch.delenv("NASCA_CAP_OUTPUT")
    assert Nasca.from_env(tiers={"t": Tier(daily=1)}).cap_output is False


@pytest.mark.parametrize("config", ["dict", "object", "none"])
def test_gemini_config_gets_the_cap(srv, make_nasca, config):
    from google.genai import types

    n = make_nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    client = srv.gemini_client()  # kept: a collected client closes its connections
    generate = n.wrap(client.models.generate_content)
    given = {"dict": {"max_output_tokens": 4000}, "none": None,
             "object": types.GenerateContentConfig(max_output_tokens=4000)}[config]
    _spend(n, "g", PRE_SPENT)
    srv.queue(Reply(text=LONG))
    generate(model="gemini-2.5-flash", contents="Tell me a long story.", config=given, user="g")
    sent = srv.last_request.json["generationConfig"]["maxOutputTokens"]
    assert 1 <= sent < 4000 and _spent(n, "g") <= LIMIT


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_stream_helpers_are_capped(srv, make_nasca, is_async):
    n = make_nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    client = srv.async_anthropic_client() if is_async else srv.anthropic_client()
    stream = n.wrap(client.messages.stream)
    _spend(n, "h", PRE_SPENT)
    srv.queue(Reply(text=LONG))
    args = {"model": "claude-haiku-4-5-20251001", "messages": MSG, "max_tokens": 4000, "user": "h"}
    if is_async:
        async def go():
            async with stream(**args) as s:
                return await s.get_final_text()

        asyncio.run(go())
    else:
        with stream(**args) as s:
            s.get_final_text()
    sent = srv.last_request.json["max_tokens"]
    assert 1 <= sent < 4000 and _spent(n, "h") <= LIMIT


def test_without_max_tokens_the_room_is_sent_whenever_it_cant_pay_the_models_most(srv, make_nasca):
    """A room of ~10,000 output tokens on gpt-4o-mini (at most 16,384 out): before, a call
    without max_tokens went uncapped above 4,096 and could write past the room."""
    per_token = 600  # nanos: gpt-4o-mini's output
    assert max_output_of(make_nasca().pricer, "gpt-4o-mini") == 16_384
    n = make_nasca(tiers={"t": Tier(daily=Decimal(20_000 * per_token) / 10**9)}, default_tier="t",
                   cap_output=True)
    fn, model = _client(srv, "chat", False)
    _spend(n, "wide", 10_000 * per_token)
    _call(n.wrap(fn), False, user="wide", **_request("chat", model, None))
    assert abs(srv.last_request.json["max_completion_tokens"] - 10_000) < 50
    _call(n.wrap(fn), False, user="rich", **_request("chat", model, None))  # the room pays 16,384
    assert "max_completion_tokens" not in srv.last_request.json


def _priced(rates_now, rates_later=None, expires=float("inf")):
    """A Pricer whose "m" is charged ``rates_now`` until ``expires``, then ``rates_later``
    (the table's own dated-price path: time-of-day prices, a scheduled change)."""
    from nasca_core.pricing import Pricer
    from nasca_core.pricing._rates import Rates
    from nasca_core.pricing._table import PriceTable, _Entry

    table = PriceTable.default()
    now = Rates(rates_now, expires=expires)
    table._cost_cache["m"] = _Entry(now, lambda tier: Rates(rates_later or rates_now))
    return Pricer(table)


def _rate(inp=0, out=0, fee=0):  # nanos per million tokens (a fee: per request, times a million)
    return (inp, inp, inp, inp, inp, inp, out, out, out, out, 0, 0, 0, fee)


def _brute(pricer, prompt, room, want):
    from nasca_core.pricing import TokenUsage

    fits = [o for o in range(1, want + 1)
            if pricer.cost("m", TokenUsage(input_tokens=prompt, output_tokens=o)) <= room]
    return None if fits and fits[-1] == want else max(fits, default=1)


def test_a_dated_price_change_reaches_the_cap(monkeypatch):
    import time

    import nasca_core.pricing._table as table_module
    from nasca_core._calls import output_cap

    pricer = _priced(_rate(100_000_000, 600_000_000), _rate(100_000_000, 6_000_000_000),
                     expires=time.time() + 60)
    room = 1000 * 600 + 10 * 100  # 1,000 output tokens and a 10-token prompt at the first price
    assert output_cap(pricer, "m", 10, room, 1000) is None
    monkeypatch.setattr(table_module, "_time", lambda: time.time() + 120)  # the price changed
    assert output_cap(pricer, "m", 10, room, 1000) == _brute(pricer, 10, room, 1000) == 100


@pytest.mark.parametrize("fee", [0, 1, 7_000_000, 10_000_000_000])
def test_the_cap_is_the_largest_output_that_fits_per_request_fee_included(fee):
    from nasca_core._calls import output_cap

    pricer = _priced(_rate(150_000_000, 600_000_000, fee))
    for prompt, room, want in [(10, 60_000, 500), (1, 300_000, 400), (1000, 150_000, 100),
                               (5, 10_000 + fee // 10**6, 50), (3, fee // 10**6 + 1, 20),
                               (5, 30_750 + fee // 2 // 10**6, 50)]:  # the fee alone is over
        assert output_cap(pricer, "m", prompt, room, want) == _brute(pricer, prompt, room, want), room


def test_responses_caps_are_at_least_16_and_thinking_stays_valid(srv, make_nasca):
    """The provider refuses a Responses max_output_tokens below 16, and an Anthropic
    max_tokens not above thinking.budget_tokens (itself at least 1,024)."""
    n = make_nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    responses, model = _client(srv, "responses", False)
    _spend(n, "tiny", LIMIT - 1)
    _call(n.wrap(responses), False, user="tiny", **_request("responses", model, 500))
    assert srv.last_request.json["max_output_tokens"] == 16
    claude, model = _client(srv, "messages", False)
    _spend(n, "think", PRE_SPENT)  # room for ~100 output tokens on claude haiku
    thinking = {"type": "enabled", "budget_tokens": 2000}
    _call(n.wrap(claude), False, user="think", thinking=thinking, **_request("messages", model, 4000))
    sent = srv.last_request.json
    assert sent["thinking"]["budget_tokens"] == 1024 < sent["max_tokens"] == 1025
    wide = make_nasca(tiers={"t": Tier(daily=Decimal(10 * LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    _spend(wide, "think2", 10 * LIMIT - 7_500_000)  # room for ~1,500 tokens: the budget goes below the cap
    _call(wide.wrap(claude), False, user="think2", thinking=thinking, **_request("messages", model, 4000))
    sent = srv.last_request.json
    assert 1024 <= sent["thinking"]["budget_tokens"] == sent["max_tokens"] - 1 < 1999


@pytest.mark.parametrize("way", ["call", "helper", "async"])
def test_a_cap_that_raises_releases_the_hold(srv, make_nasca, monkeypatch, way):
    import nasca_core._wrap as wrap_module

    def broken(*args, **kwargs):
        raise RuntimeError("a request the cap can't be written into")

    monkeypatch.setattr(wrap_module, "lower_cap", broken)
    n = make_nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    _spend(n, "leak", PRE_SPENT)
    client = srv.async_anthropic_client() if way == "async" else srv.anthropic_client()
    fn = client.messages.stream if way == "helper" else client.messages.create
    args = {"model": "claude-haiku-4-5-20251001", "messages": MSG, "max_tokens": 4000, "user": "leak"}
    with pytest.raises(RuntimeError, match="can't be written"):
        if way == "async":
            asyncio.run(n.wrap(fn)(**args))
        else:
            n.wrap(fn)(**args)
    n.flush()
    assert n.get_usage("leak").in_flight == 0


def test_a_retried_reserve_has_the_room_of_the_first(make_nasca):
    """A client retry after a lost reply (redis-py retries timeouts) holds once; its room must
    be the first reply's, credits included, or a credit-funded call is capped to one token."""
    n = make_nasca(tiers={"t": Tier(daily=Decimal(LIMIT) / 10**9)}, default_tier="t", cap_output=True)
    _spend(n, "r", LIMIT)  # the allowance is gone: only credits pay
    n.billing.grant_credits("r", spend=Decimal(1_000_000) / 10**9, paid="0", idempotency_key="retry-1")
    op = n._reserve_op(n.live.current(), "r", "t", 1000, None, ceil=10**9)
    first, again = n.store.sync.reserve(op), n.store.sync.reserve(op)
    assert first.status == again.status == 1 and first.room == again.room == 1_000_000
    assert again.held == first.held  # held once


def test_the_ceiling_goes_to_the_reserve_only_when_capping(make_nasca):
    """Without the cap the reserve never reads credit lots for a room no one reads."""
    from nasca_core._calls import estimate_call

    n = make_nasca()
    args = {"messages": MSG, "prompt": None, "prompt_tokens": None, "tools": None, "max_tokens": None,
            "tier": None, "default_output_tokens": 256}
    _, estimate, ceiling = estimate_call(n.pricer, "gpt-4o-mini", **args, capped=True)
    assert ceiling > estimate and estimate_call(n.pricer, "gpt-4o-mini", **args)[2] == 0
