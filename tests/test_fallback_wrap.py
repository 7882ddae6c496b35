"""Degrade instead of block through wrap(): the real openai and anthropic SDK clients talking
HTTP to the local provider server, on memory, a SQLite file, a real Redis and a real Cluster.

A user whose tier allowance is spent keeps going on the fallback model: the provider receives
the fallback's name, the call is charged at the fallback's price to the fallback allowance
(not to the tier's), the fallback allowance blocks once spent and resets with its window.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from nasca_core import Fallback, NascaBlockedError, NascaBusyError, Tier, fallback_of
from nasca_core.pricing import TokenUsage
from nasca_core.testing import ProviderServer, Reply, Usage

MSG = [{"role": "user", "content": "Summarise the plot of Hamlet."}]
MAIN = {"chat": "gpt-4o", "responses": "gpt-4o", "messages": "claude-sonnet-4-6"}
LITE = {"chat": "gpt-4o-mini", "responses": "gpt-4o-mini", "messages": "claude-haiku-4-5"}
SPEND_ALL = Usage(input_tokens=2000, output_tokens=1000)  # $0.015 on gpt-4o, $0.021 on sonnet: past $0.01
SMALL = Usage(input_tokens=300, output_tokens=40)
HUGE = Usage(input_tokens=20_000, output_tokens=5_000)  # past the fallback's $0.002 on either lite model


def tier() -> Tier:
    return Tier(monthly="0.01", on_exhausted="fallback",
                fallback_model={"gpt-*": "gpt-4o-mini", "claude-*": "claude-haiku-4-5"},
                fallback_allowance=Tier(daily="0.002"))


@pytest.fixture(scope="module")
def srv():
    with ProviderServer() as server:
        yield server


def _fn(srv, kind, is_async):
    if kind == "messages":
        make = srv.async_anthropic_client if is_async else srv.anthropic_client
        client = make(max_retries=0)
        return client.messages.create
    client = srv.async_openai_client(max_retries=0) if is_async else srv.openai_client(max_retries=0)
    return client.chat.completions.create if kind == "chat" else client.responses.create


def _args(kind, model):
    if kind == "responses":
        return {"model": model, "input": MSG[0]["content"]}
    if kind == "messages":
        return {"model": model, "messages": MSG, "max_tokens": 200}
    return {"model": model, "messages": MSG}


def _call(nasca, srv, kind, is_async, stream, model, **kw):
    """One wrapped call, streams read to the end; returns what wrap() returned. A client per
    call: an async client's connections belong to the event loop that made them."""
    wrapped = nasca.wrap(_fn(srv, kind, is_async))
    args = {**_args(kind, model), **kw}
    if stream:
        args["stream"] = True
    if not is_async:
        result = wrapped(**args)
        if stream:
            list(result)
        return result

    async def go():
        result = await wrapped(**args)
        if stream:
            [e async for e in result]
        return result

    return asyncio.run(go())


def _spent(nasca, user):
    nasca.flush()  # the background sender's settles, landed
    return nasca.get_usage(user)


