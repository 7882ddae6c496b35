"""What a user has spent, as the app (and the user) sees it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from nasca_core._config import Tier
from nasca_core._display import usage_html
from nasca_core._windows import Window


class WindowUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    window: Window
    spent: Decimal
    limit: Decimal
    remaining: Decimal
    percent: float
    resets_at: datetime
    covered_by_credits: bool
    crossed: tuple[float, ...] = ()  # the warn_at fractions reached


class Boost(BaseModel):
    """More allowance for one user in one window until a moment (``nasca.grant_boost``)."""

    model_config = ConfigDict(frozen=True)

    id: str
    window: Window
    amount: Decimal
    until: datetime


class Usage(BaseModel):
    """A user's spend per window of their tier, in-flight holds and credit balances.

    ``monthly_*``, ``weekly_*`` and ``daily_*`` are None for a window the tier leaves
    unlimited; ``*_crossed`` are the tier's ``warn_at`` fractions the window's settled spend
    has reached. ``resets_at`` is the monthly reset. ``credit_balance_display`` is in what
    the user paid for their credits; ``credit_balance`` is the AI spend they still cover.
    """

    model_config = ConfigDict(frozen=True)

    user_id: str
    tier: str
    daily_spent: Decimal | None = None
    daily_limit: Decimal | None = None
    daily_percent: float | None = None
    daily_resets_at: datetime | None = None
    daily_crossed: tuple[float, ...] = ()
    weekly_spent: Decimal | None = None
    weekly_limit: Decimal | None = None
    weekly_percent: float | None = None
    weekly_resets_at: datetime | None = None
    weekly_crossed: tuple[float, ...] = ()
    monthly_spent: Decimal | None = None
    monthly_limit: Decimal | None = None
    monthly_percent: float | None = None
    monthly_resets_at: datetime | None = None
    monthly_crossed: tuple[float, ...] = ()
    resets_at: datetime
    month_cost: Decimal
    month_credit_spend: Decimal
    month_calls: int
    month_input_tokens: int = 0
    month_output_tokens: int = 0
    in_flight: Decimal
    credit_balance: Decimal = Decimal(0)
    credit_balance_display: Decimal = Decimal(0)
    credit_currency: str = "usd"
    blocked: bool = False
    blocked_reason: str | None = None
    blocked_window: Window | None = None
    hard_windows: frozenset[Window] = frozenset()
    # The user's own limits (``set_user_limits``), which replace the tier's, and their boosts
    # in force (``grant_boost``); the ``*_limit`` fields above already count both.
    own_limits: Tier | None = None
    boosts: tuple[Boost, ...] = ()
    # The fallback allowance's own spend (``Tier(on_exhausted="fallback")``; ``_fallback``),
    # under its limits: None when the tier blocks instead.
    fallback: Usage | None = None

    @property
    def windows(self) -> tuple[WindowUsage, ...]:
        """The windows the tier limits, shortest first."""
        out = []
        for w in ("daily", "weekly", "monthly"):
            limit = getattr(self, f"{w}_limit")
            if limit is None:
                continue
            spent = getattr(self, f"{w}_spent")
            out.append(
                WindowUsage(
                    window=w,  # type: ignore[arg-type]
                    spent=spent,
                    limit=limit,
                    remaining=max(Decimal(0), limit - spent),
                    percent=getattr(self, f"{w}_percent"),
                    resets_at=getattr(self, f"{w}_resets_at"),
                    covered_by_credits=w not in self.hard_windows,
                    crossed=getattr(self, f"{w}_crossed"),
                )
            )
        return tuple(out)

    def _repr_html_(self) -> str:
        return usage_html(self)
