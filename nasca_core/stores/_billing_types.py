"""Billing's records in the store contract (``_base`` re-exports them): a subscription event
reduced to what decides a user's tier, and its outcome."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SubChange:
    """One subscription event, reduced to what decides the user's tier (times: epoch seconds)."""

    sub_id: str
    event_created: int
    event_id: str
    active: bool
    tier: str
    sub_created: int
    final: bool  # the subscription was deleted
    # The grace of a failing subscription, kept in its record and merged by the same atomic
    # step: None leaves it, 0 ends it (paid again, deleted), else the first failed payment
    # seen (the record keeps the earliest); ``active`` then also needs event_created <
    # grace start + ``grace_s``.
    grace_from: int | None = None
    grace_s: int = 0
    # The subscription's billing-cycle anchor (epoch s) when its plan anchors the monthly
    # window (``Plan.anchor``), 0 when it doesn't, None to keep the record's (a checkout: the
    # user's anchor spec is then left as it is).
    anchor: int | None = None
    # The user's anchor spec as the flow read it (None: leave the spec as it is) and the
    # billing-cycle window in force then, (0, 0) when none (``_windows.cycle_window``). The step
    # changes the spec only while it still holds ``seen``, else it writes nothing (status -3).
    seen: str | None = None
    window: tuple[int, int] = (0, 0)
    # With no cycle window in force: the counter keys (``UserKeys.month``) of the calendar
    # month now and of the first window of ``cut_for``'s cycle. When the step switches to that
    # cycle at once ("0,0,N"), the second's spend is raised to the first's (a plan change
    # mid-period keeps what was spent); ("", "") for none.
    carry: tuple[str, str] = ("", "")
    # The anchor ``window``'s end and ``carry`` were made for (``_windows.cycle_end``): when
    # the step's new anchor is another, it writes nothing (status -4, with that anchor).
    cut_for: int = 0


@dataclass(frozen=True, slots=True)
class SubscriptionResult:
    # 1 applied, 0 stale (an older or post-deletion event), 2 this event was applied before,
    # -3 the anchor spec is no longer ``SubChange.seen`` (nothing written: read and retry),
    # -4 the new anchor is not ``SubChange.cut_for`` (nothing written: retry made for ``anchor``)
    status: int
    tier: str | None  # the user's stored tier now
    anchor: int = 0  # with -4: the anchor the step moves to
