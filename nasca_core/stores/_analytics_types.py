"""The analytics records the stores keep and read back (``_base`` re-exports them): a conversion
event, a user's month in the ledger, a month's counts and raw contents."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

EventKind = Literal["blocked", "prompt_shown", "checkout_started", "purchase_completed", "dismissed",
                    "threshold_crossed",  # a soft threshold reached (Tier.warn_at), once per user and window
                    # the funnel's steps again for prompts a warning opened (also counted as the above)
                    "warning_prompt_shown", "warning_checkout_started", "warning_purchase_completed",
                    "warning_dismissed",
                    # the dashboard's audit trail:
                    "tier_set", "credits_granted", "boost_granted", "limits_set"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)


@dataclass(frozen=True, slots=True)
class AnalyticsEvent:
    """One conversion step. ``amount_nanos`` is in billionths of ``currency`` (purchases)."""

    kind: EventKind
    user_id: str
    month: str  # YYYYMM
    prompt_id: str | None = None
    amount_nanos: int = 0
    currency: str = "usd"

    @property
    def warning_step(self) -> EventKind | None:
        """The warning funnel's step this event also counts as, in the same store write: a step
        of a prompt a soft threshold opened (its prompt id starts with ``"w:"``)."""
        led = _WARNING_STEPS.get(self.kind)
        return led if led is not None and (self.prompt_id or "").startswith("w:") else None


_WARNING_STEPS: dict[str, EventKind] = {
    "prompt_shown": "warning_prompt_shown", "checkout_started": "warning_checkout_started",
    "purchase_completed": "warning_purchase_completed", "dismissed": "warning_dismissed"}
LEDGER_FIELDS = ("c", "k", "n", "ti", "to")  # the ledger's month hash fields, in LedgerMonth's order


@dataclass
class LedgerMonth:
    """One user's month in the ledger: nanos of AI cost, of it paid by credits, calls, tokens."""

    cost: int = 0
    credit: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class MonthCounts:
    """A month's event counters (``e:<kind>``, ``r:<cur>`` revenue, ``o:<cur>`` orders) and
    how many prompts reached each funnel step."""

    counters: dict[str, int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)


@dataclass
class MonthRaw:
    """What the store holds for one month, before any arithmetic."""

    counters: dict[str, int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    users: set[str] = field(default_factory=set)
    user_blocked: dict[str, int] = field(default_factory=dict)
    user_revenue: dict[tuple[str, str], int] = field(default_factory=dict)  # (currency, user)
    user_orders: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, LedgerMonth] = field(default_factory=dict)

    def add_ledger(self, user: str, month: LedgerMonth) -> None:
        """Count one of the user's month records (a calendar month and a billing-cycle month
        that starts in it are both the user's)."""
        old = self.ledger.get(user)
        self.ledger[user] = month if old is None else LedgerMonth(
            old.cost + month.cost, old.credit + month.credit, old.calls + month.calls,
            old.input_tokens + month.input_tokens, old.output_tokens + month.output_tokens)
