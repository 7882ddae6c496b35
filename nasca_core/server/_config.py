"""``nasca.toml``: what ``nasca serve`` and ``nasca report`` run on. Secrets never live in
the file: they come from environment variables, read by the CLI and passed in here.

    store = "sqlite:///./nasca.db"          # the default; redis://h:6379/0, redis+cluster://h:p,h:p,
                                            # memory:// (gone at exit: only with --ephemeral)
    namespace = "myapp"
    timezone = "UTC"
    default_tier = "free"

    [tiers.free]                            # Tier(...) fields
    daily = "0.10"
    monthly = "0.50"

    [packs.p5]                              # CreditPack(...) fields; the key is the id
    price = 5
    spend = 3

    [plans.pro]                             # Plan(...) fields; the key is the id
    tier = "pro"
    price = 20

    [ceiling]                               # the app-wide ceiling's default, optional
    daily = 15                              # (say the same as the app's Nasca(ceiling=...);
    monthly = 200                           #  `nasca ceiling set` stores one for every process)
    warn_at = [0.8]

    [billing]                               # BillingPolicy(...) fields, optional
    on_amount_mismatch = "review"           # or "grant", "proportional"

    [stripe]
    api_base = "https://api.stripe.com"     # optional

    [server]                                # ServerSettings(...) fields, and where to listen
    host = "127.0.0.1"
    port = 8000
    public_url = "https://app.example.com/nasca"
    allowed_origins = ["https://app.example.com"]
    trusted_proxies = ["10.0.0.0/8"]        # your reverse proxies (the login throttle's client IP)

Environment: NASCA_SECRET (required), NASCA_ADMIN_TOKEN, STRIPE_API_KEY,
STRIPE_WEBHOOK_SECRET, NASCA_CEILING (when the file has no [ceiling]).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from nasca_core._config import Tier, check_ceiling, first_error
from nasca_core._errors import ConfigurationError
from nasca_core._ledger import Nasca
from nasca_core.billing import BillingPolicy, CreditPack, Plan, StripeConfig
from nasca_core.server._settings import ServerSettings

ENV_SECRET = "NASCA_SECRET"
ENV_ADMIN_TOKEN = "NASCA_ADMIN_TOKEN"
ENV_STRIPE_KEY = "STRIPE_API_KEY"
ENV_WEBHOOK_SECRET = "STRIPE_WEBHOOK_SECRET"
ENV_THRESHOLD_SECRET = "NASCA_THRESHOLD_WEBHOOK_SECRET"  # signs the owner's threshold webhook
ENV_CEILING = "NASCA_CEILING"  # the ceiling's default when nasca.toml has no [ceiling]
_SECRET_KEYS = {"secret", "admin_token", "api_key", "webhook_secret", "stripe_webhook_secret",
                "previous_secrets", "threshold_webhook_secret"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StripeSection(_Section):
    api_base: str | None = None


class ServerSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str | None = None
    allowed_origins: tuple[str, ...] = ()
    success_url: str | None = None
    cancel_url: str | None = None
    return_url: str | None = None
    app_name: str | None = None
    link_ttl: int | None = None
    display_unit: str | None = None
    unit_cost: str | float | None = None
    trusted_proxies: tuple[str, ...] = ()


DEFAULT_STORE = "sqlite:///./nasca.db"  # durable, one machine, no server to run


class ServeConfig(_Section):
    """The parsed ``nasca.toml``. Raises ConfigurationError (through ``load``/``parse``)."""

    store: str = DEFAULT_STORE
    namespace: str = "nasca"
    timezone: str = "UTC"
    default_tier: str | None = None
    tiers: dict[str, dict[str, Any]] = {}
    packs: dict[str, dict[str, Any]] = {}
    plans: dict[str, dict[str, Any]] = {}
    billing: dict[str, Any] = {}  # a BillingPolicy: on_amount_mismatch, on_partial_refund, ...
    threshold_webhook_url: str | None = None  # Tier.warn_at crossings posted to the owner
    # The app-wide ceiling's default (a Tier's daily/weekly/monthly/warn_at; what set_ceiling()
    # stores overrides it). The app's Nasca(ceiling=...) should say the same: each process has its own.
    ceiling: dict[str, Any] | None = None
    stripe: StripeSection = StripeSection()
    server: ServerSection = ServerSection()

    @classmethod
    def parse(cls, data: Mapping[str, Any], source: str = "nasca.toml") -> ServeConfig:
        _refuse_secrets(data, source)
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigurationError(f"{source}: {first_error(exc)}") from None

    @classmethod
    def load(cls, path: str | Path) -> ServeConfig:
        """Read and check a ``nasca.toml``. Raises ConfigurationError."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(f"{p}: no such file (give --config PATH)") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"{p}: {exc}") from None
        return cls.parse(data, str(p))

    def tier_models(self) -> dict[str, Tier]:
        return {name: Tier(**dict(values)) for name, values in self.tiers.items()}

    def pack_models(self) -> list[CreditPack]:
        return [CreditPack(id=pid, **dict(values)) for pid, values in self.packs.items()]

    def ceiling_model(self, env: Mapping[str, str]) -> Tier | None:
        """``[ceiling]`` as a Tier, else ``NASCA_CEILING`` (a Tier's JSON, as ``Nasca.from_env``
        reads it). Raises ConfigurationError."""
        try:
            if self.ceiling is not None:
                return check_ceiling(Tier(**dict(self.ceiling)))
            return check_ceiling(Tier.model_validate_json(env[ENV_CEILING])) if env.get(ENV_CEILING) else None
        except (ConfigurationError, ValidationError) as exc:
            why = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
            raise ConfigurationError(f"[ceiling] / {ENV_CEILING}: {why}") from None

    def plan_models(self) -> list[Plan]:
        return [Plan(id=pid, **dict(values)) for pid, values in self.plans.items()]


