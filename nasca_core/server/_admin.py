"""The owner's dashboard: the month's funnel (each step explained) and unit economics,
revenue against AI cost by month, and live editing of tiers, credit packs and plans (saved
in the store: every process applies them on its next call). A form with a bad value comes
back as the dashboard with the message beside that form (400). The user pages are
``_admin_users``; what the forms share is ``_admin_forms``.

Access: ``Authorization: Bearer <admin_token>``, a session cookie from ``/admin/login``,
or the owner's ``auth(request)`` hook. Forms carry a CSRF token (see ``_security``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any, cast, get_args
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from nasca_core._ceiling import ceiling_source, known_ceiling
from nasca_core._config import Tier
from nasca_core._errors import ConfigurationError, InvalidInputError, StoreError
from nasca_core._money import parse_amount
from nasca_core._windows import WINDOWS
from nasca_core.analytics import UserSort
from nasca_core.analytics._events import month_id, month_label, previous_months
from nasca_core.billing import CreditPack, Plan
from nasca_core.server._admin_forms import FUNNEL_HELP, FormError, field, required
from nasca_core.server._admin_users import UserRoutes
from nasca_core.server._charts import economics_svg, funnel_svg, profit_svg
from nasca_core.server._context import Context, offer_order, price
from nasca_core.server._security import (
    ADMIN_COOKIE,
    CSRF_COOKIE,
    SESSION_TTL,
    csrf_ok,
    csrf_token,
    new_csrf_cookie,
    origin_allowed,
    session_ok,
    session_value,
    token_ok,
)
from nasca_core.server._throttle import LoginThrottle, client_ip

log = logging.getLogger("nasca.server")
audit = logging.getLogger("nasca.audit")

_SORTS: tuple[str, ...] = get_args(UserSort)
_NOTICES = {
    "tier_saved": "Tier {name} saved: it applies from the next call, in every process.",
    "tier_removed": "Tier {name}: the stored override was removed.",
    "pack_saved": "Credit pack {name} saved.",
    "pack_retired": "Credit pack {name} retired: no new checkouts (purchases under way still grant).",
    "plan_saved": "Plan {name} saved.",
    "plan_retired": "Plan {name} retired: no new checkouts (subscribers keep their tier).",
    "ceiling_saved": "The app-wide ceiling is saved: it applies in every process within seconds.",
    "ceiling_off": "The app-wide ceiling is off: only each user's limits apply.",
    "ceiling_unset": "The stored ceiling is removed: each process's own ceiling= "
                     "(nasca.toml [ceiling]) applies.",
}


class AdminRoutes:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # in the store: every worker and process counts the same wrong tokens
        self.throttle = LoginThrottle(ctx.nasca.store, ctx.nasca.namespace)
        s = ctx.settings
        if s.admin_token is None and s.auth is None:
            log.warning("nasca: no admin_token and no auth hook: the dashboard answers 401 to everyone")

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/admin", self.dashboard, methods=["GET"], name="admin"),
            Route("/admin/report.json", self.report_json, methods=["GET"], name="admin_report"),
            Route("/admin/login", self.login, methods=["GET", "POST"], name="admin_login"),
            Route("/admin/logout", self.logout, methods=["POST"], name="admin_logout"),
            Route("/admin/tiers", self.save_tier, methods=["POST"], name="admin_tiers"),
            Route("/admin/packs", self.save_pack, methods=["POST"], name="admin_packs"),
            Route("/admin/plans", self.save_plan, methods=["POST"], name="admin_plans"),
            Route("/admin/ceiling", self.save_ceiling, methods=["POST"], name="admin_ceiling"),
            *UserRoutes(self).routes(),
        ]

    # -- access ------------------------------------------------------------------------------
    async def who(self, request: Request) -> str | None:
        """How the request is authenticated: "bearer", "session", "hook", or None."""
        keys = self.ctx.keys
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer " and keys.admin_token is not None:
            # A wrong bearer token is a guess like a wrong login: throttled the same way.
            right = token_ok(keys, header[7:].strip())
            request.state.nasca_wait = wait = await self.throttle.attempt(self.client(request), right,
                                                                          self.ctx.now())
            if right and not wait:
                return "bearer"
        if session_ok(keys, request.cookies.get(ADMIN_COOKIE), self.ctx.now()):
            return "session"
        hook = self.ctx.settings.auth
        if hook is not None:
            try:
                verdict = hook(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:
                log.exception("nasca: the dashboard auth hook failed")
                verdict = False
            if verdict is True:
                return "hook"
        return None

    def unauthorized(self, request: Request) -> Response:
        headers = {"WWW-Authenticate": 'Bearer realm="nasca"'}
        wait = getattr(request.state, "nasca_wait", 0)  # set by who() for a bearer token
        if wait:
            return self.ctx.json({"error": "too many wrong tokens", "retry_after": wait}, 429,
                                 {**headers, "Retry-After": str(wait)})
        if "application/json" in request.headers.get("accept", "") or request.url.path.endswith(".json"):
            return self.ctx.json({"error": "unauthorized"}, 401, headers)
        return self.ctx.page(request, "login.html", {
            "login_url": self.ctx.path(request, "admin_login"),
            "token_login": self.ctx.keys.admin_token is not None, "error": None,
        }, status=401, headers=headers)

    def client(self, request: Request) -> str:
        """The client's address: the peer's, or the one a trusted proxy forwarded."""
        return client_ip(request.client.host if request.client else None,
                         request.headers.getlist("x-forwarded-for"), self.ctx.settings.trusted_proxies)

    def cookie_path(self, request: Request) -> str:
        return self.ctx.path(request, "admin")

    def secure(self, request: Request) -> bool:
        public = self.ctx.settings.public_url or ""
        return request.url.scheme == "https" or public.startswith("https:")

    async def guarded_form(self, request: Request) -> tuple[FormData | None, Response | None]:
        """The form of an authenticated, same-origin, CSRF-checked POST (or the refusal)."""
        who = await self.who(request)
        if who is None:
            return None, self.unauthorized(request)
        request.state.nasca_who = who  # for the audit line, without asking the auth hook twice
        if not origin_allowed(request.headers.get("origin"), request.headers.get("referer"),
                              self.ctx.own_origins(request)):
            return None, self.refused(request)
        try:
            form = await request.form(max_files=0, max_fields=50)
        except Exception:
            return None, self._bad(request, "Malformed form.")
        # A bearer token is never sent by a browser on its own: only cookie or hook
        # authentication can be ridden by another site, so only they need the CSRF token.
        if who != "bearer" and not csrf_ok(self.ctx.keys, request.cookies.get(CSRF_COOKIE),
                                           field(form, "csrf")):
            return None, self.refused(request)
        return form, None

    def refused(self, request: Request) -> Response:
        return self.ctx.page(request, "message.html", {
            "title": "Request refused",
            "text": "This form was not sent from the dashboard (or the page was too old). Reload and retry.",
        }, status=403)

    def _bad(self, request: Request, text: str) -> Response:
        return self.ctx.page(request, "message.html", {"title": "Not saved", "text": text,
                                                       "back": self.ctx.path(request, "admin")},
                             status=400)

    def _back(self, request: Request, notice: str, name: str) -> Response:
        url = self.ctx.path(request, "admin")
        return RedirectResponse(f"{url}?{urlencode({'notice': notice, 'name': name})}", status_code=303)

    # -- login -------------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        context = {"login_url": self.ctx.path(request, "admin_login"),
                   "token_login": self.ctx.keys.admin_token is not None, "error": None}
        if request.method == "GET":
            return self.ctx.page(request, "login.html", context)
        if not origin_allowed(request.headers.get("origin"), request.headers.get("referer"),
                              self.ctx.own_origins(request)):
            return self.refused(request)
        try:
            form = await request.form(max_files=0, max_fields=5)
        except Exception:
            form = FormData()
        right = token_ok(self.ctx.keys, field(form, "token"))
        wait = await self.throttle.attempt(self.client(request), right, self.ctx.now())  # counted first
        if wait:
            return self.ctx.page(request, "login.html", {
                **context, "error": f"Too many wrong tokens: try again in {wait} s."},
                status=429, headers={"Retry-After": str(wait)})
        if not right:
            return self.ctx.page(request, "login.html", {**context, "error": "Wrong token."}, status=401)
        response = RedirectResponse(self.ctx.path(request, "admin"), status_code=303)
        response.set_cookie(ADMIN_COOKIE, session_value(self.ctx.keys, self.ctx.now()), max_age=SESSION_TTL,
                            path=self.cookie_path(request), secure=self.secure(request), httponly=True,
                            samesite="strict")
        return response

    async def logout(self, request: Request) -> Response:
        _, refusal = await self.guarded_form(request)
        if refusal is not None:
            return refusal
        response = RedirectResponse(self.ctx.path(request, "admin_login"), status_code=303)
        response.delete_cookie(ADMIN_COOKIE, path=self.cookie_path(request), secure=self.secure(request),
                               httponly=True, samesite="strict")
        return response

    # -- reading -----------------------------------------------------------------------------
    async def dashboard(self, request: Request) -> Response:
        if await self.who(request) is None:
            return self.unauthorized(request)
        try:
            month = month_id(request.query_params.get("month") or this_month(self.ctx))
        except InvalidInputError as exc:
            return self._bad(request, str(exc))
        notice = request.query_params.get("notice")
        text = (_NOTICES[notice].format(name=request.query_params.get("name", ""))
                if notice in _NOTICES else None)
        return await self._render(request, month, request.query_params.get("sort", "ai_cost"), notice=text)

    async def _render(self, request: Request, month: str, asked: str, *, notice: str | None = None,
                      error: FormError | None = None) -> Response:
        """The dashboard; with ``error``, the form that failed shows why, its values kept (400)."""
        sort = cast(UserSort, asked if asked in _SORTS else "ai_cost")
        nasca = self.ctx.nasca
        try:
            report = await self.ctx.analytics.amonth(month)
            earlier = [await self.ctx.analytics.amonth(m) for m in previous_months(month, 6)[:-1]]
            state = await nasca.live.afresh()
            ceiling = await nasca.aceiling_status()
        except StoreError:
            log.exception("nasca: dashboard could not read the store")
            return self.ctx.page(request, "message.html", {
                "title": "Store unavailable", "text": "The store did not answer. Retry shortly."}, status=503)
        cookie = request.cookies.get(CSRF_COOKIE) or new_csrf_cookie()
        users = report.top_users(sort, 25)
        stored_tiers = set(state.stored.sections.get("tier", {}))
        economics = [{"month": r.month, "revenue": r.revenue_usd, "ai_cost": r.ai_cost, "profit": r.profit,
                      "orders": r.orders}
                     for r in [*earlier, report]]
        response = self.ctx.page(request, "admin.html", {
            "report": report, "month": month_label(month), "sort": sort, "sorts": _SORTS,
            "users": users, "economics": economics,
            "ceiling": ceiling, "ceiling_source": ceiling_source(state),
            "funnel_svg": Markup(funnel_svg(report.funnel)),
            "economics_svg": Markup(economics_svg(economics)),
            "profit_svg": Markup(profit_svg(users[:12])),
            "funnel_help": FUNNEL_HELP,
            "tiers": [_tier_row(name, tier, name in stored_tiers)
                      for name, tier in sorted(state.tiers.items())],
            "packs": sorted(nasca.billing.packs.values(), key=offer_order),
            "plans": sorted(nasca.billing.plans.values(), key=offer_order),
            "price": price, "csrf": csrf_token(self.ctx.keys, cookie), "notice": notice,
            "error": error,
            "urls": {name: self.ctx.path(request, name) for name in
                     ("admin", "admin_tiers", "admin_packs", "admin_plans", "admin_ceiling", "admin_logout",
                      "admin_report", "admin_users", "admin_user")},
            "months": _month_choices(month, this_month(self.ctx)),
        }, status=400 if error else 200)
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(CSRF_COOKIE, cookie, path=self.cookie_path(request),
                                secure=self.secure(request), httponly=True, samesite="strict")
        return response

    async def report_json(self, request: Request) -> Response:
        if await self.who(request) is None:
            return self.unauthorized(request)
        try:
            month = month_id(request.query_params.get("month") or this_month(self.ctx))
            report = await self.ctx.analytics.amonth(month)
        except InvalidInputError as exc:
            return self.ctx.json({"error": str(exc)}, 400)
        except StoreError:
            return self.ctx.json({"error": "store unavailable"}, 503)
        return self.ctx.json(report.model_dump(mode="json"))

    # -- editing -----------------------------------------------------------------------------
    async def _edit(self, request: Request, section: str, apply: Callable[[FormData], Any]) -> Response:
        form, refusal = await self.guarded_form(request)
        if refusal is not None:
            return refusal
        assert form is not None
        try:
            notice, name, *what = await apply(form)  # what: the change's amounts, for the audit line
            amounts = what[0] if what else None
            audit.info("nasca audit: %s %r%s by %s from %s", notice, name, f" ({amounts})" if amounts else "",
                       request.state.nasca_who, self.client(request),
                       extra={"nasca_action": notice, "nasca_name": name, "nasca_what": amounts})
        except (ConfigurationError, InvalidInputError) as exc:
            return await self._form_error(request, FormError(section, f"Not saved: {exc}", form))
        except StoreError:
            log.exception("nasca: dashboard could not save")
            return await self._form_error(request, FormError(
                section, "Not saved: the store did not answer.", form))
        return self._back(request, notice, name)

    async def _form_error(self, request: Request, error: FormError) -> Response:
        return await self._render(request, this_month(self.ctx), "ai_cost", error=error)

    async def save_tier(self, request: Request) -> Response:
        async def apply(form: FormData) -> tuple[str, str]:
            name = required(form, "name")
            if field(form, "action") == "remove":
                await self.ctx.nasca.aset_tier(name, None)
                return "tier_removed", name
            cover = {"monthly"} | {w for w in ("daily", "weekly") if field(form, f"credits_{w}")}
            tier = Tier(**{w: _money_or_none(form, w) for w in WINDOWS}, credits_cover=frozenset(cover))
            await self.ctx.nasca.aset_tier(name, tier)
            return "tier_saved", name
        return await self._edit(request, "tiers", apply)

    async def save_ceiling(self, request: Request) -> Response:
        async def apply(form: FormData) -> tuple[str, str, str]:
            old = (await self.ctx.nasca.live.afresh()).ceiling
            action = field(form, "action")
            if action in ("off", "unset"):
                await self.ctx.nasca.aset_ceiling(None if action == "off" else "default")
                new = (await self.ctx.nasca.live.afresh()).ceiling
                return f"ceiling_{action}", "app", f"{_limits_text(old)} -> {_limits_text(new)}"
            limits = {w: _money_or_none(form, w) for w in WINDOWS}
            if all(v is None for v in limits.values()):
                raise ConfigurationError("give the ceiling a daily, weekly or monthly limit (or turn it off)")
            known = known_ceiling(old)
            tier = Tier(**limits, warn_at=known.warn_at if known else ())  # the owner's warnings stay
            await self.ctx.nasca.aset_ceiling(tier)
            return "ceiling_saved", "app", f"{_limits_text(old)} -> {_limits_text(tier)}"
        return await self._edit(request, "ceiling", apply)

    async def save_pack(self, request: Request) -> Response:
        async def apply(form: FormData) -> tuple[str, str]:
            pack_id = required(form, "id")
            if field(form, "action") == "retire":
                await self.ctx.nasca.billing.aset_pack(pack_id, None)
                return "pack_retired", pack_id
            pack = CreditPack(**_clean({
                "id": pack_id, "price": required(form, "price"), "spend": required(form, "spend"),
                "currency": field(form, "currency") or "usd", "name": field(form, "name"),
                "stripe_price": field(form, "stripe_price"),
                "expires_in_days": _int_or_none(form, "expires_in_days"),
            }))
            await self.ctx.nasca.billing.aset_pack(pack_id, pack)
            return "pack_saved", pack_id
        return await self._edit(request, "packs", apply)

    async def save_plan(self, request: Request) -> Response:
        async def apply(form: FormData) -> tuple[str, str]:
            plan_id = required(form, "id")
            if field(form, "action") == "retire":
                await self.ctx.nasca.billing.aset_plan(plan_id, None)
                return "plan_retired", plan_id
            plan = Plan(**_clean({
                "id": plan_id, "tier": required(form, "tier"), "price": required(form, "price"),
                "interval": field(form, "interval") or "month",
                "currency": field(form, "currency") or "usd",
                "name": field(form, "name"), "stripe_price": field(form, "stripe_price"),
            }))
            await self.ctx.nasca.billing.aset_plan(plan_id, plan)
            return "plan_saved", plan_id
        return await self._edit(request, "plans", apply)


# -- form helpers -------------------------------------------------------------------------------
def _money_or_none(form: FormData, name: str) -> Decimal | None:
    value = field(form, name)
    if value is None:
        return None
    return parse_amount(value, what=name)  # O(1): "1e999998" is a 400, not seconds of CPU


def _int_or_none(form: FormData, name: str) -> int | None:
    value = field(form, name)
    if value is None:
        return None
    # isascii: str.isdigit() also says yes to "²", which int() refuses
    if not (value.isascii() and value.isdigit() and len(value) <= 9):
        raise InvalidInputError(f"{name} must be a whole number, got {value[:20]!r}")
    return int(value)


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _tier_row(name: str, tier: Tier, stored: bool) -> dict[str, Any]:
    return {"name": name, "tier": tier, "stored": stored,
            "daily": tier.daily, "weekly": tier.weekly, "monthly": tier.monthly,
            "credits_daily": "daily" in tier.credits_cover, "credits_weekly": "weekly" in tier.credits_cover}


def this_month(ctx: Context) -> str:
    return ctx.nasca.windows_at(ctx.now()).ids[2]


def _month_choices(selected: str, current: str) -> list[dict[str, Any]]:
    months = reversed(previous_months(current, 12))
    return [{"value": month_label(m), "selected": m == selected} for m in months]


def _limits_text(tier: Tier | None) -> str:
    """A ceiling's limits for the audit line: "daily $15, monthly $200", or "off"."""
    if tier is None:
        return "off"
    if known_ceiling(tier) is None:
        return "unreadable"
    return ", ".join(f"{w} ${tier.limit(w)}" for w in WINDOWS if tier.limit(w) is not None)
