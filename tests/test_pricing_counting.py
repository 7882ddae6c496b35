"""Counting follows the resolved model; a reported input of 0 for a real prompt is replaced."""

from __future__ import annotations

import logging

import pytest

from nasca_core import Nasca, Tier
from nasca_core.pricing import TokenUsage, count_tokens, encoding_name_for

TEXT = "Grüße aus München! Ça va très bien, merci. 東京の天気はどうですか？ " * 20


@pytest.fixture
def nasca():
    n = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t",
              model_aliases={"prod-chat": "gpt-4o", "cheap": "gpt-4o-mini"})
    yield n
    n.close()


def test_codex_mini_and_newer_families_count_with_o200k() -> None:
    for model in ("codex-mini-latest", "gpt-6-sol", "gpt-5.5", "o4-mini", "gpt-realtime"):
        assert encoding_name_for(model) == "o200k_base", model
    assert encoding_name_for("prod-chat") == "cl100k_base"  # the bare alias says nothing


def test_alias_counts_with_the_resolved_models_tokenizer(nasca: Nasca) -> None:
    o200k, cl100k = count_tokens(TEXT, "gpt-4o"), count_tokens(TEXT, "prod-chat")
    assert o200k != cl100k  # the two tokenizers disagree on this text
    call = nasca.start_call("prod-chat", prompt=TEXT, max_tokens=10, user="u")
    assert call.prompt_tokens == o200k
    call.add_text(TEXT)
    charge = call.finish()
    assert charge is not None
    assert nasca.get_usage("u").month_output_tokens == o200k


def test_zero_input_tokens_is_replaced_by_the_counted_prompt(
    nasca: Nasca, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nasca_core._calls

    monkeypatch.setattr(nasca_core._calls, "_zero_input_warned", set())
    caplog.set_level(logging.WARNING, logger="nasca")
    model = "claude-haiku-4-5"
    for user in ("a", "b"):
        call = nasca.start_call(model, prompt=TEXT, max_tokens=10, user=user)
        assert call.prompt_tokens > 0
        call.finish(TokenUsage(input_tokens=0, output_tokens=7))
        assert nasca.get_usage(user).month_input_tokens == call.prompt_tokens
        expected = nasca.cost_of(model, TokenUsage(call.prompt_tokens, 7))
        assert nasca.get_usage(user).month_cost * 10**9 == expected
    warnings = [r for r in caplog.records if "input_tokens=0" in r.getMessage()]
    assert len(warnings) == 1  # logged once per model


def test_a_reported_input_is_kept(nasca: Nasca) -> None:
    call = nasca.start_call("gpt-4o-mini", prompt=TEXT, max_tokens=10, user="c")
    call.finish(TokenUsage(input_tokens=3, output_tokens=7))
    assert nasca.get_usage("c").month_input_tokens == 3
