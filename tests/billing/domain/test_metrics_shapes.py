"""Builders of Stripe-shaped dicts for the metrics, lifecycle and builder tests (no tests here).

Each builder fills the fields our code reads plus a few it does not, so tests exercise the
real object layout; ``slim=True`` variants are built by the tests themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any

AS_OF = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
NOW = int(AS_OF.timestamp())
DAY = 86400
_ids = count(1)


def _next(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


def price(
    unit_amount: int | None = 2900,
    *,
    interval: str = "month",
    interval_count: int = 1,
    currency: str = "usd",
    product: str = "prod_pro",
    usage_type: str = "licensed",
    price_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": price_id or _next("price"),
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "currency": currency,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": product,
        "recurring": {
            "interval": interval,
            "interval_count": interval_count,
            "meter": None,
            "usage_type": usage_type,
            "trial_period_days": None,
        },
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": unit_amount,
        "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
    }
    body.update(extra)
    return body


def item(price_obj: dict[str, Any], quantity: int | None = 1, *, period_end: int | None = None,
         **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": _next("si"),
        "object": "subscription_item",
        "created": NOW - 40 * DAY,
        "discounts": [],
        "metadata": {},
        "price": price_obj,
        "quantity": quantity,
        "tax_rates": [],
        "current_period_start": NOW - 10 * DAY,
        "current_period_end": period_end if period_end is not None else NOW + 20 * DAY,
    }
    body.update(extra)
    return body


def subscription(
    *items: dict[str, Any],
    status: str = "active",
    currency: str = "usd",
    sub_id: str | None = None,
    created: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    sid = sub_id or _next("sub")
    body: dict[str, Any] = {
        "id": sid,
        "object": "subscription",
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "collection_method": "charge_automatically",
        "created": created if created is not None else NOW - 40 * DAY,
        "currency": currency,
        "customer": "cus_jane",
        "default_tax_rates": [],
        "discounts": [],
        "items": {"object": "list", "data": list(items), "has_more": False,
                  "url": f"/v1/subscription_items?subscription={sid}"},
        "latest_invoice": None,
        "livemode": False,
        "metadata": {},
        "pause_collection": None,
        "status": status,
        "trial_end": None,
        "trial_start": None,
    }
    body.update(extra)
    return body


def coupon(
    coupon_id: str,
    *,
    percent_off: float | None = None,
    amount_off: int | None = None,
    currency: str | None = None,
    duration: str = "forever",
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": coupon_id,
        "object": "coupon",
        "amount_off": amount_off,
        "currency": currency if amount_off is not None else None,
        "duration": duration,
        "duration_in_months": 3 if duration == "repeating" else None,
        "livemode": False,
        "metadata": {},
        "name": coupon_id,
        "percent_off": percent_off,
        "valid": True,
    }
    body.update(extra)
    return body


def discount(coupon_id: str, *, end: int | None = None, start: int | None = None) -> dict[str, Any]:
    return {
        "id": _next("di"),
        "object": "discount",
        "checkout_session": None,
        "customer": "cus_jane",
        "end": end,
        "invoice": None,
        "invoice_item": None,
        "promotion_code": None,
        "start": start if start is not None else NOW - 30 * DAY,
        "subscription": None,
        "subscription_item": None,
        "source": {"coupon": coupon_id, "type": "coupon"},
    }


def charge(amount: int, *, status: str = "succeeded", currency: str = "usd", captured: bool = True,
           refunded: int = 0, charge_id: str | None = None) -> dict[str, Any]:
    return {
        "id": charge_id or _next("ch"),
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if captured and status == "succeeded" else 0,
        "amount_refunded": refunded,
        "captured": captured,
        "created": NOW - 5 * DAY,
        "currency": currency,
        "customer": "cus_jane",
        "disputed": False,
        "livemode": False,
        "paid": status == "succeeded",
        "refunded": refunded >= amount,
        "status": status,
    }


def tax_rate(percentage: float, *, inclusive: bool) -> dict[str, Any]:
    return {
        "id": _next("txr"),
        "object": "tax_rate",
        "active": True,
        "country": "DE",
        "display_name": "VAT",
        "inclusive": inclusive,
        "percentage": percentage,
        "effective_percentage": None,
    }
