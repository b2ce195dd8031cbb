"""Generated Stripe accounts for the benchmarks: customers with a subscription and months of paid
invoices and charges (``history``), and a backfill-sized account with given totals (``account``).

Objects are Stripe-shaped dicts loaded into the sandbox (``SandboxControl.load`` or
``StripeProcess.load``); every customer's email is ``user<n>@bench.example``.
"""

from __future__ import annotations

from typing import Any

DAY = 86_400


def email_of(n: int) -> str:
    return f"user{n}@bench.example"


def customer_id_of(n: int) -> str:
    return f"cus_bench{n:06d}"


def _customer(n: int, created: int) -> dict[str, Any]:
    return {"id": customer_id_of(n), "object": "customer", "email": email_of(n),
            "name": f"Bench User {n}", "created": created, "currency": "usd",
            "delinquent": False, "metadata": {"plan_tier": "pro"}, "discount": None}


def _subscription(sid: str, cid: str, price_id: str, created: int, now: int, status: str = "active"
                  ) -> dict[str, Any]:
    return {
        "id": sid, "object": "subscription", "customer": cid, "status": status, "created": created,
        "start_date": created, "currency": "usd", "cancel_at_period_end": False, "cancel_at": None,
        "canceled_at": now - 30 * DAY if status == "canceled" else None,
        "ended_at": now - 30 * DAY if status == "canceled" else None,
        "trial_start": None, "trial_end": None, "pause_collection": None, "discounts": [], "metadata": {},
        "default_tax_rates": [], "latest_invoice": None,
        "items": {"object": "list", "data": [{
            "id": f"si_{sid[4:]}", "object": "subscription_item", "quantity": 1,
            "price": {"id": price_id}, "current_period_start": now - 5 * DAY,
            "current_period_end": now + 25 * DAY, "discounts": [], "tax_rates": [], "metadata": {},
        }]},
    }


def _invoice(iid: str, number: str, cid: str, sid: str, at: int, status: str = "paid") -> dict[str, Any]:
    paid = status == "paid"
    return {
        "id": iid, "object": "invoice", "customer": cid, "number": number, "status": status,
        "amount_due": 2900, "amount_paid": 2900 if paid else 0, "amount_remaining": 0 if paid else 2900,
        "currency": "usd", "created": at, "attempt_count": 1, "attempted": True,
        "billing_reason": "subscription_cycle",
        "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_x/test_{iid[3:]}",
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": sid}},
    }


def _charge(chid: str, cid: str, at: int, status: str = "succeeded") -> dict[str, Any]:
    ok = status == "succeeded"
    return {"id": chid, "object": "charge", "customer": cid, "amount": 2900,
            "amount_captured": 2900 if ok else 0, "amount_refunded": 0, "currency": "usd",
            "status": status, "created": at, "captured": ok, "refunded": False, "disputed": False}


def history(count: int, price_id: str, now: int, months: int = 14, offset: int = 0) -> list[dict[str, Any]]:
    """``count`` customers (numbered from ``offset``), each with an active subscription and ``months``
    paid invoices and charges."""
    objects: list[dict[str, Any]] = []
    for n in range(offset, offset + count):
        cid, sid = customer_id_of(n), f"sub_bench{n:06d}"
        created = now - 420 * DAY + n
        objects.append(_customer(n, created))
        objects.append(_subscription(sid, cid, price_id, created, now))
        for month in range(months):
            at = now - month * 30 * DAY
            objects.append(_invoice(f"in_bench{n:06d}m{month:02d}", f"B{n:06d}-{month:04d}", cid, sid, at))
            objects.append(_charge(f"ch_bench{n:06d}m{month:02d}", cid, at + 60))
    return objects


def account(customers: int, subscriptions: int, invoices: int, charges: int, price_id: str, now: int
            ) -> list[dict[str, Any]]:
    """An account with these totals, spread over the customers (created over ~3 years): every customer
    has a subscription, the extra ones are older canceled subscriptions; invoices and charges go round
    the customers, a month apart for each."""
    objects: list[dict[str, Any]] = []
    span = 3 * 365 * DAY
    for n in range(customers):
        objects.append(_customer(n, now - span + n * span // max(1, customers)))
    for s in range(subscriptions):
        n = s % customers
        status = "active" if s < customers else "canceled"
        created = now - span + n * span // max(1, customers) + s // customers
        objects.append(_subscription(f"sub_bench{s:06d}", customer_id_of(n), price_id, created, now, status))
    for i in range(invoices):
        n, k = i % customers, i // customers
        objects.append(_invoice(f"in_bench{i:07d}", f"B{n:06d}-{k:04d}", customer_id_of(n),
                                f"sub_bench{n:06d}", now - k * 30 * DAY - n))
    for c in range(charges):
        n, k = c % customers, c // customers
        objects.append(_charge(f"ch_bench{c:07d}", customer_id_of(n), now - k * 10 * DAY - n,
                               "failed" if k % 7 == 3 else "succeeded"))
    return objects


def recurring_price(prices: list[dict[str, Any]]) -> str:
    """A per-unit recurring price of the sandbox's demo data (generated subscriptions use it)."""
    return str(next(p for p in prices if p.get("recurring") and p.get("billing_scheme") == "per_unit")["id"])
