"""``Nasca.from_env()``: the ledger's settings from ``NASCA_*`` environment variables.

    NASCA_STORE=redis://cache:6379/0  NASCA_NAMESPACE=myapp  NASCA_DEFAULT_TIER=free
    NASCA_TIERS='{"free": {"monthly": "0.50", "daily": "0.10"}, "pro": {"monthly": 10}}'
    NASCA_CEILING='{"monthly": 200, "daily": 15}'   (the app-wide ceiling: ``Nasca(ceiling=...)``)

Read with pydantic-settings, so a bad value is refused with the variable's name; keyword
arguments given to ``from_env`` win over the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from nasca_core._config import Tier, first_error
from nasca_core._errors import ConfigurationError

ENV_PREFIX = "NASCA_"


class LedgerEnv(BaseSettings):
    """The ``Nasca(...)`` options an environment can set (secrets stay out: see the server)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    store: str = "memory://"
    tiers: dict[str, Tier] | None = None
    default_tier: str | None = None
    namespace: str = "nasca"
    timezone: str = "UTC"
    strict: bool = False
    on_store_error: Literal["allow", "block"] = "block"
    hold_ttl: float = 900.0
    unknown_model: str = "block"
    default_output_tokens: int = 256
    cap_output: bool = False
    leases: bool | None = None  # NASCA_LEASES: budget leases (default: on where the background sender is)
    ceiling: Tier | None = None  # NASCA_CEILING: the app-wide ceiling, a Tier's JSON (its limits, warn_at)


class PrivacyEnv(BaseSettings):
    """``NASCA_USER_HASH_KEY``: the secret ``wrap()`` keys the user-id hash it sends with."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    user_hash_key: SecretStr | None = None


def user_hash_key() -> str | None:
    """The ``NASCA_USER_HASH_KEY`` secret, None when unset or empty."""
    key = PrivacyEnv().user_hash_key
    return key.get_secret_value() or None if key is not None else None


def ledger_kwargs(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``Nasca`` keyword arguments: ``overrides`` over the environment.

    Raises ConfigurationError naming the variable at fault."""
    try:
        env = LedgerEnv()
    except ValidationError as exc:
        raise ConfigurationError(f"Invalid {ENV_PREFIX}* environment: {first_error(exc)}") from None
    except ConfigurationError as exc:  # Tier(...) checks its own fields: the tiers and the ceiling
        raise ConfigurationError(f"Invalid {ENV_PREFIX}TIERS or {ENV_PREFIX}CEILING: {exc}") from None
    if env.store[:8].lower().startswith(("http://", "https://")):
        return remote_kwargs(env, overrides)
    kwargs = {k: v for k, v in env.model_dump(exclude_none=True).items() if k not in ("tiers", "ceiling")}
    if env.tiers is not None:
        kwargs["tiers"] = env.tiers
    if env.ceiling is not None:
        kwargs["ceiling"] = env.ceiling
    kwargs.update(overrides)
    if "tiers" not in kwargs:
        raise ConfigurationError(f"no tiers: set {ENV_PREFIX}TIERS to JSON like "
                                 '\'{"free": {"monthly": "0.50"}}\', or pass tiers=')
    return kwargs


class RemoteEnv(BaseSettings):
    """``NASCA_API_KEY``: a remote ledger's key (one of its server's ``NASCA_API_KEYS``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    api_key: SecretStr | None = None


def remote_kwargs(env: LedgerEnv, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A remote ledger's options (``NASCA_STORE=https://...``): the server owns the tiers,
    limits and prices, so only the client's own settings are read."""
    key = RemoteEnv().api_key
    kwargs: dict[str, Any] = {"store": env.store, "on_store_error": env.on_store_error,
                              "default_output_tokens": env.default_output_tokens,
                              "cap_output": env.cap_output}
    if key is not None and key.get_secret_value():
        kwargs["api_key"] = key.get_secret_value()
    kwargs.update(overrides)
    return kwargs
