"""On LangChain's async paths the handler awaits the async store: no store round trip runs
synchronously on the event loop, while a blocked call still raises before the provider on
every path, sync and async, with the same handler object. Real Redis, a real HTTP provider."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_openai import ChatOpenAI

import nasca_langchain._handler as handler_module
from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core.testing import ProviderServer
from nasca_langchain import NascaCallbackHandler

GPT = "gpt-4o-mini"
OPS = ("reserve", "settle", "release", "snapshot")


@pytest.fixture
def srv() -> Iterator[ProviderServer]:
    with ProviderServer(reply="Paris.") as server:
        yield server


@pytest.fixture
def nasca(redis_url: str, tmp_path: Any) -> Iterator[Nasca]:
    n = Nasca(redis_url, tiers={"free": Tier(daily="0.10")}, default_tier="free",
              namespace=f"la{uuid.uuid4().hex[:10]}", state_dir=str(tmp_path))
    yield n
    n.close()


def _on_loop_sync_calls(n: Any) -> list[str]:
    """Records every sync store call made on a thread that is running an event loop."""
    seen: list[str] = []
    store = n.store.sync
    for name in OPS:
        real = getattr(store, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                seen.append(f"{_name} on {threading.current_thread().name}")
            except RuntimeError:
                pass
            return _real(*args, **kwargs)

        setattr(store, name, spy)
    return seen


def _cfg(handler: Any, user: str = "u1") -> dict[str, Any]:
    return {"callbacks": [handler], "metadata": {"nasca_user_id": user}}


def _model(srv: ProviderServer) -> ChatOpenAI:
    return ChatOpenAI(model=GPT, base_url=srv.base_url, api_key="x", max_retries=0, stream_usage=True)


async def test_async_paths_make_no_sync_store_call_on_the_loop(nasca: Any, srv: ProviderServer) -> None:
    seen = _on_loop_sync_calls(nasca)
    handler, model = NascaCallbackHandler(nasca), _model(srv)
    await model.ainvoke("Hi", config=_cfg(handler))
    [_ async for _ in model.astream("Hi", config=_cfg(handler))]
    await model.abatch(["Hi", "Hello"], config=_cfg(handler))
    await asyncio.gather(*(model.ainvoke("Hi", config=_cfg(handler, f"g{i}")) for i in range(10)))
    assert seen == []
    await nasca.aflush()
    assert (await nasca.aget_usage("u1")).month_calls == 4 and srv.request_count == 14
    assert nasca.stats.settled == 14 and nasca.stats.settle_queued == 14  # all off the caller's path


def test_one_handler_object_blocks_sync_and_async_calls(nasca: Any, srv: ProviderServer) -> None:
    handler, model = NascaCallbackHandler(nasca), _model(srv)
    nasca.settle(nasca.reserve(nanos=1, user="u1"), cost="0.10")  # the whole daily allowance
    with pytest.raises(NascaBlockedError):
        model.invoke("Hi", config=_cfg(handler))
    with pytest.raises(NascaBlockedError):
        list(model.stream("Hi", config=_cfg(handler)))
    with pytest.raises(NascaBlockedError):
        model.batch(["Hi", "Hello"], config=_cfg(handler))

    async def main() -> None:
        with pytest.raises(NascaBlockedError):
            await model.ainvoke("Hi", config=_cfg(handler))
        with pytest.raises(NascaBlockedError):
            [_ async for _ in model.astream("Hi", config=_cfg(handler))]
        with pytest.raises(NascaBlockedError):
            await model.abatch(["Hi", "Hello"], config=_cfg(handler))
        await nasca.store.aclose()

    asyncio.run(main())
    assert srv.request_count == 0
    assert nasca.get_usage("u1").in_flight == 0


async def test_without_the_async_dispatcher_it_still_blocks_with_the_sync_methods(
        nasca: Any, srv: ProviderServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # A langchain-core that renamed its dispatcher gets the sync methods: enforced, on the loop.
    monkeypatch.setattr(handler_module, "ASYNC_DISPATCH", ("langchain_core.callbacks.manager", "renamed"))
    seen = _on_loop_sync_calls(nasca)
    handler, model = NascaCallbackHandler(nasca), _model(srv)
    await model.ainvoke("Hi", config=_cfg(handler))
    assert [s.split()[0] for s in seen] == ["reserve"]  # the settle still went to the sender
    nasca.settle(nasca.reserve(nanos=1, user="u1"), cost="0.10")
    with pytest.raises(NascaBlockedError):
        await model.ainvoke("Hi", config=_cfg(handler))
    assert srv.request_count == 1
