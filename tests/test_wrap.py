"""nasca.wrap() around the real openai and anthropic SDK clients, talking HTTP to the local server."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from nasca_core import ConfigurationError, Nasca, NascaBlockedError, Tier, UnknownModelError
from nasca_core.pricing import TokenUsage, count_tokens
from nasca_core.testing import ProviderServer, Reply, Usage

MSG = [{"role": "user", "content": "How many tokens is this question?"}]


@pytest.fixture(scope="module")
def srv():
    with ProviderServer() as server:
        yield server


@pytest.fixture
def nasca(make_nasca):
    return make_nasca(tiers={"t": Tier(daily="0.50")}, default_tier="t")


def _create(srv, kind, is_async):
    if kind == "messages":
        client = srv.async_anthropic_client() if is_async else srv.anthropic_client()
        return client.messages.create, "claude-haiku-4-5-20251001"
    client = srv.async_openai_client(max_retries=0) if is_async else srv.openai_client(max_retries=0)
    fn = client.chat.completions.create if kind == "chat" else client.responses.create
    return fn, "gpt-4o-mini"


def _args(kind, model):
    if kind == "responses":
        return {"model": model, "input": "How many tokens is this question?"}
    if kind == "messages":
        return {"model": model, "messages": MSG, "max_tokens": 100}
    return {"model": model, "messages": MSG}


def _consume(result, is_async, stream):
    if not stream:
        return result

    async def drain():
        return [e async for e in result]

    return asyncio.run(drain()) if is_async else list(result)


def _run(fn, is_async, **kw):
    if is_async:
        return asyncio.run(fn(**kw))
    return fn(**kw)


@pytest.mark.parametrize("kind", ["chat", "responses", "messages"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_charges_exactly_what_the_provider_reported(srv, nasca, kind, is_async, stream):
    fn, model = _create(srv, kind, is_async)
    wrapped = nasca.wrap(fn)
    usage = Usage(input_tokens=1200, output_tokens=300, cached_tokens=200, reasoning_tokens=0)
    srv.queue(Reply(text="twelve", usage=usage))
    before = srv.request_count
    if is_async:
        async def go():
            result = await wrapped(**_args(kind, model), stream=stream, user="u1")
            if stream:
                return [e async for e in result]
            return result
        asyncio.run(go())
    else:
        _consume(wrapped(**_args(kind, model), stream=stream, user="u1"), False, stream)
    assert srv.request_count == before + 1
    u = nasca.get_usage("u1")
    expected = nasca.cost_of(model, TokenUsage(input_tokens=1200, output_tokens=300, cache_read_tokens=200))
    assert u.month_input_tokens == 1200 and u.month_output_tokens == 300
    assert u.month_cost == Decimal(expected) / 10**9 and u.in_flight == 0


@pytest.mark.parametrize("kind", ["chat", "responses", "messages"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_blocked_user_makes_no_request(srv, nasca, kind, is_async, stream):
    fn, model = _create(srv, kind, is_async)
    wrapped = nasca.wrap(fn)
    nasca.settle(nasca.reserve("0.50", user="broke"), "0.50")
    before = srv.request_count
    with pytest.raises(NascaBlockedError) as info:
        _run(wrapped, is_async, **_args(kind, model), user="broke", stream=stream)
    assert info.value.window == "daily"
    assert srv.request_count == before


def test_openai_stream_gets_usage_and_hides_the_extra_chunk(srv, nasca):
    wrapped = nasca.wrap(srv.openai_client().chat.completions.create)
    srv.queue(Reply(text="one two three four", usage=Usage(input_tokens=50, output_tokens=4)))
    chunks = list(wrapped(model="gpt-4o-mini", messages=MSG, stream=True, user="s"))
    assert srv.last_request.json["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in chunks)  # the usage-only chunk was not shown
    assert nasca.get_usage("s").month_output_tokens == 4
    srv.queue(Reply(text="one two", usage=Usage(input_tokens=50, output_tokens=2)))
    chunks = list(wrapped(model="gpt-4o-mini", messages=MSG, stream=True, user="s",
                          stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2  # asked for: kept


def test_aborted_stream_charges_prompt_and_streamed_text(srv, nasca):
    wrapped = nasca.wrap(srv.openai_client().chat.completions.create)
    srv.queue(Reply(text="word " * 400, usage=Usage(input_tokens=20, output_tokens=400)))
    stream = wrapped(model="gpt-4o-mini", messages=MSG, stream=True, user="ab", max_tokens=500)
    for i, _chunk in enumerate(stream):
        if i == 2:
            break
    del _chunk
    stream.close()
    u = nasca.get_usage("ab")
    assert u.in_flight == 0 and u.month_calls == 1
    assert 0 < u.month_output_tokens < 400  # what was streamed, not the estimate, not $0
    assert u.month_input_tokens > 0


def test_provider_error_releases_the_hold(srv, nasca):
    import openai

    wrapped = nasca.wrap(srv.openai_client(max_retries=0).chat.completions.create)
    srv.fail_next(status=500)
    with pytest.raises(openai.InternalServerError):
        wrapped(model="gpt-4o-mini", messages=MSG, user="err")
    u = nasca.get_usage("err")
    assert u.in_flight == 0 and u.month_calls == 0


def test_user_from_context_and_trailing_ctx(srv, make_nasca):
    class Ctx:
        uid = "from-ctx"

    n = make_nasca(tiers={"t": Tier(daily=1)}, default_tier="t", get_user_id=lambda c: c.uid)
    wrapped = n.wrap(srv.openai_client().chat.completions.create)
    wrapped(Ctx(), model="gpt-4o-mini", messages=MSG)
    with n.user("from-with"):
        wrapped(model="gpt-4o-mini", messages=MSG)
    assert n.get_usage("from-ctx").month_calls == 1 and n.get_usage("from-with").month_calls == 1
    assert "user" not in srv.last_request.json  # nothing added to the request


def test_unknown_model_and_bad_targets(srv, nasca):
    wrapped = nasca.wrap(srv.openai_client().chat.completions.create)
    before = srv.request_count
    with pytest.raises(UnknownModelError):
        wrapped(model="my-finetune-xyz", messages=MSG, user="u")
    assert srv.request_count == before and nasca.get_usage("u").in_flight == 0
    with pytest.raises(ConfigurationError):
        nasca.wrap(print)
    with pytest.raises(ConfigurationError):
        nasca.wrap(srv.openai_client().models.list)


def test_unknown_model_price_as_policy(srv, make_nasca):
    n = make_nasca(tiers={"t": Tier(daily=1)}, default_tier="t", unknown_model="price_as:gpt-4o")
    wrapped = n.wrap(srv.openai_client().chat.completions.create)
    srv.queue(Reply(text="x", usage=Usage(input_tokens=1000, output_tokens=100)))
    wrapped(model="my-finetune-xyz", messages=MSG, user="p")
    expected = n.cost_of("gpt-4o", TokenUsage(input_tokens=1000, output_tokens=100))
    assert n.get_usage("p").month_cost == Decimal(expected) / 10**9 > 0
    assert isinstance(Nasca, type)


def test_expected_output_defaults_per_nasca_and_per_tier(srv, make_nasca):
    """Without max_tokens, the hold is the prompt plus a default output, per tier if set."""
    from nasca_core.pricing import count_message_tokens

    n = make_nasca(tiers={"small": Tier(daily=1), "long": Tier(daily=1, default_output_tokens=1000)},
                   default_tier="small", default_output_tokens=300)
    prompt = count_message_tokens(MSG, "gpt-4o-mini")
    for tier, out in (("small", 300), ("long", 1000)):
        call = n.start_call("gpt-4o-mini", messages=MSG, user=f"d-{tier}", tier=tier)
        expected = n.cost_of("gpt-4o-mini", TokenUsage(input_tokens=prompt, output_tokens=out))
        assert call.reservation.estimate_nanos == expected
        assert n.get_usage(f"d-{tier}", tier=tier).in_flight == Decimal(expected) / 10**9
        call.fail()
    capped = n.start_call("gpt-4o-mini", messages=MSG, user="d-cap", max_tokens=10)
    assert capped.reservation.estimate_nanos == n.cost_of(
        "gpt-4o-mini", TokenUsage(input_tokens=prompt, output_tokens=10))
    capped.fail()


UNREADABLE = {
    "chat": {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": "Four words, more or less."}}],
             "usage": {"prompt_tokens": "many", "completion_tokens": -3, "total_tokens": None}},
    "messages": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5-20251001",
                 "content": [{"type": "text", "text": "Four words, more or less."}],
                 "stop_reason": "end_turn", "stop_sequence": None,
                 "usage": {"input_tokens": "many", "output_tokens": -3}},
}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", ["chat", "messages"])
def test_unreadable_usage_charges_counted_tokens_and_closes_the_hold(srv, make_nasca, kind, is_async):
    nasca = make_nasca(tiers={"t": Tier(daily="0.50")}, default_tier="t")
    srv.queue(Reply(wire=UNREADABLE[kind]))
    fn, model = _create(srv, kind, is_async)
    reply = _run(nasca.wrap(fn), is_async, user="u", **_args(kind, model))
    assert reply is not None  # the caller gets the provider's answer, not an error
    u = nasca.get_usage("u")
    assert u.in_flight == 0 and u.month_calls == 1 and u.month_cost > 0
    assert u.month_output_tokens == count_tokens("Four words, more or less.", model)
