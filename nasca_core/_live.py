"""Live config: what the owner edits without a deploy (tiers, prices, packs, plans, the ceiling).

The store keeps every entry under a version number. Each process caches one
``ConfigSnapshot`` and reloads it when the store's version moved: the reserve script
reports a stale version in the same round trip, reads that aren't reserves ask for the
version first, and a write here drops the cache at once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nasca_core._config import Tier, check_ceiling, check_tier_name
from nasca_core._errors import ConfigurationError, StoreError
from nasca_core._fallback import check_fallback_prices
from nasca_core._pool_policy import pool_limits
from nasca_core._types import LedgerStats
from nasca_core.pricing import ModelPrice, Pricer, PriceTable, parse_price
from nasca_core.stores import StoredConfig, StoreHandle

log = logging.getLogger("nasca")

StoreErrorPolicy = Literal["allow", "block"]

# The ceiling in force when the stored one can't be read (a newer version wrote it) and this
# process has neither read a good one nor been given ``ceiling=``: calls fail closed, every take
# of it raising ConfigurationError (``_pools``), never run with no ceiling at all.
UNREADABLE_CEILING = Tier(daily="0.000000001")  # compared by identity; one nano: refuses all if used


@dataclass(frozen=True)
class ConfigSnapshot:
    """One version of the live config, with what the hot path derives from it."""

    version: int
    tiers: Mapping[str, Tier]
    tiers_json: str  # the form the settle script reads
    stored: StoredConfig = field(repr=False)  # sections "tier", "price", "pack", "plan"
    compiled: Mapping[str, tuple[int, ...]] = field(repr=False)  # limits d, w, m, hard flags, in-flight cap
    pricer: Pricer = field(repr=False)
    warned: frozenset[str] = frozenset()  # the tiers with a warn_at: the others skip the threshold steps
    # The app-wide ceiling in force (``_pools``; None: none, the hot path's only check) and its
    # limits d, w, m in nanos (-1 = none).
    ceiling: Tier | None = None
    ceiling_limits: tuple[int, int, int] = (-1, -1, -1)
    # The stored ceiling can't be read here: ``ceiling`` stands in for it (the last one read,
    # ceiling=, or UNREADABLE_CEILING), so status doesn't show it as the stored one.
    ceiling_unreadable: bool = False


CEILING = ("ceiling", "app")  # where set_ceiling() stores the ceiling (section, name)
_NO_CEILING = "null"  # set_ceiling(None): no ceiling, whatever the constructor said


class LiveConfig:
    """The constructor's tiers and prices, overridden by what ``save()`` wrote to the store.

    Raises ConfigurationError for unusable prices, aliases or unknown-model policy.
    """

    def __init__(
        self,
        store: StoreHandle,
        namespace: str,
        tiers: Mapping[str, Tier],
        *,
        prices: Mapping[str, Any] | None = None,
        model_aliases: Mapping[str, str] | None = None,
        unknown_model: str = "block",
        on_store_error: StoreErrorPolicy = "block",
        stats: LedgerStats | None = None,
        ceiling: Tier | None = None,
    ) -> None:
        self.base_tiers: Mapping[str, Tier] = dict(tiers)
        self.base_ceiling = check_ceiling(ceiling)
        self.stats = stats if stats is not None else LedgerStats()
        self._store = store
        self._namespace = namespace
        self._prices = dict(prices or {})
        self._aliases = dict(model_aliases or {})
        self._unknown_model = unknown_model
        self._on_store_error = on_store_error
        self._snapshot: ConfigSnapshot | None = None
        self._shadow_told = False
        self._last_ceiling: tuple[Tier | None] | None = None  # the last stored ceiling read well
        self._unreadable_told: str | None = None  # the unreadable text last logged (once each)
        self._lock = threading.Lock()
        # Validate prices, aliases and policy now, not on the first call; and the fallback models.
        check_fallback_prices(self.base_tiers, self._pricer({}), log)

    # -- reading ---------------------------------------------------------------------------
    def current(self) -> ConfigSnapshot:
        """The cached snapshot, loaded from the store when there is none.

        Raises StoreError when the store is down and the policy is "block"."""
        snap = self._snapshot
        if snap is None:
            with self._lock:
                snap = self._snapshot
                if snap is None:
                    try:
                        snap = self._apply(self._store.sync.load_config(self._namespace))
                    except StoreError:
                        snap = self._unreachable()
        return snap

    def cached(self) -> ConfigSnapshot | None:
        """The cached snapshot, None when the next read loads it (no I/O here)."""
        return self._snapshot

    async def acurrent(self) -> ConfigSnapshot:
        """Async twin of current()."""
        snap = self._snapshot
        if snap is None:
            try:
                snap = self._apply(await self._store.for_loop().load_config(self._namespace))
            except StoreError:
                snap = self._unreachable()
        return snap

    def fresh(self) -> ConfigSnapshot:
        """The snapshot, checked against the store's version first (for reads that aren't
        reserves). Raises StoreError."""
        if self._snapshot is not None:
            version = self._counted(lambda: self._store.sync.config_version(self._namespace))
            self._drop_if_moved(version)
        return self.current()

    async def afresh(self) -> ConfigSnapshot:
        """Async twin of fresh()."""
        if self._snapshot is not None:
            try:
                version = await self._store.for_loop().config_version(self._namespace)
            except StoreError:
                self.stats.store_errors += 1
                raise
            self._drop_if_moved(version)
        return await self.acurrent()

    def invalidate(self, *, stale: bool = False) -> None:
        """Reload on the next read; ``stale`` counts a reserve that found the version moved."""
        if stale:
            self.stats.stale_config_retries += 1
        self._snapshot = None

    # -- writing ---------------------------------------------------------------------------
    def save(self, section: str, name: str, payload: str | None) -> None:
        """Write one owner-editable entry (None deletes it); every process, this one
        included, reloads the config on its next call. Raises StoreError."""
        self._counted(lambda: self._store.sync.save_config(self._namespace, section, name, payload))
        self._snapshot = None

    async def asave(self, section: str, name: str, payload: str | None) -> None:
        """Async twin of save()."""
        try:
            await self._store.for_loop().save_config(self._namespace, section, name, payload)
        except StoreError:
            self.stats.store_errors += 1
            raise
        self._snapshot = None

    def set_tier(self, name: str, tier: Tier | None) -> None:
        """Define or change a tier for every process sharing the store (None removes the
        stored override). Raises ConfigurationError, StoreError."""
        payload = self.tier_payload(name, tier)
        if tier is not None:
            check_fallback_prices({name: tier}, self.current().pricer, log)
        self.save("tier", name, payload)

    async def aset_tier(self, name: str, tier: Tier | None) -> None:
        """Async twin of set_tier()."""
        payload = self.tier_payload(name, tier)
        if tier is not None:
            check_fallback_prices({name: tier}, (await self.acurrent()).pricer, log)
        await self.asave("tier", name, payload)

    def set_ceiling(self, tier: Tier | Literal["default"] | None) -> None:
        """Set the app-wide ceiling for every process sharing the store (None: no ceiling, even
        where ``ceiling=`` sets one; ``"default"``: remove the stored value, each process's
        ``ceiling=`` stands again). A process sees it when its chunk of the old one ends
        (``_pools``: within ``LEASE_S``). Raises ConfigurationError for a Tier a ceiling can't
        be, StoreError."""
        self._shadow_told = True  # this process chose it: no warning that it shadows ceiling=
        self.save(*CEILING, self.ceiling_payload(tier))

    async def aset_ceiling(self, tier: Tier | Literal["default"] | None) -> None:
        """Async twin of set_ceiling()."""
        self._shadow_told = True
        await self.asave(*CEILING, self.ceiling_payload(tier))

    def set_price(self, model: str, price: ModelPrice | Mapping[str, Any] | None) -> None:
        """Add or change a model's price for every process sharing the store (None removes
        the override). Raises ConfigurationError, StoreError."""
        self.save("price", model, self.price_payload(model, price))

    async def aset_price(self, model: str, price: ModelPrice | Mapping[str, Any] | None) -> None:
        """Async twin of set_price()."""
        await self.asave("price", model, self.price_payload(model, price))

    # -- payloads (pure) -------------------------------------------------------------------
    @staticmethod
    def tier_payload(name: str, tier: Tier | None) -> str | None:
        """What set_tier() stores. Raises ConfigurationError."""
        check_tier_name(name, tier if isinstance(tier, Tier) else None)
        if tier is None:
            return None
        if not isinstance(tier, Tier):
            raise ConfigurationError(f"set_tier({name!r}, ...) needs a Tier, got {type(tier).__name__}")
        return tier.model_dump_json()

    @staticmethod
    def ceiling_payload(tier: Tier | Literal["default"] | None) -> str | None:
        """What set_ceiling() stores (None: delete). Raises ConfigurationError."""
        if tier == "default":
            return None
        checked = check_ceiling(tier)
        return _NO_CEILING if checked is None else checked.model_dump_json()

    @staticmethod
    def price_payload(model: str, price: ModelPrice | Mapping[str, Any] | None) -> str | None:
        """What set_price() stores. Raises ConfigurationError for an unusable price."""
        if not isinstance(model, str) or not model:
            raise ConfigurationError("set_price() needs a model name")
        if price is None:
            return None
        mp = price if isinstance(price, ModelPrice) else parse_price(model, dict(price))
        PriceTable.default().with_overrides({model: mp})  # raises ConfigurationError if unusable
        return json.dumps(mp.to_dict())

    # -- internals -------------------------------------------------------------------------
    def _counted(self, op: Any) -> Any:
        try:
            return op()
        except StoreError:
            self.stats.store_errors += 1
            raise

    def _drop_if_moved(self, version: int) -> None:
        snap = self._snapshot
        if snap is not None and version != snap.version:
            self._snapshot = None

    def _unreachable(self) -> ConfigSnapshot:
        # Under "allow" the constructor's tiers stand in until the store answers again.
        self.stats.store_errors += 1
        if self._on_store_error == "block":
            raise
        snap = self._apply(StoredConfig(-1, {}))
        self._snapshot = None
        return snap

    def _apply(self, stored: StoredConfig) -> ConfigSnapshot:
        tiers = dict(self.base_tiers)
        for name, text in stored.sections.get("tier", {}).items():
            try:
                tiers[name] = Tier.model_validate_json(text)
            except Exception:  # a tier another version wrote that this one can't read
                log.exception("nasca: ignoring unreadable stored tier %r", name)
        compiled = {name: t.compiled() for name, t in tiers.items()}
        ceiling, unreadable = self._ceiling(stored)
        snap = ConfigSnapshot(
            version=stored.version, tiers=tiers, stored=stored,
            tiers_json=json.dumps(compiled, separators=(",", ":")),
            compiled={name: (*c["l"], *c["h"], c["f"]) for name, c in compiled.items()},
            pricer=self._pricer(stored.sections.get("price", {})),
            warned=frozenset(name for name, t in tiers.items() if t.warn_at),
            ceiling=ceiling, ceiling_limits=pool_limits(ceiling), ceiling_unreadable=unreadable,
        )
        # The owner's ceiling= silently not the one in force (an unreadable one is logged apart).
        if self.base_ceiling is not None and CEILING[1] in stored.sections.get(CEILING[0], {}) \
                and not unreadable and not self._shadow_told:
            self._shadow_told = True
            log.warning("nasca: the ceiling stored with set_ceiling()/`nasca ceiling` (%s) overrides "
                        "this process's ceiling=; `nasca ceiling unset` or set_ceiling(\"default\") "
                        "removes it", ceiling.model_dump_json(exclude_defaults=True) if ceiling else "off")
        self._snapshot = snap
        return snap

    def _ceiling(self, stored: StoredConfig) -> tuple[Tier | None, bool]:
        """The ceiling in force, and whether the stored one was unreadable."""
        text = stored.sections.get(CEILING[0], {}).get(CEILING[1])
        if text is None:
            if stored.version >= 0:  # nothing stored: ceiling= is what is in force now
                self._last_ceiling = (self.base_ceiling,)
            return self.base_ceiling, False
        try:
            got = None if text == _NO_CEILING else check_ceiling(Tier.model_validate_json(text))
        except Exception:  # written by another version: never no ceiling at all (fail closed)
            # A last read of "off" doesn't stand for an unreadable value: it may be a new limit.
            last = self._last_ceiling[0] if self._last_ceiling is not None else None
            kept = last if last is not None else self.base_ceiling
            if self._unreadable_told != text:
                self._unreadable_told = text
                log.exception("nasca: the stored ceiling can't be read (written by a newer version?); "
                              "%s", "the last one read stands" if last is not None else
                              "this process's ceiling= stands" if kept is not None else
                              "calls are refused until it is set again or this process is upgraded")
            return UNREADABLE_CEILING if kept is None else kept, True
        self._last_ceiling = (got,)
        return got, False

    def _pricer(self, stored: Mapping[str, str]) -> Pricer:
        live: dict[str, Any] = dict(self._prices)
        for model, text in stored.items():
            live[model] = json.loads(text)
        table = PriceTable.default()
        if live or self._aliases:
            table = table.with_overrides(live, self._aliases)
        return Pricer(table, unknown_model=self._unknown_model)
