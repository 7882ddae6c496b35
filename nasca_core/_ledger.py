"""``Nasca``: the ledger, sync and async.

It resolves who is calling, reserves, settles and releases, reports usage and tracks
model calls. Live config is ``_live``, the words shown to people ``_explain``, the money
rules ``_policy`` (and the Lua scripts). Billing, analytics, ``wrap()`` and the server
are services built on this object's public port (docs/ARCHITECTURE.md).

Each operation is prepared by pure code (which windows, which keys, what the store
returned means); the sync and async methods differ only in the store call between.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nasca_core import _ceiling, _identity
from nasca_core._busy import busy_wait_for, check_busy_wait
from nasca_core._calibration import Calibration
from nasca_core._calls import LLMCall, estimate_call
from nasca_core._config import Tier, check_ledger_args
from nasca_core._deferred import DeferredSettles
from nasca_core._delegate import to_billing, to_limits, to_live, to_pools
from nasca_core._env import ledger_kwargs
from nasca_core._errors import (
    ConfigurationError,
    NascaBlockedError,
    NascaBusyError,
    StoreError,
    UnknownTierError,
)
from nasca_core._explain import DEFAULT_UPGRADE_MESSAGE, blocked_error, tell_listeners, usage_in
from nasca_core._fallback import Account, Degrade, on_account, same_account
from nasca_core._fallback_calls import afallback_usage, fallback_usage
from nasca_core._leases import Leases
from nasca_core._limits import Limits
from nasca_core._live import ConfigSnapshot, LiveConfig, StoreErrorPolicy
from nasca_core._money import Amount, amount_arg
from nasca_core._pools import Pools
from nasca_core._release import arelease, release
from nasca_core._remote_dispatch import remote_ledger
from nasca_core._threshold_hooks import Thresholds
from nasca_core._types import Charge, LedgerStats, Reservation, count_store_errors, next_hold_id
from nasca_core._unchecked import store_failed
from nasca_core._usage import Usage
from nasca_core._windows import WindowClock, WindowSet, load_zone
from nasca_core._windows import user_keys as _keys
from nasca_core._wrap import wrap
from nasca_core.analytics._recorder import Analytics
from nasca_core.billing._service import Billing
from nasca_core.pricing import Pricer, TokenUsage
from nasca_core.pricing._usage import token_pair
from nasca_core.stores import ReserveOp, ReserveResult, SettleOp, Snapshot, UserKeys, open_store

if TYPE_CHECKING:
    from nasca_core.billing import BillingEvent, CreditPack, Plan

log = logging.getLogger("nasca")

_SETTLED_MARKER_MS = 3_600_000  # how long a settled hold id is remembered (dedupes retries)
_NO_TIER = (-1, -1, -1, 0, 0, 0, -1)
_CONFIG_CHURN = "the store's live config or the user's anchor changed under three reserves in a row"


class Nasca:
    """Per-end-user AI spend limits.

    ``Nasca(store="memory://", tiers={"free": Tier(monthly=0.5, daily=0.1)}, default_tier="free")``

    Packs, plans and Stripe (``packs=``, ``plans=``, ``stripe=``, ``success_url=``, ``cancel_url=``,
    ``webhook_secret=``, ``allow_bonus_credits=``) configure ``nasca.billing``; ``threshold_webhook_url=``
    and ``_secret=`` the owner's webhook of ``nasca.thresholds``; ``state_dir=`` is where deferred
    settles are journaled; ``require_durable=True`` refuses a Redis that may evict or forget ledger
    keys; ``busy_wait=`` seconds a reserve waits out NascaBusyError; ``settle_in_background=``
    (default: on for Redis and SQLite) settles model calls off the caller's path; ``leases=``: ``_leases``;
    ``ceiling=Tier(monthly=200)`` the app-wide ceiling, live-editable with set_ceiling() (``_pools``).
    Raises ConfigurationError for an unknown store URI, timezone, default tier or policy."""

    def __new__(cls, store: Any = "memory://", *args: Any, **kwargs: Any) -> Nasca:  # http(s): remote
        return remote_ledger(store, kwargs) or super().__new__(cls)
    def __init__(
        self, store: Any = "memory://", *, tiers: Mapping[str, Tier], default_tier: str | None = None,
        namespace: str = "nasca", timezone: str = "UTC", strict: bool = False,
        on_store_error: StoreErrorPolicy = "block", hold_ttl: float = 900.0,
        clock: Callable[[], float | datetime] | None = None,
        get_user_id: Callable[[Any], str] | None = None,
        get_user_tier: Callable[[Any], str | None] | None = None,
        upgrade_message: str | None = None,
        checkout_url: Callable[[NascaBlockedError], str | None] | None = None,
        prices: Mapping[str, Any] | None = None, model_aliases: Mapping[str, str] | None = None,
        unknown_model: str = "block", default_output_tokens: int = 256, charge_embeddings: bool = False,
        packs: Iterable[CreditPack] | Mapping[str, CreditPack] | None = None,
        plans: Iterable[Plan] | Mapping[str, Plan] | None = None, stripe: Any = None,
        success_url: str | None = None, cancel_url: str | None = None,
        webhook_secret: str | None = None, allow_bonus_credits: bool = True, state_dir: str | None = None,
        require_durable: bool = False, busy_wait: float = 0.0, settle_in_background: bool | None = None,
        cap_output: bool = False, threshold_webhook_url: str | None = None,
        threshold_webhook_secret: str | None = None, api_key: str | None = None,
        leases: bool | None = None, ceiling: Tier | None = None) -> None:
        check_ledger_args(tiers, default_tier, namespace, on_store_error, hold_ttl, default_output_tokens)
        self.namespace, self.timezone = namespace, timezone
        self.tz = load_zone(timezone)
        self.default_tier = default_tier
        self.strict, self.cap_output = bool(strict), bool(cap_output)  # cap_output: wrap() etc.'s default
        self.busy_wait = check_busy_wait(busy_wait)  # seconds a reserve waits out NascaBusyError
        self.on_store_error: StoreErrorPolicy = on_store_error
        self.hold_ttl_ms = int(hold_ttl * 1000)
        self.default_output_tokens, self.charge_embeddings = default_output_tokens, bool(charge_embeddings)
        self.get_user_id, self.get_user_tier = get_user_id, get_user_tier
        # {action} says what can unblock the user: credits can't lift a hard cap.
        self.upgrade_message_template = upgrade_message or DEFAULT_UPGRADE_MESSAGE
        self.checkout_url_factory = checkout_url
        self.block_listeners: list[Callable[[NascaBlockedError], None]] = []
        self.stats = LedgerStats()
        self.store = open_store(store, require_durable=require_durable)
        self.live = LiveConfig(self.store, namespace, tiers, prices=prices, model_aliases=model_aliases,
                               unknown_model=unknown_model, on_store_error=on_store_error, stats=self.stats,
                               ceiling=ceiling)
        self._clock = clock or time.time
        self._windows = WindowClock(self.tz)
        self.deferred = DeferredSettles(self.store, self.stats, namespace, self.now, state_dir,
                                        background=settle_in_background)
        self.calibration = Calibration(self.store, namespace, self.now)  # learned estimates, per model
        self._analytics: Analytics | None = None
        self._analytics_lock = threading.Lock()
        self.billing = Billing(self, packs=packs, plans=plans, stripe=stripe, success_url=success_url,
                               cancel_url=cancel_url, webhook_secret=webhook_secret,
                               allow_bonus_credits=allow_bonus_credits)
        self.limits = Limits(self)  # per-user tiers, own limits and boosts
        self.thresholds = Thresholds(self, threshold_webhook_url, threshold_webhook_secret)  # Tier.warn_at
        self.on_threshold = self.thresholds.on_threshold
        self.leases = Leases(self, self._windows.anchor, leases)  # budget leases (default: with the sender)
        self.pools = Pools(self)  # this process's chunks of the app-wide ceiling

    @classmethod
    def from_env(cls, **overrides: Any) -> Nasca:
        """A Nasca from the ``NASCA_*`` environment (``_env.LedgerEnv``). Raises ConfigurationError."""
        return cls(**ledger_kwargs(overrides))

    # -- the port services use ---------------------------------------------------------
    def now(self) -> float:
        """The ledger's clock (injectable with ``clock=``), in epoch seconds."""
        now = self._clock()
        return now.timestamp() if isinstance(now, datetime) else float(now)

    def windows_at(self, now: float | None = None, user: str | None = None) -> WindowSet:
        """The day, ISO week and month at ``now`` (default: the clock); ``user``'s month may be anchored."""
        return self._windows.at(self.now() if now is None else now, user)

    def user_keys(self, user_id: str, now: float | None = None) -> UserKeys:
        """Where ``user_id``'s state lives in the store for the windows at ``now``."""
        return _keys(self.namespace, user_id, self.windows_at(now, user_id).ids)

    @property
    def analytics(self) -> Analytics:
        """Conversion analytics (the funnel, revenue, AI cost and profit per month); it starts
        listening to blocks and purchases on first use."""
        with self._analytics_lock:
            if self._analytics is None:
                self._analytics = Analytics(self)
            return self._analytics

    # -- identity ----------------------------------------------------------------------
    @contextmanager
    def user(self, user_id: str, tier: str | None = None) -> Iterator[None]:
        """Act as ``user_id`` (and tier) for every call inside the block, sync or async.

        Raises InvalidUserError for an empty or non-string id."""
        with _identity.acting_as(user_id, tier):
            yield

    def resolve_user(self, user: str | None = None, tier: str | None = None,
                     ctx: Any = None) -> tuple[str, str]:
        """Who is calling, by precedence: explicit ``user=``, the ``get_user_id(ctx)`` callable,
        the ``nasca.user()`` context; the tier likewise, then ``default_tier``. Raises InvalidUserError."""
        return _identity.resolve(user, tier, ctx, self.get_user_id, self.get_user_tier, self.default_tier)

    # -- live config -------------------------------------------------------------------
    @property
    def tiers(self) -> Mapping[str, Tier]:
        """The tiers in force: the constructor's, overridden by set_tier()."""
        return dict(self.live.fresh().tiers)

    @property
    def pricer(self) -> Pricer:
        """The prices in force: shipped table + constructor prices + set_price() overrides."""
        return self.live.current().pricer

    def cost_of(self, model: str, usage: TokenUsage) -> int:
        """What ``usage`` on ``model`` costs, in nano-dollars. Raises UnknownModelError."""
        return self.pricer.cost(model, usage)

    set_tier = to_live(LiveConfig.set_tier)
    aset_tier = to_live(LiveConfig.aset_tier)
    set_ceiling = to_live(LiveConfig.set_ceiling)
    aset_ceiling = to_live(LiveConfig.aset_ceiling)
    ceiling_status = _ceiling.ceiling_status  # per window: limit, spent, held, remaining, resets_at
    aceiling_status = _ceiling.aceiling_status
    set_price = to_live(LiveConfig.set_price)
    aset_price = to_live(LiveConfig.aset_price)

    set_user_tier = to_limits(Limits.set_user_tier)  # nasca.limits: a user's tier, own limits, boosts
    aset_user_tier = to_limits(Limits.aset_user_tier)
    set_user_limits = to_limits(Limits.set_user_limits)
    aset_user_limits = to_limits(Limits.aset_user_limits)
    grant_boost = to_limits(Limits.grant_boost)
    agrant_boost = to_limits(Limits.agrant_boost)

    # -- reserve -----------------------------------------------------------------------
    def reserve(self, estimate: Amount | None = None, *, nanos: int | None = None, user: str | None = None,
                tier: str | None = None, ctx: Any = None, strict: bool | None = None) -> Reservation:
        """Hold ``estimate`` dollars of the user's budget before a call (one store round trip).

        Raises NascaBlockedError when the user may not spend now; InvalidInputError,
        UnknownTierError for bad input; StoreError when the store fails and on_store_error="block"."""
        amount = amount_arg(estimate, nanos, what="estimate", default=0)
        user_id, tier_name = self.resolve_user(user, tier, ctx)
        return self._reserve(amount, user_id, tier_name, strict)

    def _reserve(self, amount: int, user_id: str, tier_name: str, strict: bool | None, ceil: int = 0,
                 account: Account | None = None, degrade: Degrade | None = None) -> Reservation:
        if (leased := self.leases.admit(amount, user_id, tier_name, strict, ceil, account or degrade)):
            # under the user's lease: no store call (a chunk of the ceiling's taken alone if need be)
            return leased if self.live.current().ceiling is None else self.pools.admitted(leased)
        wait, stale = busy_wait_for(self.busy_wait), 0
        while True:
            config = self.live.current()
            op = self._reserve_op(config, user_id, tier_name, amount, strict, ceil, account)
            try:
                result = self.deferred.reserve(op)  # with the user's queued settles at their cost
            except StoreError as exc:
                return store_failed(self, user_id, op, exc)
            if op.pool_take is not None and not self.pools.took(config, op.pool_take, result.pool):
                if self.pools.retry(config, op.pool_take):
                    continue  # this process's ended chunks held what the call needed, or it changed
                raise self.pools.blocked(user_id, op.tier, op.pool_take, result.pool)  # the ceiling
            if result.status == 1:
                self.stats.reserved += 1
                got = self.leases.admitted(user_id, tier_name, op, result, account or degrade)  # warn_at
                return got if config.ceiling is None else self.pools.admitted(got)
            if result.status < 0:  # -1 stale config, -2 a stale anchor: retried, at most twice
                if (stale := stale + 1) == 3:
                    return store_failed(self, user_id, op, StoreError(_CONFIG_CHURN))
                self._windows.restale(user_id, result.status, result.anchor, self.live.invalidate)
                continue
            if account is not None or (degrade is not None and degrade(op, result)):  # the caller's block:
                raise self._blocked(user_id, op, result, None, account, False)  # unflushed, unread, untold
            if self.leases.give_back(user_id) or (self.deferred and self.deferred.flush()):  # retry
                continue
            snap: Snapshot | None = None
            with suppress(StoreError), count_store_errors(self.stats):
                snap = self.store.sync.snapshot(op.keys, op.now_ms)
            err = self._blocked(user_id, op, result, snap)
            if not isinstance(err, NascaBusyError) or (pause := wait.next()) is None:
                raise self._told(err)
            time.sleep(pause)

    async def areserve(self, estimate: Amount | None = None, *, nanos: int | None = None,
                       user: str | None = None, tier: str | None = None, ctx: Any = None,
                       strict: bool | None = None) -> Reservation:
        """Async twin of reserve()."""
        amount = amount_arg(estimate, nanos, what="estimate", default=0)
        user_id, tier_name = self.resolve_user(user, tier, ctx)
        return await self._areserve(amount, user_id, tier_name, strict)

    async def _areserve(self, amount: int, user_id: str, tier_name: str, strict: bool | None, ceil: int = 0,
                        account: Account | None = None, degrade: Degrade | None = None) -> Reservation:
        if (leased := await self.leases.aadmit(amount, user_id, tier_name, strict, ceil, account or degrade)):
            config = self.live.cached() or await self.pools.aconfig(leased)  # a cancelled load releases it
            return leased if config.ceiling is None else await self.pools.aadmitted(leased)
        wait, stale = busy_wait_for(self.busy_wait), 0
        while True:
            config = await self.live.acurrent()
            op = self._reserve_op(config, user_id, tier_name, amount, strict, ceil, account)
            try:
                result = await self.deferred.areserve(op)
            except StoreError as exc:
                return store_failed(self, user_id, op, exc)
            if op.pool_take is not None and not self.pools.took(config, op.pool_take, result.pool):
                if await self.pools.aretry(config, op.pool_take):
                    continue
                raise self.pools.blocked(user_id, op.tier, op.pool_take, result.pool)
            if result.status == 1:
                self.stats.reserved += 1
                got = self.leases.admitted(user_id, tier_name, op, result, account or degrade)  # warn_at
                return got if config.ceiling is None else await self.pools.aadmitted(got)
            if result.status < 0:  # -1 stale config, -2 a stale anchor: retried, at most twice
                if (stale := stale + 1) == 3:
                    return store_failed(self, user_id, op, StoreError(_CONFIG_CHURN))
                self._windows.restale(user_id, result.status, result.anchor, self.live.invalidate)
                continue
            if account is not None or (degrade is not None and degrade(op, result)):  # the caller's block:
                raise self._blocked(user_id, op, result, None, account, False)  # unflushed, unread, untold
            if await self.leases.agive_back(user_id) or (self.deferred and await self.deferred.aflush()):
                continue
            snap: Snapshot | None = None
            with suppress(StoreError), count_store_errors(self.stats):
                snap = await self.store.for_loop().snapshot(op.keys, op.now_ms)
            err = self._blocked(user_id, op, result, snap)
            if not isinstance(err, NascaBusyError) or (pause := wait.next()) is None:
                raise self._told(err)
            await asyncio.sleep(pause)

    def _reserve_op(self, snap: ConfigSnapshot, user_id: str, tier: str, estimate: int,
                    strict: bool | None, ceil: int = 0, account: Account | None = None) -> ReserveOp:
        if tier not in snap.tiers and account is None:
            raise UnknownTierError(tier, list(snap.tiers))
        now, spec = self.now(), self._windows.anchor(user_id)  # before the keys
        now_ms, keys = int(now * 1000), _keys(self.namespace, user_id, self._windows.spec_at(now, spec).ids)
        return ReserveOp(on_account(keys, account), now_ms, next_hold_id(), estimate,  # by position: faster
                         now_ms + self.hold_ttl_ms, self.strict if strict is None else strict, tier,
                         snap.tiers_json, snap.version, account.compiled if account else snap.compiled[tier],
                         self.leases.owed(user_id, account), ceil, "" if account else spec,
                         None if snap.ceiling is None else self.pools.take_for(snap, estimate))

    def _blocked(self, user_id: str, op: ReserveOp, result: ReserveResult, snap: Snapshot | None,
                 account: Account | None = None, checkout: bool = True) -> NascaBlockedError:
        tier = account.tier if account else self.live.current().tiers.get(result.tier) or Tier()
        return blocked_error(user_id=user_id, result=result, tier=tier, snap=snap,
                             ws=self.windows_at(op.now_ms / 1000, user_id), tz=self.tz, prompt_id=op.hold_id,
                             template=self.upgrade_message_template, log=log,
                             checkout_url=self.checkout_url_factory if checkout else None,
                             estimate=op.estimate, strict=op.strict)

    def _told(self, err: NascaBlockedError) -> NascaBlockedError:
        self.stats.blocked += 1
        tell_listeners(self.block_listeners, err, log)
        return err

    # -- settle / release --------------------------------------------------------------
    def settle(self, reservation: Reservation, cost: Amount | None = None, *, nanos: int | None = None,
               tokens: tuple[int, int] = (0, 0), background: bool = False) -> Charge:
        """Replace the hold by the real cost (one store round trip; ``background=True``: queued for
        the background sender when it is on). A charge the store can't take is retried, never dropped.

        Raises InvalidAmountError for a negative, NaN or infinite cost (nothing is written)."""
        op, charge = self._settle_op(reservation, cost, nanos, tokens), None
        try:
            charge = self.leases.settles.before_settle(op, background) or self.leases.settles.settle(op)
            return charge  # Tier.warn_at's events: off the caller's path
        finally:  # the call's draw on the ceiling given back once its cost is counted (``_pools``)
            self.pools.landed(reservation.hold_id, op.cost, charge)

    async def asettle(self, reservation: Reservation, cost: Amount | None = None, *, nanos: int | None = None,
                      tokens: tuple[int, int] = (0, 0), background: bool = False) -> Charge:
        """Async twin of settle(); a background settle never waits on the loop."""
        op, charge = self._settle_op(reservation, cost, nanos, tokens), None
        try:
            charge = await self.leases.settles.asent(op, background) or await self.leases.settles.asettle(op)
            return charge
        finally:
            self.pools.landed(reservation.hold_id, op.cost, charge)

    def _settle_op(self, reservation: Reservation, cost: Amount | None, nanos: int | None,
                   tokens: tuple[int, int]) -> SettleOp:
        if not isinstance(reservation, Reservation):
            raise ConfigurationError(f"settle() needs the Reservation from reserve(), got {reservation!r}")
        amount, tokens = amount_arg(cost, nanos, what="cost"), token_pair(tokens)  # nothing changed yet
        snap, now = self.live.current(), self.now()
        now_ms, ws = int(now * 1000), self._windows.spec_at(now, reservation.anchor)  # in any process
        keys = _keys(self.namespace, reservation.user_id, ws.ids)  # where the call ended: may be a new window
        op = SettleOp(same_account(reservation.keys, keys), now_ms, reservation.hold_id,  # by position
                      reservation.estimate_nanos, amount, reservation.tier, snap.tiers_json,
                      snap.compiled.get(reservation.tier, _NO_TIER), ws.ttls_from(now),
                      now_ms + _SETTLED_MARKER_MS, tokens[0], tokens[1], reservation.reserved_ms)
        if snap.ceiling is not None or self.pools.draws:  # the call's cost counts on the ceiling too
            op.pools, op.chunks = self.pools.charged(op, reservation.pool)
        return self.leases.settle_of(op) if self.leases.calls else op  # under a lease?

    flush = flush_deferred = to_pools(Pools.flush)  # ends leases and chunks; returns how many settles landed
    aflush = aflush_deferred = to_pools(Pools.aflush)

    release = release  # the call's pool draw given back, its hold dropped (``_release``)
    arelease = arelease

    # -- model calls -------------------------------------------------------------------
    def start_call(
        self, model: str, *, messages: Iterable[Mapping[str, Any]] | None = None, prompt: str | None = None,
        prompt_tokens: int | None = None, tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None, user: str | None = None, tier: str | None = None, ctx: Any = None,
        cap_output: bool = False, account: Account | None = None, degrade: Degrade | None = None) -> LLMCall:
        """Estimate a model call (OpenAI-style ``messages`` or ``prompt`` text, ``tools`` schemas) and
        reserve it (``cap_output``: credits in the room output_cap() reads; ``account``: a fallback's,
        ``_fallback``). Raises NascaBlockedError, UnknownModelError, InvalidInputError, StoreError."""
        user_id, tier_name = self.resolve_user(user, tier, ctx)
        snap = self.live.current()
        tokens, estimate, ceil = estimate_call(
            snap.pricer, model, messages=messages, prompt=prompt, prompt_tokens=prompt_tokens, tools=tools,
            max_tokens=max_tokens, tier=snap.tiers.get(tier_name), strict=self.strict, capped=cap_output,
            default_output_tokens=self.default_output_tokens, calibration=self.calibration.view(model))
        return LLMCall(self, self._reserve(estimate, user_id, tier_name, None, ceil, account, degrade), model,
                       tokens)

    async def astart_call(
        self, model: str, *, messages: Iterable[Mapping[str, Any]] | None = None, prompt: str | None = None,
        prompt_tokens: int | None = None, tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None, user: str | None = None, tier: str | None = None, ctx: Any = None,
        cap_output: bool = False, account: Account | None = None, degrade: Degrade | None = None) -> LLMCall:
        """Async twin of start_call()."""
        user_id, tier_name = self.resolve_user(user, tier, ctx)
        snap = await self.live.acurrent()
        tokens, estimate, ceil = estimate_call(
            snap.pricer, model, messages=messages, prompt=prompt, prompt_tokens=prompt_tokens, tools=tools,
            max_tokens=max_tokens, tier=snap.tiers.get(tier_name), strict=self.strict, capped=cap_output,
            default_output_tokens=self.default_output_tokens, calibration=self.calibration.view(model))
        reservation = await self._areserve(estimate, user_id, tier_name, None, ceil, account, degrade)
        return LLMCall(self, reservation, model, tokens)

    def wrap(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        """Wrap an OpenAI or Anthropic SDK ``create`` so every call is checked, reserved and charged
        (options ``cap_output=``, ``send_user=``: ``nasca_core._wrap.wrap``). Raises ConfigurationError."""
        return wrap(self, fn, **options)

    # -- usage -------------------------------------------------------------------------
    def get_usage(self, user: str | None = None, tier: str | None = None) -> Usage:
        """Spend per window, with limits, resets and credit balances, on the tier the user's
        calls ran on (``tier=`` names another). Raises InvalidUserError, UnknownTierError, StoreError."""
        user_id, tier_name = self.resolve_user(user, tier)
        now, snap = self.now(), self.live.fresh()
        with count_store_errors(self.stats):
            stored = self.deferred.snapshot(self.user_keys(user_id, now), int(now * 1000))
            if self._windows.learn(user_id, stored.anchor):  # this process's anchor was stale
                stored = self.deferred.snapshot(self.user_keys(user_id, now), int(now * 1000))
            return fallback_usage(self, usage_in(snap.tiers, user_id, tier_name,
                                                 self.leases.seen(user_id, stored),
                                                 self.windows_at(now, user_id), self.tz, tier, user))

    async def aget_usage(self, user: str | None = None, tier: str | None = None) -> Usage:
        """Async twin of get_usage()."""
        user_id, tier_name = self.resolve_user(user, tier)
        now, snap = self.now(), await self.live.afresh()
        with count_store_errors(self.stats):
            stored = await self.deferred.asnapshot(self.user_keys(user_id, now), int(now * 1000))
            if self._windows.learn(user_id, stored.anchor):
                stored = await self.deferred.asnapshot(self.user_keys(user_id, now), int(now * 1000))
            return await afallback_usage(self, usage_in(snap.tiers, user_id, tier_name,
                                                        self.leases.seen(user_id, stored),
                                                        self.windows_at(now, user_id), self.tz, tier, user))

    # -- billing: the old spellings of nasca.billing.… ------------------------------------
    grant_credits = to_billing(Billing.grant_credits)
    agrant_credits = to_billing(Billing.agrant_credits)
    revoke_credits = to_billing(Billing.revoke_credits)
    arevoke_credits = to_billing(Billing.arevoke_credits)
    credit_lots = to_billing(Billing.credit_lots)
    acredit_lots = to_billing(Billing.acredit_lots)
    create_checkout = to_billing(Billing.create_checkout)
    acreate_checkout = to_billing(Billing.acreate_checkout)
    handle_stripe_webhook = to_billing(Billing.handle_stripe_webhook)
    ahandle_stripe_webhook = to_billing(Billing.ahandle_stripe_webhook)
    set_pack = to_billing(Billing.set_pack)
    aset_pack = to_billing(Billing.aset_pack)
    set_plan = to_billing(Billing.set_plan)
    aset_plan = to_billing(Billing.aset_plan)
    aget_packs = to_billing(Billing.aget_packs)
    aget_plans = to_billing(Billing.aget_plans)

    @property
    def packs(self) -> Mapping[str, CreditPack]:
        return self.billing.packs  # ``nasca.billing.packs``

    @property
    def plans(self) -> Mapping[str, Plan]:
        return self.billing.plans  # ``nasca.billing.plans``

    @property
    def billing_listeners(self) -> list[Callable[[BillingEvent], None]]:
        return self.billing.listeners  # ``nasca.billing.listeners``

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Flush queued and deferred settles the store takes, and close connections Nasca opened."""
        self.leases.close()  # their holds dropped before the flush
        self.deferred.close()
        self.pools.close()  # after the calls' settles landed
        self.calibration.close()
        self.thresholds.close()
        self.store.close()

    async def aclose(self) -> None:
        """Async twin of close(): flush deferred settles, close this loop's connections."""
        await self.pools.aflush()  # their holds dropped before the flush
        await self.thresholds.aclose()  # hooks and webhook deliveries wait on a thread, not the loop
        await self.store.aclose()
        self.close()

    def __repr__(self) -> str:
        return (f"Nasca(store={self.store.description!r}, tiers={sorted(self.live.base_tiers)}, "
                f"namespace={self.namespace!r}, timezone={self.timezone!r})")
