"""Transitions worth an alert, found by comparing a customer's old and new contexts (pure).

Each transition's identity (``Transition.dedup_key``) depends only on the state change, never on the
delivery, so duplicate or reordered deliveries of the same events produce the same keys:
subscription changes are keyed by the new status and the subscription's version, a failed payment by
the invoice's attempt number, a trial ending by the trial's end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from billing.domain.models import BillingContext
from billing.ports import Transition

_TROUBLED = frozenset({"past_due", "unpaid"})


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
    if not new.found or new.customer is None:
        return []
    customer_id = new.customer.id
    out: list[Transition] = []

    def emit(name: Any, object_id: str, cause: str) -> None:
        out.append(Transition(name=name, customer_id=customer_id, object_id=object_id,
                              event_id=cause, context=new))

    versions = versions or {}
    known = old is not None and old.found
    if old is not None and old.found:
        before: dict[str, str | None] = {s.id: s.status for s in old.subscriptions}
        old_attempts = {i.id: i.attempt_count for i in old.recent_invoices}
    else:
        # First sight of this customer: the event itself says what changed (previous_attributes).
        before, old_attempts = _known_before(new, event)
    for sub in new.subscriptions:
        if not known and sub.id not in before:
            continue
        old_status = before.get(sub.id)  # None: a subscription new since the old context
        if old_status == sub.status:
            continue
        cause = f"{sub.status}@{versions.get(sub.id, '')}"
        if sub.status == "past_due":
            emit("subscription.past_due", sub.id, cause)
        elif sub.status == "active" and old_status in _TROUBLED:
            emit("subscription.recovered", sub.id, cause)
        elif sub.status == "canceled" and old_status is not None:
            emit("subscription.canceled", sub.id, cause)
    for invoice in new.recent_invoices:
        if not known and invoice.id not in old_attempts:
            continue
        failed_now = (
            invoice.status == "open"
            and invoice.attempt_count > old_attempts.get(invoice.id, 0)
            and invoice.amount_paid < invoice.amount_due
        )
        if failed_now:
            emit("invoice.payment_failed", invoice.id, f"attempt-{invoice.attempt_count}")

    if event is not None and event.get("type") == "customer.subscription.trial_will_end":
        obj = (event.get("data") or {}).get("object") or {}
        if isinstance(obj, Mapping) and isinstance(obj.get("id"), str):
            emit("subscription.trial_will_end", obj["id"], f"trial-end-{obj.get('trial_end')}")
    return out


def _known_before(
    new: BillingContext, event: Mapping[str, Any] | None
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
    current = {s.id: s.status for s in new.subscriptions}
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
