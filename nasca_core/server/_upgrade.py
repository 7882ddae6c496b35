"""The end user's side: the upgrade page, checkout, success and cancel pages, the status
the overlay polls, and the dismiss beacon. Every route takes a signed token; a bad or
expired one gets the same 403, whatever was wrong."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from nasca_core._display import SpendDisplay, reader_money
from nasca_core._errors import (
    ConfigurationError,
    InvalidInputError,
    NascaError,
    StoreError,
    UnknownTierError,
)
from nasca_core._thresholds import WARNING_PROMPT
from nasca_core._usage import Usage
from nasca_core.analytics import EventKind
from nasca_core.billing import CheckoutError, CreditLot, UnknownPackError, UnknownPlanError
from nasca_core.server._charts import usage_bar_svg
from nasca_core.server._context import Context, offer_order, price
from nasca_core.server._links import UpgradeToken, verify
from nasca_core.server._security import origin_allowed
from nasca_core.server._settings import origin_of

log = logging.getLogger("nasca.server")

_WINDOW_LABEL = {"daily": "Today", "weekly": "This week", "monthly": "This month"}
_WINDOW_NOUN = {"daily": "daily", "weekly": "weekly", "monthly": "monthly"}
_INTERVAL = {"day": "day", "week": "week", "month": "month", "year": "year"}


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _in(delta: float) -> str:
    minutes = max(1, int(delta // 60))
    if minutes < 60:
        return f"in {minutes} min"
    hours = minutes // 60
    if hours < 48:
        return f"in {hours} h {minutes % 60} min" if hours < 6 and minutes % 60 else f"in {hours} h"
    return f"in {hours // 24} days"


class UpgradeRoutes:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._warn_if_nothing_on_offer()

    def _warn_if_nothing_on_offer(self) -> None:
        # At startup, so the owner learns it from the log rather than from a user.
        billing = self.ctx.nasca.billing
        try:
            offers = bool(billing.packs) or bool(billing.plans)
        except NascaError:  # the store is down: the live config is read again per page
            return
        if not offers:
            log.warning("nasca: no credit packs or plans are on offer: the upgrade page shows "
                        "usage and reset times only")
        elif billing.stripe is None:
            log.warning("nasca: packs or plans are configured but there is no Stripe client: "
                        "the upgrade page offers nothing to buy")

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/u/{token}", self.upgrade, methods=["GET"], name="upgrade"),
            Route("/u/{token}/checkout", self.checkout, methods=["POST"], name="checkout"),
            Route("/u/{token}/success", self.success, methods=["GET"], name="success"),
            Route("/u/{token}/cancel", self.cancel, methods=["GET"], name="cancel"),
            Route("/u/{token}/status", self.status, methods=["GET"], name="status"),
            Route("/u/{token}/event", self.event, methods=["POST"], name="event"),
            Route("/u/{token}/portal", self.portal, methods=["POST"], name="portal"),
        ]

    # -- helpers ---------------------------------------------------------------------------
    def _token(self, request: Request) -> UpgradeToken | None:
        return verify(request.path_params["token"], self.ctx.settings.secrets, self.ctx.now())

    def _forbidden(self, request: Request, json_body: bool = False) -> Response:
        if json_body or _wants_json(request):
            return self.ctx.json({"error": "forbidden"}, 403)
        return self.ctx.page(request, "message.html", {
            "title": "This link has expired",
            "text": "This upgrade link is no longer valid. "
                    "Go back to the app and try again to get a new one.",
        }, status=403, frameable=True)

    def _unavailable(self, request: Request) -> Response:
        if _wants_json(request):
            return self.ctx.json({"error": "temporarily unavailable"}, 503)
        return self.ctx.page(request, "message.html", {
            "title": "Temporarily unavailable",
            "text": "We couldn't load your account just now. Please try again in a moment.",
        }, status=503, frameable=True)

    async def _usage(self, tok: UpgradeToken) -> Usage:
        nasca = self.ctx.nasca
        try:
            return await nasca.aget_usage(tok.user_id, tier=tok.tier)
        except UnknownTierError:  # the tier was removed since the link was made
            return await nasca.aget_usage(tok.user_id)

    def _parent(self, request: Request) -> str | None:
        """The overlay's parent origin, if the page is embedded by an allowed one."""
        parent = request.query_params.get("parent")
        if not parent:
            return None
        try:
            origin = origin_of(parent)
        except ValueError:
            return None
        return origin if origin in self.ctx.frame_origins(request) else None

    def _urls(self, request: Request, token: str) -> dict[str, str]:
        return {name: self.ctx.path(request, name, token=token)
                for name in ("upgrade", "checkout", "status", "event", "success", "cancel", "portal")}

    async def _record(self, kind: EventKind, tok: UpgradeToken) -> None:
        try:
            await self.ctx.analytics.arecord(kind, tok.user_id, tok.prompt_id)
        except NascaError:
            log.exception("nasca: could not record %s", kind)

    # -- the page ----------------------------------------------------------------------------
    async def upgrade(self, request: Request) -> Response:
        tok = self._token(request)
        if tok is None:
            return self._forbidden(request)
        token = request.path_params["token"]
        try:
            usage = await self._usage(tok)
            lots = await self.ctx.nasca.billing.acredit_lots(tok.user_id)
        except (StoreError, ConfigurationError):
            log.exception("nasca: upgrade page could not read the ledger")
            return self._unavailable(request)
        if not _is_prefetch(request):
            await self._record("prompt_shown", tok)
        parent = self._parent(request)
        urls = self._urls(request, token)
        # Opened at a soft threshold (Nasca.open(url, {reason: "warning"}), or a warning's link):
        # the page says the user is near a limit, not blocked, unless they are blocked by now.
        warned = request.query_params.get("reason") == "warning" or (tok.prompt_id or "").startswith(
            WARNING_PROMPT)
        config = {
            "parentOrigin": parent, "embedded": parent is not None,
            "ownOrigin": origin_of(str(request.base_url)),
            "checkoutUrl": urls["checkout"], "statusUrl": urls["status"], "eventUrl": urls["event"],
            "initial": {"lots": len(lots), "tier": usage.tier},
            "returnUrl": self.ctx.settings.return_url,
        }
        return self.ctx.page(request, "upgrade.html", {
            **self.view(usage, lots, warned), "urls": urls, "config": config, "embedded": parent is not None,
        }, frameable=True)

    def view(self, usage: Usage, lots: Sequence[CreditLot], warned: bool = False) -> dict[str, Any]:
        """What the page shows: the state (within the allowance, near a limit when ``warned``, on
        credits, blocked), the windows, both kinds of credits, and what is on offer (nothing
        without Stripe)."""
        spend = self.ctx.settings.spend_display
        billing = self.ctx.nasca.billing
        # The config was just read (aget_usage), so packs and plans need no store trip.
        on_sale = billing.stripe is not None
        packs = sorted(billing.packs.values(), key=offer_order) if on_sale else []
        plans = sorted(billing.plans.values(), key=offer_order) if on_sale else []
        free = sum((lot.remaining for lot in lots if not lot.paid and lot.remaining > 0
                    and not lot.revoked and not lot.expired), Decimal(0))
        credits_left = usage.credit_balance > 0
        over = [w.window for w in usage.windows if w.percent >= 100]
        state = "blocked" if usage.blocked else "credits" if over and credits_left else (
            "warning" if warned and usage.windows else "within")
        return {
            "usage": usage, "state": state, "block": self._block(usage), "near": self._near(usage),
            "windows": self._windows(usage, credits_left, spend),
            "over": _WINDOW_NOUN[over[0]] if over else None,
            "credits": reader_money(usage.credit_balance_display, usage.credit_currency)
            if usage.credit_balance_display > 0 else None,
            "free_credits": spend(free) if free > 0 else None,
            "credit_spend": spend(usage.credit_balance),
            "packs": [{"id": p.id, "label": p.label, "price": price(p.price, p.currency),
                       "spend": spend(p.spend), "bonus": p.is_bonus,
                       "expires": p.expires_in_days} for p in packs],
            "plans": [{"id": p.id, "label": p.label, "price": price(p.price, p.currency),
                       "interval": _INTERVAL[p.interval], "tier": p.tier,
                       "limits": self._tier_limits(p.tier, spend), "current": p.tier == usage.tier}
                      for p in plans],
            "unit": spend.unit,
            # A subscriber manages or cancels in Stripe's Billing Portal.
            "portal": on_sale and any(p.tier == usage.tier for p in plans),
        }

    def _windows(self, usage: Usage, credits_left: bool, spend: SpendDisplay) -> list[dict[str, Any]]:
        now = self.ctx.now()
        return [{"label": _WINDOW_LABEL[w.window], "window": w.window, "spent": spend(w.spent),
                 "limit": spend(w.limit), "percent": w.percent,
                 "on_credits": w.percent >= 100 and credits_left and w.covered_by_credits,
                 "bar": Markup(usage_bar_svg(w.percent, credits_left and w.covered_by_credits)),
                 "resets": f"{w.resets_at:%b %d, %H:%M %Z}", "resets_in": _in(w.resets_at.timestamp() - now),
                 "hard": not w.covered_by_credits}
                for w in usage.windows]

    def _block(self, usage: Usage) -> dict[str, Any] | None:
        if not usage.blocked or usage.blocked_window is None:
            return None
        w = usage.blocked_window
        resets = getattr(usage, f"{w}_resets_at")
        return {"window": w, "label": _WINDOW_NOUN[w], "hard": w in usage.hard_windows,
                "resets": f"{resets:%b %d at %H:%M %Z}",
                "resets_in": _in(resets.timestamp() - self.ctx.now())}

    def _near(self, usage: Usage) -> dict[str, Any] | None:
        """The window closest to its limit: what a warning's page speaks of."""
        w = max(usage.windows, key=lambda w: w.percent, default=None)
        if w is None:
            return None
        return {"label": _WINDOW_NOUN[w.window], "percent": int(w.percent),
                "resets_in": _in(w.resets_at.timestamp() - self.ctx.now())}

    def _tier_limits(self, tier: str, spend: SpendDisplay) -> str:
        t = self.ctx.nasca.live.current().tiers.get(tier)
        if t is None:
            return ""
        parts = [f"{spend(v)} {label}" for label, v in
                 (("a day", t.daily), ("a week", t.weekly), ("a month", t.monthly)) if v is not None]
        tail = "" if spend.unit else " of AI usage"
        return " · ".join(parts) + tail if parts else "Unlimited AI usage"

    # -- checkout ----------------------------------------------------------------------------
    async def checkout(self, request: Request) -> Response:
        tok = self._token(request)
        if tok is None:
            return self._forbidden(request)
        if not origin_allowed(request.headers.get("origin"), request.headers.get("referer"),
                              self.ctx.own_origins(request)):
            return self.ctx.json({"error": "cross-site request refused"}, 403)
        form = await _form(request)
        item = str(form.get("item") or "")
        token = request.path_params["token"]
        s = self.ctx.settings
        success = s.success_url or (self.ctx.url(request, "success", token=token)
                                    + "?session_id={CHECKOUT_SESSION_ID}")
        cancel = s.cancel_url or self.ctx.url(request, "cancel", token=token)
        try:
            url = await self.ctx.nasca.billing.acreate_checkout(tok.user_id, item, tok.prompt_id,
                                                        success_url=success, cancel_url=cancel)
        except (UnknownPackError, UnknownPlanError):
            return self._checkout_error(request, 404, "This offer is no longer available.")
        except CheckoutError:
            log.exception("nasca: checkout failed")
            return self._checkout_error(request, 502,
                                        "The payment page could not be opened. Please try again.")
        except InvalidInputError:
            return self._checkout_error(request, 400, "This offer could not be started.")
        except (ConfigurationError, StoreError):
            log.exception("nasca: checkout is not available")
            return self._checkout_error(request, 503, "Payments are not available right now.")
        if _wants_json(request):
            return self.ctx.json({"url": url})
        return RedirectResponse(url, status_code=303, headers={"Referrer-Policy": "same-origin"})

    def _checkout_error(self, request: Request, status: int, text: str) -> Response:
        if _wants_json(request):
            return self.ctx.json({"error": text}, status)
        return self.ctx.page(request, "message.html", {"title": "Something went wrong", "text": text},
                             status=status, frameable=True)

    # -- after checkout --------------------------------------------------------------------
    async def success(self, request: Request) -> Response:
        return await self._returned(request, "success")

    async def cancel(self, request: Request) -> Response:
        return await self._returned(request, "cancel")

    async def _returned(self, request: Request, outcome: str) -> Response:
        tok = self._token(request)
        if tok is None:
            return self._forbidden(request)
        token = request.path_params["token"]
        urls = self._urls(request, token)
        session = request.query_params.get("session_id", "")
        config = {"outcome": outcome, "ownOrigin": origin_of(str(request.base_url)),
                  "statusUrl": urls["status"], "sessionId": session[:255],
                  "returnUrl": self.ctx.settings.return_url}
        return self.ctx.page(request, "returned.html", {"outcome": outcome, "urls": urls, "config": config,
                                                        "return_url": self.ctx.settings.return_url},
                             frameable=True)

    async def status(self, request: Request) -> Response:
        tok = self._token(request)
        if tok is None:
            return self._forbidden(request, json_body=True)
        try:
            usage = await self._usage(tok)
            lots = await self.ctx.nasca.billing.acredit_lots(tok.user_id)
        except (StoreError, ConfigurationError):
            return self.ctx.json({"error": "temporarily unavailable"}, 503)
        session = request.query_params.get("session_id")
        return self.ctx.json({
            "lots": len(lots), "tier": usage.tier, "blocked": usage.blocked,
            "credits": reader_money(usage.credit_balance_display, usage.credit_currency),
            "session_paid": bool(session) and any(lot.id == session for lot in lots),
        })

    async def event(self, request: Request) -> Response:
        tok = self._token(request)
        if tok is None:
            return self._forbidden(request, json_body=True)
        if not origin_allowed(request.headers.get("origin"), request.headers.get("referer"),
                              self.ctx.frame_origins(request)):
            return self.ctx.json({"error": "cross-site request refused"}, 403)
        body = await request.body()
        if len(body) > 1024:
            return self.ctx.json({"error": "too large"}, 413)
        try:  # sendBeacon posts text/plain: read the JSON whatever the content type says
            kind = json.loads(body or b"{}").get("kind")
        except (ValueError, AttributeError):
            kind = None
        if kind != "dismissed":
            return self.ctx.json({"error": "unknown event"}, 400)
        await self._record("dismissed", tok)
        return Response(status_code=204, headers={"Cache-Control": "no-store"})


    async def portal(self, request: Request) -> Response:
        """To the Stripe Billing Portal, back to the upgrade page after."""
        tok = self._token(request)
        if tok is None:
            return self._forbidden(request)
        if not origin_allowed(request.headers.get("origin"), request.headers.get("referer"),
                              self.ctx.own_origins(request)):
            return self.ctx.json({"error": "cross-site request refused"}, 403)
        back = self.ctx.url(request, "upgrade", token=request.path_params["token"])
        try:
            url = await self.ctx.nasca.billing.acreate_portal_session(tok.user_id, back)
        except CheckoutError:
            log.exception("nasca: billing portal failed")
            return self._checkout_error(request, 502,
                                        "The billing portal could not be opened. Please try again.")
        except (ConfigurationError, StoreError):
            log.exception("nasca: billing portal is not available")
            return self._checkout_error(request, 503, "Subscription management is not available right now.")
        if url is None:
            return self._checkout_error(request, 404, "We found no subscription to manage for this account.")
        if _wants_json(request):
            return self.ctx.json({"url": url})
        return RedirectResponse(url, status_code=303, headers={"Referrer-Policy": "same-origin"})


async def _form(request: Request) -> FormData:
    try:
        return await request.form(max_files=0, max_fields=20)
    except Exception:  # a malformed body is an empty form: the item check rejects it
        return FormData()


def _is_prefetch(request: Request) -> bool:
    purpose = (request.headers.get("sec-purpose") or request.headers.get("purpose") or "").lower()
    return "prefetch" in purpose or "prerender" in purpose

