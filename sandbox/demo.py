"""The demo dataset: a deterministic small SaaS account, timestamps relative to ``now``.

``build(now)`` returns Stripe-shaped objects in the current API shape (billing periods on
subscription items, ``subscription.discounts`` as discount ids, invoices linked to subscriptions
through ``invoice.parent.subscription_details.subscription``). Ids are seeded, so the same ``now``
gives the same objects. Every customer below is in test mode unless marked live.

Named customers and the facts tests may assert (MRR/LTV per MRR.md, minor units):

- ``jane@acme.com`` - Jane Doe. One USD ``past_due`` subscription on "Pro Monthly" (2900/month,
  qty 1), renewing in 12 days. Three paid invoices with three succeeded 2900 charges, and one
  ``open`` invoice (amount_due 2900, attempt_count 2, next_payment_attempt in 2 days) with two
  failed charges (``card_declined``). ``delinquent`` true. MRR usd 2900; LTV usd 8700; payment_status
  failed. Default card visa 4242, expires 12/2030.
- ``bigco@example.com`` - BigCo Inc. ``active`` "Business Monthly" 12500/seat × 10 seats.
  MRR usd 125000 ($1,250.00); LTV usd 250000 (two paid months).
- ``trial@startup.io`` - ``trialing`` "Pro Monthly", trial ends in 10 days.
  MRR 0 (excluded trialing usd 2900).
- ``expiring@startup.io`` - ``trialing`` "Pro Monthly", trial ends in 2 days. MRR 0.
- ``shared@example.com`` - two customers: the older (created 200 days ago, name "Shared Older")
  ``active`` "Pro Monthly" (MRR usd 2900); the newer (created 5 days ago, "Shared Newer")
  has no subscriptions.
- ``both@example.com`` - one test-mode customer (``active`` "Pro Monthly", usd 2900) and one
  live-mode customer (``active`` live "Pro Monthly", usd 2900).
- ``Mixed.Case@Example.com`` - stored with this exact casing; ``active`` "Starter Monthly"
  900/month. MRR usd 900.
- ``yen@example.jp`` - ``active`` "Pro Monthly JPY" 3000/month. MRR jpy 3000.
- ``euro@example.de`` - ``active`` "Pro Monthly EUR" 2700/month. MRR eur 2700.
- ``churned@example.com`` - only a ``canceled`` "Pro Monthly" subscription (ended 30 days ago);
  two succeeded 2900 charges. MRR 0 (no counted subscription); LTV usd 5800.
- ``tiered@example.com`` - ``active`` "Enterprise Graduated" (graduated: 1-5 @700,
  6-10 @650, 11+ @600), qty 20.
  MRR usd 12750 (needs ``expand=["tiers"]``).
- ``coupon@example.com`` - ``active`` "Growth Monthly" 5000/month with coupon ``FOREVER20`` (20 % forever,
  subscription level). MRR usd 4000.
- ``nosubs@example.com`` - no subscriptions, no charges.
- ``renewal@example.com`` - Renewal Yearly Ltd. ``active`` "Business Yearly" 120000/year, renewing in
  5 days (the default rules' yearly-renewal reminder, 7 days ahead, is due). MRR usd 10000; LTV usd
  120000.

Other coverage customers (one per edge case; MRR in usd unless stated):
``annual@example.com`` 120000/year -> 10000; ``weekly@example.com`` 1000/week -> 4333;
``quarterly@example.com`` 15000 every 3 months -> 5000; ``seats@example.com`` 3 × 1000 -> 3000;
``amountoff@example.com`` 5000 with 500 off forever (``FOREVER500``) -> 4500;
``repeating@example.com`` 5000 with 50 % repeating (``HALF3M``, still running) -> 5000 (temporary 2500);
``once@example.com`` 5000 with 1000 off once (``ONCE10``) -> 5000 (temporary 4000);
``custdiscount@example.com`` 5000 with a customer-level 10 % forever discount (``LOYAL10``) -> 4500;
``volume@example.com`` volume tiers (1-10 @1000, 11-50 @800, 51+ @600) qty 25 -> 20000;
``metered@example.com`` 2 × 5000 licensed + metered "API Calls" -> 10000, has_metered_items;
``twosubs@example.com`` USD 5000 + EUR 4000 subscriptions -> usd 5000, eur 4000;
``addon@example.com`` 4900 base + 3 × 1000 seats on one subscription -> 7900;
``leaving@example.com`` 5000 with cancel_at_period_end (requested 3 days ago, feedback
``switched_service`` with a comment) -> 5000, scheduled_cancel;
``vat@example.de`` EUR 11900 tax-inclusive with an inclusive 19 % tax rate -> eur 10000;
``bundle@example.com`` 2000 per pack of 10 (transform_quantity divide_by 10, round up), qty 25 -> 6000;
``pausecollect@example.com`` ``active`` with ``pause_collection`` -> 0 (would-be 2900);
``incomplete@example.com``, ``expired@example.com`` (incomplete_expired), ``unpaid@example.com``,
``paused@example.com`` -> 0; ``refund@example.com`` (3 × 2900 succeeded, one fully refunded) LTV 5800;
``disputed@example.com`` (two 5000 charges, one lost dispute) LTV 5000;
``mixedcharges@example.com`` (5000 succeeded, failed, pending) LTV 5000;
``multicurrency@example.com`` (usd 5000, eur 3000, jpy 4000) LTV per currency;
``creditnote@example.com`` (5000 charge, credit note with out_of_band_amount 1000) LTV 4000;
``deleted@example.com`` was deleted (retrieve returns ``deleted: true``; not listed);
``live@example.com`` live mode, ``active`` live "Pro Monthly". Plus ``customerNN@example.com`` fillers.
"""

