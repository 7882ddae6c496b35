"""astarted/started: a streaming endpoint answers a blocked user 402 before the first byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core.testing import ProviderServer, Reply
from nasca_langchain import NascaCallbackHandler, astarted, started, upgrade_fields

REPLY = "one two three four five six"


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    with ProviderServer() as server:
        yield server


def chain(srv: ProviderServer) -> Any:
    model = ChatOpenAI(model="gpt-4o-mini", base_url=srv.base_url, api_key="x", max_retries=0,
                       stream_usage=True)
    return ChatPromptTemplate.from_messages([("human", "{q}")]) | model | StrOutputParser()


def app(nasca: Nasca, srv: ProviderServer) -> Starlette:
    handler = NascaCallbackHandler(nasca)

    async def ask(request: Request) -> Response:
        config = {"callbacks": [handler], "metadata": {"nasca_user_id": request.query_params["user"]}}
        try:
            chunks = await astarted(chain(srv).astream({"q": "hi"}, config=config))
        except NascaBlockedError as err:
            return JSONResponse(upgrade_fields(err), status_code=402)
        return StreamingResponse(chunks, media_type="text/plain")

    return Starlette(routes=[Route("/ask", ask)])


async def test_blocked_user_gets_402_and_others_stream(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    nasca.settle(nasca.reserve(nanos=1, user="broke"), "1")
    srv.queue(Reply(REPLY))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app(nasca, srv)),
                                 base_url="http://app") as client:
        r = await client.get("/ask", params={"user": "broke"})
        assert r.status_code == 402
        assert r.json()["window"] == "daily" and r.json()["user_id"] == "broke"
        assert srv.request_count == 0
        r = await client.get("/ask", params={"user": "ok"})
        assert r.status_code == 200 and r.text == REPLY
    u = nasca.get_usage("ok")
    assert u.month_calls == 1 and u.in_flight == 0
    assert u.month_output_tokens == srv.requests[0].usage.output_tokens  # type: ignore[union-attr]


async def test_a_stream_closed_early_is_closed_and_charged(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    srv.queue(Reply(REPLY))
    config = {"callbacks": [NascaCallbackHandler(nasca)], "metadata": {"nasca_user_id": "u1"}}
    chunks = await astarted(chain(srv).astream({"q": "hi"}, config=config))
    got = [await anext(chunks), await anext(chunks)]
    assert "".join(got) and "".join(got) != REPLY
    await chunks.aclose()  # what a server does when the client hangs up
    # LCEL cancels the model's task; its callbacks settle once the task has unwound.
    for _ in range(100):
        if nasca.get_usage("u1").in_flight == 0:
            break
        await asyncio.sleep(0.02)
    u = nasca.get_usage("u1")
    assert u.month_calls == 1 and u.in_flight == 0 and u.month_cost > 0


def test_sync_twin(srv: ProviderServer) -> None:
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    nasca.settle(nasca.reserve(nanos=1, user="broke"), "1")
    srv.queue(Reply(REPLY))
    c = chain(srv)
    handler = NascaCallbackHandler(nasca)
    with pytest.raises(NascaBlockedError):
        started(c.stream({"q": "hi"}, config={"callbacks": [handler],
                                              "metadata": {"nasca_user_id": "broke"}}))
    assert srv.request_count == 0
    text = "".join(started(c.stream({"q": "hi"}, config={"callbacks": [handler],
                                                         "metadata": {"nasca_user_id": "ok"}})))
    assert text == REPLY


async def test_empty_streams() -> None:
    async def nothing() -> AsyncIterator[str]:
        return
        yield

    assert [x async for x in await astarted(nothing())] == []
    assert list(started(iter(()))) == []


def test_a_stream_without_usage_warns_once_per_model(srv: ProviderServer, caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import nasca_langchain._handler as handler_module

    monkeypatch.setattr(handler_module, "_counted_models", set())
    nasca = Nasca("memory://", tiers={"free": Tier(daily=1)}, default_tier="free")
    model = ChatOpenAI(model="gpt-4o-mini", base_url=srv.base_url, api_key="x", max_retries=0)
    config = {"callbacks": [NascaCallbackHandler(nasca)], "metadata": {"nasca_user_id": "u1"}}
    srv.queue(Reply(REPLY), Reply(REPLY), Reply(REPLY))
    with caplog.at_level("WARNING", logger="nasca.langchain"):
        for _ in range(2):
            assert "".join(str(c.content) for c in model.stream("hi", config=config)) == REPLY
        model.invoke("hi", config=config)  # reports usage: nothing to say
    warnings = [r for r in caplog.records if "reported no token usage" in r.getMessage()]
    assert len(warnings) == 1 and "gpt-4o-mini" in warnings[0].getMessage()
    assert nasca.get_usage("u1").month_calls == 3
