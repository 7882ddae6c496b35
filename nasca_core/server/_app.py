"""``create_app``: the ASGI app (Starlette) of the upgrade page, overlay script, Stripe
webhook and dashboard; ``connect``: the same wiring for a process that only serves calls."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from nasca_core.analytics import analytics_for
from nasca_core.server._admin import AdminRoutes
from nasca_core.server._connect import connect
from nasca_core.server._context import Context
from nasca_core.server._settings import ServerSettings
from nasca_core.server._upgrade import UpgradeRoutes
from nasca_core.server._v1 import V1Routes
from nasca_core.server._v1_keys import ApiKeys
from nasca_core.server._webhook import WebhookRoutes

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca


def create_app(nasca: Nasca, settings: ServerSettings, *, debug: bool = False,
               api_keys: ApiKeys | None = None) -> Starlette:
    """The Nasca web app, to run alone (``nasca serve``) or mount in yours:
    ``app.mount("/nasca", create_app(nasca, settings))`` with
    ``public_url="https://your.app/nasca"``. Routes:

        GET  /u/{token}            upgrade page (signed link)   POST /u/{token}/checkout
        GET  /u/{token}/success    GET /u/{token}/cancel         GET  /u/{token}/status
        POST /u/{token}/event      dismiss beacon                GET  /nasca.js   overlay script
        POST /u/{token}/portal     Stripe Billing Portal (subscribers)
        POST /stripe/webhook       Stripe events -> nasca.billing.handle_stripe_webhook
        GET  /admin                dashboard (+ /admin/login, /admin/logout, /admin/tiers,
                                   /admin/packs, /admin/plans, /admin/report.json)
        GET  /admin/users?q=       user search     GET /admin/user?id=   a user's page
        POST /admin/user/tier      set the tier    POST /admin/user/credits   grant credits
        /v1/...                    the ledger API for remote clients, behind ``api_keys``
                                   (``server/_v1.py``; none: every /v1 call is refused)

    Raises ConfigurationError.
    """
    links = connect(nasca, settings)
    ctx = Context.build(nasca, settings, links, analytics_for(nasca))
    routes: list[BaseRoute] = [
        *UpgradeRoutes(ctx).routes(),
        *WebhookRoutes(ctx).routes(),
        *AdminRoutes(ctx).routes(),
        *V1Routes(nasca, api_keys or ApiKeys(()), settings.secrets).routes(),
        Route("/nasca.js", _overlay_script, methods=["GET"], name="nasca_js"),
        Route("/healthz", _health, methods=["GET"], name="health"),
        Route("/", _index, methods=["GET"], name="index"),
        Mount("/static", StaticFiles(packages=[("nasca_core.server", "static")]), name="static"),
    ]
    app = Starlette(debug=debug, routes=routes)
    app.state.nasca = nasca
    app.state.settings = settings
    app.state.links = links
    app.state.analytics = ctx.analytics
    return app


@cache
def _script() -> bytes:
    return (files("nasca_core.server") / "static" / "nasca.js").read_bytes()


async def _overlay_script(request: Request) -> Response:
    return Response(_script(), media_type="application/javascript; charset=utf-8", headers={
        "Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",
    })


async def _health(request: Request) -> Response:
    return Response("ok", media_type="text/plain")


async def _index(request: Request) -> Response:
    return RedirectResponse(str(request.scope.get("root_path", "")) + "/admin", status_code=307)
