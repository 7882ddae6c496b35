"""``nasca serve`` and ``nasca report``: argument parsing and the environment live here, at
the edge; everything below takes explicit values."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nasca_core._errors import ConfigurationError, NascaError
from nasca_core.server._config import ServeConfig, build_nasca, build_settings

Runner = Callable[[argparse.Namespace], int]
DEFAULT_CONFIG = "nasca.toml"


def _config(path: str | None, *, required: bool) -> ServeConfig:
    if path is None and not Path(DEFAULT_CONFIG).exists():
        if required:
            return ServeConfig.load(DEFAULT_CONFIG)  # raises: no such file
        return ServeConfig()
    return ServeConfig.load(path or DEFAULT_CONFIG)


def _fail(exc: Exception) -> int:
    print(f"nasca: {exc}", file=sys.stderr)
    return 2


# -- serve -------------------------------------------------------------------------------
def setup_serve(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("--config", metavar="PATH", help=f"the config file (default: ./{DEFAULT_CONFIG})")
    parser.add_argument("--host", help="interface to listen on (default: the config's, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: the config's, else 8000)")
    parser.add_argument("--demo", action="store_true",
                        help="embedded store, a local Stripe stand-in and demo users and data (implies "
                             "--ephemeral)")
    parser.add_argument("--ephemeral", action="store_true",
                        help="allow a memory:// store (its spend and credits are gone when the server stops)")
    parser.add_argument("--new-admin-token", action="store_true",
                        help="print a strong random admin token (for NASCA_ADMIN_TOKEN) and exit")
    return run_serve


def run_serve(args: argparse.Namespace) -> int:
    if getattr(args, "new_admin_token", False):
        print(secrets.token_urlsafe(32))
        return 0
    try:
        config = _config(args.config, required=not args.demo)
        host = args.host or config.server.host
        port = config.server.port if args.port is None else args.port
        if args.demo:
            return _serve_demo(config, dict(os.environ), host, port)
        _check_durable(config.store, args.ephemeral)
        from nasca_core.server._app import create_app
        from nasca_core.server._v1_keys import ApiKeys

        nasca = build_nasca(config, os.environ)
        settings = build_settings(config, os.environ, public_url=f"http://{host}:{port}")
        app = create_app(nasca, settings, api_keys=ApiKeys.from_env(os.environ))
    except NascaError as exc:
        return _fail(exc)
    print(f"Nasca on http://{host}:{port}  (dashboard: /admin, overlay script: /nasca.js, "
          "ledger API: /v1 with NASCA_API_KEYS)", flush=True)
    _uvicorn(app, host, port)
    return 0


def _check_durable(store: str, ephemeral: bool) -> None:
    # A server on memory:// would forget every purchased credit at its next restart, and each
    # worker process would keep its own ledger.
    if store.lower().startswith("memory:") and not ephemeral:
        raise ConfigurationError(
            f"store = {store!r} keeps the ledger in this process only: spend and purchased credits "
            "are gone when the server stops. Use sqlite:///./nasca.db (one machine) or redis://, "
            "or pass --ephemeral to accept that.")


def _uvicorn(app: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _serve_demo(config: ServeConfig, env: Mapping[str, str], host: str, port: int) -> int:
    import nasca_core.server._demo as _demo
    from nasca_core.server._app import create_app
    from nasca_core.testing.stripe import StripeServer

    port = port or _free_port(host)
    public = config.server.public_url or f"http://{host}:{port}"
    webhook_secret = "whsec_demo_" + secrets.token_hex(16)
    admin_token = env.get("NASCA_ADMIN_TOKEN") or "demo-" + secrets.token_urlsafe(18)
    store = "memory://nasca-demo"
    with StripeServer(webhook_url=f"{public}/stripe/webhook", webhook_secret=webhook_secret) as stripe:
        started = time.perf_counter()
        seeded = _demo.seed(store, stripe, webhook_secret, time.time())
        nasca = _demo.demo_nasca(store, stripe, webhook_secret)
        if config.server.app_name is None:
            config = config.model_copy(update={"server": config.server.model_copy(
                update={"app_name": _demo.APP_NAME})})
        settings = build_settings(config, env, public_url=public,
                                  secret=env.get("NASCA_SECRET") or secrets.token_urlsafe(32),
                                  admin_token=admin_token)
        app = create_app(nasca, settings)
        _demo.add_demo_routes(app, nasca)
        links = app.state.links
        upgrade = links.url(_demo.DEMO_USER, "free", seeded.prompts.get(_demo.DEMO_USER))
        print(f"Nasca demo on {public}  (seeded in {time.perf_counter() - started:.1f}s; Ctrl-C stops it)\n"
              f"  dashboard:     {public}/admin\n"
              f"  admin token:   {admin_token}\n"
              f"  upgrade page:  {upgrade}\n"
              f"                 (demo user {_demo.DEMO_USER!r}, blocked on the free tier's daily limit)\n"
              f"  overlay demo:  {public}/demo\n"
              f"  Stripe:        a local stand-in at {stripe.url}: its checkout page has a Pay button",
              flush=True)
        _uvicorn(app, host, port)
    return 0


# -- report ------------------------------------------------------------------------------
def setup_report(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("--config", metavar="PATH", help=f"the config file (default: ./{DEFAULT_CONFIG})")
    parser.add_argument("--store", help="store URI (default: the config's)")
    parser.add_argument("--namespace", help="namespace (default: the config's)")
    parser.add_argument("--month", help="YYYY-MM (default: this month in the config's timezone)")
    parser.add_argument("--top", type=int, default=10, help="how many users to list (default: 10)")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    return run_report


def run_report(args: argparse.Namespace) -> int:
    from nasca_core.analytics import analytics_for
    from nasca_core.analytics._text import report_text

    try:
        # Without a config or a store it would read an empty default store and print zeros.
        config = _config(args.config, required=not args.store)
        update = {k: v for k, v in (("store", args.store), ("namespace", args.namespace)) if v}
        nasca = build_nasca(config.model_copy(update=update), {})
        try:
            report = analytics_for(nasca).month(args.month)
        finally:
            nasca.close()
    except NascaError as exc:
        return _fail(exc)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(report_text(report, top=max(0, args.top)))
    return 0


# -- migrate -----------------------------------------------------------------------------
def setup_migrate(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("--config", metavar="PATH", help=f"the config file (default: ./{DEFAULT_CONFIG})")
    parser.add_argument("--store", help="store URI (default: the config's)")
    parser.add_argument("--namespace", help="namespace (default: the config's)")
    parser.add_argument("--apply", action="store_true", help="move the keys (without it: a dry run)")
    return run_migrate


def run_migrate(args: argparse.Namespace) -> int:
    from nasca_core.stores import open_store
    from nasca_core.stores._base import KEY_LAYOUT
    from nasca_core.stores._layout import migrate

    try:
        config = _config(args.config, required=False)
        uri, namespace = args.store or config.store, args.namespace or config.namespace
        handle = open_store(uri)
    except NascaError as exc:
        return _fail(exc)
    try:
        client = getattr(handle.sync, "client", None)
        if client is None:
            # Memory and SQLite stores were only ever written in the current layout; opening a
            # SQLite file added any index or table it lacked (``_sqlite_schema.ADDED``).
            print(f"{handle.description}: key layout {KEY_LAYOUT}, tables and indexes up to date, "
                  "nothing to migrate")
            return 0
        try:
            plan = migrate(client, namespace, apply=args.apply)
        except NascaError as exc:
            return _fail(exc)
    finally:
        handle.close()
    print(f"{handle.description}, namespace {namespace!r}: {len(plan.moves)} keys of {len(plan.users)} "
          f"users in key layout 1 -> layout {KEY_LAYOUT}")
    for old, new in plan.moves[:10]:
        print(f"  {old}  ->  {new}")
    if len(plan.moves) > 10:
        print(f"  ... and {len(plan.moves) - 10} more")
    if plan.conflicts:
        print(f"nasca: {len(plan.conflicts)} target keys exist already (e.g. {plan.conflicts[0]!r}): "
              "nothing was moved", file=sys.stderr)
        return 1
    print(f"moved; the store is now in layout {KEY_LAYOUT}" if plan.applied
          else "dry run: nothing changed (run again with --apply, with the app stopped)")
    return 0
