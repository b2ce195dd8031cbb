"""`billing audit` (who looked up which customer, from where) and `billing forget` (drop a cache entry)."""

from __future__ import annotations

import getpass
import json
from typing import Annotated

import typer

from billing.cache.audit import AuditEntry
from billing.config import Settings
from billing.domain.matching import parse_query
from billing.domain.models import BillingContext
from billing.errors import BadQueryError, StoreUnavailableError
from bot.cli_support import handles_errors, run_async
from bot.runtime import load_settings, open_runtime


def cli_user() -> str:
    """Who runs a CLI lookup, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


async def audited_lookup(settings: Settings, query: str, *, refresh: bool = False) -> BillingContext:
    """A CLI lookup through the shared runtime, recorded in the audit trail like every other surface."""
    async with open_runtime(settings) as runtime:
        return await runtime.default.lookup(query, user=cli_user(), surface="cli", refresh=refresh)


async def _read(settings: Settings, user: str | None, customer: str | None, limit: int) -> list[AuditEntry]:
    async with open_runtime(settings, require_store=True) as runtime:
        if runtime.default.audit is None:
            raise StoreUnavailableError("Redis (home of the audit trail) is unreachable; check REDIS_URL.")
        return await runtime.default.audit.read(user=user, customer_id=customer, limit=limit)


@handles_errors
def audit(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    user: Annotated[str | None, typer.Option("--user", help="Only this user (U…, cli:NAME, tool).")] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Only lookups that found cus_….")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many entries.")] = 50,
) -> None:
    """List recent lookups: when, who, from where, what query, which customer, outcome."""
    if customer is not None and not customer.startswith("cus_"):
        raise BadQueryError(f"--customer takes a Stripe customer id (cus_…), not {customer[:40]!r}.")
    entries = run_async(_read(load_settings(), user, customer, limit))
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(entry.to_dict(), ensure_ascii=False))
        return
    if not entries:
        # With a filter, "recorded yet" would say the trail is empty when only the filter matched none.
        given = [f"{flag} {value}" for flag, value in (("--user", user), ("--customer", customer)) if value]
        typer.echo(f"No lookups match {' '.join(given)}." if given else "No lookups recorded yet.")
        return
    for entry in entries:
        row = entry.to_dict()
        typer.echo(f"{row['at']}  {entry.user:<14} {entry.surface:<14} {entry.outcome:<10} "
                   f"{entry.customer_id or '-':<20} {json.dumps(entry.query, ensure_ascii=False)}")




async def _forget(settings: Settings, query: str) -> list[tuple[str, int]]:
    parsed = parse_query(query)
    if parsed.kind not in ("email", "customer_id"):
        raise BadQueryError(f"forget takes an email or a cus_… id, not {query[:60]!r}.")
    async with open_runtime(settings) as runtime:
        store = runtime.store
        if store is None:
            raise StoreUnavailableError("Redis (home of the cache) is unreachable; check REDIS_URL.")
        if parsed.kind == "customer_id":
            ids = [parsed.value]
        else:
            ids = await store.customer_ids_for_email(parsed.value)
            linked = await store.linked_customer(parsed.value.lower())
            ids += [linked] if linked and linked not in ids else []
        forgotten = [(customer_id, await store.forget_customer(customer_id)) for customer_id in ids]
        # A cus_… id with nothing cached is "Nothing cached", as an email is, not a forget that found.
        forgotten = [(customer_id, keys) for customer_id, keys in forgotten if keys > 0]
        for customer_id, _ in forgotten:
            await runtime.default.record(user=cli_user(), surface="cli", query=f"forget {query}",
                                         outcome="found", customer_id=customer_id)
        return forgotten


@handles_errors
def forget(query: Annotated[str, typer.Argument(help="An email or a cus_… id.")]) -> None:
    """Remove a customer's cached data (card, timeline, objects, indexes, links); the audit trail keeps
    a record that it was done. A later webhook or lookup caches the customer again."""
    forgotten = run_async(_forget(load_settings(), query))
    if not forgotten:
        typer.echo(f"Nothing cached for {query}.")
        raise typer.Exit(1)
    for customer_id, keys in forgotten:
        typer.echo(f"Forgot {customer_id} ({keys} keys).")


def register(app: typer.Typer) -> None:
    app.command()(audit)
    app.command()(forget)
