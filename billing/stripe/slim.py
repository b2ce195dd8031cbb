"""Slim projections: only the Stripe fields a BillingContext is built from, never whole raw objects.

A cached customer must fit in about 4 KiB of Redis, so each stored object keeps the fields
``billing.domain.builder`` reads (plus ids that tie objects together) and drops the rest. Subscription items
keep their price as an id: prices, products and coupons are stored once per tenant and joined back
when a customer's data is loaded, so a ``price.updated`` event reaches every subscription using it.
"""

from __future__ import annotations

from typing import Any

from billing.domain.snapshot import PREVIEW_FIELD, StripeDict

Spec = dict[str, Any]
"""field -> None (keep the value as is) | Spec (project a nested dict) | [Spec] (project each list item)."""

Version = tuple[int, str]
"""(event ``created``, event id): how new the state of a stored object is."""

VERSION_FIELD = "_v"

DISCOUNT: Spec = {
    "id": None, "object": None, "start": None, "end": None, "coupon": None,
    "source": {"coupon": None, "type": None}, "subscription_item": None,
}
# an expanded default payment method keeps only its card's brand, last 4 and expiry
PAYMENT_METHOD: Spec = {
    "id": None, "object": None, "type": None,
    "card": {"brand": None, "last4": None, "exp_month": None, "exp_year": None},
}
CUSTOMER: Spec = {
    "id": None, "object": None, "email": None, "name": None, "livemode": None, "created": None,
    "delinquent": None, "currency": None, "metadata": None, "discount": DISCOUNT, "deleted": None,
    "invoice_settings": {"default_payment_method": PAYMENT_METHOD},
}
PRICE: Spec = {
    "id": None, "object": None, "active": None, "currency": None, "currency_options": None,
    "unit_amount": None, "unit_amount_decimal": None, "amount": None, "amount_decimal": None,
    "billing_scheme": None, "tiers_mode": None, "tiers": None, "transform_quantity": None,
    "transform_usage": None, "recurring": {"interval": None, "interval_count": None, "usage_type": None},
    "interval": None, "interval_count": None, "usage_type": None,
    "tax_behavior": None, "nickname": None, "product": None, "type": None, "livemode": None,
}
PRODUCT: Spec = {"id": None, "object": None, "name": None, "active": None, "livemode": None}
COUPON: Spec = {
    "id": None, "object": None, "name": None, "amount_off": None, "percent_off": None, "currency": None,
    "currency_options": None, "duration": None, "duration_in_months": None, "applies_to": None,
    "valid": None, "livemode": None,
}
TAX_RATE: Spec = {"id": None, "percentage": None, "inclusive": None}
ITEM: Spec = {
    "id": None, "object": None, "quantity": None, "price": None, "plan": None,
    "current_period_start": None, "current_period_end": None, "discounts": None, "tax_rates": [TAX_RATE],
}
SUBSCRIPTION: Spec = {
    "id": None, "object": None, "customer": None, "status": None, "created": None, "start_date": None,
    "currency": None, "livemode": None, "cancel_at_period_end": None, "cancel_at": None,
    "canceled_at": None, "ended_at": None, "trial_start": None, "trial_end": None,
    "pause_collection": None, "discounts": None, "items": {"data": [ITEM]}, "latest_invoice": None,
    "metadata": None, "default_tax_rates": [TAX_RATE], "current_period_end": None,
    "cancellation_details": {"reason": None, "feedback": None, "comment": None},
    "default_payment_method": PAYMENT_METHOD,
    PREVIEW_FIELD: {
        "amount_due": None, "currency": None, "created": None, "next_payment_attempt": None,
        "period_end": None,
    },
}
INVOICE: Spec = {
    "id": None, "object": None, "customer": None, "number": None, "status": None, "amount_due": None,
    "amount_paid": None, "amount_remaining": None, "currency": None, "created": None,
    "attempt_count": None, "attempted": None, "next_payment_attempt": None, "hosted_invoice_url": None,
    "due_date": None, "billing_reason": None, "collection_method": None, "livemode": None,
    "parent": {"type": None, "subscription_details": {"subscription": None}},
    "period_start": None, "period_end": None, "total": None,
    # read by billing.domain.lifecycle (past_due_since, payment_status)
    "status_transitions": {"finalized_at": None, "paid_at": None}, "requires_action": None,
}
CHARGE: Spec = {
    "id": None, "object": None, "customer": None, "amount": None, "amount_captured": None,
    "amount_refunded": None, "currency": None, "status": None, "created": None, "captured": None,
    "refunded": None, "disputed": None, "livemode": None,
    # read by billing.domain.timeline (payment failed: the decline reason; the invoice when Stripe names it)
    "failure_code": None, "failure_message": None, "outcome": {"reason": None, "type": None},
    "invoice": None,
    "payment_intent": None,  # a lookup by ``pi_…`` finds the customer in the cache through its charges
}
DISPUTE: Spec = {
    "id": None, "object": None, "charge": None, "amount": None, "currency": None, "status": None,
    "created": None, "livemode": None, "reason": None,
}
CREDIT_NOTE: Spec = {
    "id": None, "object": None, "customer": None, "invoice": None, "amount": None, "total": None,
    "out_of_band_amount": None, "currency": None, "status": None, "created": None, "livemode": None,
}

