"""The Stripe objects one customer's BillingContext is built from.

The cold lookup (Stripe gateway), the webhook worker (Redis store) and backfill all produce a
``CustomerData``; ``billing.domain.builder.build_context`` turns it into a BillingContext. Objects are plain
dicts in Stripe's current API shape (``StripeObject.to_dict()``), or slim projections of them that keep
every field the builder reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from billing.domain.models import TimelineEntry

StripeDict = dict[str, Any]

PREVIEW_FIELD = "next_invoice_preview"
"""Our own field on a stored subscription: its invoice preview (``POST /v1/invoices/create_preview``),
projected to ``amount_due currency created next_payment_attempt period_end``; absent when not fetched
(or the key may not preview), in which case the next invoice is estimated from the subscription."""


def id_of(value: Any) -> str | None:
    """The id an expandable Stripe field holds: the id itself, or the expanded object's ``id``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


@dataclass(frozen=True)
class CustomerData:
    customer: StripeDict
    # status=all, newest first; `discounts` expanded to discount dicts (coupon id in
    # `discount.source.coupon`), items carrying their `price` dicts.
    subscriptions: list[StripeDict] = field(default_factory=list)
    # newest first
    invoices: list[StripeDict] = field(default_factory=list)
    charges: list[StripeDict] = field(default_factory=list)
    disputes: list[StripeDict] = field(default_factory=list)
    credit_notes: list[StripeDict] = field(default_factory=list)
    # coupon id -> coupon; price id -> price with `tiers` expanded (only tiered prices need it)
    coupons: dict[str, StripeDict] = field(default_factory=dict)
    prices: dict[str, StripeDict] = field(default_factory=dict)
    # product id -> product (its `name` names the plan when the price has no nickname)
    products: dict[str, StripeDict] = field(default_factory=dict)
    # timeline entries only webhook events gave (billing.domain.event_timeline), merged into the timeline
    event_entries: list[TimelineEntry] = field(default_factory=list)


def with_previews(
    subscriptions: Iterable[StripeDict], previews: Mapping[str, StripeDict | None]
) -> list[StripeDict]:
    """Subscriptions carrying their invoice preview (``PREVIEW_FIELD``) where one was fetched; a
    subscription previewed without a result (no permission, nothing upcoming) drops a stale one."""
    out = []
    for sub in subscriptions:
        sub_id = sub.get("id")
        if not isinstance(sub_id, str) or sub_id not in previews:
            out.append(sub)
            continue
        preview = previews[sub_id]
        rest = {k: v for k, v in sub.items() if k != PREVIEW_FIELD}
        out.append({**rest, PREVIEW_FIELD: preview} if preview is not None else rest)
    return out