from __future__ import annotations

import random
import string
import time
from typing import Any

Obj = dict[str, Any]
DAY = 86_400
SEED = 20_261_122
_ALNUM = string.ascii_letters + string.digits
_PERIOD_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}

DEMO_CUSTOMERS: dict[str, str] = {
    "jane@acme.com": "past_due Pro Monthly 2900/month, open invoice with 2 failed attempts",
    "bigco@example.com": "active Business Monthly 10 seats × 12500, MRR usd 125000",
    "trial@startup.io": "trialing Pro Monthly, trial ends in 10 days",
    "expiring@startup.io": "trialing Pro Monthly, trial ends in 2 days",
    "shared@example.com": "two customers: older active Pro Monthly, newer without subscriptions",
    "both@example.com": "a test-mode and a live-mode customer, both active Pro Monthly",
    "Mixed.Case@Example.com": "mixed-case email, active Starter Monthly 900/month",
    "yen@example.jp": "active JPY 3000/month",
    "euro@example.de": "active EUR 2700/month",
    "churned@example.com": "only a canceled subscription",
    "tiered@example.com": "graduated tiers, qty 20, MRR usd 12750",
    "coupon@example.com": "5000/month with 20% forever, MRR usd 4000",
    "nosubs@example.com": "no subscriptions",
    "renewal@example.com": "active Business Yearly 120000/year, renews in 5 days (a renewal reminder)",
}

# product key -> name
_PRODUCTS = {
    "starter": "Starter",
    "pro": "Pro",
    "business": "Business",
    "growth": "Growth",
    "enterprise": "Enterprise",
    "volume": "Volume",
    "api": "API Calls",
    "team": "Team",
    "seat": "Team Seat",
    "bundle": "Bundle",
}
# price key -> (product, nickname, currency, unit_amount, interval, interval_count, extra)
_PRICES: dict[str, tuple[str, str, str, int | None, str, int, Obj]] = {
    "starter_month": ("starter", "Starter Monthly", "usd", 900, "month", 1, {}),
    "pro_month": ("pro", "Pro Monthly", "usd", 2900, "month", 1, {}),
    "pro_week": ("pro", "Pro Weekly", "usd", 1000, "week", 1, {}),
    "pro_quarter": ("pro", "Pro Quarterly", "usd", 15000, "month", 3, {}),
    "pro_month_eur": ("pro", "Pro Monthly EUR", "eur", 2700, "month", 1, {}),
    "pro_month_jpy": ("pro", "Pro Monthly JPY", "jpy", 3000, "month", 1, {}),
    "pro_vat_eur": (
        "pro",
        "Pro Monthly EUR (VAT incl.)",
        "eur",
        11900,
        "month",
        1,
        {"tax_behavior": "inclusive"},
    ),
    "business_month": ("business", "Business Monthly", "usd", 12500, "month", 1, {}),
    "business_year": ("business", "Business Yearly", "usd", 120000, "year", 1, {}),
    "growth_month": ("growth", "Growth Monthly", "usd", 5000, "month", 1, {}),
    "growth_month_eur": ("growth", "Growth Monthly EUR", "eur", 4000, "month", 1, {}),
    "enterprise_graduated": (
        "enterprise",
        "Enterprise Graduated",
        "usd",
        None,
        "month",
        1,
        {
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
        },
    ),
    "volume_month": (
        "volume",
        "Volume Monthly",
        "usd",
        None,
        "month",
        1,
        {
            "billing_scheme": "tiered",
            "tiers_mode": "volume",
        },
    ),
    "api_metered": ("api", "API Calls (metered)", "usd", 2, "month", 1, {"usage_type": "metered"}),
    "team_base": ("team", "Team Base", "usd", 4900, "month", 1, {}),
    "team_seat": ("seat", "Team Seat", "usd", 1000, "month", 1, {}),
    "bundle_month": (
        "bundle",
        "Bundle (per 10)",
        "usd",
        2000,
        "month",
        1,
        {
            "transform_quantity": {"divide_by": 10, "round": "up"},
        },
    ),
}
_TIERS = {
    "enterprise_graduated": [(5, 700), (10, 650), (None, 600)],
    "volume_month": [(10, 1000), (50, 800), (None, 600)],
}
_COUPONS: dict[str, Obj] = {
    "FOREVER20": {"name": "20% forever", "percent_off": 20.0, "duration": "forever"},
    "FOREVER500": {"name": "$5 off forever", "amount_off": 500, "currency": "usd", "duration": "forever"},
    "HALF3M": {
        "name": "50% for 3 months",
        "percent_off": 50.0,
        "duration": "repeating",
        "duration_in_months": 3,
    },
    "ONCE10": {"name": "$10 off once", "amount_off": 1000, "currency": "usd", "duration": "once"},
    "LOYAL10": {"name": "Loyalty 10%", "percent_off": 10.0, "duration": "forever"},
}


