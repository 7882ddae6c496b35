"""The Nasca demo: a simulated chat app whose users hit their limits.

    python -m nasca_core.demo

Runs on the embedded store and the local provider server: no keys, no network.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any

from nasca_core._config import Tier
from nasca_core._display import money
from nasca_core._errors import NascaBlockedError
from nasca_core._ledger import Nasca
from nasca_core._thresholds import ThresholdEvent
from nasca_core._usage import Usage
from nasca_core._warned import warning_of
from nasca_core.billing import CreditPack
from nasca_core.testing import ProviderServer, Reply
from nasca_core.testing import Usage as ReplyUsage
from nasca_core.testing.stripe import completed_session_event, simulate_purchase

WEBHOOK_SECRET = "whsec_demo_not_a_real_secret"

QUESTIONS = [
    "Summarise this quarter's sales call notes.",
    "Draft a friendly reply to the customer asking about refunds.",
    "Translate the onboarding checklist into Spanish.",
    "Explain the difference between our two pricing plans.",
]


HOOKED: list[str] = []


def owner_hook(event: ThresholdEvent) -> None:
    """``nasca.on_threshold``: once per user, window and threshold (an owner would email, or tag a CRM)."""
    HOOKED.append(f"        [owner's hook] {event.user_id} reached {event.fraction:.0%} of the "
                  f"{event.window} limit ({money(event.spent)} of {money(event.limit)})")


def told(line: str, nasca: Nasca) -> None:
    print(line)
    nasca.thresholds.flush()  # hooks run on the threshold worker, after the settle lands
    while HOOKED:
        print(HOOKED.pop(0))


def bar(percent: float, width: int = 24) -> str:
    filled = min(width, round(percent / 100 * width))
    return "█" * filled + "░" * (width - filled)


def show(usage: Usage) -> None:
    print(f"    {usage.user_id} ({usage.tier})")
    for w in usage.windows:
        print(f"      {w.window:<8}{bar(w.percent)} {money(w.spent)} of {money(w.limit)} "
              f"({w.percent:.0f}%), resets {w.resets_at:%b %d %H:%M %Z}")
    if usage.credit_balance_display:
        print(f"      credits  {money(usage.credit_balance_display)} left, in what they paid")


def main() -> int:
    nasca = Nasca(
        "memory://",
        tiers={"free": Tier(daily="0.002", monthly="0.02", warn_at=(0.8,)),
               "pro": Tier(daily="0.50", weekly=2, monthly=5)},
        default_tier="free",
        namespace="demo",
        packs=[CreditPack(id="starter", price=Decimal(5), spend=Decimal(3), name="Starter pack")],
        webhook_secret=WEBHOOK_SECRET,
    )
    nasca.on_threshold(owner_hook)
    users = [("alice", "free", 2), ("bob", "pro", 6), ("carol", "free", 40)]
    with ProviderServer() as provider:
        client = provider.openai_client()
        chat = nasca.wrap(client.chat.completions.create)
        print("Nasca demo: three users of a chat app on gpt-4o-mini, through nasca.wrap()\n")
        for user, tier, calls in users:
            print(f"{user} ({tier}) tries to ask {calls} questions:")
            for i in range(calls):
                provider.queue(Reply(text="Here you go. " * 40, usage=ReplyUsage(1500, 480)))
                try:
                    with nasca.user(user, tier=tier):
                        reply = chat(model="gpt-4o-mini", max_tokens=500,
                                     messages=[{"role": "user", "content": QUESTIONS[i % 4]}])
                    told(f"  #{i + 1:<3} ok, {reply.usage.total_tokens} tokens", nasca)
                    if (warning := warning_of(reply)) is not None:
                        print(f"        warning: {warning.fraction:.0%} of the {warning.window} limit "
                              "with this call (the app can show it; the call went through)")
                except NascaBlockedError as blocked:
                    print(f"  #{i + 1:<3} BLOCKED before reaching the provider ({blocked.window} limit)")
                    print(f"        upgrade prompt: {blocked.upgrade_message}")
                    break
            show(nasca.get_usage(user, tier=tier))
            print()
        print(f"Provider requests made: {provider.request_count} "
              "(blocked calls never reached the provider).\n")

        print("carol buys the Starter pack (pay $5, get $3 of AI spend); Stripe's signed")
        print("checkout.session.completed webhook grants it exactly once:")
        show(simulate_purchase(nasca, "carol", "starter", tier="free"))
        print("  ...and carries on with longer gpt-4o answers, paid from her credits while the")
        print("  free tier is spent:")
        for i in range(6):
            provider.queue(Reply(text="Here you go. " * 400, usage=ReplyUsage(12_000, 4_800)))
            with nasca.user("carol", tier="free"):
                chat(model="gpt-4o", max_tokens=5000,
                     messages=[{"role": "user", "content": QUESTIONS[i % 4]}])
        show(nasca.get_usage("carol", tier="free"))
        usage = nasca.get_usage("carol", tier="free")
        print(f"  (the balance is in what she paid; {money(usage.credit_balance)} of AI spend is left)\n")

        dana(nasca, provider, chat)

        nasca.set_tier("free", Tier(daily="0.01", monthly="0.05"))
        print("The owner raises the free tier's daily limit without a deploy:")
        show(nasca.get_usage("alice", tier="free"))
        spent = nasca.get_usage("alice", tier="free").monthly_spent or Decimal(0)
        print(f"  alice's month so far: {money(spent)}")
    return 0


def dana(nasca: Nasca, provider: ProviderServer, chat: Any) -> None:
    """A user warned at 80% who buys before she is ever blocked."""
    print("dana (free) asks questions; the app shows the upgrade page at the warning:")
    provider.reset()  # replies queued for calls that were blocked
    for i in range(14):
        provider.queue(Reply(text="Here you go. " * 15, usage=ReplyUsage(600, 150)))
        with nasca.user("dana", tier="free"):
            reply = chat(model="gpt-4o-mini", max_tokens=200,
                         messages=[{"role": "user", "content": QUESTIONS[i % 4]}])
        told(f"  #{i + 1:<3} ok, {reply.usage.total_tokens} tokens", nasca)
        warning = warning_of(reply)
        if warning is not None and not nasca.get_usage("dana", tier="free").credit_balance:
            print(f"        warning: {warning.fraction:.0%} of the {warning.window} limit: the app opens")
            print('        Nasca.open(url, {reason: "warning"}): "You\'re close to your daily limit"')
            # The page and the checkout record these two steps in a real app (nasca serve).
            nasca.analytics.record("prompt_shown", "dana", warning.prompt_id)
            nasca.analytics.record("checkout_started", "dana", warning.prompt_id)
            signed = completed_session_event(nasca, "dana", "starter", prompt_id=warning.prompt_id)
            nasca.billing.handle_stripe_webhook(signed.payload, signed.signature)
            print("        dana buys the Starter pack before she is ever blocked")
    show(nasca.get_usage("dana", tier="free"))
    w = nasca.analytics.month().warning_funnel
    print(f"  The funnel counts it apart: {w.thresholds_crossed} thresholds crossed, "
          f"{w.prompt_shown} warning prompt shown, {w.purchase_completed} warning-led purchase.\n")


if __name__ == "__main__":
    sys.exit(main())
