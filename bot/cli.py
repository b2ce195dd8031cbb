"""The ``billing`` command line. Each command module registers itself; nothing runs at import."""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from bot.cli_support import configure_logging, run_cli

MODULES = ("cli_lookup", "cli_rules", "cli_sync", "cli_backfill", "cli_tools", "cli_audit")
"""The command modules (``bot.<name>``), in the order ``--help`` lists their commands."""

COMMAND_MODULES: dict[str, str] = {
    "lookup": "cli_lookup", "sandbox": "cli_lookup", "demo": "cli_lookup", "rules": "cli_rules",
    "serve": "cli_sync", "worker": "cli_sync", "status": "cli_sync", "backfill": "cli_backfill",
    "resync": "cli_backfill", "reconcile": "cli_backfill", "mcp": "cli_tools", "draft": "cli_tools",
    "audit": "cli_audit",
}
"""Which module registers each command: a command imports only its own module (start-up time)."""


def _commands() -> None:
    pass


def build_cli(command: str | None = None) -> typer.Typer:
    """The CLI with every command, or with only ``command``'s module when it is a known command (an
    unknown one gets them all, so the usage error lists every command)."""
    app = typer.Typer(
        name="billing",
        help="Billing Lens: a customer's Stripe billing context for support.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_commands)  # a group even when one module registers a single command (audit)
    only = COMMAND_MODULES.get(command or "")
    for name in (only,) if only is not None else MODULES:
        importlib.import_module(f"bot.{name}").register(app)
    return app


LONG_RUNNING = frozenset({"serve", "worker", "sandbox"})


def main() -> None:
    # Logging is set up here, at the process entry point, never inside a command: one-shot commands
    # stay quiet (an expected failure is one sentence), long-running ones log their work.
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    configure_logging(logging.INFO if command in LONG_RUNNING else logging.ERROR)
    run_cli(build_cli(command))
