"""Transitions worth an alert, found by comparing a customer's old and new contexts (pure).

Each transition's identity (``Transition.dedup_key``) depends only on the state change, never on the
delivery, so duplicate or reordered deliveries of the same events produce the same keys:
subscription changes are keyed by the new status and the subscription's version, a failed payment by
the invoice's attempt number, a trial ending by the trial's end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from billing.models import BillingContext, SubscriptionInfo
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
    No old context (first time the customer is seen) means nothing is known to have changed.
    """
    if not new.found or new.customer is None:
        return []
    customer_id = new.customer.id
    out: list[Transition] = []

    def emit(name: Any, object_id: str, cause: str) -> None:
        out.append(Transition(name=name, customer_id=customer_id, object_id=object_id,
                              event_id=cause, context=new))

    if old is not None and old.found:
        before: dict[str, SubscriptionInfo] = {s.id: s for s in old.subscriptions}
        for sub in new.subscriptions:
            previous = before.get(sub.id)
            old_status = previous.status if previous else None
            if old_status == sub.status:
                continue
            cause = f"{sub.status}@{(versions or {}).get(sub.id, '')}"
            if sub.status == "past_due":
                emit("subscription.past_due", sub.id, cause)
            elif sub.status == "active" and old_status in _TROUBLED:
                emit("subscription.recovered", sub.id, cause)
            elif sub.status == "canceled" and old_status is not None:
                emit("subscription.canceled", sub.id, cause)
        old_attempts = {i.id: i.attempt_count for i in old.recent_invoices}
        for invoice in new.recent_invoices:
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
