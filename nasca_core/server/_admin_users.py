"""The dashboard's user pages: search, and one user's windows, month, credit lots and
purchases, with the set-tier, grant-credits, boost and own-limits forms.

Every form is checked like every dashboard form (session or hook, same origin, CSRF).
Each change is audited twice: an analytics event ("tier_set", "credits_granted",
"boost_granted", "limits_set": counted in the month's ``events``) and an INFO line on the
``nasca.audit`` logger saying who, from where, and what. The store keeps no per-call
history, so the page shows the month's totals (``Usage.month_*``) rather than recent calls.
"""

from __future__ import annotations

import logging
import secrets
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from nasca_core._config import Tier
from nasca_core._display import money
from nasca_core._errors import ConfigurationError, InvalidInputError, NascaError, StoreError
from nasca_core._identity import check_user_id
from nasca_core._limits import parse_until
from nasca_core._money import parse_amount
from nasca_core._windows import WINDOWS
from nasca_core.analytics import EventKind
from nasca_core.billing import CreditLot
from nasca_core.server._admin_forms import FormError, field, required
from nasca_core.server._charts import usage_bar_svg
from nasca_core.server._context import price
from nasca_core.server._security import CSRF_COOKIE, csrf_token, new_csrf_cookie

if TYPE_CHECKING:
    from nasca_core.server._admin import AdminRoutes

log = logging.getLogger("nasca.server")
audit = logging.getLogger("nasca.audit")

_NOTICES = {
    "tier_set": "Tier set: {detail}. It applies from the user's next call, in every process.",
    "tier_cleared": "Stored tier cleared: the user is back on the tier their calls name (or the default).",
    "credits_granted": "Credits granted: {detail}.",
    "credits_repeated": "Nothing granted: the key {detail} was used before (the lot below is that grant).",
    "boost_granted": "Boost granted: {detail}. It applies from the user's next call and ends by itself.",
    "boost_repeated": "Nothing granted: the boost {detail} was granted before (a repeated form).",
    "boosts_ended": "Boosts ended: {detail}.",
    "limits_set": "Own limits set: {detail}. They replace the tier's for this user.",
    "limits_cleared": "Own limits cleared: the tier's limits apply again.",
    "limits_tiers": "Those are the tier's limits: no own limits stored, the tier's apply.",
}
_MAX_RESULTS = 50


