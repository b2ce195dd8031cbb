"""Stripe-shaped objects and signed events for the store, worker and webhook tests."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

SECRET = "whsec_test_secret_for_store_tests"
T0 = 1_760_000_000


def customer(cid: str = "cus_A", email: str = "Jane@Acme.com", **extra: Any) -> dict[str, Any]:
    return {
        "id": cid, "object": "customer", "email": email, "name": "Jane Doe", "livemode": False,
        "created": T0 - 86400 * 30, "delinquent": False, "currency": "usd", "metadata": {},
        "discount": None, "address": {"city": "dropped by slim"}, "invoice_settings": {"footer": "x"},
        **extra,
    }


def price(pid: str = "price_pro", amount: int = 2900, **extra: Any) -> dict[str, Any]:
    return {
        "id": pid, "object": "price", "active": True, "currency": "usd", "unit_amount": amount,
        "unit_amount_decimal": str(amount), "billing_scheme": "per_unit", "tiers_mode": None,
        "transform_quantity": None, "type": "recurring", "nickname": "Pro Monthly", "product": "prod_pro",
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed", "meter": None},
        "tax_behavior": "exclusive", "livemode": False, "lookup_key": None, "metadata": {}, **extra,
    }


def subscription(
    sid: str = "sub_A", cid: str = "cus_A", status: str = "active", **extra: Any
) -> dict[str, Any]:
    return {
        "id": sid, "object": "subscription", "customer": cid, "status": status, "created": T0 - 86400 * 20,
        "currency": "usd", "livemode": False, "cancel_at_period_end": False, "cancel_at": None,
        "canceled_at": None, "ended_at": None, "trial_start": None, "trial_end": None,
        "pause_collection": None, "discounts": [], "latest_invoice": None, "metadata": {},
        "default_tax_rates": [], "collection_method": "charge_automatically",
        "items": {"object": "list", "data": [{
            "id": f"si_{sid}", "object": "subscription_item", "quantity": 1, "price": price(),
            "current_period_start": T0 - 86400 * 5, "current_period_end": T0 + 86400 * 25,
            "discounts": [], "tax_rates": [], "metadata": {},
        }]},
        **extra,
    }


def invoice(iid: str = "in_A", cid: str = "cus_A", status: str = "paid", attempts: int = 1,
            **extra: Any) -> dict[str, Any]:
    return {
        "id": iid, "object": "invoice", "customer": cid, "number": "A-0001", "status": status,
        "amount_due": 2900, "amount_paid": 2900 if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else 2900, "currency": "usd", "created": T0 - 86400 * 5,
        "attempt_count": attempts, "attempted": True, "next_payment_attempt": None,
        "hosted_invoice_url": "https://invoice.stripe.com/i/x", "due_date": None, "livemode": False,
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_A"}},
        "lines": {"data": [{"id": "il_dropped"}]}, **extra,
    }


def charge(chid: str = "ch_A", cid: str = "cus_A", **extra: Any) -> dict[str, Any]:
    return {
        "id": chid, "object": "charge", "customer": cid, "amount": 2900, "amount_captured": 2900,
        "amount_refunded": 0, "currency": "usd", "status": "succeeded", "created": T0 - 86400 * 5,
        "captured": True, "refunded": False, "disputed": False, "livemode": False,
        "billing_details": {"dropped": True}, **extra,
    }


def event(etype: str, obj: dict[str, Any], created: int, eid: str | None = None,
          livemode: bool = False) -> dict[str, Any]:
    return {
        "id": eid or f"evt_{obj['id']}_{created}_{etype}", "object": "event", "type": etype,
        "created": created, "livemode": livemode, "api_version": "2026-10-28.endive",
        "data": {"object": obj}, "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
    }


def sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def body_of(evt: dict[str, Any]) -> bytes:
    return json.dumps(evt).encode()
