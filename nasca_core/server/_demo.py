"""``nasca serve --demo``: the embedded store, a local Stripe stand-in, and six months of
made-up but consistent activity (every figure goes through the real ledger, checkout
and webhook paths), plus a small host page at ``/demo`` that opens the overlay."""

from __future__ import annotations

import calendar
import random
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from nasca_core._config import Tier
from nasca_core._errors import NascaBlockedError
from nasca_core._ledger import Nasca
from nasca_core.analytics import analytics_for
from nasca_core.billing import CreditPack, Plan

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from nasca_core.testing.stripe import StripeServer

NAMESPACE = "demo"
APP_NAME = "Acme Notes"
TIERS = {
    "free": Tier(daily="0.05", monthly="0.50", warn_at=(0.8,)),
    "pro": Tier(daily=3, monthly=20),
}
PACKS = [
    CreditPack(id="p5", price=Decimal(5), spend=Decimal(4), name="Starter credits"),
    CreditPack(id="p10", price=Decimal(10), spend=Decimal(9), name="Credit pack"),
    CreditPack(id="p25", price=Decimal(25), spend=Decimal(24), name="Big pack"),
]
PLANS = [Plan(id="pro", tier="pro", price=Decimal(20), name="Pro")]
DEMO_USER = "carol"
_PRICE_IN, _PRICE_OUT = Decimal("0.0000025"), Decimal("0.00001")  # $/token, a gpt-4o-like model


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Seeded:
    prompts: dict[str, str] = field(default_factory=dict)  # user -> last prompt id
    sessions: int = 0


def _cost(tokens_in: int, tokens_out: int) -> Decimal:
    return tokens_in * _PRICE_IN + tokens_out * _PRICE_OUT


def demo_nasca(store: str, stripe: StripeServer, webhook_secret: str, clock: Any = None) -> Nasca:
    """A Nasca with the demo's tiers, packs and plans, paying through ``stripe``."""
    return Nasca(store, tiers=TIERS, default_tier="free", namespace=NAMESPACE, clock=clock,
                 packs=PACKS, plans=PLANS, stripe=stripe.client(), webhook_secret=webhook_secret)


class _Seeder:
    """Drives a Nasca on the demo store with its own clock, through the public paths."""

    def __init__(self, store: str, stripe: StripeServer, webhook_secret: str, now: float) -> None:
        self.clock = _Clock(now)
        self.stripe = stripe
        self.nasca = demo_nasca(store, stripe, webhook_secret, self.clock)
        self.analytics = analytics_for(self.nasca)
        self.seeded = Seeded()
        self.rng = random.Random(7)

    def spend(self, user: str, calls: int, size: int = 1) -> None:
        for _ in range(calls):
            tin = self.rng.randint(600, 2500) * size
            tout = self.rng.randint(150, 600) * size
            try:
                r = self.nasca.reserve(_cost(tin, tout), user=user)  # the call's real estimate
            except NascaBlockedError as err:
                self.seeded.prompts[user] = str(err.prompt_id)
                return
            self.nasca.settle(r, _cost(tin, tout), tokens=(tin, tout))
            self.clock.now += self.rng.randint(20, 400)

    def block(self, user: str) -> str | None:
        """Spend until blocked; the prompt id of the block."""
        for _ in range(400):
            before = self.seeded.prompts.get(user)
            self.spend(user, 1, 3)
            if self.seeded.prompts.get(user) != before:
                return self.seeded.prompts[user]
        return None

    def buy(self, user: str, item: str, prompt_id: str | None, *, complete: bool = True) -> None:
        base = "http://demo.invalid/u"
        self.nasca.billing.create_checkout(user, item, prompt_id, success_url=f"{base}/ok",
                                           cancel_url=f"{base}/no")
        self.seeded.sessions += 1
        if complete:
            signed = self.stripe.complete_session(self.stripe.last_session_id, deliver=False)
            self.nasca.billing.handle_stripe_webhook(signed.payload, signed.signature)

    def warned(self, user: str, buy: bool) -> None:
        """Spend until a call is warned at 80%; the page is shown at the warning, then a purchase
        before any block (``buy``), or "not now"."""
        for _ in range(400):
            tin, tout = self.rng.randint(600, 2500), self.rng.randint(150, 600)
            cost = _cost(tin, tout)
            r = self.nasca.reserve(cost, user=user)
            self.nasca.settle(r, cost, tokens=(tin, tout))  # its threshold_crossed, on the worker
            self.clock.now += self.rng.randint(20, 400)
            if r.warning is not None:
                self.nasca.thresholds.flush()  # recorded before the prompt it opened
                self.analytics.record("prompt_shown", user, r.warning.prompt_id)
                if buy:
                    self.buy(user, "p5", r.warning.prompt_id)
                else:
                    self.analytics.record("dismissed", user, r.warning.prompt_id)
                return

    def funnel(self, user: str, depth: int, item: str = "p10") -> None:
        """A block, then: 1 shown, 2 checkout abandoned, 3 purchase, 0 shown and dismissed."""
        prompt = self.block(user)
        if prompt is None:
            return
        self.analytics.record("prompt_shown", user, prompt)
        if depth == 0:
            self.analytics.record("dismissed", user, prompt)
        elif depth >= 2:
            self.buy(user, item, prompt, complete=depth >= 3)


