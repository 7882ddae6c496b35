"""Small frozen config models: tiers (and, later, credit packs and plans)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nasca_core._errors import ConfigurationError
from nasca_core._money import to_nanos
from nasca_core._windows import WINDOWS, Window


class Tier(BaseModel):
    """A spend allowance per calendar window, in dollars of AI cost.

    ``Tier(monthly=10, weekly=5, daily=2)``; a window left as None is unlimited.
    ``credits_cover`` names the windows that prepaid credits may extend: the monthly
    window always; leave "daily" out to make the daily limit a hard cap against abuse.

    Raises ConfigurationError for a limit <= 0, NaN or infinite, or a bad window name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    daily: Decimal | None = None
    weekly: Decimal | None = None
    monthly: Decimal | None = None
    credits_cover: frozenset[Window] = frozenset(WINDOWS)
    default_output_tokens: int | None = Field(default=None, gt=0)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(f"Invalid Tier: {_first_error(exc)}") from None

    @field_validator("daily", "weekly", "monthly", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if value is None:
            return None
        nanos = to_nanos(value, what="a tier limit", allow_zero=False)
        return Decimal(nanos) / Decimal(1_000_000_000)

    @model_validator(mode="after")
    def _monthly_covered(self) -> Tier:
        if "monthly" not in self.credits_cover:
            raise ValueError("credits always cover the monthly window: keep 'monthly' in credits_cover")
        return self

    def limit(self, window: Window) -> Decimal | None:
        value: Decimal | None = getattr(self, window)
        return value

    def limits_nanos(self) -> tuple[int | None, int | None, int | None]:
        d, w, m = (None if (v := self.limit(x)) is None else to_nanos(v) for x in WINDOWS)
        return d, w, m

    def hard_windows(self) -> tuple[bool, bool, bool]:
        """Windows with a limit that credits may not extend."""
        d, w, m = (self.limit(x) is not None and x not in self.credits_cover for x in WINDOWS)
        return d, w, m

    def compiled(self) -> dict[str, list[int]]:
        """The form the store scripts read: limits in nanos (-1 = none) and hard flags."""
        return {
            "l": [-1 if v is None else v for v in self.limits_nanos()],
            "h": [int(h) for h in self.hard_windows()],
        }


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = str(err.get("ctx", {}).get("error", err["msg"]))
    return f"{where}: {msg}" if where else msg