SPECS: dict[str, Spec] = {
    "customer": CUSTOMER, "subscription": SUBSCRIPTION, "invoice": INVOICE, "charge": CHARGE,
    "dispute": DISPUTE, "credit_note": CREDIT_NOTE, "price": PRICE, "plan": PRICE,
    "product": PRODUCT, "coupon": COUPON, "discount": DISCOUNT,
}

TENANT_OBJECTS = frozenset({"price", "plan", "product", "coupon"})

INCLUDABLE: dict[str, tuple[str, ...]] = {
    "price": ("tiers", "currency_options"),
    "plan": ("tiers",),
    "coupon": ("applies_to", "currency_options"),
}
"""Fields Stripe returns only when expanded. Webhook payloads and embedded objects never carry them,
so their absence means "not included", never "removed"."""
"""Stored once per tenant, shared by every customer; the rest are stored per customer."""


def project(value: Any, spec: Spec | list[Spec] | None) -> Any:
    """``value`` reduced to ``spec``; ids standing in for expandable objects are kept as they are."""
    if spec is None:
        return value
    if isinstance(spec, list):
        return [project(item, spec[0]) for item in value] if isinstance(value, list) else value
    if not isinstance(value, dict):
        return value
    return {key: project(value[key], sub) for key, sub in spec.items() if key in value}


def slim(obj: StripeDict) -> StripeDict:
    """The slim projection of a Stripe object (by its ``object`` field).

    Subscription items keep only their price id; the price itself is stored per tenant
    (``price_of_items`` lists them).
    """
    kind = obj.get("object")
    spec = SPECS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise ValueError(f"no slim projection for Stripe object type {kind!r}")
    out: StripeDict = project(obj, spec)
    if kind == "subscription":
        for item in out.get("items", {}).get("data", []):
            price = item.get("price")
            if isinstance(price, dict):
                item["price"] = price.get("id")
            plan = item.get("plan")
            if isinstance(plan, dict):
                item["plan"] = plan.get("id")
        out["discounts"] = [
            project(d, DISCOUNT) if isinstance(d, dict) else d for d in out.get("discounts") or []
        ]
    return out


def prices_of_subscription(subscription: StripeDict) -> list[StripeDict]:
    """Expanded price (or legacy plan) dicts carried by a raw subscription's items, slimmed."""
    found: list[StripeDict] = []
    for item in (subscription.get("items") or {}).get("data") or []:
        for key in ("price", "plan"):
            price = item.get(key)
            if isinstance(price, dict) and price.get("id"):
                found.append(slim({**price, "object": price.get("object") or "price"}))
                break
    return found


def with_version(obj: StripeDict, version: Version) -> StripeDict:
    return {**obj, VERSION_FIELD: [version[0], version[1]]}


def version_of(obj: StripeDict | None) -> Version | None:
    if not obj:
        return None
    raw = obj.get(VERSION_FIELD)
    if not isinstance(raw, list) or len(raw) != 2:
        return None
    return int(raw[0]), str(raw[1])


def without_version(obj: StripeDict) -> StripeDict:
    return {k: v for k, v in obj.items() if k != VERSION_FIELD}


def join_prices(subscription: StripeDict, prices: dict[str, StripeDict]) -> StripeDict:
    """A stored subscription with each item's price id replaced by the tenant's price dict."""
    items = []
    for item in (subscription.get("items") or {}).get("data") or []:
        joined = dict(item)
        price_id = item.get("price") or item.get("plan")
        if isinstance(price_id, str) and price_id in prices:
            joined["price"] = prices[price_id]
            if item.get("plan") is not None:
                joined["plan"] = prices[price_id]
        items.append(joined)
    return {**subscription, "items": {"object": "list", "data": items}}


def referenced_ids(subscription: StripeDict) -> tuple[set[str], set[str]]:
    """(price ids, coupon ids) a stored subscription refers to."""
    prices: set[str] = set()
    coupons: set[str] = set()
    for item in (subscription.get("items") or {}).get("data") or []:
        price_id = item.get("price") or item.get("plan")
        if isinstance(price_id, str):
            prices.add(price_id)
        for d in item.get("discounts") or []:
            coupons.update(_coupon_ids(d))
    for d in subscription.get("discounts") or []:
        coupons.update(_coupon_ids(d))
    return prices, coupons


def coupon_ids_of_discount(discount: Any) -> set[str]:
    return _coupon_ids(discount)


def _coupon_ids(discount: Any) -> set[str]:
    if not isinstance(discount, dict):
        return set()
    out: set[str] = set()
    source = discount.get("source")
    if isinstance(source, dict) and isinstance(source.get("coupon"), str):
        out.add(source["coupon"])
    coupon = discount.get("coupon")
    if isinstance(coupon, str):
        out.add(coupon)
    elif isinstance(coupon, dict) and isinstance(coupon.get("id"), str):
        out.add(coupon["id"])
    return out


def completeness(obj: StripeDict) -> int:
    """How many of its includable fields an object carries (a fetched-with-expand one has them all)."""
    return sum(1 for name in INCLUDABLE.get(str(obj.get("object")), ()) if name in obj)


def keep_included(incoming: StripeDict, stored: StripeDict | None) -> StripeDict:
    """``incoming`` with the includable fields it lacks taken from ``stored`` (an event's price has no
    tiers, yet the price still has them: tiers, applies_to and coupon amounts never change)."""
    if not stored:
        return incoming
    missing = {
        name: stored[name]
        for name in INCLUDABLE.get(str(incoming.get("object")), ())
        if name not in incoming and name in stored
    }
    return {**incoming, **missing} if missing else incoming
