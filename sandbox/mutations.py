"""Changes a test makes to the world through the control API; each records Stripe's events.

Every function takes the store and the event log, mutates under the caller's lock and returns the
events it recorded, in order.
"""

from __future__ import annotations

import copy
from typing import Any

from sandbox.errors import StripeError
from sandbox.events import EventLog
from sandbox.listing import SUBSCRIPTION_STATUSES
from sandbox.state import Obj, Store

UPDATED_EVENT = {
    "customer": "customer.updated",
    "subscription": "customer.subscription.updated",
    "invoice": "invoice.updated",
    "charge": "charge.updated",
    "price": "price.updated",
    "product": "product.updated",
    "coupon": "coupon.updated",
    "dispute": "charge.dispute.updated",
    "credit_note": "credit_note.updated",
    "tax_rate": "tax_rate.updated",
}
CREATED_EVENT = {kind: name.replace(".updated", ".created") for kind, name in UPDATED_EVENT.items()}


def _require(store: Store, object_id: str, kind: str | None = None) -> Obj:
    obj = store.raw(kind, object_id) if kind else store.find(object_id)
    if obj is None or obj.get("deleted"):
        raise StripeError(
            404, f"No such {kind or 'object'}: '{object_id}'", code="resource_missing", param="id"
        )
    return obj


def _change(obj: Obj, changes: dict[str, Any]) -> Obj:
    previous = {key: copy.deepcopy(obj.get(key)) for key in changes if obj.get(key) != changes[key]}
    obj.update(copy.deepcopy(changes))
    return previous


def load(store: Store, log: EventLog, objects: list[Obj], emit: bool) -> list[Obj]:
    events = []
    for raw in objects:
        if not isinstance(raw, dict):
            raise StripeError(400, "Each loaded object must be a JSON object.", param="objects")
        existed = (
            store.raw(str(raw.get("object")), str(raw.get("id")))
            if raw.get("object") in UPDATED_EVENT
            else None
        )
        obj = store.put(raw)
        kind = obj["object"]
        if emit and kind in UPDATED_EVENT:
            events.append(log.emit((UPDATED_EVENT if existed else CREATED_EVENT)[kind], obj))
    return events


def update(store: Store, log: EventLog, object_id: str, changes: dict[str, Any]) -> list[Obj]:
    obj = _require(store, object_id)
    kind = obj["object"]
    if kind not in UPDATED_EVENT:
        raise StripeError(400, f"Objects of type {kind!r} cannot be updated here.", param="id")
    protected = {"id", "object"} & set(changes)
    if protected:
        raise StripeError(400, f"'{sorted(protected)[0]}' cannot be changed.", param="changes")
    if kind == "subscription" and "status" in changes:
        _check_status(str(changes["status"]))
    previous = _change(obj, changes)
    if kind == "subscription":
        store.put(obj)  # re-index items that may have been replaced
    else:
        store.reindex(obj)  # its customer or created may have changed: lists find it by them
    return [log.emit(UPDATED_EVENT[kind], obj, previous)]


def delete(store: Store, log: EventLog, object_id: str) -> list[Obj]:
    obj = _require(store, object_id)
    kind = obj["object"]
    now = store.clock.now()
    if kind == "customer":
        events = []
        for sub in list(store.all("subscription")):
            if sub.get("customer") == object_id and sub.get("status") not in (
                "canceled",
                "incomplete_expired",
            ):
                events += _cancel(store, log, sub, now)
        events.append(log.emit("customer.deleted", obj))
        store.put(
            {
                "id": object_id,
                "object": "customer",
                "deleted": True,
                "livemode": obj.get("livemode", False),
                "created": obj.get("created"),
            }
        )
        return events
    if kind == "subscription":
        return _cancel(store, log, obj, now)
    if kind in ("product", "price", "coupon"):
        event = log.emit(f"{kind}.deleted", obj)
        if kind == "price":
            obj["active"] = False
        else:
            store.put(
                {
                    "id": object_id,
                    "object": kind,
                    "deleted": True,
                    "livemode": obj.get("livemode", False),
                    "created": obj.get("created"),
                }
            )
        return [event]
    raise StripeError(
        400, f"Objects of type {kind!r} cannot be deleted; void or refund them instead.", param="id"
    )