def _refuse_secrets(data: Mapping[str, Any], source: str, where: str = "") -> None:
    for key, value in data.items():
        if key in _SECRET_KEYS:
            raise ConfigurationError(
                f"{source}: {where}{key} looks like a secret: put secrets in environment variables "
                f"({ENV_SECRET}, {ENV_ADMIN_TOKEN}, {ENV_STRIPE_KEY}, {ENV_WEBHOOK_SECRET}, "
                f"{ENV_THRESHOLD_SECRET}), not in the file")
        if isinstance(value, Mapping) and key in ("server", "stripe"):
            _refuse_secrets(value, source, f"[{key}] ")


def build_nasca(config: ServeConfig, env: Mapping[str, str], *, store: Any = None,
                stripe: Any = None, webhook_secret: str | None = None) -> Nasca:
    """The Nasca a config describes (``store``/``stripe`` override it: the demo passes its own).

    Raises ConfigurationError."""
    tiers = config.tier_models() or {"default": Tier()}
    default = config.default_tier or (next(iter(tiers)) if len(tiers) == 1 else None)
    if stripe is None and env.get(ENV_STRIPE_KEY):
        stripe = StripeConfig(api_key=SecretStr(env[ENV_STRIPE_KEY]), api_base=config.stripe.api_base)
    policy = BillingPolicy(**dict(config.billing))  # checked before the store is opened
    nasca = Nasca(config.store if store is None else store, tiers=tiers, default_tier=default,
                  namespace=config.namespace, timezone=config.timezone,
                  packs=config.pack_models(), plans=config.plan_models(), stripe=stripe,
                  webhook_secret=webhook_secret or env.get(ENV_WEBHOOK_SECRET) or None,
                  threshold_webhook_url=config.threshold_webhook_url,
                  threshold_webhook_secret=env.get(ENV_THRESHOLD_SECRET) or None,
                  ceiling=config.ceiling_model(env),
                  leases=False)  # another worker may settle a hold reserved here: a lease never learns it
    nasca.billing.policy = policy
    return nasca


def build_settings(config: ServeConfig, env: Mapping[str, str], *, public_url: str | None = None,
                   secret: str | None = None, admin_token: str | None = None) -> ServerSettings:
    """The ServerSettings of a config, secrets from ``env``. Raises ConfigurationError."""
    s = config.server
    secret = secret or env.get(ENV_SECRET)
    if not secret:
        raise ConfigurationError(f"set {ENV_SECRET} to a long random string (python -c "
                                 "'import secrets; print(secrets.token_urlsafe(32))')")
    fields: dict[str, Any] = {
        "secret": secret, "admin_token": admin_token or env.get(ENV_ADMIN_TOKEN) or None,
        "public_url": s.public_url or public_url, "allowed_origins": s.allowed_origins,
        "success_url": s.success_url, "cancel_url": s.cancel_url, "return_url": s.return_url,
        "trusted_proxies": s.trusted_proxies,
    }
    if s.app_name:
        fields["app_name"] = s.app_name
    if s.link_ttl:
        fields["link_ttl"] = s.link_ttl
    if s.display_unit is not None or s.unit_cost is not None:
        fields["display_unit"], fields["unit_cost"] = s.display_unit, s.unit_cost
    return ServerSettings(**fields)
