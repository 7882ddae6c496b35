"""The owner's everyday verbs: ``nasca user``, ``nasca credits``, ``nasca tiers``, ``nasca ceiling``.

    nasca user show u_42 [--json]            nasca user set-tier u_42 pro | --clear
    nasca user boost u_42 --window daily --amount 1 --until 7d [--id ticket-981]
    nasca user unboost u_42 [--window daily]  nasca user limits u_42 --daily 2 --monthly 20 | --clear
    nasca user export u_42 [--json]          nasca user delete u_42 --yes
    nasca credits grant u_42 --spend 2 --paid 0 --key support-981
    nasca credits list u_42 [--json]
    nasca tiers list [--json]                nasca tiers set free --daily 0.10 --monthly 1
    nasca tiers unset free
    nasca ceiling [--json]                   nasca ceiling set --daily 15 --monthly 200 [--warn-at 0.8]
    nasca ceiling off | unset                (set's limits replace the ceiling's; its warnings stay;
                                             unset: back to nasca.toml's [ceiling] / ceiling=)

Each reads the store, namespace and tiers from ``nasca.toml`` (``--config``), or takes
``--store``/``--namespace``; what they change is live for every process on that store.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from nasca_core._ceiling import ceiling_source, known_ceiling
from nasca_core._config import Tier
from nasca_core._errors import ConfigurationError, NascaError
from nasca_core._ledger import Nasca
from nasca_core._limits import parse_until
from nasca_core._windows import WINDOWS
from nasca_core.privacy import UserData, UserExport
from nasca_core.server._config import ServeConfig, build_nasca

Runner = Callable[[argparse.Namespace], int]
DEFAULT_CONFIG = "nasca.toml"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help=f"the config file (default: ./{DEFAULT_CONFIG})")
    parser.add_argument("--store", help="store URI (default: the config's)")
    parser.add_argument("--namespace", help="namespace (default: the config's)")
    parser.add_argument("--json", action="store_true", help="print JSON")


@contextmanager
def _ledger(args: argparse.Namespace) -> Iterator[Nasca]:
    if args.config is None and not Path(DEFAULT_CONFIG).exists() and not args.store:
        raise ConfigurationError(f"no ./{DEFAULT_CONFIG}: give --config PATH or --store URI")
    config = ServeConfig.load(args.config or DEFAULT_CONFIG) if args.config or not args.store \
        else ServeConfig()
    update = {k: v for k, v in (("store", args.store), ("namespace", args.namespace)) if v}
    nasca = build_nasca(config.model_copy(update=update), {})
    try:
        yield nasca
    finally:
        nasca.close()


def _run(action: Callable[[Nasca, argparse.Namespace], Any]) -> Runner:
    def run(args: argparse.Namespace) -> int:
        try:
            with _ledger(args) as nasca:
                out = action(nasca, args)
        except NascaError as exc:
            print(f"nasca: {exc}", file=sys.stderr)
            return 2
        if out is not None:
            print(json.dumps(out, indent=2, default=str) if args.json else _text(out))
        return 0

    return run


def _text(out: Any) -> str:
    if isinstance(out, Mapping):
        return "\n".join(f"{k}: {v}" for k, v in out.items() if v is not None)
    if isinstance(out, list):
        return "\n".join(_text(item) if not isinstance(item, Mapping) else
                         "  ".join(f"{k}={v}" for k, v in item.items() if v is not None) for item in out)
    return str(out)


# -- user ----------------------------------------------------------------------------------
def _user_show(nasca: Nasca, args: argparse.Namespace) -> dict[str, Any]:
    usage = nasca.get_usage(args.user, tier=args.tier)
    out: dict[str, Any] = {"user": usage.user_id, "tier": usage.tier,
                           "blocked": usage.blocked_reason or "no"}
    for w in WINDOWS:
        limit = getattr(usage, f"{w}_limit")
        if limit is not None:
            out[w] = f"${getattr(usage, f'{w}_spent')} of ${limit}, resets {getattr(usage, f'{w}_resets_at')}"
            if crossed := getattr(usage, f"{w}_crossed"):  # Tier.warn_at marks reached
                out[w] += ", past " + " and ".join(f"{f:.0%}" for f in crossed)
    out.update({"month_cost": usage.month_cost, "month_calls": usage.month_calls,
                "in_flight": usage.in_flight, "credit_balance": usage.credit_balance,
                "credit_balance_paid": f"{usage.credit_balance_display} {usage.credit_currency}"})
    if usage.own_limits is not None:
        out["own_limits"] = _limits_text(usage.own_limits)
    for b in usage.boosts:
        out[f"boost {b.id}"] = f"+${b.amount} {b.window} until {b.until}"
    return out


def _limits_text(tier: Tier) -> str:
    hard = tier.hard_windows()
    return ", ".join(f"{w} ${tier.limit(w)}{' (hard)' if hard[i] else ''}" if tier.limit(w) is not None
                     else f"{w} unlimited" for i, w in enumerate(WINDOWS))


def _user_boost(nasca: Nasca, args: argparse.Namespace) -> dict[str, Any]:
    until = parse_until(args.until)
    b, new = nasca.limits.grant(args.user, args.window, amount=args.amount, until=until, id=args.id)
    out = {"user": args.user, "boost": b.id, "window": b.window, "amount": b.amount, "until": b.until}
    return out if new else {**out, "repeated": "granted before: nothing added"}


def _user_unboost(nasca: Nasca, args: argparse.Namespace) -> dict[str, Any]:
    nasca.limits.clear_boosts(args.user, args.window)
    return {"user": args.user, "boosts_ended": args.window or "all"}


def _user_limits(nasca: Nasca, args: argparse.Namespace) -> dict[str, Any]:
    limits = {w: getattr(args, w) for w in WINDOWS if getattr(args, w) is not None}
    if bool(limits or args.hard or args.max_in_flight is not None) == args.clear:
        raise ConfigurationError("give the user's limits (--daily, --weekly, --monthly, ...), or --clear")
    if args.clear:
        nasca.set_user_limits(args.user, None)
        return {"user": args.user, "own_limits": "cleared: the tier's apply"}
    tier = Tier(**limits, credits_cover=frozenset(w for w in WINDOWS if w not in (args.hard or ())),
                **({"max_in_flight": args.max_in_flight} if args.max_in_flight is not None else {}))
    nasca.set_user_limits(args.user, tier)
    return {"user": args.user, "own_limits": _limits_text(tier)}



def _user_set_tier(nasca: Nasca, args: argparse.Namespace) -> dict[str, Any]:
    if (args.tier is None) == (not args.clear):
        raise ConfigurationError("give a TIER, or --clear")
    nasca.set_user_tier(args.user, None if args.clear else args.tier)
    return {"user": args.user, "stored_tier": None if args.clear else args.tier}


def _user_export(nasca: Nasca, args: argparse.Namespace) -> Any:
    return _shown(UserData(nasca).export(args.user), args)


def _user_delete(nasca: Nasca, args: argparse.Namespace) -> Any:
    data = UserData(nasca)
    if not args.yes:
        found = data.export(args.user)
        raise ConfigurationError(
            f"this deletes everything stored about {args.user!r} ({len(found.records)} records, "
            f"{len(found.analytics)} months of analytics, {len(found.billing)} billing records; the "
            "month's revenue totals stay): run again with --yes. Nothing was deleted.")
    return _shown(data.delete(args.user), args)


def _shown(export: UserExport, args: argparse.Namespace) -> Any:
    if args.json:
        return export.model_dump(mode="json")
    head = "deleted" if export.deleted else "stored"
    if export.empty:
        return f"nothing {head} about {export.user_id!r} in namespace {export.namespace!r}"
    lines = [f"{head} about {export.user_id!r} in namespace {export.namespace!r}:"]
    for part in ("records", "analytics", "billing"):
        for where, value in sorted(getattr(export, part).items()):
            lines.append(f"  {part} {where or '(user)'}: {json.dumps(value, default=str)}")
    return "\n".join(lines)


# -- credits ---------------------------------------------------------------------------------
def _credits_grant(nasca: Nasca, args: argparse.Namespace) -> dict[str, Any]:
    grant = nasca.billing.grant_credits(args.user, args.pack, spend=args.spend, paid=args.paid,
                                        currency=args.currency, idempotency_key=args.key)
    lot = grant.lot
    return {"granted": grant.granted, "lot": lot.id, "spend": lot.granted, "remaining": lot.remaining,
            "paid": f"{lot.paid} {lot.currency}"}


def _credits_list(nasca: Nasca, args: argparse.Namespace) -> list[dict[str, Any]]:
    return [{"lot": lot.id, "pack": lot.pack or None, "granted": lot.granted, "remaining": lot.remaining,
             "paid": f"{lot.paid} {lot.currency}", "revoked": lot.revoked or None}
            for lot in nasca.billing.credit_lots(args.user)]


# -- tiers ------------------------------------------------------------------------------------
def _tiers_list(nasca: Nasca, args: argparse.Namespace) -> list[dict[str, Any]]:
    snap = nasca.live.fresh()
    stored = set(snap.stored.sections.get("tier", {}))
    return [{"tier": name, **{w: tier.limit(w) for w in WINDOWS},
             "hard": ",".join(w for w, h in zip(WINDOWS, tier.hard_windows(), strict=True) if h) or None,
             "source": "store" if name in stored else "config"}
            for name, tier in sorted(snap.tiers.items())]


def _tiers_set(nasca: Nasca, args: argparse.Namespace) -> dict[str, Any]:
    limits = {w: getattr(args, w) for w in WINDOWS if getattr(args, w) is not None}
    cover = frozenset(w for w in WINDOWS if w not in (args.hard or ()))
    tier = Tier(**limits, credits_cover=cover)
    nasca.set_tier(args.name, tier)
    return {"tier": args.name, **{w: tier.limit(w) for w in WINDOWS}}


def _tiers_unset(nasca: Nasca, args: argparse.Namespace) -> dict[str, Any]:
    nasca.set_tier(args.name, None)
    return {"tier": args.name, "stored_override": "removed"}


# -- ceiling ----------------------------------------------------------------------------------
_OFF_SOURCES = {
    "stored off": "turned off in the store for every process (`nasca ceiling unset` gives each "
                  "process its ceiling= back)",
    "this process's default": "nothing stored; an app process may still set one in code (ceiling=)",
    "stored": "stored",
}
_ON_SOURCES = {
    "stored": "stored: every process on this store (`nasca ceiling unset` removes it)",
    "this process's default": "nasca.toml [ceiling] (nothing stored; an app process may set "
                              "another in code with ceiling=)",
    "stored off": "stored off",
    "unreadable, standing in": "stored, but unreadable by this version (written by a newer one?): "
                               "the last one read here or this process's ceiling= is enforced "
                               "instead until `nasca ceiling set`, `off` or `unset` replaces it",
    "unreadable": "stored, but unreadable by this version (written by a newer one?): calls are "
                  "refused until `nasca ceiling set`, `off` or `unset` replaces it",
}


def _ceiling(nasca: Nasca, args: argparse.Namespace) -> Any:
    limits = {w: getattr(args, w) for w in WINDOWS if getattr(args, w) is not None}
    if args.action == "set":
        if not limits:
            raise ConfigurationError("give the ceiling's limits: --daily, --weekly and/or --monthly")
        old = known_ceiling(nasca.live.fresh().ceiling)  # its warnings stay unless given anew (or --no-warn)
        warn_at = () if args.no_warn else tuple(args.warn_at) if args.warn_at else old.warn_at if old else ()
        nasca.set_ceiling(Tier(**limits, warn_at=warn_at))
    elif limits or args.warn_at or args.no_warn:
        raise ConfigurationError(f"`nasca ceiling {args.action}` takes no limits (`nasca ceiling set` does)")
    elif args.action == "off":
        nasca.set_ceiling(None)
    elif args.action == "unset":
        nasca.set_ceiling("default")
    status = nasca.ceiling_status()
    if status is None:
        source = ceiling_source(nasca.live.current())
        if args.json:
            return {"ceiling": None, "source": source}
        return {"ceiling": "off", "source": _OFF_SOURCES[source]}
    if args.json:
        return status.model_dump(mode="json")
    if status.source == "unreadable":
        return {"ceiling": "unreadable: calls refused", "source": _ON_SOURCES[status.source],
                "blocked": "yes: every call is refused"}
    out: dict[str, Any] = {"ceiling": ", ".join(f"{w.window} ${w.limit}" for w in status.windows)
                           + (", warns at " + " and ".join(f"{f:.0%}" for f in status.warn_at)
                              if status.warn_at else ""),
                           "source": _ON_SOURCES[status.source],
                           "blocked": "yes: every call is blocked" if status.blocked else "no"}
    for w in status.windows:
        out[w.window] = (f"${w.spent} spent, ${w.held} held of ${w.limit}: ${w.remaining} left, "
                         f"resets {w.resets_at}")
    return out


# -- registration -------------------------------------------------------------------------------
Verb = tuple[str, str, Callable[..., Any], Callable[[argparse.ArgumentParser], None]]


def _verbs(parser: argparse.ArgumentParser, verbs: list[Verb]) -> Runner:
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, help_text, action, arguments in verbs:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        arguments(p)
        p.set_defaults(_verb=_run(action))
    return lambda args: int(args._verb(args))


def setup_user(parser: argparse.ArgumentParser) -> Runner:
    def show(p: argparse.ArgumentParser) -> None:
        p.add_argument("user")
        p.add_argument("--tier", help="the tier the app passes for this user (default: the stored one)")

    def set_tier(p: argparse.ArgumentParser) -> None:
        p.add_argument("user")
        p.add_argument("tier", nargs="?")
        p.add_argument("--clear", action="store_true", help="remove the stored tier")

    def delete(p: argparse.ArgumentParser) -> None:
        p.add_argument("user")
        p.add_argument("--yes", action="store_true", help="really delete (there is no undo)")

    def user_only(p: argparse.ArgumentParser) -> None:
        p.add_argument("user")

    def boost(p: argparse.ArgumentParser) -> None:
        p.add_argument("user")
        p.add_argument("--window", choices=WINDOWS, default="daily")
        p.add_argument("--amount", type=Decimal, required=True, help="dollars added to the window's limit")
        p.add_argument("--until", required=True, help="when it ends: 7d, 12h, 30m, or an ISO moment")
        p.add_argument("--id", help="idempotency key: the same id boosts once")

    def unboost(p: argparse.ArgumentParser) -> None:
        p.add_argument("user")
        p.add_argument("--window", choices=WINDOWS, help="end only this window's boosts")

    def limits(p: argparse.ArgumentParser) -> None:
        p.add_argument("user")
        for w in WINDOWS:
            p.add_argument(f"--{w}", type=Decimal, help=f"the user's {w} limit in dollars (default: none)")
        p.add_argument("--hard", action="append", choices=[w for w in WINDOWS if w != "monthly"],
                       help="a window credits may not extend (repeatable)")
        p.add_argument("--max-in-flight", type=int,
                       help="calls the user may have in flight (default: the tier's cap)")
        p.add_argument("--clear", action="store_true", help="remove the user's own limits")

    return _verbs(parser, [("show", "a user's spend per window, holds and credits", _user_show, show),
                           ("set-tier", "put a user on a tier (it beats the app's)", _user_set_tier,
                            set_tier),
                           ("boost", "raise a user's allowance in one window for a while", _user_boost,
                            boost),
                           ("unboost", "end a user's boosts now", _user_unboost, unboost),
                           ("limits", "give a user their own limits, replacing their tier's", _user_limits,
                            limits),
                           ("export", "everything stored about a user (data-protection requests)",
                            _user_export, user_only),
                           ("delete", "delete everything stored about a user; the month's revenue "
                            "totals stay", _user_delete, delete)])


def setup_credits(parser: argparse.ArgumentParser) -> Runner:
    def grant(p: argparse.ArgumentParser) -> None:
        p.add_argument("user")
        p.add_argument("--pack", help="grant a configured credit pack")
        p.add_argument("--spend", type=Decimal, help="dollars of AI spend")
        p.add_argument("--paid", type=Decimal, help="what the user paid (default: the spend)")
        p.add_argument("--currency", help="the currency paid (default usd)")
        p.add_argument("--key", required=True, help="idempotency key: the same key grants once")

    def lots(p: argparse.ArgumentParser) -> None:
        p.add_argument("user")

    return _verbs(parser, [("grant", "give a user credits (support, promotions)", _credits_grant, grant),
                           ("list", "a user's credit lots, oldest first", _credits_list, lots)])


def setup_tiers(parser: argparse.ArgumentParser) -> Runner:
    def nothing(p: argparse.ArgumentParser) -> None:
        return None

    def define(p: argparse.ArgumentParser) -> None:
        p.add_argument("name")
        for w in WINDOWS:
            p.add_argument(f"--{w}", type=Decimal, help=f"the {w} limit in dollars (default: none)")
        p.add_argument("--hard", action="append", choices=[w for w in WINDOWS if w != "monthly"],
                       help="a window credits may not extend (repeatable)")

    def name_only(p: argparse.ArgumentParser) -> None:
        p.add_argument("name")

    return _verbs(parser, [("list", "the tiers in force and where each comes from", _tiers_list, nothing),
                           ("set", "define or change a tier, live for every process", _tiers_set, define),
                           ("unset", "remove a tier's stored override", _tiers_unset, name_only)])


def setup_ceiling(parser: argparse.ArgumentParser) -> Runner:
    """``nasca ceiling`` shows the app-wide ceiling; ``set --daily 15 --monthly 200`` or ``off``
    changes it live for every process on the store, ``unset`` removes the stored value (each
    process's own ``ceiling=`` stands again), then shows it."""
    _common(parser)
    parser.add_argument("action", nargs="?", choices=("show", "set", "off", "unset"), default="show")
    for w in WINDOWS:
        parser.add_argument(f"--{w}", type=Decimal, help=f"set: the app's {w} AI budget in dollars")
    parser.add_argument("--warn-at", type=float, action="append", metavar="FRACTION",
                        help="set: warn the owner at this fraction of a window (repeatable, e.g. 0.8; "
                             "default: the ceiling's warnings as they are)")
    parser.add_argument("--no-warn", action="store_true", help="set: no warnings before the ceiling")
    return _run(_ceiling)
