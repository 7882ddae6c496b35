"""An LLMCall's streamed-text counter is made once, also when two threads add its first texts
at once (a framework may report one stream's chunks from more than one thread)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from nasca_core import Nasca, Tier, _calls
from nasca_core.pricing import TokenUsage, count_tokens


def test_two_threads_first_texts_are_both_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    n = Nasca("memory://", tiers={"t": Tier(monthly=10)}, default_tier="t")  # no store read: text only
    call = n.start_call("gpt-4o-mini", prompt="hi", max_tokens=10, user="u")
    real = _calls.counting_model

    def slow(pricer: Any, model: str) -> str:  # widens the window between the check and the set
        time.sleep(0.05)
        return real(pricer, model)

    monkeypatch.setattr(_calls, "counting_model", slow)
    start = threading.Barrier(2)

    def add(text: str) -> None:
        start.wait()
        call.add_text(text)

    threads = [threading.Thread(target=add, args=(t,)) for t in (" Sunny ", " today. ")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(call.counter.text.split()) == ["Sunny", "today."]
    text = call.counter.text
    charge = call.abort()
    assert charge.cost_nanos == n.pricer.cost(
        "gpt-4o-mini", TokenUsage(call.prompt_tokens, count_tokens(text, "gpt-4o-mini")))
    n.close()
