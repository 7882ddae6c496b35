"""``ServerSettings``: what the upgrade page, the overlay and the dashboard need to know."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from nasca_core._config import first_error
from nasca_core._display import SpendDisplay
from nasca_core._errors import ConfigurationError, InvalidAmountError
from nasca_core._money import parse_amount

AuthHook = Callable[[Any], bool | Awaitable[bool]]
MIN_SECRET = 16
# zxcvbn's estimate of the guesses an attacker needs: 10**14 tries at the login throttle's
# pace (a few a minute per client) outlasts anyone; secrets.token_urlsafe(16) scores ~10**22.
MIN_TOKEN_GUESSES_LOG10 = 14.0
_ZXCVBN_MAX = 72  # zxcvbn refuses longer input; what follows the 72nd character only adds


def token_weakness(token: str) -> str | None:
    """Why ``token`` is too easy to guess for an admin token (short, repeated, a sequence,
    dictionary words, a keyboard walk), or None. Uses zxcvbn (Dropbox's estimator)."""
    if len(token) < MIN_SECRET:
        return f"it is shorter than {MIN_SECRET} characters"
    from zxcvbn import zxcvbn

    found = zxcvbn(token[:_ZXCVBN_MAX])
    if float(found["guesses_log10"]) >= MIN_TOKEN_GUESSES_LOG10:
        return None
    hint = found.get("feedback", {}).get("warning") or "it is made of guessable patterns"
    return f"it is too easy to guess ({hint.rstrip('.').lower()}, ~10^{found['guesses_log10']:.0f} guesses)"


def origin_of(url: str) -> str:
    """``https://app.example.com/x?y`` -> ``https://app.example.com`` (lower-cased)."""
    p = urlsplit(url)
    return f"{p.scheme.lower()}://{p.netloc.lower()}"


def _absolute(value: Any, what: str) -> str:
    p = urlsplit(value) if isinstance(value, str) else None
    if p is None or p.scheme not in ("http", "https") or not p.netloc:
        raise ValueError(f"{what} must be an absolute http(s) URL, got {value!r}")
    return str(value)


class ServerSettings(BaseModel):
    """Settings of ``create_app``; keyword-only, frozen, secrets kept out of reprs.

    - ``secret``: signs upgrade links and the dashboard's cookies (16+ characters; keep
      it out of source: ``nasca serve`` reads it from ``NASCA_SECRET``).
      ``previous_secrets`` still verify links signed before a rotation.
    - ``public_url``: where the app is reachable, mount path included
      (``https://app.example.com/nasca``). Needed to put upgrade links on
      ``NascaBlockedError.checkout_url``; without it pages use the request's own URL.
    - ``allowed_origins``: origins of pages that may open the upgrade page in the overlay
      (``https://app.example.com``); the app's own origin is always allowed.
    - ``admin_token`` and/or ``auth`` (``auth(request) -> bool``, sync or async, e.g. your
      own session check) protect the dashboard; with neither it answers 401 to everyone.
      The token must be hard to guess (``token_weakness``: zxcvbn's estimate); make one
      with ``nasca serve --new-admin-token``. Wrong tokens are throttled per client
      (``_throttle``), counted in the store (every worker and process together).
    - ``trusted_proxies``: addresses or networks (``"10.0.0.0/8"``) of your reverse
      proxies. A request from one of them is counted under the client address it forwarded
      (``X-Forwarded-For``); by default no proxy is trusted and the peer's address counts
      (behind a proxy every client then shares its address: the throttle guards the
      dashboard as a whole).
    - ``stripe_webhook_secret``: the endpoint's ``whsec_...`` when the Nasca has none.
    - ``success_url``/``cancel_url``: where Stripe Checkout returns (default: this app's
      own success and cancel pages); ``return_url``: the "back to the app" link.
    - ``link_ttl``: seconds an upgrade link stays valid.
    - ``display_unit`` and ``unit_cost``: show end users their AI allowance in units
      ("messages") of ``unit_cost`` dollars each instead of dollars (both or neither);
      prices stay in money.

    Raises ConfigurationError.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    secret: SecretStr
    previous_secrets: tuple[SecretStr, ...] = ()
    public_url: str | None = None
    allowed_origins: tuple[str, ...] = ()
    admin_token: SecretStr | None = None
    auth: AuthHook | None = None
    stripe_webhook_secret: SecretStr | None = None
    success_url: str | None = None
    cancel_url: str | None = None
    return_url: str | None = None
    link_ttl: int = Field(default=86_400, ge=60, le=30 * 86_400)
    app_name: str = Field(default="AI assistant", min_length=1, max_length=80)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    display_unit: str | None = Field(default=None, min_length=1, max_length=24)
    unit_cost: Decimal | None = None
    trusted_proxies: tuple[IPvAnyNetwork, ...] = ()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(f"Invalid ServerSettings: {first_error(exc)}") from None

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET:
            raise ValueError(f"secret must be at least {MIN_SECRET} characters (use secrets.token_urlsafe())")
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        why = None if value is None else token_weakness(value.get_secret_value())
        if why:
            raise ValueError(f"admin_token is rejected: {why}; generate one with "
                             "`nasca serve --new-admin-token` or secrets.token_urlsafe(32)")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value, "public_url").rstrip("/")

    @field_validator("success_url", "cancel_url", "return_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value, "success_url, cancel_url and return_url")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        out = []
        for item in value or ():
            _absolute(item, "allowed_origins entries")
            p = urlsplit(item)
            if p.path not in ("", "/") or p.query or p.fragment:
                raise ValueError(f"allowed_origins entries are origins (scheme://host[:port]), got {item!r}")
            out.append(origin_of(item))
        return tuple(out)

    @field_validator("unit_cost", mode="before")
    @classmethod
    def _unit_cost(cls, value: Any) -> Decimal | None:
        if value is None:
            return None
        try:
            cost = parse_amount(value, what="unit_cost", allow_zero=False)
        except InvalidAmountError as exc:
            raise ValueError(str(exc)) from None
        return cost

    @model_validator(mode="after")
    def _unit_pair(self) -> ServerSettings:
        if (self.display_unit is None) != (self.unit_cost is None):
            raise ValueError("display_unit and unit_cost go together: give both or neither")
        return self

    @property
    def spend_display(self) -> SpendDisplay:
        """How the upgrade page shows AI spend (dollars, or ``display_unit``)."""
        return SpendDisplay(self.display_unit, self.unit_cost)

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """The current secret first, then the previous ones."""
        return tuple(s.get_secret_value().encode() for s in (self.secret, *self.previous_secrets))
