"""A BillingContext as a rich card for the terminal. Pure: context in, renderable out, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from billing.domain.matching import matched_by
from billing.domain.models import BillingContext, Money
from billing.domain.money import format_money
from billing.domain.timeline import cancellation_text, next_invoice_text, payment_method_text

TIMELINE_SHOWN = 5  # the card's last few events; ``billing lookup --timeline`` shows them all

STATUS_STYLE = {
    "active": "green",
    "trialing": "cyan",
    "past_due": "bold red",
    "unpaid": "bold red",
    "incomplete": "yellow",
    "incomplete_expired": "dim",
    "paused": "yellow",
    "canceled": "dim",
}
PAYMENT_STYLE = {"ok": "green", "failed": "bold red", "action_required": "yellow", "none": "dim"}


def money_text(amounts: Money) -> str:
    """``{"usd": 2900, "eur": 100}`` -> ``29.00 USD + 1.00 EUR``; empty -> ``—``."""
    if not amounts:
        return "—"
    return " + ".join(format_money(amount, currency) for currency, amount in sorted(amounts.items()))


def date_text(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if value is not None else "—"


def _status(status: str | None) -> Text:
    return Text(status or "none", style=STATUS_STYLE.get(status or "", "dim"))


def _facts(context: BillingContext, now: datetime) -> Table:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    # Stripe text (plan, product and invoice names) is shown as typed, never read as rich markup.
    facts.add_row("Plan", Text(context.plan or "—"))
    facts.add_row("Status", _status(context.status))
    facts.add_row("Payment", Text(context.payment_status, style=PAYMENT_STYLE[context.payment_status]))
    mrr = money_text(context.mrr)
    if context.mrr_detail.scheduled_cancel:
        mrr += "  (cancellation scheduled)"
    if context.mrr_detail.has_metered_items:
        mrr += "  (+ metered usage)"
    facts.add_row("MRR", mrr)
    if context.mrr_detail.with_temporary_discounts != context.mrr:
        facts.add_row("MRR with temporary discounts", money_text(context.mrr_detail.with_temporary_discounts))
    if context.mrr_detail.excluded_trialing:
        facts.add_row("MRR once trial converts", money_text(context.mrr_detail.excluded_trialing))
    facts.add_row("LTV (paid so far)", money_text(context.ltv))
    facts.add_row("Renews", date_text(context.renewal_date))
    if (card := payment_method_text(context.payment_method, now)) is not None:
        style = "yellow" if "card_expiring" in context.segments else ""
        facts.add_row("Payment method", Text(card, style=style))
    if context.trial_end is not None:
        facts.add_row("Trial ends", date_text(context.trial_end))
    if context.past_due_since is not None:
        facts.add_row("Past due since", date_text(context.past_due_since))
    facts.add_row("Lifecycle", context.lifecycle_stage)
    facts.add_row("Segments", ", ".join(context.segments) or "—")
    return facts


def _subscriptions(context: BillingContext, now: datetime) -> Table:
    table = Table(title="Subscriptions", title_justify="left", expand=True, show_edge=False)
    for column in ("id", "plan", "status", "MRR", "next invoice", "note"):
        table.add_column(column)
    for sub in context.subscriptions:
        notes = []
        if sub.cancellation is not None:
            notes.append(cancellation_text(sub.cancellation, now) or "")
        elif sub.cancel_at_period_end or sub.cancel_at is not None:
            notes.append(f"cancels {date_text(sub.cancel_at or sub.current_period_end)}")
        if sub.paused:
            notes.append("collection paused")
        if sub.trial_end is not None and sub.status == "trialing":
            notes.append(f"trial until {date_text(sub.trial_end)}")
        table.add_row(
            sub.id, Text(sub.plan or "—"), _status(sub.status), money_text(sub.mrr),
            next_invoice_text(sub.next_invoice) or "—", Text("; ".join(notes)),
        )
    return table


def _timeline(context: BillingContext, limit: int | None) -> Table:
    shown = context.timeline if limit is None else context.timeline[:limit]
    more = len(context.timeline) - len(shown)
    title = "Timeline"
    if more:
        title += f" (last {len(shown)}; --timeline shows all {len(context.timeline)})"
    table = Table(title=title, title_justify="left", expand=True, show_edge=False)
    table.add_column("date")
    table.add_column("event")
    for entry in shown:
        style = "red" if entry.kind in ("payment_failed", "disputed") else ""
        # Stripe text (plan names, decline messages, feedback comments) shown as typed, never as markup
        table.add_row(date_text(entry.at), Text(entry.text, style=style))
    return table


def _invoices(context: BillingContext, limit: int = 3) -> Table:
    table = Table(title="Recent invoices", title_justify="left", expand=True, show_edge=False)
    for column in ("number", "status", "due", "paid", "created", "attempts"):
        table.add_column(column)
    for inv in context.recent_invoices[:limit]:
        table.add_row(
            Text(inv.number or inv.id),
            Text(inv.status or "—"),
            format_money(inv.amount_due, inv.currency),
            format_money(inv.amount_paid, inv.currency),
            date_text(inv.created),
            str(inv.attempt_count),
        )
    return table


def age_text(age: timedelta) -> str:
    """``12 s``, ``5 min``, ``3 h``, ``2 d``: how long ago, as a person would say it."""
    seconds = max(0, int(age.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def freshness(context: BillingContext, now: datetime | None) -> str:
    """``cached 3 h ago`` (``as of 2026-11-22 10:00Z`` without ``now``)."""
    if context.as_of is None:
        return "cached, age unknown"
    if now is None:
        return f"as of {context.as_of.strftime('%Y-%m-%d %H:%MZ')}"
    return f"cached {age_text(now - context.as_of)} ago"


def stale_notice(context: BillingContext, now: datetime) -> str:
    """The one line ``billing lookup`` prints on stderr for a stale card."""
    return f"Stripe did not answer; showing the card {freshness(context, now)}."


def render_context(
    context: BillingContext, *, now: datetime | None = None, timeline: int | None = TIMELINE_SHOWN
) -> RenderableType:
    """The card: who, what they pay, how payment is going, what happened, and where the data came from.

    ``timeline`` is how many of the newest events to show (None: all of them).

    A stale card (Stripe did not answer, the cache is past its freshness) says so first in its
    header, where the eye lands and where no terminal width cuts it off; ``now`` gives its age.
    """
    if not context.found or context.customer is None:
        return render_not_found(context.query)
    customer = context.customer
    title = Text()
    if context.stale:
        title.append(" STALE ", style="bold white on red")
        title.append(f" {freshness(context, now)} · ", style="bold red")
    title.append(customer.name or customer.email or customer.id, style="bold")
    if customer.email and customer.name:
        title.append(f"  <{customer.email}>", style="")
    if customer.livemode:
        title.append("  LIVE", style="bold")
    else:
        title.append("  test mode", style="dim")

    at = now or context.as_of or datetime.now(UTC)
    parts: list[RenderableType] = [_facts(context, at)]
    if context.subscriptions:
        parts.append(_subscriptions(context, at))
    if context.recent_invoices:
        parts.append(_invoices(context))
    if context.timeline and timeline != 0:
        parts.append(_timeline(context, timeline))
    if context.other_customers:
        others = ", ".join(
            f"{o.id} ({o.status or 'no subscription'}, {'live' if o.livemode else 'test'})"
            for o in context.other_customers
        )
        shared = "email"
        if context.match is not None and context.match.method == "metadata":
            shared = context.query.partition(":")[0]  # customers sharing the operator's id
        elif context.match is not None and context.match.method == "invoice_number":
            shared = "invoice number"
        parts.append(Text(f"Other customers with this {shared}: {others}", style="yellow"))
    parts.append(Text(customer.dashboard_url, style="link " + customer.dashboard_url))

    # Found by an invoice, a charge or metadata rather than the email: say by what, with what was typed.
    match = matched_by(context.query, context.match) or (
        f"matched by {context.match.method}/{context.match.confidence}" if context.match else "matched by —"
    )
    as_of = context.as_of.strftime("%Y-%m-%d %H:%M:%SZ") if context.as_of else "—"
    provenance = f"{customer.id} · {match} · {context.source} as of {as_of}"
    if context.stale:
        provenance += " · STALE (Stripe unreachable)"
    # The last line of the card, not its bottom border: a border title is cut to the terminal's width
    # (at 80 columns a real cus_ id left "cache as of 20"), a line wraps.
    parts.append(Text(provenance, style="dim"))
    return Panel(Group(*parts), title=title, title_align="left")


def render_not_found(query: str) -> RenderableType:
    return Text(f"No Stripe customer matches {query}.", style="yellow")
