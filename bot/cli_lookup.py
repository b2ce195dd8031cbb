"""`billing` CLI commands: lookup, sandbox, demo."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from billing.domain.matching import parse_query
from bot.cli_audit import audited_lookup
from bot.cli_support import EXIT_NOT_FOUND, EXIT_OK, handles_errors, run_async
from bot.runtime import load_settings
from bot.terminal_card import TIMELINE_SHOWN, render_context, stale_notice

if TYPE_CHECKING:
    from rules import RuleEvaluation

DEMO_KEY = "rk_test_billinglensdemo"


@handles_errors
def lookup(
    query: Annotated[str, typer.Argument(help=(
        "An email, <mailto:a@b.com|a@b.com>, a cus_…, sub_…, in_…, ch_… or pi_… id (or its Stripe dashboard "
        "link), an invoice number (0HIAXQK6-0004), or KEY:VALUE for a key in BILLING_MATCH_METADATA_KEYS."
    ))],
    as_json: Annotated[bool, typer.Option("--json", help="Print the BillingContext contract JSON.")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="Skip the cache; read Stripe.")] = False,
    timeline: Annotated[
        bool, typer.Option("--timeline", help="Show the whole timeline (the card shows the last few).")
    ] = False,
) -> None:
    """Show a customer's billing context (exit 1 when no customer matches)."""
    settings = load_settings()  # the metadata keys say which KEY:VALUE forms a query may take
    parse_query(query, settings.metadata_keys)  # bad input is exit 2 before any network is needed
    context = run_async(audited_lookup(settings, query, refresh=refresh))
    now = datetime.now(UTC)
    if context.stale:  # said where a script or a person sees it, whatever the output format
        typer.echo(stale_notice(context, now), err=True)
    if as_json:
        typer.echo(json.dumps(context.to_json_dict(), indent=2, ensure_ascii=False))
    else:
        Console().print(render_context(context, now=now, timeline=None if timeline else TIMELINE_SHOWN))
    raise typer.Exit(EXIT_OK if context.found else EXIT_NOT_FOUND)


@handles_errors
def sandbox(
    port: Annotated[int, typer.Option(help="Loopback port to listen on.")] = 12111,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    dataset: Annotated[str, typer.Option(help="Data to start with: demo or empty.")] = "demo",
) -> None:
    """Run the Stripe-compatible sandbox API in the foreground (Ctrl-C stops it)."""
    from sandbox.server import serve  # the sandbox is a dev tool: load it only when asked for

    typer.echo(
        f"Stripe sandbox ({dataset}) on http://{host}:{port}; use STRIPE_API_BASE=http://{host}:{port} "
        f"and any key such as STRIPE_API_KEY={DEMO_KEY}.",
        err=True,
    )
    serve(host, port, dataset)


@handles_errors
def demo() -> None:
    """The whole product in a minute on embedded defaults: backfill, cards, Slack, an alert and its
    thread, the AI tool's content; no Stripe account, no Redis, no Slack needed."""
    from bot.demo import run_demo

    run_demo()


def routing_summary(evaluation: RuleEvaluation) -> str:
    """One line: the merged routing actions and why (pure)."""
    if not evaluation.matched:
        return "Routing: no rule matches."
    actions = evaluation.actions
    parts = [f"assign {actions.assign}" if actions.assign else "",
             f"priority {actions.priority}" if actions.priority else "",
             f"tags {', '.join(actions.tags)}" if actions.tags else ""]
    reasons = "; ".join(f"{m.rule}: {', '.join(m.reasons)}" for m in evaluation.matched)
    return f"Routing: {' · '.join(p for p in parts if p)} (because {reasons})"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root CLI."""
    app.command("lookup")(lookup)
    app.command("sandbox")(sandbox)
    app.command("demo")(demo)