@pytest.mark.parametrize("kind", ["chat", "responses", "messages"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_spent_tier_runs_on_the_fallback_model_at_its_price(srv, make_nasca, kind, is_async, stream):
    nasca = make_nasca(tiers={"free": tier()}, default_tier="free")
    srv.queue(Reply(text="long answer", usage=SPEND_ALL))
    first = _call(nasca, srv, kind, is_async, stream, MAIN[kind], user="u1")
    assert fallback_of(first) is None and srv.last_request.json["model"] == MAIN[kind]
    main_spent = _spent(nasca, "u1").monthly_spent
    assert main_spent == Decimal(nasca.cost_of(MAIN[kind], TokenUsage(2000, 1000))) / 10**9

    srv.queue(Reply(text="short answer", usage=SMALL))
    before = srv.request_count
    second = _call(nasca, srv, kind, is_async, stream, MAIN[kind], user="u1")
    assert srv.request_count == before + 1
    assert srv.last_request.json["model"] == LITE[kind]  # what the provider received
    fell = fallback_of(second)
    assert isinstance(fell, Fallback) and (fell.model, fell.requested) == (LITE[kind], MAIN[kind])
    assert fell.blocked.window == "monthly" and fell.as_dict()["upgrade_message"]

    usage = _spent(nasca, "u1")
    assert usage.monthly_spent == main_spent  # the tier's allowance is not charged again
    assert usage.fallback is not None and usage.fallback.daily_limit == Decimal("0.002")
    lite_cost = nasca.cost_of(LITE[kind], TokenUsage(300, 40))
    assert usage.fallback.daily_spent == Decimal(lite_cost) / 10**9  # the fallback's price
    assert usage.fallback.month_calls == 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_the_fallback_allowance_blocks_once_spent_and_resets_with_its_window(srv, make_nasca, clock,
                                                                            is_async):
    nasca = make_nasca(tiers={"free": tier()}, default_tier="free")
    srv.queue(Reply(usage=SPEND_ALL), Reply(usage=HUGE))
    _call(nasca, srv, "chat", is_async, False, "gpt-4o", user="u2")
    _call(nasca, srv, "chat", is_async, False, "gpt-4o", user="u2")  # on the fallback, spends it all
    assert srv.last_request.json["model"] == "gpt-4o-mini"
    assert _spent(nasca, "u2").fallback.daily_spent >= Decimal("0.002")

    before = srv.request_count
    with pytest.raises(NascaBlockedError) as blocked:
        _call(nasca, srv, "chat", is_async, False, "gpt-4o", user="u2")
    assert srv.request_count == before  # no HTTP request
    err = blocked.value
    assert not isinstance(err, NascaBusyError)
    assert (err.tier, err.window) == ("free", "monthly")  # the tier's block, for the upgrade prompt
    assert isinstance(err.__cause__, NascaBlockedError) and err.__cause__.window == "daily"

    clock.advance(86_400)  # the fallback's day resets; the tier's month is still spent
    srv.queue(Reply(usage=SMALL))
    again = _call(nasca, srv, "chat", is_async, False, "gpt-4o", user="u2")
    assert srv.last_request.json["model"] == "gpt-4o-mini" and fallback_of(again) is not None
    usage = _spent(nasca, "u2")
    assert usage.fallback.daily_spent == Decimal(nasca.cost_of("gpt-4o-mini", TokenUsage(300, 40))) / 10**9


def _helper(srv, kind, is_async):
    if kind == "messages":
        make = srv.async_anthropic_client if is_async else srv.anthropic_client
        client = make(max_retries=0)
        return client.messages.stream
    client = srv.async_openai_client(max_retries=0) if is_async else srv.openai_client(max_retries=0)
    return client.chat.completions.stream if kind == "chat" else client.responses.stream


@pytest.mark.parametrize("kind", ["chat", "responses", "messages"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_the_sdks_stream_helpers_fall_back_too(srv, make_nasca, kind, is_async):
    nasca = make_nasca(tiers={"free": tier()}, default_tier="free")
    srv.queue(Reply(usage=SPEND_ALL))
    _call(nasca, srv, kind, False, False, MAIN[kind], user="u1")
    wrapped = nasca.wrap(_helper(srv, kind, is_async))
    srv.queue(Reply("short", usage=SMALL))
    args = {**_args(kind, MAIN[kind]), "user": "u1"}
    if is_async:
        async def go():
            async with wrapped(**args) as stream:
                [e async for e in stream]
            return stream

        stream = asyncio.run(go())
    else:
        with wrapped(**args) as stream:
            list(stream)
    assert srv.last_request.json["model"] == LITE[kind]
    assert fallback_of(stream).model == LITE[kind]  # the SDK's own stream object, marked
    usage = _spent(nasca, "u1")
    assert usage.fallback.daily_spent == Decimal(nasca.cost_of(LITE[kind], TokenUsage(300, 40))) / 10**9


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_gemini_falls_back_by_pattern(srv, make_nasca, is_async):
    nasca = make_nasca(tiers={"free": Tier(monthly="0.01", on_exhausted="fallback",
                                           fallback_model={"gemini-*-pro": "gemini-2.5-flash-lite"},
                                           fallback_allowance=Tier(daily="0.002"))}, default_tier="free")
    clients = []  # kept: a collected client closes its connections

    def ask(model):
        clients.append(srv.gemini_client())  # one per call: an async client's loop is asyncio.run's
        wrapped = nasca.wrap((clients[-1].aio.models if is_async else clients[-1].models).generate_content)
        result = wrapped(model=model, contents="Summarise the plot of Hamlet.", user="g")
        return asyncio.run(result) if is_async else result

    srv.queue(Reply(usage=SPEND_ALL))
    ask("gemini-2.5-pro")
    srv.queue(Reply("short", usage=SMALL))
    reply = ask("gemini-2.5-pro")
    lite = "gemini-2.5-flash-lite"
    assert lite in srv.last_request.path and fallback_of(reply).model == lite
    usage = _spent(nasca, "g")
    assert usage.fallback.daily_spent == Decimal(nasca.cost_of(lite, TokenUsage(300, 40))) / 10**9
    before = srv.request_count
    with pytest.raises(NascaBlockedError):  # gemini-2.5-flash matches no pattern: it blocks
        ask("gemini-2.5-flash")
    assert srv.request_count == before


def test_the_output_cap_is_the_fallback_allowances_room(srv, make_nasca):
    nasca = make_nasca(tiers={"free": tier()}, default_tier="free")
    srv.queue(Reply(usage=SPEND_ALL))
    _call(nasca, srv, "chat", False, False, "gpt-4o", user="u1")
    srv.queue(Reply("short", usage=SMALL))
    nasca.wrap(srv.openai_client(max_retries=0).chat.completions.create, cap_output=True)(
        model="gpt-4o", messages=MSG, user="u1")
    sent = srv.last_request.json
    # $0.002 at gpt-4o-mini's $0.60 per million output tokens: about 3,300 tokens, not the
    # tier's spent room (1 token) and not the model's 16,384
    assert sent["model"] == "gpt-4o-mini" and 3000 < sent["max_completion_tokens"] < 3334


def test_a_fallback_stream_stopped_early_is_charged_to_the_fallback(srv, make_nasca):
    nasca = make_nasca(tiers={"free": tier()}, default_tier="free")
    srv.queue(Reply(usage=SPEND_ALL))
    _call(nasca, srv, "chat", False, False, "gpt-4o", user="u1")
    main = _spent(nasca, "u1").monthly_spent
    srv.queue(Reply("a long answer that the reader stops reading after its first words", usage=SMALL))
    stream = nasca.wrap(srv.openai_client(max_retries=0).chat.completions.create)(
        model="gpt-4o", messages=MSG, user="u1", stream=True)
    next(iter(stream))
    stream.close()
    usage = _spent(nasca, "u1")
    assert usage.monthly_spent == main and usage.fallback.daily_spent > 0  # the prompt, at gpt-4o-mini
    assert usage.fallback.month_calls == 1
