"""The per-call fast paths price and read exactly what the full paths do: a call's estimate
without a TokenUsage (``Pricer.text_cost``), ``TokenUsage.of``, and OpenAI usage read
straight off the SDK object or dict."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails

from nasca_core import InvalidAmountError, InvalidInputError, Tier, UnknownModelError, UsageParseError
from nasca_core.pricing import (
    Pricer,
    TokenUsage,
    estimate_cost_nanos,
    usage_from_openai,
    usage_from_openai_response,
)

# plain rates, a 200k-token price tier (both sides of it), time-of-day rates
MODELS = ["gpt-4o-mini", "gpt-4.1", "gemini-2.5-pro", "claude-sonnet-4-5", "deepseek-chat"]
COUNTS = [(0, 0), (1, 0), (0, 1), (30, 256), (200_000, 1_000), (200_001, 1_000), (1_000_000, 65_536)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("inp", "out"), COUNTS)
def test_text_cost_is_the_full_cost(model: str, inp: int, out: int) -> None:
    pricer = Pricer()
    full = pricer.cost(model, TokenUsage(input_tokens=inp, output_tokens=out))
    assert pricer.text_cost(model, inp, out) == full
    assert estimate_cost_nanos(pricer, model, inp, out) == full


def test_text_cost_keeps_the_unknown_model_policy() -> None:
    with pytest.raises(UnknownModelError):
        Pricer().text_cost("no-such-model", 10, 10)
    assert Pricer(unknown_model="warn").text_cost("no-such-model", 10, 10) == 0
    priced_as = Pricer(unknown_model="price_as:gpt-4o")
    expected = Pricer().cost("gpt-4o", TokenUsage(10, 10))
    assert expected > 0
    assert priced_as.text_cost("no-such-model", 10, 10) == expected
    assert priced_as.text_cost("no-such-model", 10, 10) == expected  # remembered, same answer


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3", None, 2**53 + 1, 10**30])
def test_an_estimate_of_bad_counts_is_refused(bad: object) -> None:
    with pytest.raises(InvalidInputError):
        estimate_cost_nanos(Pricer(), "gpt-4o-mini", bad, 10)  # type: ignore[arg-type]
    if bad is not None:  # max_tokens=None: the default output
        with pytest.raises(InvalidInputError):
            estimate_cost_nanos(Pricer(), "gpt-4o-mini", 10, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["block", "allow"])
def test_every_store_refuses_a_huge_max_tokens_alike(make_nasca: Any, policy: str) -> None:
    """A count above TokenUsage's bound, and an estimate above one operation's cap (within
    the bound: gpt-4.1's $8/M output of 2**52 tokens), are refused with the same typed error
    before any store is asked, under either store-error policy: nothing held."""
    n = make_nasca(tiers={"big": Tier(monthly=1_000_000)}, default_tier="big", on_store_error=policy)
    with pytest.raises(UsageParseError, match="implausibly large"):
        n.start_call("gpt-4o-mini", prompt="hi", max_tokens=10**30, user="u")
    with pytest.raises(InvalidAmountError, match="estimate"):
        n.start_call("gpt-4.1", prompt="hi", max_tokens=2**52, user="u")
    assert n.stats.reserved == 0
    call = n.start_call("gpt-4o-mini", prompt="hi", max_tokens=10, user="u")  # and a real call goes on
    expected = estimate_cost_nanos(n.pricer, "gpt-4o-mini", call.prompt_tokens, 10)
    assert call.reservation.estimate_nanos == expected
    call.fail()


async def test_every_store_refuses_a_huge_max_tokens_alike_async(make_nasca: Any) -> None:
    n = make_nasca(tiers={"big": Tier(monthly=1_000_000)}, default_tier="big")
    with pytest.raises(UsageParseError):
        await n.astart_call("gpt-4o-mini", prompt="hi", max_tokens=10**30, user="u")
    with pytest.raises(InvalidAmountError):
        await n.astart_call("gpt-4.1", prompt="hi", max_tokens=2**52, user="u")
    assert n.stats.reserved == 0


def test_token_usage_of_is_the_constructor() -> None:
    made, built = TokenUsage.of(25, 8), TokenUsage(25, 8)
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert pickle.loads(pickle.dumps(made)) == built
    assert dataclasses.replace(made, cache_read_tokens=5) == TokenUsage(25, 8, 5)
    assert made.container_ids == () and made.service_tier is None and made.web_searches == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.input_tokens = 3  # type: ignore[misc]


@pytest.mark.parametrize(("inp", "out"), [(-1, 2), (2, -1), (True, 2), (2**60, 1), (1.5, 2), ("1", 2)])
def test_token_usage_of_refuses_what_the_constructor_refuses(inp: object, out: object) -> None:
    with pytest.raises(UsageParseError):
        TokenUsage(inp, out)  # type: ignore[arg-type]
    with pytest.raises(UsageParseError):
        TokenUsage.of(inp, out)  # type: ignore[arg-type]


ZERO_DETAILS = {"prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}


@pytest.mark.parametrize(("payload", "expected"), [
    ({"prompt_tokens": 25, "completion_tokens": 8}, TokenUsage(25, 8)),
    ({"prompt_tokens": 25, "completion_tokens": 8, **ZERO_DETAILS}, TokenUsage(25, 8)),
    ({"prompt_tokens": 25, "completion_tokens": 8, "prompt_tokens_details": {"cached_tokens": 10}},
     TokenUsage(25, 8, cache_read_tokens=10)),
    ({"prompt_tokens": 25, "completion_tokens": 8, "prompt_tokens_details": {"cache_write_tokens": 4}},
     TokenUsage(25, 8, cache_write_tokens=4)),
    ({"prompt_tokens": 25, "completion_tokens": 8, "prompt_tokens_details": {"audio_tokens": 5}},
     TokenUsage(25, 8, input_audio_tokens=5)),
    ({"prompt_tokens": 25, "completion_tokens": 8, "completion_tokens_details": {"reasoning_tokens": 3}},
     TokenUsage(25, 8, reasoning_tokens=3)),
    ({"prompt_tokens": 25, "completion_tokens": 8, "prompt_cache_hit_tokens": 6},  # DeepSeek
     TokenUsage(25, 8, cache_read_tokens=6)),
])
def test_openai_usage_fast_and_full_reads_agree(payload: dict[str, object], expected: TokenUsage) -> None:
    assert usage_from_openai(payload) == expected
    sdk = CompletionUsage.model_validate({"total_tokens": 33, **payload})  # extras land in model_extra
    assert usage_from_openai(sdk) == expected
    assert usage_from_openai_response({"usage": payload}) == expected


def test_sdk_usage_objects_read_like_their_dicts() -> None:
    sdk = CompletionUsage(prompt_tokens=25, completion_tokens=8, total_tokens=33,
                          prompt_tokens_details=PromptTokensDetails(cached_tokens=0, audio_tokens=0),
                          completion_tokens_details=CompletionTokensDetails(reasoning_tokens=0))
    assert usage_from_openai(sdk) == TokenUsage(25, 8)
    assert usage_from_openai(sdk, service_tier="flex") == TokenUsage(25, 8, service_tier="flex")
    assert usage_from_openai(sdk, web_searches=2) == TokenUsage(25, 8, web_searches=2)


@pytest.mark.parametrize("payload", [
    {"prompt_tokens": True, "completion_tokens": 8},
    {"prompt_tokens": 25, "completion_tokens": 8, "prompt_tokens_details": {"cached_tokens": False}},
    {"prompt_tokens": 25, "completion_tokens": 8, "prompt_tokens_details": 0},
    {"prompt_tokens": 25, "completion_tokens": 8, "prompt_cache_hit_tokens": False},
    {"prompt_tokens": 25},
    {"prompt_tokens": 25, "completion_tokens": 8, "prompt_tokens_details": {"cached_tokens": 30}},
])
def test_malformed_openai_usage_is_still_refused(payload: dict[str, object]) -> None:
    with pytest.raises(UsageParseError):
        usage_from_openai(payload)


class _SlottedUsage:
    """An SDK-like usage object with ``__pydantic_extra__`` but no ``__dict__`` (``__slots__``)."""

    __slots__ = ("__pydantic_extra__", "completion_tokens", "prompt_tokens", "prompt_tokens_details")

    def __init__(self, prompt: int, completion: int, cached: int) -> None:
        self.__pydantic_extra__: dict[str, Any] = {}
        self.prompt_tokens, self.completion_tokens = prompt, completion
        self.prompt_tokens_details = {"cached_tokens": cached}

    def model_dump(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__[1:]}


def test_an_sdk_like_object_with_slots_is_read_by_attribute() -> None:
    assert usage_from_openai(_SlottedUsage(25, 8, 0)) == TokenUsage(25, 8)
    assert usage_from_openai(_SlottedUsage(25, 8, 10)) == TokenUsage(25, 8, cache_read_tokens=10)