def seed(store: str, stripe: StripeServer, webhook_secret: str, now: float) -> Seeded:
    """Six months of activity ending ``now`` (epoch seconds), in the demo namespace."""
    s = _Seeder(store, stripe, webhook_secret, now)
    today = datetime.fromtimestamp(now, s.nasca.tz)
    for back in range(5, 0, -1):  # previous months: a growing app
        y, m = divmod(today.year * 12 + today.month - 1 - back, 12)
        m += 1
        days = calendar.monthrange(y, m)[1]
        users = [f"user_{i:02d}" for i in range(4 + (5 - back) * 3)]
        for i, user in enumerate(users):
            s.clock.now = datetime(y, m, 1 + (i * 3) % (days - 1), 9, tzinfo=s.nasca.tz).timestamp()
            s.spend(user, s.rng.randint(3, 12))
            if i % 2 == 0:
                s.funnel(user, (0, 3, 1, 2, 3)[(i // 2 + back) % 5], ("p5", "p10", "p25")[i % 3])
    month_start = datetime(today.year, today.month, 1, 8, tzinfo=s.nasca.tz).timestamp()
    span = max(3600.0, now - month_start - 7200)
    s.clock.now = month_start
    s.spend("alice", 6)
    s.buy("bob", "pro", None)
    s.nasca.set_user_tier("frank", "pro")  # a comped account: costs money, pays nothing
    for day in range(4):
        s.clock.now = month_start + span * day / 4
        s.spend("bob", 25, 4)
        s.spend("frank", 40, 5)
    for i, depth in enumerate((3, 2, 0, 1, 3, 0, 2, 1, 3, 0)):
        user = f"user_{i + 20:02d}"
        s.clock.now = month_start + span * (i + 1) / 12
        s.spend(user, s.rng.randint(2, 8))
        s.funnel(user, depth, ("p5", "p10", "p25")[i % 3])
    s.clock.now = now - 3600
    s.funnel("dave", 3, "p10")
    s.spend("dave", 4, 2)
    s.funnel("erin", 2)
    s.funnel("grace", 0)
    s.warned("wendy", buy=True)  # warned at 80%: bought before any block
    s.warned("walt", buy=False)
    s.clock.now = now - 60
    s.block(DEMO_USER)
    return s.seeded


# -- the demo host page ------------------------------------------------------------------------
DEMO_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Acme Notes · Nasca demo</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#0f172a;color:#e2e8f0}
main{max-width:640px;margin:0 auto;padding:32px 16px}
h1{font-size:1.4rem} .box{background:#1e293b;border-radius:14px;padding:16px;margin-top:12px}
button{font:inherit;border:0;border-radius:10px;padding:10px 16px;background:#635bff;color:#fff;
  cursor:pointer}
select,input{font:inherit;padding:8px;border-radius:8px;border:1px solid #334155;background:#0f172a;
  color:#e2e8f0}
#log p{margin:6px 0} .ev{color:#a5b4fc}
</style></head>
<body><main>
<h1>Acme Notes <small style="color:#94a3b8">an app with an AI assistant</small></h1>
<p>Ask the assistant as one of the demo users. When their allowance runs out, the app gets a
402 from its own API with <code>checkout_url</code> and opens it with <code>Nasca.open()</code>.</p>
<div class="box">
<label>User <select id="user"><option>carol</option><option>alice</option><option>dave</option>
<option>wendy</option><option>newcomer</option></select></label>
<button id="ask" type="button">Ask the assistant</button>
</div>
<div class="box" id="log"></div>
</main>
<script src="nasca.js"></script>
<script src="demo.js"></script>
</body></html>
"""

DEMO_JS = """(function () {
  var log = document.getElementById("log");
  function say(text, cls) { var p = document.createElement("p"); p.textContent = text;
    if (cls) { p.className = cls; } log.prepend(p); }
  ["nasca:checkout_started", "nasca:purchased", "nasca:dismissed", "nasca:closed"].forEach(function (t) {
    window.addEventListener(t, function () { say("event " + t, "ev"); });
  });
  document.getElementById("ask").addEventListener("click", function () {
    var user = document.getElementById("user").value;
    fetch("demo/ask", { method: "POST", body: new URLSearchParams({ user: user }) })
      .then(function (r) { return r.json().then(function (b) { return { status: r.status, body: b }; }); })
      .then(function (res) {
        if (res.status === 402) { say("Blocked: " + res.body.message); Nasca.open(res.body.checkout_url); }
        else {
          say("Assistant: " + res.body.reply);
          var w = res.body.warning;  // a soft threshold: the page says "close to your limit"
          if (w) { say("Warning: about " + w.percent + "% of the " + w.window + " allowance (projected)");
            Nasca.open(w.checkout_url, { reason: "warning" }); }
        }
      });
  });
})();
"""


def add_demo_routes(app: Starlette, nasca: Nasca) -> None:
    """``/demo``: a host page that calls a tiny API and opens the overlay when blocked."""
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    rng = random.Random()

    async def page(request: Request) -> Response:
        return HTMLResponse(DEMO_PAGE)

    async def script(request: Request) -> Response:
        return Response(DEMO_JS, media_type="application/javascript")

    async def ask(request: Request) -> Response:
        form = await request.form()
        user = str(form.get("user") or DEMO_USER)
        tin, tout = rng.randint(800, 2000), rng.randint(200, 500)
        cost = _cost(tin, tout) * 3
        try:
            r = await nasca.areserve(cost, user=user)  # the call's estimate: what it will cost
        except NascaBlockedError as err:
            return JSONResponse({"blocked": True, "message": err.upgrade_message,
                                 "checkout_url": err.checkout_url}, status_code=402)
        await nasca.asettle(r, cost, tokens=(tin, tout))  # its threshold_crossed: the settle's own
        body: dict[str, Any] = {"reply": f"Here is a summary of your notes ({tin + tout} tokens)."}
        if r.warning is not None:  # the link carries the warning's prompt id: a warning-led funnel
            links = app.state.links
            body["warning"] = {"window": r.warning.window, "percent": int(r.warning.percent),
                               "checkout_url": links.url(user, None, r.warning.prompt_id)}
        return JSONResponse(body)

    routes: list[Any] = [Route("/demo", page), Route("/demo.js", script),
                         Route("/demo/ask", ask, methods=["POST"])]
    app.router.routes[:0] = routes
