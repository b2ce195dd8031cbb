"""`billing rules …` commands: check a customer against the routing rules, validate a rules file."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from billing.domain.matching import parse_query
from billing.domain.models import BillingContext
from billing.domain.money import format_money
from bot.cli_audit import audited_lookup
from bot.cli_support import EXIT_BAD_INPUT, EXIT_NOT_FOUND, fail, handles_errors, run_async
from bot.runtime import load_settings
from rules import RuleEvaluation, RulesError, RulesFile, evaluate_rules, load_rules, rules_path

FileArgument = Annotated[
    Path | None,
    typer.Argument(help="Rules YAML to check (default: BILLING_RULES_FILE, else the packaged default).",
                   show_default=False),
]


def _rules_file(file: Path | None) -> Path:
    return file if file is not None else rules_path(load_settings().rules_file)


def _load(file: Path | None) -> RulesFile:
    try:
        return load_rules(_rules_file(file))
    except RulesError as err:
        fail(str(err), EXIT_BAD_INPUT)


@handles_errors
def validate(file: FileArgument = None) -> None:
    """Check a rules file; print "ok: N rules, M alerts", or each problem as file:line: reason (exit 2)."""
    rules = _load(file)
    typer.echo(f"ok: {len(rules.rules)} rules, {len(rules.alerts)} alerts")


@handles_errors
def check(
    query: Annotated[str, typer.Argument(help=(
        "An email, a cus_…, sub_…, in_…, ch_… or pi_… id, an invoice number, or KEY:VALUE (metadata)."
    ))],
    as_json: Annotated[bool, typer.Option("--json", help="Print matched rules and actions as JSON.")] = False,
    rules_file: Annotated[
        Path | None, typer.Option("--rules", help="Rules YAML (default: BILLING_RULES_FILE or packaged).")
    ] = None,
) -> None:
    """Show which routing rules match a customer, why, and the merged actions (exit 1 when not found)."""
    settings = load_settings()
    parse_query(query, settings.metadata_keys)  # bad input is exit 2 before any network is needed
    rules = _load(rules_file)
    context = run_async(audited_lookup(settings, query))
    if not context.found:
        if as_json:
            typer.echo(json.dumps(check_json(context, RuleEvaluation()), indent=2, ensure_ascii=False))
            raise typer.Exit(EXIT_NOT_FOUND)
        fail(f"No Stripe customer matches {query!r}.", EXIT_NOT_FOUND)
    evaluation = evaluate_rules(context, rules, datetime.now(UTC))
    if as_json:
        typer.echo(json.dumps(check_json(context, evaluation), indent=2, ensure_ascii=False))
    else:
        Console().print(render_check(context, evaluation))


def check_json(context: BillingContext, evaluation: RuleEvaluation) -> dict[str, Any]:
    """The ``rules check --json`` document: who was checked, the matched rules and the merged actions."""
    if not context.found or context.customer is None:
        return {"found": False, "query": context.query, **evaluation.model_dump(mode="json")}
    return {
        "found": True,
        "query": context.query,
        "customer": {"id": context.customer.id, "email": context.customer.email},
        **evaluation.model_dump(mode="json"),
    }


def render_check(context: BillingContext, evaluation: RuleEvaluation) -> RenderableType:
    """Matched rules with their reasons, then the merged actions. Pure: no I/O."""
    customer = context.customer
    who = f"{customer.email or customer.name or customer.id} ({customer.id})" if customer else context.query
    mrr = " + ".join(format_money(v, c) for c, v in sorted(context.mrr.items())) or "none"
    header = Text.assemble((who, "bold"), f"  status {context.status or 'none'} · plan {context.plan or '—'}"
                           f" · MRR {mrr}")
    if not evaluation.matched:
        return Group(header, Text("No rule matches this customer.", style="dim"))
    table = Table(title="Matched rules", title_justify="left", show_lines=True)
    table.add_column("rule", style="bold")
    table.add_column("because")
    # Reasons quote Stripe data (plan names, metadata): Text keeps "[...]" literal, never markup.
    for match in evaluation.matched:
        table.add_row(Text(match.rule), Text("\n".join(match.reasons)))
    actions = evaluation.actions
    summary = Table.grid(padding=(0, 2))
    summary.add_row("assign", Text(actions.assign or "—"))
    summary.add_row("priority", Text(actions.priority or "—"))
    summary.add_row("tags", Text(", ".join(actions.tags) or "—"))
    summary.add_row("notify", Text(", ".join(actions.notify) or "—"))
    return Group(header, table, Text("Actions", style="bold"), summary)


def register(app: typer.Typer) -> None:
    """Add the ``rules`` command group to the root CLI."""
    rules_app = typer.Typer(name="rules", help="Routing rules: check a customer, validate a file.",
                            no_args_is_help=True)
    rules_app.command("check")(check)
    rules_app.command("validate")(validate)
    app.add_typer(rules_app, name="rules")
