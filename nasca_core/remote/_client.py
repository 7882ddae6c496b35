"""``RemoteNasca``: the ledger of a ``nasca serve``, over HTTP, with Nasca's public API.

``Nasca("https://host/nasca", api_key=...)`` builds one (``_ledger.Nasca.__new__``), so the
LangChain handler, the LlamaIndex integration and ``wrap()`` drive it unchanged: they call
``start_call`` and ``LLMCall`` calls back ``settle``/``release`` here. The server holds the
tiers, limits and prices; this client counts the prompt's tokens and sends a finished
call's token counts, which the server prices (``_call.RemoteCall``); ``/v1/config``
(reloaded when its version moves) gives it the tiers and the tokenizer. Settles are
synchronous: a serverless process may be frozen after its response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from nasca_core import _identity
from nasca_core._calls import LLMCall, estimate_call
from nasca_core._config import Tier
from nasca_core._errors import ConfigurationError, NascaBlockedError, StoreError, UnauthorizedError
from nasca_core._money import Amount, amount_arg
from nasca_core._types import Charge, LedgerStats, Reservation
from nasca_core._usage import Usage
from nasca_core._wrap import wrap
from nasca_core.billing import CreditGrant
from nasca_core.pricing import Pricer, TokenUsage
from nasca_core.remote._call import RemoteCall, priced_body
from nasca_core.remote._http import Http
from nasca_core.remote._parts import (
    NOT_REMOTE,
    Config,
    OnTheServer,
    RemoteReservation,
    body,
    grant_body,
    hold_of,
    not_remote,
    reservation_of,
    unchecked,
    usage_query,
)
from nasca_core.remote._pending import PendingSettles
from nasca_core.remote._wire import (
    ChargeReply,
    ConfigReply,
    OkReply,
    ReleaseBody,
    ReserveBody,
    ReserveReply,
    SettleBody,
    TierBody,
    UserTierBody,
)

if TYPE_CHECKING:
    from nasca_core._ledger import Nasca
    from nasca_core._live import StoreErrorPolicy

log = logging.getLogger("nasca")
_STALE = -2  # no config version: the next read loads /v1/config


class RemoteNasca:
    """A client of the ledger API of ``nasca serve`` (``url`` with its mount path, e.g.
    ``https://host/nasca``), with ``api_key`` one of the server's ``NASCA_API_KEYS``.

    ``on_store_error``: what a reserve does when the server can't be reached ("block" raises
    StoreError; "allow" admits unchecked, estimated with the last prices seen); a settle
    that gets no answer is journaled under ``state_dir`` and sent again before the next
    call. ``timeout`` seconds per request (connecting: at most ``CONNECT_TIMEOUT_S``);
    ``max_connections`` per pool; ``allow_insecure`` accepts an http:// URL to a host that
    is not loopback (the API key travels in cleartext).
    Raises ConfigurationError for a bad URL or key, or an option the server owns (tiers,
    limits, prices, namespace: set them in the server's nasca.toml).
    """

    def __init__(self, url: str, *, api_key: str | None = None, on_store_error: StoreErrorPolicy = "block",
                 timeout: float = 5.0, max_connections: int = 100, state_dir: str | None = None,
                 allow_insecure: bool = False,
                 get_user_id: Callable[[Any], str] | None = None,
                 get_user_tier: Callable[[Any], str | None] | None = None, cap_output: bool = False,
                 charge_embeddings: bool = False, default_output_tokens: int = 256,
                 tiers: Mapping[str, Tier] | None = None, **server_owned: Any) -> None:
        if tiers or server_owned:
            names = sorted([*server_owned, *(["tiers"] if tiers else [])])
            raise ConfigurationError(
                f"a remote ledger's server owns {', '.join(names)}: set them in its "
                "nasca.toml, not on the client"
            )
        if on_store_error not in ("allow", "block"):
            raise ConfigurationError(f"on_store_error must be 'allow' or 'block', got {on_store_error!r}")
        self.http = Http(url, api_key, timeout=timeout, max_connections=max_connections,
                         allow_insecure=allow_insecure)
        self.url = self.http.url
        self.on_store_error: StoreErrorPolicy = on_store_error
        self.get_user_id, self.get_user_tier = get_user_id, get_user_tier
        self.cap_output, self.charge_embeddings = bool(cap_output), bool(charge_embeddings)
        self.default_output_tokens = default_output_tokens
        self.stats = LedgerStats()
        self.block_listeners: list[Callable[[NascaBlockedError], None]] = []
        self.calibration = self.thresholds = OnTheServer()
        self._config: Config | None = None
        self._version = _STALE
        self._closed = False
        self.pending = PendingSettles(self.url, state_dir, self.stats, lambda: int(time.time() * 1000))

    # -- the server's config -----------------------------------------------------------
    @property
    def live(self) -> RemoteNasca:
        return self  # ``nasca.live.current()`` / ``fresh()``: the server's config, as the ledger's

    def current(self) -> Config:
        """The server's config at the version last seen (loaded when there is none). Raises StoreError."""
        return self._current()

    def fresh(self) -> Config:
        """The server's config, asked for now. Raises StoreError."""
        self._version = _STALE
        return self._current()

    def _current(self) -> Config:
        config = self._config
        if config is None or config.version != self._version:
            with self.http.lock:  # one load for the threads that found it stale together
                config = self._config
                if config is None or config.version != self._version:
                    config = Config(self.http.call("GET", "/v1/config", ConfigReply, retry=True))
                    self._config, self._version = config, config.version
        return config

    def _cached(self) -> Config | None:
        try:
            return self._current()
        except StoreError:
            return self._config

    async def _acached(self) -> Config | None:
        config = self._config
        if config is None or config.version != self._version:
            try:
                config = Config(await self.http.acall("GET", "/v1/config", ConfigReply, retry=True))
            except StoreError:
                return self._config
            self._config, self._version = config, config.version
        return config

    @property
    def namespace(self) -> str:
        return self._current().reply.namespace

    @property
    def default_tier(self) -> str | None:
        return self._current().reply.default_tier

    @property
    def strict(self) -> bool:
        return self._current().reply.strict

    @property
    def tiers(self) -> Mapping[str, Tier]:
        """The server's tiers in force (asked for each time)."""
        self._version = _STALE
        return dict(self._current().reply.tiers)

    @property
    def pricer(self) -> Pricer:
        """The server's prices (shipped table + its overrides) at the config version last loaded
        (``start_call`` reloads it when it moved; loaded here only when none was yet)."""
        config = self._config or self._cached()
        return config.pricer if config is not None else Pricer()

    def cost_of(self, model: str, usage: TokenUsage) -> int:
        """What ``usage`` on ``model`` costs at the server's prices, in nanos. Raises UnknownModelError."""
        return self.pricer.cost(model, usage)

    def now(self) -> float:
        return time.time()

    # -- identity ----------------------------------------------------------------------
    @contextmanager
    def user(self, user_id: str, tier: str | None = None) -> Iterator[None]:
        """Act as ``user_id`` (and tier) inside the block. Raises InvalidUserError."""
        with _identity.acting_as(user_id, tier):
            yield

    def resolve_user(self, user: str | None = None, tier: str | None = None,
                     ctx: Any = None) -> tuple[str, str]:
        """Who is calling (as Nasca.resolve_user); the tier is "" when the server's default applies."""
        return _identity.resolve(user, tier, ctx, self.get_user_id, self.get_user_tier, "")

    # -- reserve -----------------------------------------------------------------------
    def reserve(self, estimate: Amount | None = None, *, nanos: int | None = None, user: str | None = None,
                tier: str | None = None, ctx: Any = None, strict: bool | None = None) -> Reservation:
        """Hold ``estimate`` dollars on the server. Raises NascaBlockedError, InvalidInputError,
        UnknownTierError, UnauthorizedError; StoreError when the server can't be reached and
        on_store_error="block"."""
        amount = amount_arg(estimate, nanos, what="estimate", default=0)
        user_id, tier_name = self.resolve_user(user, tier, ctx)
        body = self._reserve_body(user_id, tier_name, amount, strict)
        return self._reserved(
            body, amount, lambda: self.http.call("POST", "/v1/reserve", ReserveReply, body)
        )

    async def areserve(self, estimate: Amount | None = None, *, nanos: int | None = None,
                       user: str | None = None, tier: str | None = None, ctx: Any = None,
                       strict: bool | None = None) -> Reservation:
        """Async twin of reserve()."""
        amount = amount_arg(estimate, nanos, what="estimate", default=0)
        user_id, tier_name = self.resolve_user(user, tier, ctx)
        body = self._reserve_body(user_id, tier_name, amount, strict)
        await self.aflush()
        try:
            reply = await self.http.acall("POST", "/v1/reserve", ReserveReply, body)
        except (StoreError, NascaBlockedError) as exc:
            return self._failed(body, amount, exc)
        return self._reservation(reply)

    @staticmethod
    def _reserve_body(user_id: str, tier_name: str, amount: int, strict: bool | None) -> ReserveBody:
        return body(ReserveBody, user=user_id, tier=tier_name or None, nanos=amount, strict=strict)

    def _reserved(self, body: ReserveBody, amount: int, send: Callable[[], ReserveReply],
                  requested: str | None = None) -> Reservation:
        self.flush()
        try:
            reply = send()
        except (StoreError, NascaBlockedError) as exc:
            return self._failed(body, amount, exc)
        return self._reservation(reply, requested)

    def _reservation(self, reply: ReserveReply, requested: str | None = None) -> Reservation:
        if reply.config_version != self._version:
            self._version = _STALE  # the server's config moved: reload it before pricing with it
        self.stats.reserved += 1
        self.stats.fallbacks += reply.fallback is not None
        return reservation_of(reply, requested)

    def _failed(self, body: ReserveBody, amount: int, exc: StoreError | NascaBlockedError) -> Reservation:
        if isinstance(exc, NascaBlockedError):
            self.stats.blocked += 1
            for listener in list(self.block_listeners):
                try:
                    listener(exc)
                except Exception:
                    log.exception("nasca: a block listener failed")
            raise exc
        self.stats.store_errors += 1
        if self.on_store_error == "block":
            raise exc
        log.warning("nasca: remote ledger unreachable, admitting %s unchecked (on_store_error='allow'): %s",
                    body.user, exc)
        return unchecked(body, amount, self._config)

    # -- model calls -------------------------------------------------------------------
    def _call_body(self, config: Config | None, model: str, messages: Iterable[Mapping[str, Any]] | None,
                   prompt: str | None, prompt_tokens: int | None, tools: Sequence[Mapping[str, Any]] | None,
                   max_tokens: int | None, user: str | None, tier: str | None, ctx: Any,
                   cap_output: bool, fallback: bool) -> tuple[ReserveBody, int]:
        user_id, tier_name = self.resolve_user(user, tier, ctx)
        # The estimate only stands in for the server's when the server can't be reached ("allow").
        named = tier_name or (config.reply.default_tier if config is not None else None) or ""
        tokens, estimate, _ = estimate_call(
            config.pricer if config is not None else Pricer(), model, messages=messages, prompt=prompt,
            prompt_tokens=prompt_tokens, tools=tools, max_tokens=max_tokens,
            tier=config.tiers.get(named) if config is not None else None,
            default_output_tokens=self.default_output_tokens)
        return body(ReserveBody, user=user_id, tier=tier_name or None, model=model, prompt_tokens=tokens,
                    max_tokens=max_tokens, cap_output=cap_output, fallback=fallback), estimate

    def start_call(self, model: str, *, messages: Iterable[Mapping[str, Any]] | None = None,
                   prompt: str | None = None, prompt_tokens: int | None = None,
                   tools: Sequence[Mapping[str, Any]] | None = None, max_tokens: int | None = None,
                   user: str | None = None, tier: str | None = None, ctx: Any = None,
                   cap_output: bool = False, degrade: object = None) -> LLMCall:
        """Count the prompt and reserve the call on the server, which estimates it (as Nasca.start_call;
        ``degrade`` true: on a tier that falls back, the server may hold it on its fallback model,
        then the call's model and ``reservation.fallback`` say so: ``start_with_fallback``).
        The server's config is reloaded when the reply shows it moved, so the call's finish
        prices it with the prices in force."""
        config = self._config or self._cached()  # a newer version, if any, shows in the reply
        body, estimate = self._call_body(config, model, messages, prompt, prompt_tokens, tools, max_tokens,
                                         user, tier, ctx, cap_output, bool(degrade))
        r = self._reserved(body, estimate, lambda: self.http.call("POST", "/v1/reserve", ReserveReply, body),
                           model)
        if self._version == _STALE:
            self._cached()
        return RemoteCall(self, r, _model_of(r, model), body.prompt_tokens or 0)

    async def astart_call(self, model: str, *, messages: Iterable[Mapping[str, Any]] | None = None,
                          prompt: str | None = None, prompt_tokens: int | None = None,
                          tools: Sequence[Mapping[str, Any]] | None = None, max_tokens: int | None = None,
                          user: str | None = None, tier: str | None = None, ctx: Any = None,
                          cap_output: bool = False, degrade: object = None) -> LLMCall:
        """Async twin of start_call(): nothing blocks the loop."""
        config = self._config or await self._acached()
        body, estimate = self._call_body(config, model, messages, prompt, prompt_tokens, tools, max_tokens,
                                         user, tier, ctx, cap_output, bool(degrade))
        await self.aflush()
        try:
            r = self._reservation(await self.http.acall("POST", "/v1/reserve", ReserveReply, body), model)
        except (StoreError, NascaBlockedError) as exc:
            r = self._failed(body, estimate, exc)
        if self._version == _STALE:
            await self._acached()
        return RemoteCall(self, r, _model_of(r, model), body.prompt_tokens or 0)

    def wrap(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        """As Nasca.wrap(): nothing is asked of the server until the first call. Raises ConfigurationError."""
        return wrap(cast("Nasca", self), fn, **options)

    # -- settle / release --------------------------------------------------------------
    def _settle_body(self, reservation: Reservation, cost: Amount | None, nanos: int | None,
                     tokens: tuple[int, int]) -> SettleBody:
        if not isinstance(reservation, Reservation):
            raise ConfigurationError(f"settle() needs the Reservation from reserve(), got {reservation!r}")
        amount = amount_arg(cost, nanos, what="cost")
        return body(SettleBody, hold=hold_of(reservation), nanos=amount, input_tokens=tokens[0],
                    output_tokens=tokens[1])

    def settle(self, reservation: Reservation, cost: Amount | None = None, *, nanos: int | None = None,
               tokens: tuple[int, int] = (0, 0), background: bool = False) -> Charge:
        """Replace the hold by the real cost on the server, now (``background`` is accepted and
        ignored). A settle the server doesn't take is journaled and sent again, never dropped.
        Raises InvalidAmountError, InvalidInputError (nothing is sent); UnauthorizedError (the
        key was refused: the settle is journaled first, for a client with a valid key)."""
        return self._sent(self._settle_body(reservation, cost, nanos, tokens))

    def settle_call(self, reservation: Reservation, model: str, usage: TokenUsage) -> Charge:
        """A model call's settle by its token counts, priced by the server (``_call.RemoteCall``)."""
        return self._sent(priced_body(hold_of(reservation), model, usage))

    def _sent(self, body: SettleBody) -> Charge:
        self.flush()
        try:
            reply = self._send_settle(body)
        except (StoreError, UnauthorizedError) as exc:
            return self._defer(body, exc)
        return self._charge(reply)

    async def asettle(self, reservation: Reservation, cost: Amount | None = None, *,
                      nanos: int | None = None, tokens: tuple[int, int] = (0, 0),
                      background: bool = False) -> Charge:
        """Async twin of settle()."""
        return await self._asent(self._settle_body(reservation, cost, nanos, tokens))

    async def asettle_call(self, reservation: Reservation, model: str, usage: TokenUsage) -> Charge:
        """Async twin of settle_call()."""
        return await self._asent(priced_body(hold_of(reservation), model, usage))

    async def _asent(self, body: SettleBody) -> Charge:
        await self.aflush()
        try:
            reply = await self._asend_settle(body)
        except (StoreError, UnauthorizedError) as exc:
            return self._defer(body, exc)
        return self._charge(reply)

    def _send_settle(self, body: SettleBody) -> ChargeReply:
        return self.http.call("POST", "/v1/settle", ChargeReply, body, retry=True)

    async def _asend_settle(self, body: SettleBody) -> ChargeReply:
        return await self.http.acall("POST", "/v1/settle", ChargeReply, body, retry=True)

    def _charge(self, reply: ChargeReply) -> Charge:
        self.stats.settled += 1
        return Charge(reply.cost_nanos, reply.tier_nanos, reply.credit_nanos, deferred=reply.deferred)

    def _defer(self, body: SettleBody, exc: StoreError | UnauthorizedError) -> Charge:
        self.pending.defer(body, exc)
        if isinstance(exc, UnauthorizedError):
            log.error("nasca: the remote ledger refused this client's key; the settle is journaled "
                      "for a client with a valid key: %s", exc)
            raise exc
        self.stats.store_errors += 1
        log.warning("nasca: the remote ledger did not take a settle (journaled, sent again later): %s", exc)
        return Charge(body.nanos or 0, 0, 0, deferred=True)

    def flush(self) -> int:
        """Send the settles the server did not take yet; returns how many landed (none while
        backing off from a server that timed out)."""
        return self.pending.flush(self._send_settle) if self._owed() else 0

    async def aflush(self) -> int:
        """Async twin of flush()."""
        return await self.pending.aflush(self._asend_settle) if self._owed() else 0

    def _owed(self) -> bool:
        return bool(len(self.pending)) and not self.http.backing_off

    flush_deferred, aflush_deferred = flush, aflush

    def release(self, reservation: Reservation) -> None:
        """Drop a hold; failures are logged, not raised (the hold expires by itself)."""
        try:
            self.http.call("POST", "/v1/release", OkReply, ReleaseBody(hold=hold_of(reservation)), retry=True)
            self.stats.released += 1
        except StoreError as exc:
            self.stats.store_errors += 1
            log.warning("nasca: release failed, the hold will expire by itself: %s", exc)

    async def arelease(self, reservation: Reservation) -> None:
        """Async twin of release()."""
        try:
            await self.http.acall(
                "POST", "/v1/release", OkReply, ReleaseBody(hold=hold_of(reservation)), retry=True
            )
            self.stats.released += 1
        except StoreError as exc:
            self.stats.store_errors += 1
            log.warning("nasca: release failed, the hold will expire by itself: %s", exc)

    # -- usage, tiers, credits -----------------------------------------------------------
    def get_usage(self, user: str | None = None, tier: str | None = None) -> Usage:
        """As Nasca.get_usage(), from the server. Raises InvalidUserError, UnknownTierError, StoreError."""
        user_id, _ = _identity.resolve(user, tier, None, None, None, "")
        return self.http.call("GET", "/v1/usage", Usage, params=usage_query(user_id, tier), retry=True)

    async def aget_usage(self, user: str | None = None, tier: str | None = None) -> Usage:
        """Async twin of get_usage()."""
        user_id, _ = _identity.resolve(user, tier, None, None, None, "")
        return await self.http.acall("GET", "/v1/usage", Usage, params=usage_query(user_id, tier), retry=True)

    def set_tier(self, name: str, tier: Tier | None) -> None:
        """Define, change or remove (None) a tier on the server. Raises ConfigurationError, StoreError."""
        self.http.call("POST", "/v1/tiers", OkReply, body(TierBody, name=name, tier=tier), retry=True)
        self._version = _STALE

    async def aset_tier(self, name: str, tier: Tier | None) -> None:
        """Async twin of set_tier()."""
        await self.http.acall("POST", "/v1/tiers", OkReply, body(TierBody, name=name, tier=tier), retry=True)
        self._version = _STALE

    def set_user_tier(self, user: str, tier: str | None) -> None:
        """Put a user on a tier on the server (None clears it). Raises InvalidUserError, UnknownTierError."""
        self.http.call("POST", "/v1/user-tier", OkReply, _user_tier(user, tier), retry=True)

    async def aset_user_tier(self, user: str, tier: str | None) -> None:
        """Async twin of set_user_tier()."""
        await self.http.acall("POST", "/v1/user-tier", OkReply, _user_tier(user, tier), retry=True)

    def grant_credits(self, user: str, pack: str | None = None, *, spend: Amount | None = None,
                      paid: Amount | None = None, currency: str | None = None,
                      idempotency_key: str) -> CreditGrant:
        """As Nasca.grant_credits(), on the server (idempotent by key, so it is retried once)."""
        body = grant_body(user, pack, spend, paid, currency, idempotency_key)
        return self.http.call("POST", "/v1/credits", CreditGrant, body, retry=True)

    async def agrant_credits(self, user: str, pack: str | None = None, *, spend: Amount | None = None,
                             paid: Amount | None = None, currency: str | None = None,
                             idempotency_key: str) -> CreditGrant:
        """Async twin of grant_credits()."""
        body = grant_body(user, pack, spend, paid, currency, idempotency_key)
        return await self.http.acall("POST", "/v1/credits", CreditGrant, body, retry=True)

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Send what is owed if the server takes it, and close the connections (once)."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        self.pending.close()
        self.http.close()

    async def aclose(self) -> None:
        """Async twin of close()."""
        if not self._closed:
            await self.aflush()
            await self.http.aclose()
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name in NOT_REMOTE:
            raise not_remote(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"RemoteNasca({self.url!r})"


def _user_tier(user: str, tier: str | None) -> UserTierBody:
    return body(UserTierBody, user=_identity.check_user_id(user), tier=tier)


def _model_of(r: Reservation, asked: str) -> str:
    return r.fallback.model if isinstance(r, RemoteReservation) and r.fallback is not None else asked
