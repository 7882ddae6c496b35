"""``nasca billing reconcile``: the command-line face of ``Billing.reconcile()``. The
environment (``STRIPE_API_KEY``) and the config file are read here, at the edge."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from nasca_core._errors import ConfigurationError, NascaError
from nasca_core.server._config import ENV_STRIPE_KEY, ServeConfig, build_nasca

Runner = Callable[[argparse.Namespace], int]
DEFAULT_CONFIG = "nasca.toml"


def setup_billing(parser: argparse.ArgumentParser) -> Runner:
    sub = parser.add_subparsers(dest="billing_command", metavar="ACTION", required=True)
    rec = sub.add_parser(
        "reconcile", help="apply purchases and refunds Stripe has that the store misses",
        description="List completed Checkout Sessions of this namespace and refunds from Stripe "
                    f"(needs {ENV_STRIPE_KEY}) and apply every missing grant or revoke exactly once. "
                    "Run it after a store restore or a webhook outage; a second run changes nothing.")
    rec.add_argument("--config", metavar="PATH", help=f"the config file (default: ./{DEFAULT_CONFIG})")
    rec.add_argument("--store", help="store URI (default: the config's)")
    rec.add_argument("--namespace", help="namespace (default: the config's)")
    rec.add_argument("--since", metavar="DATE", help="only sessions and refunds created since DATE "
                                                     "(YYYY-MM-DD or an ISO time; UTC unless it says)")
    rec.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    rec.add_argument("--json", action="store_true", help="print the report as JSON")
    return run_billing


def run_billing(args: argparse.Namespace) -> int:
    try:
        path = args.config or DEFAULT_CONFIG
        config = ServeConfig.load(path) if args.config or os.path.exists(path) else ServeConfig()
        update = {k: v for k, v in (("store", args.store), ("namespace", args.namespace)) if v}
        nasca = build_nasca(config.model_copy(update=update), os.environ)
        try:
            if nasca.billing.stripe is None:
                raise ConfigurationError(f"set {ENV_STRIPE_KEY} (the Stripe secret key) to reconcile")
            report = nasca.billing.reconcile(args.since, dry_run=args.dry_run)
        finally:
            nasca.close()
    except NascaError as exc:
        print(f"nasca: {exc}", file=sys.stderr)
        return 2
    print(report.model_dump_json(indent=2) if args.json else report.text())
    return 0