class UserRoutes:
    def __init__(self, admin: AdminRoutes) -> None:
        self.admin = admin
        self.ctx = admin.ctx

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/admin/users", self.search, methods=["GET"], name="admin_users"),
            Route("/admin/user", self.user, methods=["GET"], name="admin_user"),
            Route("/admin/user/tier", self.set_tier, methods=["POST"], name="admin_user_tier"),
            Route("/admin/user/credits", self.grant, methods=["POST"], name="admin_user_credits"),
            Route("/admin/user/boost", self.boost, methods=["POST"], name="admin_user_boost"),
            Route("/admin/user/limits", self.own_limits, methods=["POST"], name="admin_user_limits"),
        ]

    def _urls(self, request: Request) -> dict[str, str]:
        return {name: self.ctx.path(request, name) for name in
                ("admin", "admin_users", "admin_user", "admin_user_tier", "admin_user_credits",
                 "admin_user_boost", "admin_user_limits", "admin_logout")}

    def _page(self, request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
        cookie = request.cookies.get(CSRF_COOKIE) or new_csrf_cookie()
        response = self.ctx.page(request, template, {
            **context, "csrf": csrf_token(self.ctx.keys, cookie), "urls": self._urls(request), "price": price,
        }, status=status)
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(CSRF_COOKIE, cookie, path=self.admin.cookie_path(request),
                                secure=self.admin.secure(request), httponly=True, samesite="strict")
        return response

    def _store_down(self, request: Request) -> Response:
        log.exception("nasca: dashboard could not read the store")
        return self.ctx.page(request, "message.html", {
            "title": "Store unavailable", "text": "The store did not answer. Retry shortly."}, status=503)

    # -- search ------------------------------------------------------------------------------
    async def search(self, request: Request) -> Response:
        """Users of this month whose id contains ``q`` (any user can be opened by exact id)."""
        if await self.admin.who(request) is None:
            return self.admin.unauthorized(request)
        q = (request.query_params.get("q") or "").strip()[:256]
        return await self._search(request, q)

    async def _search(self, request: Request, q: str, error: str | None = None) -> Response:
        try:
            report = await self.ctx.analytics.amonth()
        except StoreError:
            return self._store_down(request)
        needle = q.casefold()
        found = [u for u in report.users if needle in u.user_id.casefold()] if q else report.top_users()
        exact = bool(q) and error is None and all(u.user_id != q for u in found)
        return self._page(request, "users.html", {
            "q": q, "users": found[:_MAX_RESULTS], "more": max(0, len(found) - _MAX_RESULTS),
            "month": report.month, "exact": exact, "error": error,
        }, status=400 if error else 200)

    # -- one user ----------------------------------------------------------------------------
    async def user(self, request: Request) -> Response:
        if await self.admin.who(request) is None:
            return self.admin.unauthorized(request)
        user_id = request.query_params.get("id") or ""
        notice = request.query_params.get("notice")
        text = (_NOTICES[notice].format(detail=request.query_params.get("detail", ""))
                if notice in _NOTICES else None)
        return await self._user(request, user_id, notice=text)

    async def _user(self, request: Request, user_id: str, *, notice: str | None = None,
                    error: FormError | None = None) -> Response:
        try:
            check_user_id(user_id)
        except InvalidInputError as exc:
            return await self._search(request, user_id[:256], error=str(exc))
        nasca = self.ctx.nasca
        try:
            usage = await nasca.aget_usage(user_id)
            lots = await nasca.billing.acredit_lots(user_id)
            configured = (await nasca.live.acurrent()).tiers
            tiers = sorted(configured)
        except StoreError:
            return self._store_down(request)
        now = self.ctx.now()
        credits_pay = usage.credit_balance > 0
        windows = [{"window": w.window, "spent": w.spent, "limit": w.limit, "percent": w.percent,
                    "resets": f"{w.resets_at:%b %d, %H:%M %Z}", "hard": not w.covered_by_credits,
                    "bar": Markup(usage_bar_svg(w.percent, credits_pay and w.covered_by_credits))}
                   for w in usage.windows]
        purchases = [lot for lot in lots if lot.paid > 0]
        return self._page(request, "user.html", {
            "user": user_id, "usage": usage, "windows": windows, "lots": lots, "purchases": purchases,
            "paid_total": _totals(purchases), "tiers": tiers, "notice": notice, "error": error,
            "grant_key": error.value("key") if error and error.form == "credits" else _new_key(now),
            "boost_key": error.value("key") if error and error.form == "boost" else _new_key(now),
            "windows_all": WINDOWS, "limits_form": _limits_form(usage.own_limits, configured.get(usage.tier)),
        }, status=400 if error else 200)

    # -- changing a user ---------------------------------------------------------------------
    async def set_tier(self, request: Request) -> Response:
        form, refusal = await self.admin.guarded_form(request)
        if refusal is not None:
            return refusal
        assert form is not None
        user_id = field(form, "id") or ""
        tier = field(form, "tier")
        try:
            check_user_id(user_id)
            await self.ctx.nasca.aset_user_tier(user_id, tier)
        except (ConfigurationError, InvalidInputError) as exc:
            return await self._user(request, user_id, error=FormError("tier", f"Not saved: {exc}", form))
        except StoreError:
            log.exception("nasca: dashboard could not set a tier")
            return await self._user(request, user_id, error=FormError(
                "tier", "Not saved: the store did not answer.", form))
        who = request.state.nasca_who
        audit.info("nasca audit: tier of %r set to %r by %s from %s", user_id, tier, who,
                   self.admin.client(request),
                   extra={"nasca_action": "tier_set", "nasca_user": user_id, "nasca_tier": tier,
                          "nasca_by": who})
        await self._record("tier_set", user_id)
        if tier is None:
            return self._back(request, user_id, "tier_cleared", "")
        return self._back(request, user_id, "tier_set", tier)

    async def grant(self, request: Request) -> Response:
        form, refusal = await self.admin.guarded_form(request)
        if refusal is not None:
            return refusal
        assert form is not None
        user_id = field(form, "id") or ""
        try:
            check_user_id(user_id)
            spend = parse_amount(required(form, "spend"), what="spend", allow_zero=False)
            paid = parse_amount(field(form, "paid") or "0", what="paid")
            currency = field(form, "currency") or "usd"
            key = required(form, "key")
            result = await self.ctx.nasca.billing.agrant_credits(
                user_id, spend=spend, paid=paid, currency=currency, idempotency_key=key)
        except (ConfigurationError, InvalidInputError) as exc:
            return await self._user(request, user_id, error=FormError("credits", f"Not granted: {exc}", form))
        except StoreError:
            log.exception("nasca: dashboard could not grant credits")
            return await self._user(request, user_id, error=FormError(
                "credits", "Not granted: the store did not answer.", form))
        if not result.granted:
            return self._back(request, user_id, "credits_repeated", key)
        who = request.state.nasca_who
        audit.info("nasca audit: %s of AI spend (paid %s %s) granted to %r, key %r, by %s from %s",
                   spend, paid, currency, user_id, key, who, self.admin.client(request),
                   extra={"nasca_action": "credits_granted", "nasca_user": user_id, "nasca_spend": str(spend),
                          "nasca_paid": str(paid), "nasca_key": key, "nasca_by": who})
        await self._record("credits_granted", user_id)
        shown = f"{money(spend)} of AI spend" + (f" for {price(paid, currency)} paid" if paid else ", free")
        return self._back(request, user_id, "credits_granted", shown)

    async def boost(self, request: Request) -> Response:
        """Grant a boost (``action=grant``) or end the user's boosts (``action=end``)."""
        form, refusal = await self.admin.guarded_form(request)
        if refusal is not None:
            return refusal
        assert form is not None
        user_id = field(form, "id") or ""
        limits = self.ctx.nasca.limits
        try:
            check_user_id(user_id)
            if field(form, "action") == "end":
                await limits.aclear_boosts(user_id, field(form, "window"))  # type: ignore[arg-type]
                done, detail = "boosts_ended", field(form, "window") or "all windows"
            else:
                amount = parse_amount(required(form, "amount"), what="amount", allow_zero=False)
                until = parse_until(required(form, "until"))
                b, new = await limits.agrant(user_id, required(form, "window"),  # type: ignore[arg-type]
                                             amount=amount, until=until, id=required(form, "key"))
                if not new:  # a double submit or a stale form: nothing to audit or count
                    return self._back(request, user_id, "boost_repeated", b.id)
                done = "boost_granted"
                detail = f"+{money(b.amount)} {b.window} until {b.until:%b %d, %H:%M %Z}"
        except (ConfigurationError, InvalidInputError) as exc:
            return await self._user(request, user_id, error=FormError("boost", f"Not saved: {exc}", form))
        except StoreError:
            log.exception("nasca: dashboard could not change a boost")
            return await self._user(request, user_id, error=FormError(
                "boost", "Not saved: the store did not answer.", form))
        self._audit(request, done, user_id, detail)
        if done == "boost_granted":
            await self._record("boost_granted", user_id)
        return self._back(request, user_id, done, detail)

    async def own_limits(self, request: Request) -> Response:
        """Set the user's own limits (``action=set``) or clear them (``action=clear``)."""
        form, refusal = await self.admin.guarded_form(request)
        if refusal is not None:
            return refusal
        assert form is not None
        user_id = field(form, "id") or ""
        try:
            check_user_id(user_id)
            tier = None if field(form, "action") == "clear" else _limits_of(form)
            same = tier is not None and await self._tiers_own(user_id, tier)
            if same:
                tier = None  # stored, they'd outlive the tier (a cancelled subscription's)
            await self.ctx.nasca.aset_user_limits(user_id, tier)
        except (ConfigurationError, InvalidInputError) as exc:
            return await self._user(request, user_id, error=FormError("limits", f"Not saved: {exc}", form))
        except StoreError:
            log.exception("nasca: dashboard could not set a user's limits")
            return await self._user(request, user_id, error=FormError(
                "limits", "Not saved: the store did not answer.", form))
        detail = "cleared" if tier is None else ", ".join(
            f"{w} {money(v)}" for w in WINDOWS if (v := tier.limit(w)) is not None) or "no limits"
        self._audit(request, "limits_set", user_id, detail)
        await self._record("limits_set", user_id)
        notice = "limits_tiers" if same else "limits_cleared" if tier is None else "limits_set"
        return self._back(request, user_id, notice, detail)

    async def _tiers_own(self, user_id: str, own: Tier) -> bool:
        """Whether ``own`` are the limits of the user's tier (an in-flight cap left empty keeps
        the tier's): then nothing is stored, so the user follows their tier's changes."""
        name = (await self.ctx.nasca.aget_usage(user_id)).tier
        tier = (await self.ctx.nasca.live.acurrent()).tiers.get(name)
        mine, theirs = own.compiled(), (tier or Tier()).compiled()
        return mine["l"] == theirs["l"] and mine["h"] == theirs["h"] and (
            "max_in_flight" not in own.model_fields_set or mine["f"] == theirs["f"])

    def _audit(self, request: Request, action: str, user_id: str, what: str) -> None:
        who = request.state.nasca_who
        audit.info("nasca audit: %s of %r (%s) by %s from %s", action, user_id, what, who,
                   self.admin.client(request),
                   extra={"nasca_action": action, "nasca_user": user_id, "nasca_what": what, "nasca_by": who})

    async def _record(self, kind: EventKind, user_id: str) -> None:
        try:
            await self.ctx.analytics.arecord(kind, user_id)
        except NascaError:  # the change is made; the log line above is its audit record
            log.exception("nasca: could not record the %s audit event", kind)

    def _back(self, request: Request, user_id: str, notice: str, detail: str) -> Response:
        query = urlencode({"id": user_id, "notice": notice, "detail": detail})
        return RedirectResponse(f"{self.ctx.path(request, 'admin_user')}?{query}", status_code=303)


def _limits_of(form: Any) -> Tier:
    values = {w: parse_amount(v, what=f"{w} limit", allow_zero=False)
              for w in WINDOWS if (v := field(form, w)) is not None}
    hard = {w for w in WINDOWS if field(form, f"hard_{w}")}
    cap = field(form, "max_in_flight")
    if cap is not None and not (cap.isascii() and cap.isdigit() and len(cap) <= 7):  # "²".isdigit()
        raise InvalidInputError(f"max in flight must be a whole number, got {cap[:20]!r}")
    return Tier(**values, credits_cover=frozenset(w for w in WINDOWS if w not in hard),
                **({"max_in_flight": int(cap)} if cap is not None else {}))


def _limits_form(own: Tier | None, tier: Tier | None) -> dict[str, Any]:
    """The own-limits form's values: the user's own limits, else their tier's; saved unchanged
    (equal to the tier's), nothing is stored (``own_limits``); an in-flight cap only when the
    own limits set one."""
    base = own or tier or Tier()
    hard = base.hard_windows()
    cap = own.max_in_flight if own is not None and "max_in_flight" in own.model_fields_set else None
    tier_cap = (tier or Tier()).max_in_flight
    return {"values": {w: "" if (v := base.limit(w)) is None else str(v) for w in WINDOWS},
            "hard": {w: hard[i] for i, w in enumerate(WINDOWS)},
            "cap": "" if cap is None else str(cap),
            "tier_cap": "no cap" if tier_cap is None else f"tier's: {tier_cap}"}


def _new_key(now: float) -> str:
    # Rendered into the form: a double submit or a retry sends the same key and grants once.
    return f"dashboard-{int(now)}-{secrets.token_hex(4)}"


def _totals(lots: list[CreditLot]) -> list[tuple[str, Decimal]]:
    out: dict[str, Decimal] = {}
    for lot in lots:
        out[lot.currency] = out.get(lot.currency, Decimal(0)) + lot.paid
    return sorted(out.items())