def _cancel(store: Store, log: EventLog, sub: Obj, now: int) -> list[Obj]:
    previous = _change(
        sub, {"status": "canceled", "canceled_at": now, "ended_at": now, "cancel_at_period_end": False}
    )
    return [log.emit("customer.subscription.deleted", sub, previous)]


def _check_status(status: str) -> None:
    if status not in SUBSCRIPTION_STATUSES:
        raise StripeError(
            400,
            f"Unknown subscription status {status!r}; accepted: {', '.join(SUBSCRIPTION_STATUSES)}.",
            param="status",
        )


def set_subscription_status(store: Store, log: EventLog, sub_id: str, status: str) -> list[Obj]:
    _check_status(status)
    sub = _require(store, sub_id, "subscription")
    if status == "canceled":
        return _cancel(store, log, sub, store.clock.now())
    before = sub.get("status")
    previous = _change(sub, {"status": status})
    events = [log.emit("customer.subscription.updated", sub, previous)]
    if status == "paused" and before != "paused":
        events.append(log.emit("customer.subscription.paused", sub))
    elif before == "paused" and status != "paused":
        events.append(log.emit("customer.subscription.resumed", sub))
    return events


def trial_will_end(store: Store, log: EventLog, sub_id: str) -> list[Obj]:
    sub = _require(store, sub_id, "subscription")
    return [log.emit("customer.subscription.trial_will_end", sub)]


def emit(store: Store, log: EventLog, event_type: str, object_id: str, previous: Obj | None) -> list[Obj]:
    return [log.emit(event_type, _require(store, object_id), previous)]


def _invoice_subscription(store: Store, invoice: Obj) -> Obj | None:
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    sub_id = details.get("subscription")
    return store.raw("subscription", sub_id) if isinstance(sub_id, str) else None


def _new_charge(
    store: Store,
    customer: str,
    amount: int,
    currency: str,
    status: str,
    livemode: bool,
    description: str | None = None,
) -> Obj:
    count = sum(1 for _ in store.all("charge"))
    succeeded = status == "succeeded"
    charge: Obj = {
        "id": f"ch_1Sandbox{count + 1:015d}",
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if succeeded else 0,
        "amount_refunded": 0,
        "captured": succeeded,
        "created": store.clock.now(),
        "currency": currency,
        "customer": customer,
        "description": description,
        "disputed": False,
        "failure_code": "card_declined" if status == "failed" else None,
        "failure_message": "Your card was declined." if status == "failed" else None,
        "livemode": livemode,
        "metadata": {},
        "paid": succeeded,
        "payment_intent": None,
        "refunded": False,
        "refunds": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/charges/ch_{count + 1}/refunds",
        },
        "status": status,
    }
    charge["refunds"]["url"] = f"/v1/charges/{charge['id']}/refunds"
    return store.put(charge)


def create_charge(
    store: Store,
    log: EventLog,
    customer_id: str,
    amount: int,
    currency: str,
    status: str = "succeeded",
    description: str | None = None,
) -> list[Obj]:
    if status not in ("succeeded", "failed", "pending"):
        raise StripeError(
            400, f"Unknown charge status {status!r}; accepted: succeeded, failed, pending.", param="status"
        )
    customer = _require(store, customer_id, "customer")
    charge = _new_charge(
        store, customer_id, amount, currency.lower(), status, bool(customer.get("livemode")), description
    )
    return [log.emit(f"charge.{status}", charge)]


