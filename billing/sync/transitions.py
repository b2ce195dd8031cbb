"""Transitions worth an alert, found by comparing a customer's old and new contexts (pure).

Each transition's identity (``Transition.dedup_key``) depends only on the state change, never on the
delivery, so duplicate or reordered deliveries of the same events produce the same keys:
subscription changes are keyed by the new status and the subscription's version, a failed payment by
the invoice's attempt number, a trial ending by the trial's end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from billing.domain.builder import (
    RECENT_INVOICES,
    InvoicePayment,
    invoice_payment,
    listed_invoices,
    listed_subscriptions,
)
from billing.domain.models import BillingContext, InvoiceInfo
from billing.domain.snapshot import CustomerData
from billing.ports import Transition

_TROUBLED = frozenset({"past_due", "unpaid"})


@dataclass(frozen=True)
class Facts:
    """All that ``diff_contexts`` reads of a context: who, each listed subscription's status and the
    recent invoices' payment state. Two states with the same facts have no transition between them,
    so the worker finds each event's transitions from facts and builds a whole context only for a
    state that has one (``facts_of_data`` gives the facts a build would, without building)."""

    customer_id: str
    statuses: tuple[tuple[str, str], ...]
    invoices: tuple[InvoicePayment, ...]  # those of the context's recent invoices


def facts_of(context: BillingContext | None) -> Facts | None:
    if context is None or not context.found or context.customer is None:
        return None
    return Facts(
        customer_id=context.customer.id,
        statuses=tuple((s.id, s.status) for s in context.subscriptions),
        invoices=_invoice_facts(context.recent_invoices),
    )


def facts_of_data(data: CustomerData) -> Facts:
    """The facts of ``build_context(data, ...)`` (the same subscriptions and invoices it lists),
    without building it; ``data`` needs only its customer, subscriptions and invoices."""
    return Facts(
        customer_id=str(data.customer["id"]),
        statuses=tuple((str(s["id"]), str(s["status"])) for s in listed_subscriptions(data)),
        invoices=tuple(invoice_payment(i) for i in listed_invoices(data)[:RECENT_INVOICES]),
    )


def _invoice_facts(invoices: Iterable[InvoiceInfo]) -> tuple[InvoicePayment, ...]:
    return tuple((i.id, i.status, i.attempt_count, i.amount_paid, i.amount_due) for i in invoices)


FoundName = Literal[
    "subscription.past_due", "subscription.recovered", "subscription.canceled",
    "subscription.trial_will_end", "invoice.payment_failed",
]
Found = tuple[FoundName, str, str]
"""A transition found between two states: (name, object id, the cause that keys it)."""


def diff_contexts(
    old: BillingContext | None,
    new: BillingContext,
    event: Mapping[str, Any] | None = None,
    *,
    versions: Mapping[str, str] | None = None,
) -> list[Transition]:
    """Transitions from ``old`` to ``new``; ``event`` is the Stripe event that caused the rebuild.

    ``versions`` maps an object id to the id of the event that set its stored state (the identity of
    a status change); without it the subscription's ``status`` alone keys the change.
    Without an old context (the first time the customer is seen) only what the event itself shows
    counts: a status in ``previous_attributes``, a deletion, a failed payment.
    """
    facts = facts_of(new)
    if facts is None:
        return []
    return [
        Transition(name=name, customer_id=facts.customer_id, object_id=object_id, event_id=cause,
                   context=new)
        for name, object_id, cause in diff_facts(facts_of(old), facts, event, versions=versions)
    ]


def diff_facts(
    old: Facts | None,
    new: Facts,
    event: Mapping[str, Any] | None = None,
    *,
    versions: Mapping[str, str] | None = None,
) -> list[Found]:
    """``diff_contexts`` on the facts of the two contexts."""
    out: list[Found] = []
    versions = versions or {}
    known = old is not None
    if old is not None:
        before: dict[str, str | None] = dict(old.statuses)
        old_attempts = {invoice[0]: invoice[2] for invoice in old.invoices}
    else:
        # First sight of this customer: the event itself says what changed (previous_attributes).
        before, old_attempts = _known_before(new, event)
    for sub_id, status in new.statuses:
        if not known and sub_id not in before:
            continue
        old_status = before.get(sub_id)  # None: a subscription new since the old context
        if old_status == status:
            continue
        cause = f"{status}@{versions.get(sub_id, '')}"
        if status == "past_due":
            out.append(("subscription.past_due", sub_id, cause))
        elif status == "active" and old_status in _TROUBLED:
            out.append(("subscription.recovered", sub_id, cause))
        elif status == "canceled" and old_status is not None:
            out.append(("subscription.canceled", sub_id, cause))
    for invoice_id, invoice_status, attempts, paid, due in new.invoices:
        if not known and invoice_id not in old_attempts:
            continue
        if invoice_status == "open" and attempts > old_attempts.get(invoice_id, 0) and paid < due:
            out.append(("invoice.payment_failed", invoice_id, f"attempt-{attempts}"))

    if event is not None and event.get("type") == "customer.subscription.trial_will_end":
        obj = (event.get("data") or {}).get("object") or {}
        if isinstance(obj, Mapping) and isinstance(obj.get("id"), str):
            out.append(("subscription.trial_will_end", obj["id"], f"trial-end-{obj.get('trial_end')}"))
    return out


def _known_before(
    new: Facts, event: Mapping[str, Any] | None
) -> tuple[dict[str, str | None], dict[str, int]]:
    """Prior subscription statuses and invoice attempt counts that one event reveals on its own."""
    statuses: dict[str, str | None] = {}
    attempts: dict[str, int] = {}
    if event is None:
        return statuses, attempts
    data = event.get("data") or {}
    obj = data.get("object") if isinstance(data, Mapping) else None
    previous = data.get("previous_attributes") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping) or not isinstance(obj.get("id"), str):
        return statuses, attempts
    kind = event.get("type")
    current = dict(new.statuses)
    if kind == "customer.subscription.updated" and isinstance(previous, Mapping) and "status" in previous:
        # Only bad news, and only when the stored state still is what the event says (a stale event
        # proves nothing). A recovery is news only to whoever heard of the trouble: that needs an old context.
        if current.get(obj["id"]) == obj.get("status") and obj.get("status") in _TROUBLED:
            statuses[obj["id"]] = previous["status"]
    elif kind == "customer.subscription.deleted" and current.get(obj["id"]) == "canceled":
        statuses[obj["id"]] = "active"
    elif kind == "invoice.payment_failed" and isinstance(obj.get("attempt_count"), int):
        attempts[obj["id"]] = obj["attempt_count"] - 1
    return statuses, attempts
