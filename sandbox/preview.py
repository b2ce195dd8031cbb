"""``POST /v1/invoices/create_preview``: the next invoice of a subscription, as Stripe previews it.

Read-only (it creates nothing, so the read-only sandbox accepts this one POST) and guarded by the
invoice read permission (``rak_invoice_read``), as Stripe does for restricted keys. The preview is the
subscription's next regular invoice: each licensed item's price × quantity (per unit or tiered),
the running ``forever``/``repeating`` discounts (subscription's, else the customer's), and exclusive tax
rates; metered items bill no usage. Dated at the renewal (the trial end for a trialing subscription),
with the next payment attempt an hour later, when Stripe finalises the draft.
"""

from __future__ import annotations

import math
from typing import Any

from sandbox.errors import StripeError, bad_request, no_such
from sandbox.params import Params, as_str, check_known
from sandbox.state import Obj, Store

PERMISSION = "rak_invoice_read"
FINALIZE_DELAY = 3600
_ENDED = frozenset({"canceled", "incomplete_expired"})


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _price(store: Store, item: Obj) -> Obj | None:
    price = item.get("price") or item.get("plan")
    price_id = price.get("id") if isinstance(price, dict) else price
    stored = store.raw("price", price_id) if isinstance(price_id, str) else None
    return stored or (price if isinstance(price, dict) else None)


def _tier_amount(price: Obj, quantity: int) -> float:
    tiers = [t for t in price.get("tiers") or [] if isinstance(t, dict)]
    total = 0.0
    if price.get("tiers_mode") == "volume":
        for tier in tiers:
            up_to = tier.get("up_to")
            if up_to is None or quantity <= _int(up_to):
                unit = _num(tier.get("unit_amount_decimal")) or _num(tier.get("unit_amount")) or 0.0
                flat = _num(tier.get("flat_amount_decimal")) or _num(tier.get("flat_amount")) or 0.0
                return quantity * unit + flat
        return 0.0
    below = 0
    for tier in tiers:
        if quantity <= below:
            break
        up_to = tier.get("up_to")
        top = quantity if up_to is None else min(quantity, _int(up_to))
        unit = _num(tier.get("unit_amount_decimal")) or _num(tier.get("unit_amount")) or 0.0
        flat = _num(tier.get("flat_amount_decimal")) or _num(tier.get("flat_amount")) or 0.0
        total += (top - below) * unit + flat
        below = top
    return total


def _item_amount(price: Obj, quantity: int) -> int:
    if price.get("billing_scheme") == "tiered":
        return round(_tier_amount(price, quantity))
    transform = price.get("transform_quantity")
    if isinstance(transform, dict) and _int(transform.get("divide_by")) > 0:
        divided = quantity / _int(transform["divide_by"])
        quantity = math.ceil(divided) if transform.get("round") == "up" else math.floor(divided)
    unit = _num(price.get("unit_amount_decimal"))
    if unit is None:
        unit = _num(price.get("unit_amount")) or _num(price.get("amount")) or 0.0
    return round(quantity * unit)


def _coupon(store: Store, discount: Any) -> Obj | None:
    if isinstance(discount, str):
        discount = store.raw("discount", discount)
    if not isinstance(discount, dict):
        return None
    source = discount.get("source") if isinstance(discount.get("source"), dict) else {}
    ref = (source or {}).get("coupon") or discount.get("coupon")
    if isinstance(ref, dict):
        ref = ref.get("id")
    coupon = store.raw("coupon", ref) if isinstance(ref, str) else None
    if coupon is None:
        return None
    return {**coupon, "_start": discount.get("start"), "_end": discount.get("end")}


def _discounted(subtotal: int, coupons: list[Obj], currency: str, at: int) -> int:
    amount = subtotal
    for coupon in coupons:
        if coupon.get("duration") == "once":
            continue
        end, start = coupon.get("_end"), coupon.get("_start")
        if (isinstance(end, int) and end <= at) or (isinstance(start, int) and start > at):
            continue
        percent = _num(coupon.get("percent_off"))
        if percent is not None:
            amount = round(amount * (1 - percent / 100))
            continue
        off = coupon.get("amount_off") if coupon.get("currency") == currency else None
        if off is None:
            options = coupon.get("currency_options") or {}
            off = (options.get(currency) or {}).get("amount_off") if isinstance(options, dict) else None
        amount = max(0, amount - _int(off))
    return amount


