"""The fallback's calls and usage over the ledger's port (the rules: ``_fallback``).

    call, fell = start_with_fallback(nasca, model, request, messages=..., user=...)
    # fell is None: the call runs on ``model``; else request["model"] is the fallback's
    # and ``fell`` (a ``Fallback``) says what it stands in for.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from nasca_core._errors import NascaBlockedError, NascaBusyError, UnknownModelError
from nasca_core._explain import busy_reason, usage_of
from nasca_core._fallback import ACCOUNT_SUFFIX, Account, Fallback, degrade_to, same_provider
from nasca_core._usage import Usage

if TYPE_CHECKING:
    from nasca_core._calls import LLMCall
    from nasca_core._ledger import Nasca
    from nasca_core._live import LiveConfig
    from nasca_core.stores import ReserveOp, ReserveResult

log = logging.getLogger("nasca")


def start_with_fallback(nasca: Nasca, model: str, request: dict[str, Any] | None = None, *,
                        fallback: bool = True, **spec: Any) -> tuple[LLMCall, Fallback | None]:
    """``nasca.start_call(model, **spec)``, or, when the tier's allowance blocks it and the
    tier falls back, the call on the fallback model within the fallback allowance, reserved
    on the tier "<tier>:fallback" (``request["model"]`` rewritten to it when given;
    ``fallback=False``: never). Raises what start_call raises; a spent fallback allowance
    raises the tier's NascaBlockedError (told to listeners once), the fallback's its cause.

    A call that falls back costs two reserves: the blocked one is not flushed, read or told
    of (it is no block), the Fallback is built from its answer. No flush is needed: the
    reserve counts this process's queued settles of the user at their cost; one on its way
    counts as its hold, so a race can only fall back a call the tier would have admitted."""
    if not _local(nasca):  # a remote ledger's server falls back in its reserve, if it may
        remote: Any = nasca  # its degrade= says whether it may
        return _remote(remote.start_call(model=model, degrade=fallback, **spec), request)
    watch = _Watch(nasca.live, model) if fallback else None
    try:
        return nasca.start_call(model=model, degrade=watch, **spec), None
    except NascaBlockedError as err:
        if watch is None or watch.found is None:
            raise
        (to, account), blocked = watch.found, err
    try:
        call = nasca.start_call(model=to, **{**spec, "tier": blocked.tier + ACCOUNT_SUFFIX}, account=account)
    except NascaBusyError:
        raise
    except (NascaBlockedError, UnknownModelError) as spent:
        try:  # the call blocks as any: flushed, read and told once, as the tier's block
            return nasca.start_call(model=model, **spec), None
        except NascaBlockedError as told:
            raise told from spent
    return _rerouted(nasca, call, watch, request, to, model, blocked)


async def astart_with_fallback(nasca: Nasca, model: str, request: dict[str, Any] | None = None, *,
                               fallback: bool = True, **spec: Any) -> tuple[LLMCall, Fallback | None]:
    """Async twin of start_with_fallback()."""
    if not _local(nasca):
        remote: Any = nasca
        return _remote(await remote.astart_call(model=model, degrade=fallback, **spec), request)
    watch = _Watch(nasca.live, model) if fallback else None
    try:
        return await nasca.astart_call(model=model, degrade=watch, **spec), None
    except NascaBlockedError as err:
        if watch is None or watch.found is None:
            raise
        (to, account), blocked = watch.found, err
    try:
        call = await nasca.astart_call(model=to, **{**spec, "tier": blocked.tier + ACCOUNT_SUFFIX},
                                       account=account)
    except NascaBusyError:
        raise
    except (NascaBlockedError, UnknownModelError) as spent:
        try:
            return await nasca.astart_call(model=model, **spec), None
        except NascaBlockedError as told:
            raise told from spent
    return _rerouted(nasca, call, watch, request, to, model, blocked)


class _Watch:
    """The ``Degrade`` of one call: whether its blocked reserve falls back, and to what
    (``found``); the user's anchor spec the reserve was checked against (``anchor``)."""

    __slots__ = ("anchor", "found", "live", "model")

    def __init__(self, live: LiveConfig, model: str) -> None:
        self.live, self.model = live, model  # the config read on a block only: the reserve's, cached
        self.found: tuple[str, Account] | None = None
        self.anchor = ""

    def __call__(self, op: ReserveOp, result: ReserveResult) -> bool:
        config = self.live.current()
        tier = config.tiers.get(result.tier)
        if tier is None or tier.on_exhausted != "fallback":
            return False
        busy = busy_reason(result, tier, None, op.estimate, op.strict) is not None
        found = degrade_to(tier, result, self.model, busy)
        if found is not None and not same_provider(config.pricer, self.model, found[0]):
            found = None
        self.found, self.anchor = found, op.anchor
        return found is not None


def _local(nasca: Nasca) -> bool:
    """Whether ``nasca`` reserves in a store of its own, not on a server (``nasca_core.remote``)."""
    return getattr(nasca, "deferred", None) is not None


def _remote(call: LLMCall, request: dict[str, Any] | None) -> tuple[LLMCall, Fallback | None]:
    fell: Fallback | None = getattr(call.reservation, "fallback", None)  # the server's, if it fell back
    if fell is not None and request is not None:
        request["model"] = fell.model
    return call, fell


def _rerouted(nasca: Nasca, call: LLMCall, watch: _Watch, request: dict[str, Any] | None, to: str,
              model: str, err: NascaBlockedError) -> tuple[LLMCall, Fallback]:
    # The account's keys name the user's month (anchored or not) while its store check is
    # against the account's own meta (""): the settle must name the month as the reserve did.
    call.reservation = dataclasses.replace(call.reservation, anchor=watch.anchor)
    if nasca.checkout_url_factory is not None:  # asked only now: a fallback that blocks never shows it
        try:
            err.checkout_url = nasca.checkout_url_factory(err)
        except Exception:
            log.exception("nasca: checkout_url factory failed")
    nasca.stats.fallbacks += 1
    if request is not None:
        request["model"] = to
    return call, Fallback(to, model, err)


def fallback_usage(nasca: Nasca, usage: Usage) -> Usage:
    """``usage`` with its ``fallback`` (the fallback allowance's spend, ``Usage`` of its own)
    when its tier falls back: one more snapshot, of the fallback's keys. Raises StoreError."""
    found = _account(nasca, usage)
    if found is None:
        return usage
    now = nasca.now()
    keys = found.keys(nasca.user_keys(usage.user_id, now))
    return _with(nasca, usage, found, nasca.deferred.snapshot(keys, int(now * 1000)), now)


async def afallback_usage(nasca: Nasca, usage: Usage) -> Usage:
    """Async twin of fallback_usage()."""
    found = _account(nasca, usage)
    if found is None:
        return usage
    now = nasca.now()
    keys = found.keys(nasca.user_keys(usage.user_id, now))
    return _with(nasca, usage, found, await nasca.deferred.asnapshot(keys, int(now * 1000)), now)


def _account(nasca: Nasca, usage: Usage) -> Account | None:
    tier = nasca.live.current().tiers.get(usage.tier)
    if tier is None or tier.on_exhausted != "fallback" or tier.fallback_allowance is None:
        return None
    return Account.of(tier.fallback_allowance)


def _with(nasca: Nasca, usage: Usage, account: Account, snap: Any, now: float) -> Usage:
    ws = nasca.windows_at(now, usage.user_id)
    fallback = usage_of(usage.user_id, usage.tier + ACCOUNT_SUFFIX, account.tier, snap, ws, nasca.tz)
    return usage.model_copy(update={"fallback": fallback})
