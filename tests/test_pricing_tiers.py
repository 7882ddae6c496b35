"""Owner prices and service tiers: an override is the standard tier's price; other tiers
scale by genai-prices' ratio for the model unless the override names the tier.

Published prices fixed here (OpenAI pricing page, gpt-5, USD per 1M tokens): standard
$1.25 input / $0.125 cached / $10 output; flex and batch half of that; priority
$2.50 / $0.25 / $20. A data update that changes one fails loudly.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from nasca_core import ConfigurationError, Nasca, Tier
from nasca_core.pricing import ModelPrice, PriceTable, TokenUsage
from nasca_core.pricing._owner import scaled
from nasca_core.pricing._rates import Rates

M = 1_000_000


def _usage(tier: str | None, cached: int = 0) -> TokenUsage:
    return TokenUsage(input_tokens=M, output_tokens=M, cache_read_tokens=cached, service_tier=tier)


def test_the_source_ratios_this_file_relies_on() -> None:
    table = PriceTable.default()
    assert [table.cost_nanos("gpt-5", _usage(t)) for t in (None, "flex", "priority", "batch")] == [
        11_250_000_000, 5_625_000_000, 22_500_000_000, 5_625_000_000]


@pytest.mark.parametrize(
    ("tier", "nanos"),
    [
        (None, 10_000_000_000),  # $2 + $8: the override itself
        ("flex", 5_000_000_000),  # half, as OpenAI's flex is half of standard
        ("priority", 20_000_000_000),  # twice
        ("batch", 5_000_000_000),
        ("scale", 10_000_000_000),  # a tier genai-prices doesn't price: standard
    ],
)
def test_an_override_scales_to_other_tiers_by_the_source_ratio(tier: str | None, nanos: int) -> None:
    table = PriceTable.default().with_overrides({"gpt-5": {"input": 2, "output": 8}})
    assert table.cost_nanos("gpt-5", _usage(tier)) == nanos
    # a dated snapshot resolves to the override, and to its tiers
    assert table.cost_nanos("gpt-5-2025-08-07", _usage(tier)) == nanos


def test_inherited_fields_scale_too() -> None:
    # The override leaves cache_read out: genai-prices' $0.125 (flex $0.0625) stays.
    table = PriceTable.default().with_overrides({"gpt-5": {"input": 2, "output": 8}})
    half = 500_000
    # standard: 0.5M uncached x $2 + 0.5M cached x $0.125 + 1M out x $8
    assert table.cost_nanos("gpt-5", _usage(None, cached=half)) == 1_000_000_000 + 62_500_000 + 8_000_000_000
    assert table.cost_nanos("gpt-5", _usage("flex", cached=half)) == 500_000_000 + 31_250_000 + 4_000_000_000


def test_a_named_tier_is_the_owners_own() -> None:
    table = PriceTable.default().with_overrides({
        "gpt-5": {"input": 2, "output": 8, "service_tiers": {"Flex": {"input": "1.5", "output": 5}}},
    })
    assert table.cost_nanos("gpt-5", _usage("flex")) == 6_500_000_000
    assert table.cost_nanos("gpt-5", _usage("priority")) == 20_000_000_000  # still scaled
    # fields the named tier leaves out take genai-prices' price of that tier (flex cache $0.0625)
    assert table.cost_nanos("gpt-5", _usage("flex", cached=M)) == 62_500_000 + 5_000_000_000


def test_a_model_the_source_does_not_know_pays_the_owner_price_on_every_tier() -> None:
    table = PriceTable.default().with_overrides({"in-house-7b": {"input": 1, "output": 2}})
    costs = {table.cost_nanos("in-house-7b", _usage(t)) for t in (None, "flex", "priority", "batch")}
    assert costs == {3_000_000_000}
    free = PriceTable.default().with_overrides({"gpt-5": {"free": True}})
    assert free.cost_nanos("gpt-5", _usage("priority")) == 0


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ({"input": 1, "output": 2, "service_tiers": {"standard": {"input": 1, "output": 2}}}, "standard"),
        ({"input": 1, "output": 2, "service_tiers": {"flex": {"input": 1}}}, "output"),
        ({"input": 1, "output": 2, "service_tiers": {
            "flex": {"input": 1, "output": 2, "service_tiers": {"x": {"input": 1, "output": 1}}}}},
         "tiers of its own"),
        ({"input": 1, "output": 2, "service_tiers": {"flex": {"input": 0, "output": 2}}}, "free=True"),
    ],
)
def test_bad_tier_prices_are_refused(price: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PriceTable.default().with_overrides({"gpt-5": price})


def test_set_price_with_a_named_tier_is_live_and_round_trips() -> None:
    nasca = Nasca("memory://", tiers={"t": Tier(daily=100)}, default_tier="t")
    try:
        given = {"input": 2, "output": 8, "service_tiers": {"flex": {"input": 1, "output": 3}}}
        nasca.set_price("gpt-5", given)
        assert nasca.cost_of("gpt-5", _usage("flex")) == 4_000_000_000
        assert nasca.cost_of("gpt-5", _usage("batch")) == 5_000_000_000
        price = nasca.pricer.table.owner_prices["gpt-5"]
        assert price.to_dict() == given
        again = ModelPrice.model_validate(price.to_dict())
        assert again == price and hash(again) == hash(price)  # hashable like every config model
        assert price.service_tiers["flex"].output == Decimal(3)
    finally:
        nasca.close()


def test_a_tier_the_source_leaves_unpriced_keeps_the_owners_rate() -> None:
    def rates(input_: int, output: int) -> Rates:
        return Rates((input_, 0, 0, 0, 0, 0, output, 0, 0, 0, 0, 0, 0, 0))

    # the source prices flex input at half, and flex output not at all (0): the owner's
    # output rate stays, never $0
    moved = scaled(rates(2 * M * 1000, 8 * M * 1000), rates(1_250_000_000, 10_000_000_000),
                   rates(625_000_000, 0))
    assert (moved.base[0], moved.base[6]) == (1_000_000_000, 8_000_000_000)
