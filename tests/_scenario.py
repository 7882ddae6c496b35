"""A deterministic ledger scenario whose trace every backend must reproduce exactly."""

from __future__ import annotations

from typing import Any

from nasca_core import NascaBlockedError, Tier
from nasca_core.stores import Lot


def run_scenario(make_nasca: Any, clock: Any) -> list[Any]:
    n = make_nasca(tiers={"free": Tier(daily="0.10", weekly="0.30", monthly="0.50"),
                          "capped": Tier(daily="0.05", monthly=1, credits_cover={"monthly"})},
                   default_tier="free")
    trace: list[Any] = []
    costs = ["0.031", "0.0004", "0.05", "0.02", "0.000000001", "0.07", "0.01"]
    for day in range(9):
        for i, cost in enumerate(costs):
            user = f"u{i % 3}"
            tier = "capped" if user == "u2" else None
            try:
                r = n.reserve(cost, user=user, tier=tier)
                c = n.settle(r, str(float(cost) * 1.5) if i % 2 else cost)
                trace.append(("ok", user, c.cost_nanos, c.tier_nanos, c.credit_nanos))
            except NascaBlockedError as e:
                trace.append(("blocked", user, e.window))
        if day == 2:
            n.store.sync.grant(n.user_keys("u0", n.now()),
                                Lot("lot1", "p", paid=2 * 10**9, currency="usd",
                                    granted=10**8, remaining=10**8))
        for user in ("u0", "u1", "u2"):
            u = n.get_usage(user, tier="capped" if user == "u2" else None)
            trace.append((user, str(u.daily_spent), str(u.weekly_spent), str(u.monthly_spent),
                          str(u.credit_balance), str(u.credit_balance_display), u.blocked))
        clock.advance(86400)
    return trace