class _Builder:
    """Accumulates objects; ids come from one seeded generator so a build is reproducible."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.rng = random.Random(SEED)
        self.objects: list[Obj] = []
        self.prices: dict[tuple[str, bool], Obj] = {}
        self.invoice_seq = 0

    def id(self, prefix: str) -> str:
        return f"{prefix}_1Demo" + "".join(self.rng.choice(_ALNUM) for _ in range(14))

    def ago(self, days: float) -> int:
        return int(self.now - days * DAY)

    def add(self, obj: Obj) -> Obj:
        self.objects.append(obj)
        return obj

    # ---- catalogue -----------------------------------------------------------------------------
    def catalogue(self, livemode: bool) -> None:
        products: dict[str, str] = {}
        for key, name in _PRODUCTS.items():
            product = self.add(
                {
                    "id": self.id("prod"),
                    "object": "product",
                    "active": True,
                    "created": self.ago(400),
                    "default_price": None,
                    "description": None,
                    "images": [],
                    "livemode": livemode,
                    "marketing_features": [],
                    "metadata": {},
                    "name": name,
                    "package_dimensions": None,
                    "shippable": None,
                    "statement_descriptor": None,
                    "tax_code": None,
                    "type": "service",
                    "unit_label": None,
                    "updated": self.ago(400),
                    "url": None,
                }
            )
            products[key] = product["id"]
        for key, (product_key, nickname, currency, amount, interval, count, extra) in _PRICES.items():
            tiers = _TIERS.get(key)
            price: Obj = {
                "id": self.id("price"),
                "object": "price",
                "active": True,
                "billing_scheme": extra.get("billing_scheme", "per_unit"),
                "created": self.ago(400),
                "currency": currency,
                "custom_unit_amount": None,
                "livemode": livemode,
                "lookup_key": key,
                "metadata": {},
                "nickname": nickname,
                "product": products[product_key],
                "recurring": {
                    "interval": interval,
                    "interval_count": count,
                    "meter": None,
                    "usage_type": extra.get("usage_type", "licensed"),
                    "trial_period_days": None,
                },
                "tax_behavior": extra.get("tax_behavior", "exclusive"),
                "tiers_mode": extra.get("tiers_mode"),
                "transform_quantity": extra.get("transform_quantity"),
                "type": "recurring",
                "unit_amount": amount,
                "unit_amount_decimal": None if amount is None else str(amount),
            }
            if tiers is not None:
                price["tiers"] = [
                    {
                        "flat_amount": None,
                        "flat_amount_decimal": None,
                        "unit_amount": unit,
                        "unit_amount_decimal": str(unit),
                        "up_to": up_to,
                    }
                    for up_to, unit in tiers
                ]
            self.prices[(key, livemode)] = self.add(price)

    def coupons(self) -> dict[str, Obj]:
        out = {}
        for code, spec in _COUPONS.items():
            out[code] = self.add(
                {
                    "id": code,
                    "object": "coupon",
                    "amount_off": spec.get("amount_off"),
                    "created": self.ago(500),
                    "currency": spec.get("currency"),
                    "duration": spec["duration"],
                    "duration_in_months": spec.get("duration_in_months"),
                    "livemode": False,
                    "max_redemptions": None,
                    "metadata": {},
                    "name": spec["name"],
                    "percent_off": spec.get("percent_off"),
                    "redeem_by": None,
                    "times_redeemed": 1,
                    "valid": True,
                }
            )
        return out

    def tax_rate(self) -> Obj:
        return self.add(
            {
                "id": self.id("txr"),
                "object": "tax_rate",
                "active": True,
                "country": "DE",
                "created": self.ago(400),
                "description": "VAT Germany",
                "display_name": "VAT",
                "effective_percentage": 19.0,
                "inclusive": True,
                "jurisdiction": "DE",
                "livemode": False,
                "metadata": {},
                "percentage": 19.0,
                "state": None,
                "tax_type": "vat",
            }
        )

    def discount(
        self,
        coupon: str,
        customer: str,
        subscription: str | None,
        days_ago: float,
        end_in_days: float | None = None,
    ) -> Obj:
        return self.add(
            {
                "id": self.id("di"),
                "object": "discount",
                "checkout_session": None,
                "customer": customer,
                "end": None if end_in_days is None else int(self.now + end_in_days * DAY),
                "invoice": None,
                "invoice_item": None,
                "promotion_code": None,
                "source": {"coupon": coupon, "type": "coupon"},
                "start": self.ago(days_ago),
                "subscription": subscription,
                "subscription_item": None,
            }
        )

    # ---- customers and their money -------------------------------------------------------------
    def customer(
        self,
        email: str | None,
        name: str,
        days_ago: float,
        livemode: bool = False,
        delinquent: bool = False,
        currency: str | None = "usd",
    ) -> Obj:
        return self.add(
            {
                "id": self.id("cus"),
                "object": "customer",
                "address": None,
                "balance": 0,
                "created": self.ago(days_ago),
                "currency": currency,
                "default_source": None,
                "delinquent": delinquent,
                "description": None,
                "discount": None,
                "email": email,
                "invoice_prefix": "".join(
                    self.rng.choice(string.ascii_uppercase + string.digits) for _ in range(8)
                ),
                "invoice_settings": {
                    "custom_fields": None,
                    "default_payment_method": None,
                    "footer": None,
                    "rendering_options": None,
                },
                "livemode": livemode,
                "metadata": {},
                "name": name,
                "next_invoice_sequence": 1,
                "phone": None,
                "preferred_locales": [],
                "shipping": None,
                "tax_exempt": "none",
                "test_clock": None,
            }
        )

    def subscription(
        self,
        customer: Obj,
        items: list[tuple[str, int]],
        status: str = "active",
        days_ago: float = 90,
        trial_end_in: float | None = None,
        cancel_at_period_end: bool = False,
        pause_collection: Obj | None = None,
        tax_rates: list[Obj] | None = None,
        ended_days_ago: float | None = None,
    ) -> Obj:
        livemode = bool(customer["livemode"])
        sub_id = self.id("sub")
        created = self.ago(days_ago)
        built = []
        currency = "usd"
        for key, quantity in items:
            price = self.prices[(key, livemode)]
            currency = price["currency"]
            recurring = price["recurring"]
            length = _PERIOD_DAYS[recurring["interval"]] * recurring["interval_count"] * DAY
            if trial_end_in is not None:
                start, end = created, int(self.now + trial_end_in * DAY)
            elif ended_days_ago is not None:
                end = self.ago(ended_days_ago)
                start = end - length
            else:
                start = self.now - (self.now - created) % length
                end = start + length
            item: Obj = {
                "id": self.id("si"),
                "object": "subscription_item",
                "billing_thresholds": None,
                "created": created,
                "current_period_end": end,
                "current_period_start": start,
                "discounts": [],
                "metadata": {},
                "price": {"id": price["id"]},
                "quantity": None if recurring["usage_type"] == "metered" else quantity,
                "subscription": sub_id,
                "tax_rates": list(tax_rates or []),
            }
            built.append(item)
        trial_end = int(self.now + trial_end_in * DAY) if trial_end_in is not None else None
        ended = self.ago(ended_days_ago) if ended_days_ago is not None else None
        return self.add(
            {
                "id": sub_id,
                "object": "subscription",
                "application": None,
                "automatic_tax": {"enabled": False},
                "billing_cycle_anchor": created,
                "billing_mode": {"type": "flexible"},
                "cancel_at": (built[0]["current_period_end"] if cancel_at_period_end else None),
                "cancel_at_period_end": cancel_at_period_end,
                "canceled_at": ended,
                "cancellation_details": {
                    "comment": None,
                    "feedback": None,
                    "reason": "cancellation_requested" if ended else None,
                },
                "collection_method": "charge_automatically",
                "created": created,
                "currency": currency,
                "customer": customer["id"],
                "days_until_due": None,
                "default_payment_method": None,
                "default_source": None,
                "default_tax_rates": [],
                "description": None,
                "discounts": [],
                "ended_at": ended,
                "items": {
                    "object": "list",
                    "data": built,
                    "has_more": False,
                    "url": f"/v1/subscription_items?subscription={sub_id}",
                },
                "latest_invoice": None,
                "livemode": livemode,
                "metadata": {},
                "pause_collection": pause_collection,
                "schedule": None,
                "start_date": created,
                "status": status,
                "test_clock": None,
                "trial_end": trial_end,
                "trial_start": created if trial_end is not None else None,
            }
        )

    def invoice(
        self,
        customer: Obj,
        sub: Obj | None,
        amount: int,
        status: str,
        days_ago: float,
        attempt_count: int = 1,
        next_attempt_in: float | None = None,
    ) -> Obj:
        self.invoice_seq += 1
        created = self.ago(days_ago)
        paid = status == "paid"
        invoice_id = self.id("in")
        invoice = self.add(
            {
                "id": invoice_id,
                "object": "invoice",
                "account_country": "US",
                "account_name": "Billing Lens Sandbox",
                "amount_due": amount,
                "amount_paid": amount if paid else 0,
                "amount_remaining": 0 if paid else amount,
                "attempt_count": attempt_count,
                "attempted": attempt_count > 0,
                "auto_advance": not paid,
                "billing_reason": "subscription_cycle" if sub else "manual",
                "collection_method": "charge_automatically",
                "created": created,
                "currency": (sub["currency"] if sub else "usd"),
                "customer": customer["id"],
                "customer_email": customer["email"],
                "customer_name": customer["name"],
                "description": None,
                "discounts": [],
                "due_date": None,
                "effective_at": created,
                "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_1SandboxBillingLens/test_{invoice_id}",
                "invoice_pdf": f"https://pay.stripe.com/invoice/acct_1SandboxBillingLens/test_{invoice_id}/pdf",
                "livemode": customer["livemode"],
                "metadata": {},
                "next_payment_attempt": int(self.now + next_attempt_in * DAY)
                if next_attempt_in is not None
                else None,
                "number": f"{customer['invoice_prefix']}-{self.invoice_seq:04d}",
                "parent": {
                    "quote_details": None,
                    "type": "subscription_details",
                    "subscription_details": {"metadata": {}, "subscription": sub["id"]},
                }
                if sub
                else None,
                "period_end": created,
                "period_start": created - 30 * DAY,
                "status": status,
                "status_transitions": {
                    "finalized_at": created,
                    "marked_uncollectible_at": None,
                    "paid_at": created if paid else None,
                    "voided_at": None,
                },
                "subtotal": amount,
                "total": amount,
                "total_excluding_tax": amount,
            }
        )
        return invoice

    def charge(
        self,
        customer: Obj,
        amount: int,
        status: str = "succeeded",
        days_ago: float = 30,
        currency: str = "usd",
        refunded: int = 0,
        disputed: bool = False,
    ) -> Obj:
        ok = status == "succeeded"
        charge_id = self.id("ch")
        return self.add(
            {
                "id": charge_id,
                "object": "charge",
                "amount": amount,
                "amount_captured": amount if ok else 0,
                "amount_refunded": refunded,
                "billing_details": {"email": customer["email"], "name": customer["name"]},
                "captured": ok,
                "created": self.ago(days_ago),
                "currency": currency,
                "customer": customer["id"],
                "description": "Subscription update",
                "disputed": disputed,
                "failure_code": "card_declined" if status == "failed" else None,
                "failure_message": "Your card was declined." if status == "failed" else None,
                "livemode": customer["livemode"],
                "metadata": {},
                "outcome": {
                    "network_status": "approved_by_network" if ok else "declined_by_network",
                    "reason": None if ok else "generic_decline",
                    "risk_level": "normal",
                    "seller_message": "Payment complete."
                    if ok
                    else "The bank did not return any further details with this decline.",
                    "type": "authorized" if ok else "issuer_declined",
                },
                "paid": ok,
                "payment_intent": None,
                "payment_method": self.id("pm"),
                "receipt_url": None,
                "refunded": ok and refunded >= amount,
                "refunds": {
                    "object": "list",
                    "data": [],
                    "has_more": False,
                    "url": f"/v1/charges/{charge_id}/refunds",
                },
                "status": status,
            }
        )

    def history(self, customer: Obj, sub: Obj, amount: int, months: int, start_days_ago: float = 0) -> None:
        """``months`` paid invoices with their succeeded charges, one per 30 days, newest last."""
        for n in range(months, 0, -1):
            days = start_days_ago + n * 30
            self.invoice(customer, sub, amount, "paid", days)
            self.charge(customer, amount, days_ago=days, currency=sub["currency"])


def build(now: int) -> list[Obj]:
    """Every demo object for the instant ``now`` (unix seconds)."""
    b = _Builder(now)
    b.catalogue(livemode=False)
    b.catalogue(livemode=True)
    coupons = b.coupons()
    vat = b.tax_rate()

    jane = b.customer("jane@acme.com", "Jane Doe", 130, delinquent=True)
    sub = b.subscription(jane, [("pro_month", 1)], "past_due", days_ago=108)
    b.history(jane, sub, 2900, 3, start_days_ago=0)
    b.invoice(jane, sub, 2900, "open", 18, attempt_count=2, next_attempt_in=2)
    b.charge(jane, 2900, "failed", days_ago=18)
    b.charge(jane, 2900, "failed", days_ago=15)
    item = sub["items"]["data"][0]  # the current period started with the failed invoice
    item["current_period_start"], item["current_period_end"] = b.ago(18), int(now + 12 * DAY)

    bigco = b.customer("bigco@example.com", "BigCo Inc", 75)
    sub = b.subscription(bigco, [("business_month", 10)], days_ago=70)
    b.history(bigco, sub, 125000, 2)

    b.subscription(
        b.customer("trial@startup.io", "Trial Startup", 4),
        [("pro_month", 1)],
        "trialing",
        days_ago=4,
        trial_end_in=10,
    )
    b.subscription(
        b.customer("expiring@startup.io", "Expiring Startup", 12),
        [("pro_month", 1)],
        "trialing",
        days_ago=12,
        trial_end_in=2,
    )

    older = b.customer("shared@example.com", "Shared Older", 200)
    sub = b.subscription(older, [("pro_month", 1)], days_ago=195)
    b.history(older, sub, 2900, 2)
    b.customer("shared@example.com", "Shared Newer", 5)

    for livemode in (False, True):
        both = b.customer(
            "both@example.com", f"Both ({'live' if livemode else 'test'})", 60, livemode=livemode
        )
        sub = b.subscription(both, [("pro_month", 1)], days_ago=55)
        b.history(both, sub, 2900, 1)

    mixed = b.customer("Mixed.Case@Example.com", "Mixed Case", 40)
    b.subscription(mixed, [("starter_month", 1)], days_ago=40)
    yen = b.customer("yen@example.jp", "Yamada Taro", 50, currency="jpy")
    sub = b.subscription(yen, [("pro_month_jpy", 1)], days_ago=45)
    b.history(yen, sub, 3000, 1)
    euro = b.customer("euro@example.de", "Euro GmbH", 50, currency="eur")
    sub = b.subscription(euro, [("pro_month_eur", 1)], days_ago=45)
    b.history(euro, sub, 2700, 1)

    churned = b.customer("churned@example.com", "Churned Co", 150)
    sub = b.subscription(churned, [("pro_month", 1)], "canceled", days_ago=120, ended_days_ago=30)
    b.history(churned, sub, 2900, 2, start_days_ago=30)

    b.subscription(
        b.customer("tiered@example.com", "Tiered Corp", 100), [("enterprise_graduated", 20)], days_ago=95
    )
    coupon_customer = b.customer("coupon@example.com", "Coupon Inc", 80)
    sub = b.subscription(coupon_customer, [("growth_month", 1)], days_ago=75)
    sub["discounts"] = [b.discount(coupons["FOREVER20"]["id"], coupon_customer["id"], sub["id"], 75)["id"]]
    b.customer("nosubs@example.com", "No Subs", 20)

    # ---- edge cases ---------------------------------------------------------------------------
    b.subscription(b.customer("annual@example.com", "Annual Ltd", 200), [("business_year", 1)], days_ago=190)
    b.subscription(b.customer("weekly@example.com", "Weekly LLC", 30), [("pro_week", 1)], days_ago=25)
    b.subscription(
        b.customer("quarterly@example.com", "Quarterly Co", 100), [("pro_quarter", 1)], days_ago=100
    )
    b.subscription(b.customer("seats@example.com", "Seats Co", 60), [("team_seat", 3)], days_ago=50)
    for email, code, end_in in (
        ("amountoff@example.com", "FOREVER500", None),
        ("repeating@example.com", "HALF3M", 45),
        ("once@example.com", "ONCE10", None),
    ):
        cust = b.customer(email, email.split("@")[0].title(), 30)
        sub = b.subscription(cust, [("growth_month", 1)], days_ago=28)
        sub["discounts"] = [b.discount(coupons[code]["id"], cust["id"], sub["id"], 28, end_in)["id"]]
    cust = b.customer("custdiscount@example.com", "Customer Discount", 90)
    cust["discount"] = b.discount(coupons["LOYAL10"]["id"], cust["id"], None, 90)
    b.subscription(cust, [("growth_month", 1)], days_ago=85)
    b.subscription(b.customer("volume@example.com", "Volume Co", 70), [("volume_month", 25)], days_ago=65)
    b.subscription(
        b.customer("metered@example.com", "Metered Co", 70),
        [("growth_month", 2), ("api_metered", 1)],
        days_ago=65,
    )
    twosubs = b.customer("twosubs@example.com", "Two Subs", 90)
    b.subscription(twosubs, [("growth_month", 1)], days_ago=80)
    b.subscription(twosubs, [("growth_month_eur", 1)], days_ago=40)
    b.subscription(
        b.customer("addon@example.com", "Addon Co", 90), [("team_base", 1), ("team_seat", 3)], days_ago=88
    )
    b.subscription(
        b.customer("leaving@example.com", "Leaving Co", 90),
        [("growth_month", 1)],
        days_ago=88,
        cancel_at_period_end=True,
    )
    b.subscription(
        b.customer("vat@example.de", "VAT GmbH", 60, currency="eur"),
        [("pro_vat_eur", 1)],
        days_ago=58,
        tax_rates=[vat],
    )
    b.subscription(b.customer("bundle@example.com", "Bundle Co", 60), [("bundle_month", 25)], days_ago=58)
    b.subscription(
        b.customer("pausecollect@example.com", "Pause Collect", 60),
        [("pro_month", 1)],
        days_ago=58,
        pause_collection={"behavior": "void", "resumes_at": int(now + 20 * DAY)},
    )
    cust = b.customer("incomplete@example.com", "Incomplete Co", 1)
    sub = b.subscription(cust, [("pro_month", 1)], "incomplete", days_ago=0.5)
    b.invoice(cust, sub, 2900, "open", 0.5, attempt_count=1)
    b.subscription(
        b.customer("expired@example.com", "Expired Co", 10),
        [("pro_month", 1)],
        "incomplete_expired",
        days_ago=9,
    )
    cust = b.customer("unpaid@example.com", "Unpaid Co", 120, delinquent=True)
    sub = b.subscription(cust, [("pro_month", 1)], "unpaid", days_ago=110)
    b.invoice(cust, sub, 2900, "open", 20, attempt_count=4)
    b.subscription(
        b.customer("paused@example.com", "Paused Co", 40), [("pro_month", 1)], "paused", days_ago=40
    )

    cust = b.customer("refund@example.com", "Refund Co", 100)
    sub = b.subscription(cust, [("pro_month", 1)], days_ago=95)
    for n, refunded in ((3, 0), (2, 2900), (1, 0)):
        b.invoice(cust, sub, 2900, "paid", n * 30)
        b.charge(cust, 2900, days_ago=n * 30, refunded=refunded)
    cust = b.customer("disputed@example.com", "Disputed Co", 100)
    b.charge(cust, 5000, days_ago=60)
    lost = b.charge(cust, 5000, days_ago=30, disputed=True)
    b.add(
        {
            "id": b.id("dp"),
            "object": "dispute",
            "amount": 5000,
            "balance_transactions": [],
            "charge": lost["id"],
            "created": b.ago(25),
            "currency": "usd",
            "is_charge_refundable": False,
            "livemode": False,
            "metadata": {},
            "payment_intent": None,
            "reason": "fraudulent",
            "status": "lost",
        }
    )
    cust = b.customer("mixedcharges@example.com", "Mixed Charges", 50)
    for status in ("succeeded", "failed", "pending"):
        b.charge(cust, 5000, status, days_ago=10)
    cust = b.customer("multicurrency@example.com", "Multi Currency", 50)
    for currency, amount in (("usd", 5000), ("eur", 3000), ("jpy", 4000)):
        b.charge(cust, amount, currency=currency, days_ago=12)
    cust = b.customer("creditnote@example.com", "Credit Note Co", 50)
    invoice = b.invoice(cust, None, 5000, "paid", 20)
    invoice["post_payment_credit_notes_amount"] = 1000  # as Stripe sets it once the credit note is issued
    b.charge(cust, 5000, days_ago=20)
    b.add(
        {
            "id": b.id("cn"),
            "object": "credit_note",
            "amount": 1000,
            "created": b.ago(15),
            "currency": "usd",
            "customer": cust["id"],
            "discount_amount": 0,
            "effective_at": b.ago(15),
            "invoice": invoice["id"],
            "livemode": False,
            "memo": "Goodwill credit",
            "metadata": {},
            "number": f"{invoice['number']}-CN-01",
            "out_of_band_amount": 1000,
            "reason": "order_change",
            "refunds": [],
            "status": "issued",
            "subtotal": 1000,
            "total": 1000,
            "type": "post_payment",
        }
    )
    b.add(
        {"id": b.id("cus"), "object": "customer", "deleted": True, "livemode": False, "created": b.ago(300)}
    )
    live = b.customer("live@example.com", "Live Customer", 90, livemode=True)
    sub = b.subscription(live, [("pro_month", 1)], days_ago=85)
    b.history(live, sub, 2900, 2)

    plans = ["starter_month", "pro_month", "growth_month", "business_month", "pro_month_eur"]
    statuses = ["active", "active", "active", "trialing", "past_due", "canceled"]
    for n in range(1, 25):
        cust = b.customer(f"customer{n:02d}@example.com", f"Customer {n:02d}", 10 + n * 9)
        status = statuses[n % len(statuses)]
        plan = plans[n % len(plans)]
        sub = b.subscription(
            cust,
            [(plan, 1 + n % 3)],
            status,
            days_ago=5 + n * 8,
            trial_end_in=7 if status == "trialing" else None,
            ended_days_ago=3 if status == "canceled" else None,
        )
        if status != "trialing":
            amount = int(b.prices[(plan, False)]["unit_amount"]) * (1 + n % 3)
            b.history(cust, sub, amount, 1)
    # Last of the seeded objects, so every id and invoice number above stays what it was.
    renewing = b.customer("renewal@example.com", "Renewal Yearly Ltd", 370)
    sub = b.subscription(renewing, [("business_year", 1)], days_ago=360)  # renews in 5 days
    b.invoice(renewing, sub, 120000, "paid", 360)
    b.charge(renewing, 120000, days_ago=360)
    _cards_and_cancellations(b)
    _payment_intents(b)
    return b.objects


def _payment_method(customer: Obj, brand: str, last4: str, exp_month: int, exp_year: int) -> Obj:
    """A card payment method; its id comes from the customer's (the seeded ids stay as they were)."""
    return {
        "id": "pm_" + str(customer["id"]).removeprefix("cus_"),
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {"email": customer.get("email"), "name": customer.get("name")},
        "card": {
            "brand": brand,
            "checks": {"address_line1_check": None, "address_postal_code_check": None, "cvc_check": "pass"},
            "country": "US",
            "display_brand": brand,
            "exp_month": exp_month,
            "exp_year": exp_year,
            "funding": "credit",
            "last4": last4,
            "networks": {"available": [brand], "preferred": None},
        },
        "created": customer["created"],
        "customer": customer["id"],
        "livemode": customer["livemode"],
        "metadata": {},
        "type": "card",
    }


