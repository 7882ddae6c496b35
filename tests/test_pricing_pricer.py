"""Pricer: the unknown-model policy is always explicit."""

from __future__ import annotations

import logging

import pytest

from nasca_core._errors import ConfigurationError, UnknownModelError
from nasca_core.pricing import Pricer, PriceTable, TokenUsage

USAGE = TokenUsage(input_tokens=1000, output_tokens=500)


def test_default_policy_blocks() -> None:
    pricer = Pricer()
    assert pricer.unknown_model == "block"
    assert pricer.table is PriceTable.default()
    assert pricer.cost("gpt-4o", USAGE) == PriceTable.default().cost_nanos("gpt-4o", USAGE)
    with pytest.raises(UnknownModelError) as info:
        pricer.cost("mystery-model", USAGE)
    message = str(info.value)
    assert "mystery-model" in message
    assert "alias" in message and "price_as" in message  # says how to fix it
    with pytest.raises(UnknownModelError):
        pricer.price("mystery-model")


def test_price_known_model() -> None:
    canonical, price = Pricer().price("gpt-4o-2024-08-06") or ("", None)
    assert canonical == "gpt-4o"
    assert price is not None and price.provider == "openai"


def test_warn_prices_at_zero_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    pricer = Pricer(unknown_model="warn")
    with caplog.at_level(logging.WARNING, logger="nasca.pricing"):
        assert pricer.cost("mystery-model", USAGE) == 0
        assert pricer.cost("mystery-model", USAGE) == 0
        assert pricer.price("mystery-model") is None
        assert pricer.cost("other-mystery", USAGE) == 0
    warnings = [r for r in caplog.records if r.name == "nasca.pricing"]
    assert len(warnings) == 2
    assert "mystery-model" in warnings[0].getMessage()
    assert "$0" in warnings[0].getMessage()
    # Known models are still priced.
    assert pricer.cost("gpt-4o", USAGE) > 0


def test_price_as() -> None:
    pricer = Pricer(unknown_model="price_as:gpt-4o-2024-08-06")
    expected = PriceTable.default().cost_nanos("gpt-4o", USAGE)
    assert pricer.cost("mystery-model", USAGE) == expected
    assert pricer.price("mystery-model") == PriceTable.default().resolve("gpt-4o")
    assert pricer.cost("gpt-4o-mini", USAGE) == PriceTable.default().cost_nanos(
        "gpt-4o-mini", USAGE
    )


def test_price_as_custom_table() -> None:
    table = PriceTable.default().with_overrides({"house-model": {"input": 10, "output": 10}})
    pricer = Pricer(table, unknown_model="price_as:house-model")
    assert pricer.cost("whatever", USAGE) == 15_000_000


@pytest.mark.parametrize(
    "policy",
    ["price_as:no-such-model", "price_as:", "allow", "", "BLOCK", "price-as:gpt-4o", None, 3],
)
def test_bad_policies(policy: object) -> None:
    with pytest.raises(ConfigurationError):
        Pricer(unknown_model=policy)  # type: ignore[arg-type]


def test_repr() -> None:
    assert "unknown_model='warn'" in repr(Pricer(unknown_model="warn"))
