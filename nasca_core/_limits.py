"""``nasca.limits``: one user's stored tier, own limits and boosts, over the ledger's port.

- ``set_user_tier(user, "pro")`` puts the user on a tier (it beats the caller's tier).
- ``set_user_limits(user, Tier(daily=5))`` replaces the limits and hard flags of whatever tier
  the user's calls resolve to, for this user only (None clears); its in-flight cap too when it
  sets ``max_in_flight``, else the tier's cap stays.
- ``grant_boost(user, "daily", amount="1.00", until=timedelta(days=7))`` adds to one window's
  limit until a moment, evaluated against the ledger's clock at every reserve and settle; a
  boost on a window without a limit does nothing. Boosts add up, a window's sum capped at
  MAX_NANOS; one id counts once, also after its boost ended (``_effective.ENDED_KEEP_MS``).

Each lives in the user's meta record in the store, read by the reserve in the same command
that reads the stored tier (``stores/_effective``, ``lua/_lib.lua`` ``resolve_tier``): no
extra round trip on a call's path. Bad input raises before the store is touched.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from nasca_core._config import Tier
from nasca_core._errors import ConfigurationError, InvalidInputError, UnknownTierError
from nasca_core._identity import check_user_id
from nasca_core._money import Amount, check_nanos, to_nanos, to_usd
from nasca_core._types import count_store_errors
from nasca_core._usage import Boost
from nasca_core._windows import WINDOWS, Window
from nasca_core.stores import Snapshot, UserKeys
from nasca_core.stores._base import MAX_BOOSTS, StoredBoost
from nasca_core.stores._effective import encode, resolve

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from nasca_core._ledger import Nasca

# The Tier fields a user's own limits may set; the rest (estimates, warnings...) stay the tier's.
LIMIT_FIELDS = frozenset({"daily", "weekly", "monthly", "credits_cover", "max_in_flight"})
MAX_BOOST_DAYS = 400  # a boost longer than the ledger keeps a month is a tier, not a boost


class Limits:
    """Per-user tiers, limits and boosts for one ledger (``nasca.limits``)."""

    def __init__(self, ledger: Nasca) -> None:
        self._ledger = ledger

    # -- the stored tier ---------------------------------------------------------------
    def set_user_tier(self, user: str, tier: str | None) -> None:
        """Put a user on a tier in the store (None clears it); it beats the caller's tier.

        Raises InvalidUserError, UnknownTierError, StoreError."""
        keys = self._tier_keys(user, tier, self._ledger.live.fresh().tiers)
        try:  # a write that may have landed (a StoreError, a cancellation) ends the leases too
            with count_store_errors(self._ledger.stats):
                self._ledger.store.sync.set_user_tier(keys, tier)
        finally:
            self._ledger.leases.drop(user)  # this process sees it at once (others within LEASE_S)

    async def aset_user_tier(self, user: str, tier: str | None) -> None:
        """Async twin of set_user_tier()."""
        keys = self._tier_keys(user, tier, (await self._ledger.live.afresh()).tiers)
        try:
            with count_store_errors(self._ledger.stats):
                await self._ledger.store.for_loop().set_user_tier(keys, tier)
        finally:
            await self._ledger.leases.adrop(user)

    def _tier_keys(self, user: str, tier: str | None, tiers: Any) -> UserKeys:
        check_user_id(user)
        if tier is not None and tier not in tiers:
            raise UnknownTierError(tier, list(tiers))
        return self._ledger.user_keys(user)

    # -- own limits --------------------------------------------------------------------
    def set_user_limits(self, user: str, limits: Tier | None) -> None:
        """Give one user their own limits, replacing their tier's (daily, weekly, monthly,
        credits_cover as ``limits`` says: a window it leaves out is unlimited; max_in_flight
        when it sets one, else the tier's cap stays); None clears them. It applies from the
        user's next call, in every process.

        Raises InvalidUserError, InvalidInputError (not a valid Tier, or a Tier setting more
        than limits), StoreError."""
        keys, compiled = self._limits_op(user, limits)
        try:
            with count_store_errors(self._ledger.stats):
                self._ledger.store.sync.set_user_limits(keys, compiled)
        finally:
            self._ledger.leases.drop(user)

    async def aset_user_limits(self, user: str, limits: Tier | None) -> None:
        """Async twin of set_user_limits()."""
        keys, compiled = self._limits_op(user, limits)
        try:
            with count_store_errors(self._ledger.stats):
                await self._ledger.store.for_loop().set_user_limits(keys, compiled)
        finally:
            await self._ledger.leases.adrop(user)

    def _limits_op(self, user: str, limits: Tier | None) -> tuple[UserKeys, str | None]:
        check_user_id(user)
        if limits is None:
            return self._ledger.user_keys(user), None
        if not isinstance(limits, Tier):
            raise InvalidInputError(f"a user's limits must be a Tier or None, got {type(limits).__name__}")
        extra = sorted(limits.model_fields_set - LIMIT_FIELDS)
        if extra:
            raise InvalidInputError(f"a user's own limits set only {', '.join(sorted(LIMIT_FIELDS))}; "
                                    f"{', '.join(extra)} stay the tier's")
        try:  # model_copy and model_construct skip validation: what is stored must be a Tier's
            checked = Tier(**{name: getattr(limits, name) for name in limits.model_fields_set})
            compiled = checked.compiled()
        except (ConfigurationError, ValidationError, TypeError, ValueError, ArithmeticError) as exc:
            raise InvalidInputError(f"a user's limits must be a valid Tier: {str(exc)[:200]}") from None
        if "max_in_flight" not in checked.model_fields_set:
            del compiled["f"]  # the tier's cap stays (``_effective``)
        return self._ledger.user_keys(user), json.dumps(compiled, separators=(",", ":"))

    # -- boosts ------------------------------------------------------------------------
    def grant_boost(self, user: str, window: Window = "daily", *, amount: Amount,
                    until: datetime | timedelta | float, id: str | None = None) -> Boost:
        """Raise ``user``'s ``window`` limit by ``amount`` dollars until ``until`` (an aware
        datetime, epoch seconds, or a timedelta from the ledger's clock). Boosts add up and
        lapse by themselves; granting the same ``id`` again (e.g. a support ticket) adds nothing.
        A boost on a window the user's limits leave unlimited does nothing.

        Raises InvalidUserError, InvalidInputError (an unknown window, an ``until`` not in
        the future, MAX_BOOSTS boosts already in force), InvalidAmountError, StoreError."""
        return self.grant(user, window, amount=amount, until=until, id=id)[0]

    async def agrant_boost(self, user: str, window: Window = "daily", *, amount: Amount,
                           until: datetime | timedelta | float, id: str | None = None) -> Boost:
        """Async twin of grant_boost()."""
        return (await self.agrant(user, window, amount=amount, until=until, id=id))[0]

    def grant(self, user: str, window: Window = "daily", *, amount: Amount,
              until: datetime | timedelta | float, id: str | None = None) -> tuple[Boost, bool]:
        """grant_boost(), answering (the boost, whether this grant added it): False for a
        replayed id (the boost granted before, or the one asked for if it has ended), which
        the dashboard and the CLI neither audit nor count. Raises as grant_boost()."""
        keys, now_ms, boost = self._boost_op(user, window, amount, until, id)
        try:
            with count_store_errors(self._ledger.stats):
                made = self._ledger.store.sync.change_boosts(keys, now_ms, add=boost)
        finally:
            self._ledger.leases.drop(user)
        return self._granted(user, made, boost)

    async def agrant(self, user: str, window: Window = "daily", *, amount: Amount,
                     until: datetime | timedelta | float, id: str | None = None) -> tuple[Boost, bool]:
        """Async twin of grant()."""
        keys, now_ms, boost = self._boost_op(user, window, amount, until, id)
        try:
            with count_store_errors(self._ledger.stats):
                made = await self._ledger.store.for_loop().change_boosts(keys, now_ms, add=boost)
        finally:
            await self._ledger.leases.adrop(user)
        return self._granted(user, made, boost)

    def clear_boosts(self, user: str, window: Window | None = None) -> None:
        """End the user's boosts now: those of ``window``, or all. Raises InvalidUserError,
        InvalidInputError, StoreError."""
        keys, now_ms, clear = self._clear_op(user, window)
        try:
            with count_store_errors(self._ledger.stats):
                self._ledger.store.sync.change_boosts(keys, now_ms, clear=clear)
        finally:
            self._ledger.leases.drop(user)

    async def aclear_boosts(self, user: str, window: Window | None = None) -> None:
        """Async twin of clear_boosts()."""
        keys, now_ms, clear = self._clear_op(user, window)
        try:
            with count_store_errors(self._ledger.stats):
                await self._ledger.store.for_loop().change_boosts(keys, now_ms, clear=clear)
        finally:
            await self._ledger.leases.adrop(user)

    def _boost_op(self, user: str, window: object, amount: Amount, until: object,
                  id: object) -> tuple[UserKeys, int, StoredBoost]:
        check_user_id(user)
        index = window_index(window)
        what = "a boost's amount"
        nanos = check_nanos(to_nanos(amount, what=what, allow_zero=False), what=what)
        now = self._ledger.now()
        until_ms = until_ms_of(until, now)
        if id is None:
            id = uuid.uuid4().hex
        if not isinstance(id, str) or not 0 < len(id) <= 64 or not id.isprintable():  # no lone surrogate
            raise InvalidInputError(f"a boost's id must be printable text of 1 to 64 chars, "
                                    f"got {repr(id)[:80]}")
        return self._ledger.user_keys(user, now), int(now * 1000), StoredBoost(id, index, nanos, until_ms)

    def _clear_op(self, user: str, window: object) -> tuple[UserKeys, int, int]:
        check_user_id(user)
        index = 3 if window is None else window_index(window)
        now = self._ledger.now()
        return self._ledger.user_keys(user, now), int(now * 1000), index

    def _granted(self, user: str, made: tuple[tuple[StoredBoost, ...], bool] | None,
                 boost: StoredBoost) -> tuple[Boost, bool]:
        if made is None:
            raise InvalidInputError(f"{user!r} has {MAX_BOOSTS} boosts in force: clear some first")
        found = next((b for b in made[0] if b.id == boost.id), boost)  # granted before: that boost
        return public_boost(found, self._ledger.tz), made[1]


def window_index(window: object) -> int:
    if not isinstance(window, str) or window not in WINDOWS:
        raise InvalidInputError(f"window must be one of {', '.join(WINDOWS)}, got {repr(window)[:40]}")
    return WINDOWS.index(window)  # type: ignore[arg-type]


def until_ms_of(until: object, now: float) -> int:
    """``until`` as epoch ms, checked to be after ``now`` and within MAX_BOOST_DAYS."""
    if isinstance(until, timedelta):
        at = now + until.total_seconds()
    elif isinstance(until, datetime):
        if until.tzinfo is None:
            raise InvalidInputError("until must be an aware datetime (with a timezone), a timedelta "
                                    "or epoch seconds")
        at = until.timestamp()
    elif isinstance(until, int | float) and not isinstance(until, bool) and -1e13 < until < 1e13:
        at = float(until)  # compared first: float(10**400) overflows, and NaN fails both sides
    else:
        raise InvalidInputError(f"until must be a datetime, a timedelta or epoch seconds, "
                                f"got {repr(until)[:40]}")
    if at <= now:
        raise InvalidInputError("until must be in the future (by the ledger's clock)")
    if at > now + MAX_BOOST_DAYS * 86400:
        raise InvalidInputError(f"a boost lasts at most {MAX_BOOST_DAYS} days: for longer, set the "
                                "user's own limits")
    return int(at * 1000)


_UNITS = {"m": 60, "h": 3600, "d": 86400}


def parse_until(text: str) -> timedelta | datetime:
    """A boost's end as the CLI and the dashboard take it: ``7d``, ``12h``, ``30m`` from now,
    or an ISO 8601 moment with its offset. Raises InvalidInputError."""
    text = text.strip()
    if text[-1:] in _UNITS and text[:-1].isascii() and text[:-1].isdigit() and len(text) <= 8:
        return timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])
    try:
        return datetime.fromisoformat(text[:64])
    except ValueError:
        raise InvalidInputError(f"until must be like 7d, 12h, 30m or 2026-12-01T00:00+00:00, "
                                f"got {text[:64]!r}") from None


def public_boost(b: StoredBoost, tz: ZoneInfo) -> Boost:
    return Boost(id=b.id, window=WINDOWS[b.window], amount=to_usd(b.amount),
                 until=datetime.fromtimestamp(b.until_ms / 1000, tz))


def own_limits(snap: Snapshot) -> Tier | None:
    """The user's own limits as a Tier, from a snapshot (None when they have none)."""
    if not snap.override:
        return None
    o = json.loads(snap.override)
    values: dict[str, Any] = {w: to_usd(n) if n != -1 else None for w, n in zip(WINDOWS, o["l"], strict=True)}
    if "f" in o:  # else the tier's cap: max_in_flight left unset
        values["max_in_flight"] = None if o["f"] == -1 else o["f"]
    return Tier(**values, credits_cover=frozenset(w for w, h in zip(WINDOWS, o["h"], strict=True) if not h))


def effective_tier(tier: Tier, snap: Snapshot | None) -> Tier:
    """``tier`` as the store applies it to the user at the snapshot's moment: their own limits
    in its place, then their boosts in force added, each window capped at MAX_NANOS
    (``stores/_effective.resolve`` itself, on the tier's compiled form)."""
    if snap is None or (not snap.override and not snap.boosts):
        return tier
    c = tier.compiled()
    # The snapshot's boosts are those in force at its moment: -1 counts them all.
    _, limits, hard, cap = resolve(None, snap.override, encode(snap.boosts), "", (*c["l"], *c["h"], c["f"]),
                                   "", -1)
    update: dict[str, Any] = {w: None if n == -1 else to_usd(n) for w, n in zip(WINDOWS, limits, strict=True)}
    return tier.model_copy(update={**update, "max_in_flight": None if cap == -1 else cap,
                                   "credits_cover": frozenset(w for w, h in zip(WINDOWS, hard, strict=True)
                                                              if not h)})