def _cards_and_cancellations(b: _Builder) -> None:
    """Default cards (one expiring before its renewal) and cancellation details; added last so every
    seeded id and invoice number stays what it was."""
    by_email = {o.get("email"): o for o in b.objects if o.get("object") == "customer" and not o["livemode"]}
    subs_of: dict[str, list[Obj]] = {}
    for obj in b.objects:
        if obj.get("object") == "subscription":
            subs_of.setdefault(obj["customer"], []).append(obj)
    soon = time.gmtime(b.now + 60 * DAY)  # annual renews in months: this card expires first
    cards = {
        "jane@acme.com": ("visa", "4242", 12, 2030),
        "bigco@example.com": ("amex", "8431", 3, 2031),
        "annual@example.com": ("mastercard", "4444", soon.tm_mon, soon.tm_year),
        "leaving@example.com": ("visa", "1881", 8, 2029),
    }
    for email, (brand, last4, month, year) in cards.items():
        customer = by_email[email]
        pm = b.add(_payment_method(customer, brand, last4, month, year))
        customer["invoice_settings"]["default_payment_method"] = pm["id"]
    # a subscription-level default overrides the customer's
    coupon_customer = by_email["coupon@example.com"]
    pm = b.add(_payment_method(coupon_customer, "visa", "0005", 6, 2032))
    subs_of[coupon_customer["id"]][0]["default_payment_method"] = pm["id"]

    leaving = subs_of[by_email["leaving@example.com"]["id"]][0]
    leaving["canceled_at"] = b.ago(3)
    leaving["cancellation_details"] = {
        "comment": "Moving to an in-house tool next quarter.",
        "feedback": "switched_service",
        "reason": "cancellation_requested",
    }
    churned = subs_of[by_email["churned@example.com"]["id"]][0]
    churned["cancellation_details"] = {
        "comment": "Too pricey for our team right now.",
        "feedback": "too_expensive",
        "reason": "cancellation_requested",
    }


def _payment_intents(b: _Builder) -> None:
    """A PaymentIntent behind every charge, as Stripe makes one for each invoice payment; added last and
    named after its charge (``ch_1Demo…`` → ``pi_1Demo…``), so every seeded id stays what it was."""
    for charge in [o for o in b.objects if o.get("object") == "charge"]:
        intent_id = "pi_" + charge["id"].removeprefix("ch_")
        charge["payment_intent"] = intent_id
        ok = charge["status"] == "succeeded"
        b.add(
            {
                "id": intent_id,
                "object": "payment_intent",
                "amount": charge["amount"],
                "amount_received": charge["amount"] if ok else 0,
                "created": charge["created"],
                "currency": charge["currency"],
                "customer": charge["customer"],
                "latest_charge": charge["id"],
                "livemode": charge["livemode"],
                "metadata": {},
                "payment_method": charge["payment_method"],
                "status": "succeeded" if ok else "requires_payment_method",
            }
        )