def create_preview(store: Store, params: Params, livemode: bool) -> Obj:
    """The preview invoice of ``params["subscription"]`` (Stripe's errors for a missing or ended one)."""
    check_known(params, {"subscription", "customer", "expand"})
    if "subscription" not in params:
        if "customer" not in params:
            raise bad_request("Missing required param: customer.", param="customer")
        raise bad_request(
            "This sandbox previews a subscription's next invoice: pass subscription.", param="subscription"
        )
    sub_id = as_str(params["subscription"], "subscription")
    sub = store.raw("subscription", sub_id)
    if sub is None or bool(sub.get("livemode")) != livemode:
        raise no_such("subscription", sub_id, param="subscription")
    customer_id = sub.get("customer")
    if "customer" in params and as_str(params["customer"], "customer") != customer_id:
        raise bad_request(
            f"The subscription {sub_id} does not belong to the customer given.", param="customer"
        )
    if sub.get("status") in _ENDED or sub.get("cancel_at_period_end"):
        raise StripeError(
            404, f"No upcoming invoices for customer: {customer_id}", code="invoice_upcoming_none"
        )
    items = [i for i in (sub.get("items") or {}).get("data") or [] if isinstance(i, dict)]
    ends = [_int(i.get("current_period_end")) for i in items if i.get("current_period_end")]
    starts = [_int(i.get("current_period_start")) for i in items if i.get("current_period_start")]
    at = _int(sub.get("trial_end")) if sub.get("status") == "trialing" and sub.get("trial_end") else 0
    at = at or (min(ends) if ends else store.clock.now())
    cancel_at = sub.get("cancel_at")
    if isinstance(cancel_at, int) and cancel_at <= at:
        raise StripeError(
            404, f"No upcoming invoices for customer: {customer_id}", code="invoice_upcoming_none"
        )
    currency = str(sub.get("currency") or "usd")
    lines: list[Obj] = []
    subtotal = 0
    tax_percent = 0.0
    for item in items:
        price = _price(store, item)
        if price is None:
            continue
        recurring = price.get("recurring") or {}
        metered = isinstance(recurring, dict) and recurring.get("usage_type") == "metered"
        quantity = _int(item.get("quantity")) or (0 if metered else 1)
        amount = 0 if metered else _item_amount(price, quantity)
        subtotal += amount
        for rate in item.get("tax_rates") or sub.get("default_tax_rates") or []:
            if isinstance(rate, dict) and not rate.get("inclusive"):
                tax_percent = max(tax_percent, _num(rate.get("percentage")) or 0.0)
        lines.append({
            "id": f"il_tmp_{item.get('id')}",
            "object": "line_item",
            "amount": amount,
            "currency": currency,
            "quantity": quantity,
            "period": {"start": at, "end": at + (at - min(starts) if starts else 0)},
            "pricing": {"price_details": {"price": price.get("id"), "product": price.get("product")}},
        })
    discounts = [d for d in sub.get("discounts") or []]
    if not discounts:
        customer = store.raw("customer", str(customer_id))
        if customer is not None and customer.get("discount"):
            discounts = [customer["discount"]]
    coupons = [c for d in discounts if (c := _coupon(store, d)) is not None]
    discounted = _discounted(subtotal, coupons, currency, at)
    tax = round(discounted * tax_percent / 100)
    total = discounted + tax
    return {
        "id": f"upcoming_in_{sub_id.removeprefix('sub_')}",
        "object": "invoice",
        "amount_due": total,
        "amount_paid": 0,
        "amount_remaining": total,
        "attempt_count": 0,
        "attempted": False,
        "billing_reason": "subscription_cycle",
        "collection_method": sub.get("collection_method") or "charge_automatically",
        "created": at,
        "currency": currency,
        "customer": customer_id,
        "livemode": livemode,
        "lines": {"object": "list", "data": lines, "has_more": False, "url": "/v1/invoices/upcoming/lines"},
        "next_payment_attempt": at + FINALIZE_DELAY,
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"metadata": sub.get("metadata") or {}, "subscription": sub_id},
        },
        "period_end": at,
        "period_start": min(starts) if starts else at,
        "status": "draft",
        "subtotal": subtotal,
        "total": total,
        "total_discount_amounts": [{"amount": subtotal - discounted}] if subtotal != discounted else [],
        "total_excluding_tax": discounted,
    }