def refund_charge(store: Store, log: EventLog, charge_id: str, amount: int | None) -> list[Obj]:
    charge = _require(store, charge_id, "charge")
    available = int(charge.get("amount_captured") or 0) - int(charge.get("amount_refunded") or 0)
    amount = available if amount is None else amount
    if amount <= 0 or amount > available:
        raise StripeError(
            400, f"Refund amount must be between 1 and {available} (the unrefunded amount).", param="amount"
        )
    refunded = int(charge.get("amount_refunded") or 0) + amount
    previous = _change(
        charge, {"amount_refunded": refunded, "refunded": refunded >= int(charge.get("amount_captured") or 0)}
    )
    return [log.emit("charge.refunded", charge, previous)]


def fail_invoice(store: Store, log: EventLog, invoice_id: str) -> list[Obj]:
    invoice = _require(store, invoice_id, "invoice")
    if invoice.get("status") not in ("open", "draft"):
        raise StripeError(
            400, f"Invoice {invoice_id} is {invoice.get('status')}; only open invoices can fail.", param="id"
        )
    now = store.clock.now()
    events: list[Obj] = []
    charge = _new_charge(
        store,
        invoice["customer"],
        int(invoice.get("amount_remaining") or 0),
        invoice["currency"],
        "failed",
        bool(invoice.get("livemode")),
    )
    events.append(log.emit("charge.failed", charge))
    attempts = int(invoice.get("attempt_count") or 0) + 1
    previous = _change(
        invoice,
        {
            "status": "open",
            "attempted": True,
            "attempt_count": attempts,
            "next_payment_attempt": now + 3 * 86400 if attempts < 4 else None,
        },
    )
    events.append(log.emit("invoice.updated", invoice, previous))
    events.append(log.emit("invoice.payment_failed", invoice))
    sub = _invoice_subscription(store, invoice)
    if sub is not None and sub.get("status") == "active":
        events.append(log.emit("customer.subscription.updated", sub, _change(sub, {"status": "past_due"})))
    customer = store.raw("customer", invoice["customer"])
    if customer is not None and not customer.get("deleted") and not customer.get("delinquent"):
        events.append(log.emit("customer.updated", customer, _change(customer, {"delinquent": True})))
    return events


def pay_invoice(store: Store, log: EventLog, invoice_id: str) -> list[Obj]:
    invoice = _require(store, invoice_id, "invoice")
    if invoice.get("status") not in ("open", "draft", "uncollectible"):
        raise StripeError(
            400,
            f"Invoice {invoice_id} is {invoice.get('status')}; only open invoices can be paid.",
            param="id",
        )
    now = store.clock.now()
    events: list[Obj] = []
    due = int(invoice.get("amount_due") or 0)
    charge = _new_charge(
        store,
        invoice["customer"],
        int(invoice.get("amount_remaining") or due),
        invoice["currency"],
        "succeeded",
        bool(invoice.get("livemode")),
    )
    events.append(log.emit("charge.succeeded", charge))
    transitions = dict(invoice.get("status_transitions") or {})
    transitions["paid_at"] = now
    previous = _change(
        invoice,
        {
            "status": "paid",
            "attempted": True,
            "attempt_count": int(invoice.get("attempt_count") or 0) + 1,
            "amount_paid": due,
            "amount_remaining": 0,
            "next_payment_attempt": None,
            "status_transitions": transitions,
        },
    )
    events.append(log.emit("invoice.updated", invoice, previous))
    events.append(log.emit("invoice.paid", invoice))
    events.append(log.emit("invoice.payment_succeeded", invoice))
    sub = _invoice_subscription(store, invoice)
    if sub is not None and sub.get("status") in ("past_due", "unpaid", "incomplete"):
        events.append(log.emit("customer.subscription.updated", sub, _change(sub, {"status": "active"})))
    customer = store.raw("customer", invoice["customer"])
    still_failing = any(
        inv.get("customer") == invoice["customer"]
        and inv.get("status") == "open"
        and inv.get("attempt_count")
        for inv in store.all("invoice")
    )
    if customer is not None and customer.get("delinquent") and not still_failing:
        events.append(log.emit("customer.updated", customer, _change(customer, {"delinquent": False})))
    return events
