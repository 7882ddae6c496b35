"""Degrade instead of block: a call the tier's allowance blocks runs on a cheaper model,
charged to a small allowance of its own (``Tier(on_exhausted="fallback", ...)``).

- which model a call falls back to: ``Tier.fallback_model``, one name or a mapping of
  model patterns (``fnmatch`` globs, case-sensitive) to names, the first match in the
  mapping's order winning; a model no pattern matches blocks as before;
- which blocks degrade: a spent window of the tier (``NascaBlockedError``), not a
  ``NascaBusyError`` (calls in flight: try again) and not a hard window (one credits may
  not extend, ``Tier.credits_cover``: the owner made it a cap nothing lifts);
- where the fallback is counted: an ``Account``, the user's keys with a suffix (same
  Cluster slot), under the fallback allowance's limits. It goes through the ledger's own
  reserve and settle (the same scripts), so the fallback is bounded, its spend is never
  lost, and a spent fallback allowance blocks as usual: with the tier's error, whose
  ``__cause__`` is the fallback's.

The admitted path is unchanged; a call that falls back costs two reserves: the ledger
asks the call's ``Degrade`` before it flushes, reads or tells of a block, so a call that
fell back is no block to listeners (``degrade_to`` decides from the reserve's answer). A
fallback model must be priced (``check_fallback_prices``) and the same provider's as the
model asked for (``same_provider``). ``start_with_fallback`` (``_fallback_calls``) is what
``wrap()``, ``NascaMiddleware`` and ``guard_llm`` call instead of ``start_call``: they can
rewrite the request's model. A callback handler can't, so it still blocks. No I/O here;
``fallback_of(response)`` looks up what ``mark`` remembered.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, TypeVar

from nasca_core._errors import ConfigurationError, NascaBlockedError, UnknownModelError
from nasca_core.stores import ReserveOp, ReserveResult, UserKeys

if TYPE_CHECKING:
    from nasca_core._config import Tier
    from nasca_core.pricing import Pricer

R = TypeVar("R")
ACCOUNT_SUFFIX = ":fallback"  # after the user's meta key: the user's slot, apart from their keys
FallbackModel = str | tuple[tuple[str, str], ...]
# Asked of a blocked reserve before the ledger flushes, reads or tells of it: True when the call
# falls back, and the block (untold: it is no block) is raised for the caller to reroute.
Degrade = Callable[[ReserveOp, ReserveResult], bool]


def check_fallback_model(value: Any) -> FallbackModel | None:
    """A model name, or (pattern, model) pairs from a mapping (or pairs, as stored) in order.
    Raises ValueError (pydantic reports it as the field's error)."""
    if value is None or isinstance(value, str):
        if value is not None and not value.strip():
            raise ValueError("fallback_model must be a model name or a mapping of model patterns to names")
        return value
    pairs = list(value.items()) if isinstance(value, Mapping) else list(value)
    if not pairs:
        raise ValueError("fallback_model's mapping is empty")
    out = []
    for pair in pairs:
        if not (isinstance(pair, list | tuple) and len(pair) == 2
                and all(isinstance(p, str) and p.strip() for p in pair)):
            raise ValueError(f"fallback_model maps model patterns to model names (str -> str), got {pair!r}")
        out.append((pair[0], pair[1]))
    return tuple(out)


def fallback_for(fallback_model: FallbackModel | None, model: str) -> str | None:
    """The model a call to ``model`` falls back to, or None (no pattern matches it)."""
    if fallback_model is None or isinstance(fallback_model, str):
        return fallback_model
    return next((to for pattern, to in fallback_model if fnmatchcase(model, pattern)), None)


@dataclass(frozen=True, slots=True)
class Account:
    """A user's allowance apart from their tier's: the user's keys with ``suffix``, under
    ``tier``'s limits (``compiled`` as ``Tier.compiled`` flattened, the form reserve sends)."""

    tier: Tier
    compiled: tuple[int, ...]
    suffix: str = ACCOUNT_SUFFIX

    @classmethod
    def of(cls, tier: Tier) -> Account:
        c = tier.compiled()
        return cls(tier, (*c["l"], *c["h"], c["f"]))

    def keys(self, user: UserKeys) -> UserKeys:
        """``user``'s keys moved under the account: every key that extends the meta key."""
        base = user.meta
        return UserKeys(**{f.name: _moved(getattr(user, f.name), base, self.suffix)
                           for f in dataclasses.fields(user)})


def _moved(key: str, base: str, suffix: str) -> str:
    return base + suffix + key[len(base):] if key.startswith(base) else key


def on_account(keys: UserKeys, account: Account | None) -> UserKeys:
    """The keys a reserve of ``account`` (None: the user's own) uses."""
    return keys if account is None else account.keys(keys)


def same_account(reserved: UserKeys, now: UserKeys) -> UserKeys:
    """The keys ``now`` (a user's, for the windows a call ends in) moved under the account
    ``reserved`` (the keys the call was reserved on) belongs to."""
    if reserved.meta == now.meta or not reserved.meta.startswith(now.meta):
        return now
    return UserKeys(**{f.name: _moved(getattr(now, f.name), now.meta, reserved.meta[len(now.meta):])
                       for f in dataclasses.fields(now)})


@dataclass(frozen=True, slots=True)
class Fallback:
    """A call that ran on its fallback model: ``model`` what ran, ``requested`` what was
    asked for, ``blocked`` the tier's block it stands in for (its upgrade message, checkout
    URL and prompt id are the app's to show)."""

    model: str
    requested: str
    blocked: NascaBlockedError

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields: LangChain's ``response_metadata["nasca_fallback"]``, LlamaIndex's
        ``additional_kwargs["nasca_fallback"]``."""
        err = self.blocked
        return {"model": self.model, "requested": self.requested, "window": err.window,
                "tier": err.tier, "resets_at": err.resets_at.isoformat() if err.resets_at else None,
                "upgrade_message": err.upgrade_message, "checkout_url": err.checkout_url,
                "prompt_id": err.prompt_id}


def degrade_to(tier: Tier | None, result: ReserveResult, model: str,
               busy: bool) -> tuple[str, Account] | None:
    """The fallback model and account for a call to ``model`` whose reserve ``result``
    blocked on ``tier``, or None when it blocks (pure; the reserve's answer alone, no
    snapshot). ``busy``: only calls in flight stand in the way (``_explain.busy_reason``)."""
    if tier is None or tier.on_exhausted != "fallback" or tier.fallback_allowance is None:
        return None
    # Status 2 is the in-flight cap. A store reads no credits (-1) for a block exactly when a
    # hard window blocks, as it applied the user's limits (their own may differ from the tier's).
    if result.status != 0 or result.window not in (1, 2, 3) or result.credits == -1 or busy:
        return None
    to = fallback_for(tier.fallback_model, model)
    return None if to is None else (to, Account.of(tier.fallback_allowance))


def same_provider(pricer: Pricer, model: str, to: str) -> bool:
    """Whether ``to`` is priced and served by the provider that serves ``model`` (as the price
    table says; a model it names no provider for counts as any): a request to one provider's
    API can't be sent to another's model."""
    try:
        asked, got = pricer.price(model), pricer.price(to)
    except UnknownModelError:
        return False
    if got is None:  # unknown_model="warn": unpriced, it would run free
        return False
    return asked is None or None in (asked[1].provider, got[1].provider) \
        or asked[1].provider == got[1].provider


def check_fallback_prices(tiers: Mapping[str, Tier], pricer: Pricer, log: Any) -> None:
    """Refuse a fallback model the price table can't price (it would run free, or turn every
    fallback into UnknownModelError); warn of one that costs more than the model it replaces
    (when the mapping names that model). Raises ConfigurationError."""
    table = pricer.table
    for name, tier in tiers.items():
        fm = tier.fallback_model
        pairs = () if fm is None else ((None, fm),) if isinstance(fm, str) else fm
        for pattern, to in pairs:
            if table.normalize(to) is None:
                raise ConfigurationError(
                    f"tiers[{name!r}].fallback_model: {to!r} has no price; add it to prices= "
                    "(or set_price) or fix the name: a fallback call must be charged")
            if pattern is None or any(c in pattern for c in "*?[") or table.normalize(pattern) is None:
                continue
            was, now = table.resolve(pattern)[1], table.resolve(to)[1]
            if (now.input or 0) > (was.input or 0) or (now.output or 0) > (was.output or 0):
                log.warning("nasca: tiers[%r] falls back from %r to %r, which costs more", name,
                            pattern, to)


def mark(response: R, fallback: Fallback | None) -> R:
    """``response`` (an SDK response, or the stream ``wrap()`` returned), remembered with the
    ``fallback`` it ran on: ``fallback_of(response)`` says so, and the provider's data is left
    as it came (its ``model`` field names the fallback model). Returns ``response``."""
    if fallback is None:
        return response
    key = id(response)
    try:
        ref = weakref.ref(response, lambda r: _forget(key, r))
    except TypeError:  # an object that can't be weakly referenced: fallback_of answers None
        return response
    with _lock:
        _marked[key] = (ref, fallback)
    return response


def fallback_of(response: Any) -> Fallback | None:
    """The ``Fallback`` a wrapped call that returned ``response`` ran on, or None (it ran on
    the model asked for, or is no wrapped call's response)."""
    entry = _marked.get(id(response))
    return entry[1] if entry is not None and entry[0]() is response else None


_marked: dict[int, tuple[weakref.ref[Any], Fallback]] = {}
_lock = threading.Lock()


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    with _lock:
        if (entry := _marked.get(key)) is not None and entry[0] is ref:
            del _marked[key]
