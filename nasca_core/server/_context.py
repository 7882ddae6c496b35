"""What every route shares: the Nasca, the settings, templates, keys and response helpers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.templating import Jinja2Templates

from nasca_core._display import money
from nasca_core.billing import CreditPack, Plan
from nasca_core.server._security import Keys
from nasca_core.server._settings import ServerSettings, origin_of

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core.analytics import Analytics
    from nasca_core.server._links import UpgradeLinks

_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}
_BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Upgrade links carry a token in their path: never send it to Stripe or anyone else.
    # ("no-referrer" would also make browsers send "Origin: null" on our own form posts.)
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def price(amount: Decimal, currency: str) -> str:
    """``$5.00``, ``€4.50``, ``500 JPY``."""
    cur = currency.lower()
    if cur == "usd":
        return money(amount)
    symbol = _SYMBOLS.get(cur)
    shown = f"{amount:,.2f}" if amount != amount.to_integral_value() or cur in _SYMBOLS else f"{amount:,.0f}"
    return f"{symbol}{shown}" if symbol else f"{shown} {cur.upper()}"


def offer_order(offer: CreditPack | Plan) -> tuple[bool, str, Decimal]:
    """Dollar offers first, then by currency, cheapest first."""
    return offer.currency != "usd", offer.currency, offer.price


def signed_money(amount: Decimal) -> str:
    return money(amount) if amount >= 0 else "-" + money(-amount)


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("nasca_core.server", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["money"] = money
    env.filters["signed_money"] = signed_money
    env.filters["price"] = price
    env.filters["pct"] = lambda rate: "–" if rate is None else f"{rate * 100:.1f}%"
    return Jinja2Templates(env=env)


@dataclass
class Context:
    nasca: Nasca
    settings: ServerSettings
    links: UpgradeLinks | None
    analytics: Analytics
    keys: Keys
    templates: Jinja2Templates

    @classmethod
    def build(cls, nasca: Nasca, settings: ServerSettings, links: UpgradeLinks | None,
              analytics: Analytics) -> Context:
        return cls(nasca, settings, links, analytics, Keys.from_settings(settings), _templates())

    def now(self) -> float:
        return self.nasca.now()

    def local(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, self.nasca.tz)

    # -- URLs and origins ----------------------------------------------------------------
    def base(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url).rstrip("/")

    def url(self, request: Request, name: str, **params: Any) -> str:
        """An absolute URL of one of this app's routes (public_url when set)."""
        return self.base(request) + str(request.app.url_path_for(name, **params))

    @staticmethod
    def path(request: Request, name: str, **params: Any) -> str:
        """The path of one of this app's routes, mount prefix included."""
        return str(request.scope.get("root_path", "")) + str(request.app.url_path_for(name, **params))

    def own_origins(self, request: Request) -> set[str]:
        out = {origin_of(str(request.base_url))}
        if self.settings.public_url:
            out.add(origin_of(self.settings.public_url))
        return out

    def frame_origins(self, request: Request) -> set[str]:
        return self.own_origins(request) | set(self.settings.allowed_origins)

    # -- responses -----------------------------------------------------------------------
    def page(self, request: Request, template: str, context: Mapping[str, Any], *, status: int = 200,
             frameable: bool = False, headers: Mapping[str, str] | None = None) -> Response:
        ancestors = " ".join(["'self'", *sorted(self.settings.allowed_origins)]) if frameable else "'none'"
        csp = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               f"connect-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors {ancestors}")
        all_headers = {**_BASE_HEADERS, "Content-Security-Policy": csp, **(headers or {})}
        if not frameable:
            all_headers["X-Frame-Options"] = "DENY"
        ctx = {"app_name": self.settings.app_name, **context}
        return self.templates.TemplateResponse(request, template, ctx, status_code=status,
                                               headers=all_headers)

    @staticmethod
    def json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse(data, status_code=status, headers={**_BASE_HEADERS, **(headers or {})})
