"""The cold path sees everything MRR and LTV need, through the real SDK, the sandbox and BillingService:
fields Stripe returns only when expanded (a coupon's applies_to, a price's currency_options) and
credit notes older than the invoices listed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing.service import BillingService
from billing.stripe.gateway import StripeGateway
from tests.fixtures_sandbox import SandboxHandle

NOW = int(time.time())
DAY = 86_400


def price(pid: str, product: str, amount: int, nickname: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": pid, "object": "price", "active": True, "billing_scheme": "per_unit", "created": NOW - 90 * DAY,
        "currency": "usd", "livemode": False, "nickname": nickname, "product": product,
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        "tax_behavior": "exclusive", "tiers_mode": None, "transform_quantity": None, "type": "recurring",
        "unit_amount": amount, "unit_amount_decimal": str(amount), **extra,
    }


def item(iid: str, price_id: str) -> dict[str, Any]:
    return {"id": iid, "object": "subscription_item", "created": NOW - 30 * DAY, "quantity": 1,
            "price": {"id": price_id}, "discounts": [], "metadata": {}, "tax_rates": [],
            "current_period_start": NOW - 5 * DAY, "current_period_end": NOW + 25 * DAY}


def subscription(sid: str, customer: str, currency: str, items: list[dict[str, Any]],
                 discounts: list[str]) -> dict[str, Any]:
    return {
        "id": sid, "object": "subscription", "customer": customer, "status": "active", "currency": currency,
        "created": NOW - 30 * DAY, "start_date": NOW - 30 * DAY, "livemode": False,
        "cancel_at_period_end": False, "cancel_at": None, "canceled_at": None, "ended_at": None,
        "trial_start": None, "trial_end": None, "pause_collection": None, "discounts": discounts,
        "default_tax_rates": [], "metadata": {}, "latest_invoice": None,
        "items": {"object": "list", "data": items, "has_more": False},
    }


def customer(cid: str, email: str) -> dict[str, Any]:
    return {"id": cid, "object": "customer", "email": email, "name": email, "livemode": False,
            "created": NOW - 60 * DAY, "currency": "usd", "delinquent": False, "metadata": {},
            "discount": None}


@pytest.fixture
async def service(empty_sandbox: SandboxHandle) -> AsyncIterator[BillingService]:
    products = [{"id": p, "object": "product", "name": p, "active": True, "livemode": False,
                 "created": NOW - 90 * DAY} for p in ("prod_base", "prod_addon")]
    empty_sandbox.control.load([
        *products,
        price("price_base", "prod_base", 5000, "Base"),
        price("price_addon", "prod_addon", 2000, "Add-on"),
        price("price_multi", "prod_base", 3000, "Multi", currency_options={
            "eur": {"unit_amount": 2800, "unit_amount_decimal": "2800", "tax_behavior": "exclusive"},
        }),
        {"id": "ADDON50", "object": "coupon", "percent_off": 50.0, "duration": "forever", "valid": True,
         "livemode": False, "created": NOW - 90 * DAY, "name": "Half off the add-on",
         "applies_to": {"products": ["prod_addon"]}},
        customer("cus_restricted", "restricted@example.com"),
        {"id": "di_restricted", "object": "discount", "customer": "cus_restricted",
         "subscription": "sub_restricted", "start": NOW - 30 * DAY, "end": None,
         "source": {"coupon": "ADDON50", "type": "coupon"}, "subscription_item": None},
        subscription("sub_restricted", "cus_restricted", "usd",
                     [item("si_base", "price_base"), item("si_addon", "price_addon")], ["di_restricted"]),
        customer("cus_euro", "euro-multi@example.com"),
        subscription("sub_euro", "cus_euro", "eur", [item("si_multi", "price_multi")], []),
    ])
    async with StripeGateway(empty_sandbox.api_key, api_base=empty_sandbox.url) as gateway:
        yield BillingService(gateway)


async def test_a_coupon_limited_to_a_product_discounts_only_that_product(service: BillingService) -> None:
    context = await service.lookup("restricted@example.com")
    # 5000 base + 2000 add-on at 50 % off; without applies_to both would be halved (3500).
    assert context.mrr == {"usd": 6000}


async def test_a_subscription_in_another_currency_uses_the_price_currency_option(
    service: BillingService,
) -> None:
    context = await service.lookup("euro-multi@example.com")
    assert context.mrr == {"eur": 2800}


def test_the_sandbox_leaves_includable_fields_out_unless_expanded(empty_sandbox: SandboxHandle) -> None:
    import stripe

    empty_sandbox.control.load([{"id": "C1", "object": "coupon", "percent_off": 10.0, "duration": "forever",
                                 "livemode": False, "created": NOW, "applies_to": {"products": ["p"]}}])
    client = stripe.StripeClient(empty_sandbox.api_key, base_addresses={"api": empty_sandbox.url})
    assert "applies_to" not in client.v1.coupons.retrieve("C1").to_dict()
    expanded = client.v1.coupons.retrieve("C1", params={"expand": ["applies_to"]}).to_dict()
    assert expanded["applies_to"] == {"products": ["p"]}


async def test_an_old_credit_note_beyond_the_listed_invoices_still_reduces_ltv(
    empty_sandbox: SandboxHandle,
) -> None:
    invoices = [
        {"id": f"in_old{n:03d}", "object": "invoice", "customer": "cus_long", "status": "paid",
         "amount_due": 1000, "amount_paid": 1000, "amount_remaining": 0, "currency": "usd",
         "created": NOW - (n + 1) * DAY, "attempt_count": 1, "livemode": False,
         "post_payment_credit_notes_amount": 500 if n == 100 else 0}
        for n in range(101)  # the 101st (oldest) invoice is the credited one: not on the first page
    ]
    empty_sandbox.control.load([
        customer("cus_long", "long@example.com"), *invoices,
        {"id": "ch_long", "object": "charge", "customer": "cus_long", "amount": 5000, "amount_captured": 5000,
         "amount_refunded": 0, "currency": "usd", "status": "succeeded", "captured": True, "paid": True,
         "refunded": False, "disputed": False, "livemode": False, "created": NOW - DAY},
        {"id": "cn_old", "object": "credit_note", "customer": "cus_long", "invoice": "in_old100",
         "amount": 500, "out_of_band_amount": 500, "currency": "usd", "status": "issued",
         "created": NOW - 100 * DAY, "livemode": False},
    ])
    async with StripeGateway(empty_sandbox.api_key, api_base=empty_sandbox.url) as gateway:
        context = await BillingService(gateway).lookup("long@example.com")
    assert context.ltv == {"usd": 4500}
