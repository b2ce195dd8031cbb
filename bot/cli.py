"""The ``billing`` command line. Each command module registers itself; nothing runs at import."""

from __future__ import annotations

import logging
import sys

import typer

from bot import cli_audit, cli_backfill, cli_lookup, cli_rules, cli_sync, cli_tools
from bot.cli_support import configure_logging, run_cli


def build_cli() -> typer.Typer:
    app = typer.Typer(
        name="billing",
        help="Billing Lens: a customer's Stripe billing context for support.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for module in (cli_lookup, cli_rules, cli_sync, cli_backfill, cli_tools, cli_audit):
        module.register(app)
    return app


LONG_RUNNING = frozenset({"serve", "worker", "sandbox"})


def main() -> None:
    # Logging is set up here, at the process entry point, never inside a command: one-shot commands
    # stay quiet (an expected failure is one sentence), long-running ones log their work.
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    configure_logging(logging.INFO if command in LONG_RUNNING else logging.ERROR)
    run_cli(build_cli())
