"""The ``nasca`` command. Each subcommand registers itself in ``SUBCOMMANDS``.

A registration is ``(name, help, setup)``: ``setup(parser)`` declares the arguments and
returns the function that runs the parsed namespace and returns the exit code. Add
``serve``/``report`` by appending to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

Runner = Callable[[argparse.Namespace], int]
Setup = Callable[[argparse.ArgumentParser], Runner]


def _setup_prices(parser: argparse.ArgumentParser) -> Runner:
    from nasca_core.pricing._refresh import add_prices_arguments, run_prices

    add_prices_arguments(parser)
    return run_prices


def _setup_serve(parser: argparse.ArgumentParser) -> Runner:
    from nasca_core.server._cli import setup_serve

    return setup_serve(parser)


def _setup_report(parser: argparse.ArgumentParser) -> Runner:
    from nasca_core.server._cli import setup_report

    return setup_report(parser)


def _setup_migrate(parser: argparse.ArgumentParser) -> Runner:
    from nasca_core.server._cli import setup_migrate

    return setup_migrate(parser)


def _setup_billing(parser: argparse.ArgumentParser) -> Runner:
    from nasca_core.server._billing_cli import setup_billing

    return setup_billing(parser)


def _setup_user(parser: argparse.ArgumentParser) -> Runner:
    from nasca_core.server._owner_cli import setup_user

    return setup_user(parser)


def _setup_credits(parser: argparse.ArgumentParser) -> Runner:
    from nasca_core.server._owner_cli import setup_credits

    return setup_credits(parser)


def _setup_tiers(parser: argparse.ArgumentParser) -> Runner:
    from nasca_core.server._owner_cli import setup_tiers

    return setup_tiers(parser)


def _setup_ceiling(parser: argparse.ArgumentParser) -> Runner:
    from nasca_core.server._owner_cli import setup_ceiling

    return setup_ceiling(parser)


SUBCOMMANDS: list[tuple[str, str, Setup]] = [
    ("prices", "manage the model price table", _setup_prices),
    ("serve", "run the upgrade page, overlay, Stripe webhook and dashboard", _setup_serve),
    ("report", "print a month's conversion funnel, revenue, AI cost and top users", _setup_report),
    ("migrate", "move a Redis store's keys to this release's key layout (dry run unless --apply)",
     _setup_migrate),
    ("billing", "billing upkeep: `nasca billing reconcile [--since DATE] [--dry-run]`", _setup_billing),
    ("user", "show, tier, export or delete a user (data-protection requests)", _setup_user),
    ("credits", "grant or list a user's credits", _setup_credits),
    ("tiers", "list, set or unset tiers, live for every process", _setup_tiers),
    ("ceiling", "show the app-wide ceiling, or set it (`set --daily 15 --monthly 200`, `off`) live",
     _setup_ceiling),
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="nasca", description="Nasca command line.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, setup in SUBCOMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_run=setup(command))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nasca``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    run: Runner = args._run
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
