"""``Nasca``: the ledger's front door, sync and async.

Each operation is prepared by pure code (who is calling, which windows, which keys,
what the store returned means); the sync and async methods differ only in the store
call they make between the two halves.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from nasca_core import _identity, _policy
from nasca_core._calls import CallsMixin
from nasca_core._config import Tier
from nasca_core._errors import (
    ConfigurationError,
    InvalidUserError,
    NascaBlockedError,
    StoreError,
    UnknownTierError,
)
from nasca_core._money import Amount, check_nanos, to_nanos, to_usd
from nasca_core._types import Charge, Reservation
from nasca_core._usage import Usage
from nasca_core._windows import WINDOWS, Window, WindowClock, WindowSet, load_zone
from nasca_core._wrap import WrapMixin
from nasca_core.billing import BillingMixin
from nasca_core.stores import (
    ReserveOp,
    ReserveResult,
    SettleOp,
    SettleResult,
    Snapshot,
    StoredConfig,
    UserKeys,
    open_store,
)

if TYPE_CHECKING:
    from nasca_core.analytics import Analytics

log = logging.getLogger("nasca")

StoreErrorPolicy = Literal["allow", "block"]
_hold_seq = itertools.count(1)
_HOLD_PREFIX = os.urandom(6).hex()


def _new_hold_prefix() -> None:
    # Hold ids dedupe retried settles: a forked worker (multiprocessing, Celery, gunicorn
    # --preload) must not reuse its parent's ids, or its settles would look like replays.
    global _HOLD_PREFIX, _hold_seq
    _HOLD_PREFIX = os.urandom(6).hex()
    _hold_seq = itertools.count(1)


os.register_at_fork(after_in_child=_new_hold_prefix)
_SETTLED_MARKER_MS = 3_600_000  # how long a settled hold id is remembered (dedupes retries)


@dataclass
class LedgerStats:
    """Counters of what happened in this process (for logs and health checks)."""

    reserved: int = 0
    blocked: int = 0
    settled: int = 0
    released: int = 0
    store_errors: int = 0
    deferred: int = 0
    deferred_retried: int = 0
    deferred_pending: int = 0
    stale_config_retries: int = 0


@dataclass(frozen=True)
class _ConfigState:
    version: int
    tiers: Mapping[str, Tier]
    tiers_json: str
    stored: StoredConfig = field(repr=False)
    compiled: Mapping[str, tuple[int, ...]] = field(default_factory=dict, repr=False)


class Nasca(CallsMixin, WrapMixin, BillingMixin):
    """Per-end-user AI spend limits.

    ``Nasca(store="memory://", tiers={"free": Tier(monthly=0.5, daily=0.1)}, default_tier="free")``

    Raises ConfigurationError for an unknown store URI, timezone, default tier or policy.
    """

    def __init__(
        self,
        store: Any = "memory://",
        *,
        tiers: Mapping[str, Tier],
        default_tier: str | None = None,
        namespace: str = "nasca",
        timezone: str = "UTC",
        strict: bool = False,
        on_store_error: StoreErrorPolicy = "block",
        hold_ttl: float = 900.0,
        clock: Callable[[], float | datetime] | None = None,
        get_user_id: Callable[[Any], str] | None = None,
        get_user_tier: Callable[[Any], str | None] | None = None,
        upgrade_message: str | None = None,
        checkout_url: Callable[[NascaBlockedError], str | None] | None = None,
        prices: Mapping[str, Any] | None = None,
        model_aliases: Mapping[str, str] | None = None,
        unknown_model: str = "block",
        default_output_tokens: int = 256,
        packs: Any = None,
        plans: Any = None,
        stripe: Any = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
        webhook_secret: str | None = None,
        allow_bonus_credits: bool = True,
    ) -> None:
        if not isinstance(tiers, Mapping) or not tiers:
            raise ConfigurationError("tiers must be a non-empty mapping of name -> Tier(...)")
        for name, tier in tiers.items():
            _check_tier_name(name)
            if not isinstance(tier, Tier):
                raise ConfigurationError(f"tiers[{name!r}] must be a Tier, got {type(tier).__name__}")
        if default_tier is not None and default_tier not in tiers:
            raise UnknownTierError(default_tier, list(tiers))
        if not isinstance(namespace, str) or not namespace or "{" in namespace or "}" in namespace:
            raise ConfigurationError("namespace must be a non-empty string without braces")
        if on_store_error not in ("allow", "block"):
            raise ConfigurationError("on_store_error must be 'allow' or 'block'")
        if not (isinstance(hold_ttl, int | float) and 1 <= hold_ttl <= 86400):
            raise ConfigurationError("hold_ttl must be between 1 and 86400 seconds")
        self.namespace = namespace
        self.timezone = timezone
        self.tz = load_zone(timezone)
        self.default_tier = default_tier
        self.strict = bool(strict)
        self.on_store_error: StoreErrorPolicy = on_store_error
        self.hold_ttl_ms = int(hold_ttl * 1000)
        self.get_user_id = get_user_id
        self.get_user_tier = get_user_tier
        # {action} says what can unblock the user: credits can't lift a hard cap.
        self.upgrade_message_template = upgrade_message or (
            "You've used your {window} AI allowance on the {tier} plan "
            "({spent} of {limit}). It resets {resets}. {action}"
        )
        self.checkout_url_factory = checkout_url
        self.stats = LedgerStats()
        self._base_tiers = dict(tiers)
        self._store = open_store(store)
        self._clock = clock or time.time
        self._windows = WindowClock(self.tz)
        self._config: _ConfigState | None = None
        self._config_lock = threading.Lock()
        self._deferred: deque[SettleOp] = deque()
        self._keys_cache: dict[tuple[str, str], UserKeys] = {}
        self.block_listeners: list[Callable[[NascaBlockedError], None]] = []
        self._init_pricing(prices, model_aliases, unknown_model, default_output_tokens)
        self._init_billing(packs=packs, plans=plans, stripe=stripe, success_url=success_url,
                           cancel_url=cancel_url, webhook_secret=webhook_secret,
                           allow_bonus_credits=allow_bonus_credits)

    # -- identity ----------------------------------------------------------------------
    @contextmanager
    def user(self, user_id: str, tier: str | None = None) -> Iterator[None]:
        """Act as ``user_id`` (and tier) for every call inside the block, sync or async.

        Raises InvalidUserError for an empty or non-string id.
        """
        with _identity.acting_as(user_id, tier):
            yield

    def resolve_user(
        self, user: str | None = None, tier: str | None = None, ctx: Any = None
    ) -> tuple[str, str]:
        """Who is calling, by precedence: explicit ``user=``, the ``get_user_id(ctx)`` callable,
        the ``nasca.user()`` context. Raises InvalidUserError when none names a user."""
        if user is None and ctx is not None and self.get_user_id is not None:
            user = self.get_user_id(ctx)
            if tier is None and self.get_user_tier is not None:
                tier = self.get_user_tier(ctx)
        if user is None:
            current = _identity.current()
            if current is not None:
                user = current[0]
                tier = tier if tier is not None else current[1]
        if user is None:
            raise InvalidUserError(
                "No user for this call: pass user=..., wrap the call in `with nasca.user(id):`, "
                "or give Nasca(get_user_id=...)."
            )
        _identity.check_user_id(user)
        tier = tier if tier is not None else self.default_tier
        if tier is None:
            raise InvalidUserError(
                f"No tier for user {user!r}: pass tier=..., or set Nasca(default_tier=...)."
            )
        return user, tier

    # -- config ------------------------------------------------------------------------
    def _apply_config(self, stored: StoredConfig) -> _ConfigState:
        tiers = dict(self._base_tiers)
        for name, text in stored.sections.get("tier", {}).items():
            try:
                tiers[name] = Tier.model_validate_json(text)
            except Exception:  # a tier another version wrote that this one can't read
                log.exception("nasca: ignoring unreadable stored tier %r", name)
        compiled = {name: t.compiled() for name, t in tiers.items()}
        state = _ConfigState(stored.version, tiers, json.dumps(compiled, separators=(",", ":")), stored,
                             {name: (*c["l"], *c["h"]) for name, c in compiled.items()})
        self._config = state
        self._on_config(state)
        return state

    def _on_config(self, state: _ConfigState) -> None:
        self._build_pricer(state.stored.sections.get("price", {}))

    def _config_now(self) -> _ConfigState:
        state = self._config
        if state is None:
            with self._config_lock:
                try:
                    state = self._config or self._apply_config(
                        self._sync_store("load_config", self.namespace)
                    )
                except StoreError:
                    state = self._config_unreachable()
        return state

    async def _aconfig_now(self) -> _ConfigState:
        state = self._config
        if state is None:
            try:
                state = self._apply_config(await self._async_store("load_config", self.namespace))
            except StoreError:
                state = self._config_unreachable()
        return state

    def _config_unreachable(self) -> _ConfigState:
        # Under "allow" the constructor's tiers stand in until the store answers again.
        if self.on_store_error == "block":
            raise
        state = self._apply_config(StoredConfig(-1, {}))
        self._config = None
        return state

    def _config_fresh(self) -> _ConfigState:
        """The config, checked against the store's version (reads that aren't reserves)."""
        state = self._config
        if state is not None and self._sync_store("config_version", self.namespace) != state.version:
            self._config = None
        return self._config_now()

    async def _aconfig_fresh(self) -> _ConfigState:
        state = self._config
        if state is not None and await self._async_store("config_version", self.namespace) != state.version:
            self._config = None
        return await self._aconfig_now()

    @property
    def tiers(self) -> Mapping[str, Tier]:
        """The tiers in force: the constructor's, overridden by set_tier()."""
        return dict(self._config_fresh().tiers)

    def _check_tier(self, state: _ConfigState, tier: str) -> None:
        if tier not in state.tiers:
            raise UnknownTierError(tier, list(state.tiers))

    def _tier_payload(self, name: str, tier: Tier | None) -> str | None:
        _check_tier_name(name)
        if tier is None:
            return None
        if not isinstance(tier, Tier):
            raise ConfigurationError(f"set_tier({name!r}, ...) needs a Tier, got {type(tier).__name__}")
        return tier.model_dump_json()

    def set_tier(self, name: str, tier: Tier | None) -> None:
        """Define or change a tier for every process sharing the store (None removes the
        stored override). Raises ConfigurationError."""
        self._save_config("tier", name, self._tier_payload(name, tier))

    async def aset_tier(self, name: str, tier: Tier | None) -> None:
        await self._asave_config("tier", name, self._tier_payload(name, tier))

    def _save_config(self, section: str, name: str, payload: str | None) -> None:
        """Write one owner-editable entry (None deletes it); every process, this one
        included, reloads the config on its next call."""
        self._sync_store("save_config", self.namespace, section, name, payload)
        self._config = None

    async def _asave_config(self, section: str, name: str, payload: str | None) -> None:
        await self._async_store("save_config", self.namespace, section, name, payload)
        self._config = None

    def set_user_tier(self, user: str, tier: str | None) -> None:
        """Put a user on a tier in the store (None clears it); it beats the caller's tier.

        Raises InvalidUserError, UnknownTierError."""
        keys = self._prepare_user_tier(user, tier, self._config_fresh())
        self._sync_store("set_user_tier", keys, tier)

    async def aset_user_tier(self, user: str, tier: str | None) -> None:
        keys = self._prepare_user_tier(user, tier, await self._aconfig_fresh())
        await self._async_store("set_user_tier", keys, tier)

    def _prepare_user_tier(self, user: str, tier: str | None, state: _ConfigState) -> UserKeys:
        _identity.check_user_id(user)
        if tier is not None:
            self._check_tier(state, tier)
        return self._keys(user, self._windows.at(self._now()))

    # -- store plumbing ----------------------------------------------------------------
    def _sync_store(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._store.sync, method)(*args)
        except StoreError:
            self.stats.store_errors += 1
            raise

    async def _async_store(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self._store.for_loop(), method)(*args)
        except StoreError:
            self.stats.store_errors += 1
            raise

    def _now(self) -> float:
        now = self._clock()
        return now.timestamp() if isinstance(now, datetime) else float(now)

    def _keys(self, user_id: str, ws: WindowSet) -> UserKeys:
        cache_key = (user_id, ws.ids[0] + ws.ids[1])
        keys = self._keys_cache.get(cache_key)
        if keys is None:
            if len(self._keys_cache) > 4096:
                self._keys_cache.clear()
            keys = self._keys_cache[cache_key] = UserKeys.build(self.namespace, user_id, ws.ids)
        return keys

    # -- reserve -----------------------------------------------------------------------
    def _reserve_op(
        self, state: _ConfigState, user_id: str, tier: str, estimate: int, strict: bool | None
    ) -> ReserveOp:
        self._check_tier(state, tier)
        now = self._now()
        now_ms = int(now * 1000)
        return ReserveOp(
            keys=self._keys(user_id, self._windows.at(now)),
            now_ms=now_ms,
            hold_id=f"{_HOLD_PREFIX}{next(_hold_seq)}",
            estimate=estimate,
            hold_expiry_ms=now_ms + self.hold_ttl_ms,
            strict=self.strict if strict is None else strict,
            tier=tier,
            tiers_json=state.tiers_json,
            config_version=state.version,
            tier_compiled=state.compiled[tier],
        )

    def _estimate_nanos(self, amount: Amount | None, nanos: int | None) -> int:
        if nanos is not None:
            if amount is not None:
                raise ConfigurationError("pass the estimate in dollars or nanos=, not both")
            return check_nanos(nanos, what="estimate")
        return check_nanos(to_nanos(0 if amount is None else amount, what="estimate"), what="estimate")

    def reserve(
        self,
        estimate: Amount | None = None,
        *,
        nanos: int | None = None,
        user: str | None = None,
        tier: str | None = None,
        ctx: Any = None,
        strict: bool | None = None,
    ) -> Reservation:
        """Hold ``estimate`` dollars of the user's budget before a call (one store round trip).

        Raises NascaBlockedError when the user may not spend now; InvalidInputError,
        UnknownTierError for bad input; StoreError when the store fails and
        on_store_error="block".
        """
        amount = self._estimate_nanos(estimate, nanos)
        user_id, tier_name = self.resolve_user(user, tier, ctx)
        return self._reserve(amount, user_id, tier_name, strict)

    def _reserve(self, amount: int, user_id: str, tier_name: str, strict: bool | None) -> Reservation:
        for _ in range(3):
            state = self._config_now()
            op = self._reserve_op(state, user_id, tier_name, amount, strict)
            try:
                result = self._sync_store("reserve", op)
            except StoreError as exc:
                return self._store_failed_reserve(op, exc)
            if result.status != -1:
                break
            self._stale_config()
        if result.status == 1:
            self.stats.reserved += 1
            return Reservation(user_id, result.tier, op.hold_id, amount, op.keys)
        err = self._blocked(op, result, self._snapshot_or_none(op.keys))
        self._notify_block(err)
        raise err

    async def areserve(
        self,
        estimate: Amount | None = None,
        *,
        nanos: int | None = None,
        user: str | None = None,
        tier: str | None = None,
        ctx: Any = None,
        strict: bool | None = None,
    ) -> Reservation:
        """Async twin of reserve()."""
        amount = self._estimate_nanos(estimate, nanos)
        user_id, tier_name = self.resolve_user(user, tier, ctx)
        return await self._areserve(amount, user_id, tier_name, strict)

    async def _areserve(self, amount: int, user_id: str, tier_name: str, strict: bool | None) -> Reservation:
        for _ in range(3):
            state = await self._aconfig_now()
            op = self._reserve_op(state, user_id, tier_name, amount, strict)
            try:
                result = await self._async_store("reserve", op)
            except StoreError as exc:
                return self._store_failed_reserve(op, exc)
            if result.status != -1:
                break
            self._stale_config()
        if result.status == 1:
            self.stats.reserved += 1
            return Reservation(user_id, result.tier, op.hold_id, amount, op.keys)
        try:
            snap = await self._async_store("snapshot", op.keys, op.now_ms)
        except StoreError:
            snap = None
        err = self._blocked(op, result, snap)
        self._notify_block(err)
        raise err

    def _stale_config(self) -> None:
        self.stats.stale_config_retries += 1
        self._config = None

    def _store_failed_reserve(self, op: ReserveOp, exc: StoreError) -> Reservation:
        if self.on_store_error == "block":
            raise exc
        log.warning("nasca: store unreachable, admitting %s unchecked (on_store_error='allow'): %s",
                    op.keys.meta, exc)
        return Reservation(op.keys.meta.split(":{", 1)[1][:-1], op.tier, op.hold_id, op.estimate,
                           op.keys, degraded=True)

    def _snapshot_or_none(self, keys: UserKeys) -> Snapshot | None:
        try:
            snap: Snapshot = self._sync_store("snapshot", keys, int(self._now() * 1000))
            return snap
        except StoreError:
            return None

    def _blocked(self, op: ReserveOp, result: ReserveResult, snap: Snapshot | None) -> NascaBlockedError:
        self.stats.blocked += 1
        window: Window = WINDOWS[result.window - 1]
        user_id = _user_of(op.keys)
        tiers = (self._config or self._config_now()).tiers
        tier = tiers.get(result.tier) or Tier()
        ws = self._windows.at(op.now_ms / 1000)
        usage = None
        if snap is not None:
            usage = self._usage(user_id, result.tier, tier, snap, ws)
        resets_at = ws.end_datetime(result.window - 1, self.tz)
        spent = to_usd(result.spent[result.window - 1])
        limit = tier.limit(window) or Decimal(0)
        from nasca_core._display import money

        hard = tier.hard_windows()[result.window - 1]
        action = ("Upgrade your plan to keep going now." if hard
                  else "Upgrade or buy credits to keep going now.")
        message = self.upgrade_message_template.format(
            window=window, tier=result.tier, spent=money(spent), limit=money(limit),
            resets=f"on {resets_at:%b %d at %H:%M %Z}", user=user_id, action=action,
        )
        err = NascaBlockedError(
            user_id=user_id, tier=result.tier, window=window, usage=usage, resets_at=resets_at,
            upgrade_message=message, prompt_id=f"{op.hold_id}",
        )
        if self.checkout_url_factory is not None:
            try:
                err.checkout_url = self.checkout_url_factory(err)
            except Exception:
                log.exception("nasca: checkout_url factory failed")
        return err

    def _notify_block(self, err: NascaBlockedError) -> None:
        for listener in self.block_listeners:
            try:
                listener(err)
            except Exception:
                log.exception("nasca: block listener failed")

    # -- settle / release --------------------------------------------------------------
    def _settle_op(
        self, reservation: Reservation, cost: int, tokens: tuple[int, int] = (0, 0)
    ) -> SettleOp:
        state = self._config or self._config_now()
        now = self._now()
        now_ms = int(now * 1000)
        ws = self._windows.at(now)
        # The call may have crossed a window boundary: charge the windows where it ended.
        keys = self._keys(reservation.user_id, ws)
        return SettleOp(keys=keys, now_ms=now_ms, hold_id=reservation.hold_id,
                        estimate=reservation.estimate_nanos, cost=cost, tier=reservation.tier,
                        tiers_json=state.tiers_json,
                        tier_compiled=state.compiled.get(reservation.tier, (-1, -1, -1, 0, 0, 0)),
                        ttls_ms=ws.ttls_from(now),
                        marker_expiry_ms=now_ms + _SETTLED_MARKER_MS,
                        input_tokens=tokens[0], output_tokens=tokens[1])

    def _cost_nanos(self, reservation: Reservation, cost: Amount | None, nanos: int | None) -> int:
        if not isinstance(reservation, Reservation):
            raise ConfigurationError(f"settle() needs the Reservation from reserve(), got {reservation!r}")
        if nanos is not None:
            if cost is not None:
                raise ConfigurationError("pass the cost in dollars or nanos=, not both")
            return check_nanos(nanos, what="cost")
        if cost is None:
            raise ConfigurationError("settle() needs the call's real cost (dollars or nanos=)")
        return check_nanos(to_nanos(cost, what="cost"), what="cost")

    def settle(
        self,
        reservation: Reservation,
        cost: Amount | None = None,
        *,
        nanos: int | None = None,
        tokens: tuple[int, int] = (0, 0),
    ) -> Charge:
        """Replace the hold by the call's real cost (one store round trip). If the store is
        unreachable the charge is queued and retried, never dropped.

        Raises InvalidAmountError for a negative, NaN or infinite cost (nothing is written).
        """
        op = self._settle_op(reservation, self._cost_nanos(reservation, cost, nanos), tokens)
        if self._deferred:
            self.flush_deferred()
        try:
            result: SettleResult = self._sync_store("settle", op)
        except StoreError as exc:
            return self._defer(op, exc)
        self.stats.settled += 1
        return Charge(op.cost, result.tier_part, result.credit_part)

    async def asettle(
        self,
        reservation: Reservation,
        cost: Amount | None = None,
        *,
        nanos: int | None = None,
        tokens: tuple[int, int] = (0, 0),
    ) -> Charge:
        """Async twin of settle()."""
        op = self._settle_op(reservation, self._cost_nanos(reservation, cost, nanos), tokens)
        if self._deferred:
            await self.aflush_deferred()
        try:
            result: SettleResult = await self._async_store("settle", op)
        except StoreError as exc:
            return self._defer(op, exc)
        self.stats.settled += 1
        return Charge(op.cost, result.tier_part, result.credit_part)

    def _defer(self, op: SettleOp, exc: StoreError) -> Charge:
        self._deferred.append(op)
        self.stats.deferred += 1
        self.stats.deferred_pending = len(self._deferred)
        log.warning("nasca: store unreachable, deferred a settle of %d nanos for %s (%d pending): %s",
                    op.cost, op.keys.meta, len(self._deferred), exc)
        return Charge(op.cost, op.cost, 0, deferred=True)

    def flush_deferred(self) -> int:
        """Retry settles that could not reach the store; returns how many went through."""
        done = 0
        # Take before trying, put back on failure: two threads flushing at once never apply
        # (or drop) the same entry. A retry of a settle the store did apply is a no-op there.
        while (op := self._take_deferred()) is not None:
            try:
                self._sync_store("settle", op)
            except StoreError:
                self._deferred.appendleft(op)
                break
            done += 1
        self._after_flush(done)
        return done

    async def aflush_deferred(self) -> int:
        """Async twin of flush_deferred()."""
        done = 0
        while (op := self._take_deferred()) is not None:
            try:
                await self._async_store("settle", op)
            except StoreError:
                self._deferred.appendleft(op)
                break
            done += 1
        self._after_flush(done)
        return done

    def _take_deferred(self) -> SettleOp | None:
        try:
            return self._deferred.popleft()
        except IndexError:
            return None

    def _after_flush(self, done: int) -> None:
        self.stats.deferred_retried += done
        self.stats.deferred_pending = len(self._deferred)
        if done:
            log.info("nasca: applied %d deferred settles (%d pending)", done, len(self._deferred))

    def release(self, reservation: Reservation) -> None:
        """Drop the hold of a call that failed before costing anything. Store failures are
        logged, not raised: the hold expires by itself."""
        try:
            self._sync_store("release", reservation.keys, reservation.hold_id, reservation.estimate_nanos)
            self.stats.released += 1
        except StoreError as exc:
            log.warning("nasca: release failed, the hold will expire by itself: %s", exc)

    async def arelease(self, reservation: Reservation) -> None:
        """Async twin of release()."""
        try:
            await self._async_store("release", reservation.keys, reservation.hold_id,
                                    reservation.estimate_nanos)
            self.stats.released += 1
        except StoreError as exc:
            log.warning("nasca: release failed, the hold will expire by itself: %s", exc)

    # -- usage -------------------------------------------------------------------------
    def _usage_target(self, user: str | None, tier: str | None) -> tuple[str, str, UserKeys, WindowSet, int]:
        user_id, tier_name = self.resolve_user(user, tier)
        now = self._now()
        ws = self._windows.at(now)
        return user_id, tier_name, self._keys(user_id, ws), ws, int(now * 1000)

    def get_usage(self, user: str | None = None, tier: str | None = None) -> Usage:
        """What the user has spent per window, with limits, resets and credit balances.

        Raises InvalidUserError, UnknownTierError, StoreError."""
        user_id, tier_name, keys, ws, now_ms = self._usage_target(user, tier)
        state = self._config_fresh()
        snap: Snapshot = self._sync_store("snapshot", keys, now_ms)
        return self._usage_from(state, user_id, tier_name, snap, ws)

    async def aget_usage(self, user: str | None = None, tier: str | None = None) -> Usage:
        """Async twin of get_usage()."""
        user_id, tier_name, keys, ws, now_ms = self._usage_target(user, tier)
        state = await self._aconfig_fresh()
        snap: Snapshot = await self._async_store("snapshot", keys, now_ms)
        return self._usage_from(state, user_id, tier_name, snap, ws)

    def _usage_from(self, state: _ConfigState, user_id: str, tier_name: str, snap: Snapshot,
                    ws: WindowSet) -> Usage:
        name = snap.stored_tier if snap.stored_tier is not None and snap.stored_tier in state.tiers \
            else tier_name
        if name not in state.tiers:
            raise UnknownTierError(name, list(state.tiers))
        return self._usage(user_id, name, state.tiers[name], snap, ws)

    def _usage(self, user_id: str, tier_name: str, tier: Tier, snap: Snapshot, ws: WindowSet) -> Usage:
        compiled = tier.compiled()
        limits, hard = compiled["l"], compiled["h"]
        credits = sum(lot.remaining for lot in snap.lots)
        blocked = _policy.admit(limits, hard, snap.spent, snap.held, 0, credits, False)
        fields: dict[str, Any] = {}
        for i, w in enumerate(WINDOWS):
            limit = tier.limit(w)
            if limit is None:
                continue
            spent = to_usd(snap.spent[i])
            fields[f"{w}_spent"] = spent
            fields[f"{w}_limit"] = limit
            fields[f"{w}_percent"] = float(spent / limit * 100)
            fields[f"{w}_resets_at"] = ws.end_datetime(i, self.tz)
        # In what the user paid: each lot converts at its own price, rounded down per lot so
        # the balance never shows more than was paid.
        display = sum(lot.remaining * lot.paid // lot.granted for lot in snap.lots if lot.granted)
        currencies = {lot.currency for lot in snap.lots}
        return Usage(
            user_id=user_id, tier=tier_name, **fields,
            resets_at=ws.end_datetime(2, self.tz),
            month_cost=to_usd(snap.month_cost), month_credit_spend=to_usd(snap.month_credit),
            month_calls=snap.month_calls, in_flight=to_usd(snap.held),
            month_input_tokens=snap.month_input_tokens, month_output_tokens=snap.month_output_tokens,
            credit_balance=to_usd(credits),
            credit_balance_display=to_usd(display),
            credit_currency=currencies.pop() if len(currencies) == 1 else "usd",
            blocked=blocked >= 0,
            blocked_reason=(f"{WINDOWS[blocked]} limit reached" if blocked >= 0 else None),
            blocked_window=WINDOWS[blocked] if blocked >= 0 else None,
            hard_windows=frozenset(w for w, h in zip(WINDOWS, hard, strict=True) if h),
        )

    @property
    def analytics(self) -> Analytics:
        """Conversion analytics (the funnel, revenue, AI cost and profit per month); it starts
        listening to blocks and purchases on first use."""
        from nasca_core.analytics import analytics_for

        return analytics_for(self)

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Flush deferred settles if the store is back, and close connections Nasca opened."""
        if self._deferred:
            self.flush_deferred()
        if self._deferred:
            log.error("nasca: closing with %d settles never applied (%d nanos)", len(self._deferred),
                      sum(op.cost for op in self._deferred))
        self._store.close()

    async def aclose(self) -> None:
        """Async twin of close(): flush deferred settles, close this loop's connections."""
        if self._deferred:
            await self.aflush_deferred()
        await self._store.aclose()
        self.close()

    def __repr__(self) -> str:
        return (f"Nasca(store={self._store.description!r}, tiers={sorted(self._base_tiers)}, "
                f"namespace={self.namespace!r}, timezone={self.timezone!r})")


def _user_of(keys: UserKeys) -> str:
    return keys.meta.split(":{", 1)[1][:-1]


def _check_tier_name(name: object) -> None:
    if not isinstance(name, str) or not name or len(name) > 64 or "\0" in name:
        raise ConfigurationError(f"tier names must be non-empty strings up to 64 chars, got {name!r}")

