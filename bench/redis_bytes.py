"""Redis bytes per cached customer, all keys (target <= 4 KiB).

Backfills the sandbox demo plus N generated customers (each with a subscription and ``--months`` paid
invoices and charges) into a private prefix, then sums ``MEMORY USAGE`` of every
key under the prefix (contexts, objects, email index, shared prices/products/coupons, refs, health).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from common import REDIS_URL, gateway_for, private_store, table

from billing.backfill import Backfill
from billing.redis_conn import open_redis
from sandbox.control import SandboxControl
from sandbox.server import SandboxServer

DAY = 86_400


def generated(count: int, price_id: str, now: int, months: int = 14) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for n in range(count):
        cid, sid = f"cus_bench{n:06d}", f"sub_bench{n:06d}"
        created = now - 420 * DAY + n
        objects.append({"id": cid, "object": "customer", "email": f"user{n}@bench.example",
                        "name": f"Bench User {n}", "created": created, "currency": "usd",
                        "delinquent": False, "metadata": {"plan_tier": "pro"}, "discount": None})
        objects.append({
            "id": sid, "object": "subscription", "customer": cid, "status": "active", "created": created,
            "start_date": created, "currency": "usd", "cancel_at_period_end": False, "cancel_at": None,
            "canceled_at": None, "ended_at": None, "trial_start": None, "trial_end": None,
            "pause_collection": None, "discounts": [], "metadata": {}, "default_tax_rates": [],
            "latest_invoice": None,
            "items": {"object": "list", "data": [{
                "id": f"si_bench{n:06d}", "object": "subscription_item", "quantity": 1,
                "price": {"id": price_id}, "current_period_start": now - 5 * DAY,
                "current_period_end": now + 25 * DAY, "discounts": [], "tax_rates": [], "metadata": {},
            }]},
        })
        for month in range(months):
            at = now - month * 30 * DAY
            objects.append({
                "id": f"in_bench{n:06d}m{month:02d}", "object": "invoice", "customer": cid,
                "number": f"B{n:06d}-{month:04d}", "status": "paid", "amount_due": 2900,
                "amount_paid": 2900, "amount_remaining": 0, "currency": "usd", "created": at,
                "attempt_count": 1, "attempted": True, "billing_reason": "subscription_cycle",
                "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_x/test_{n:06d}{month:02d}",
                "parent": {"type": "subscription_details", "subscription_details": {"subscription": sid}},
            })
            objects.append({
                "id": f"ch_bench{n:06d}m{month:02d}", "object": "charge", "customer": cid, "amount": 2900,
                "amount_captured": 2900, "amount_refunded": 0, "currency": "usd", "status": "succeeded",
                "created": at + 60, "captured": True, "refunded": False, "disputed": False,
            })
    return objects


async def bench(url: str, n: int, months: int) -> list[tuple[str, str, str]]:
    async with gateway_for(url) as gateway:
        prices = [p async for p in gateway.iter_objects("prices", {})]
        price = next(p for p in prices if p.get("recurring") and p.get("billing_scheme") == "per_unit")
        with SandboxControl(url) as control:
            control.load(generated(n, price["id"], int(time.time()), months))
        async with private_store(await gateway.tenant()) as store:
            report = await Backfill(gateway, store).run()
            client = await open_redis(REDIS_URL)
            try:
                total = per_customer = 0
                async for key in client.scan_iter(match=f"{store.prefix}:*", count=1000):
                    size = int(await client.memory_usage(key, samples=0) or 0)
                    total += size
                    if b":{cus_" in key:
                        per_customer += size
            finally:
                await client.aclose()
    customers = report.contexts_built
    return [
        ("customers cached", f"{customers:,}", ""),
        ("bytes, all keys", f"{total:,}", ""),
        ("per customer, own keys", f"{per_customer / customers:,.0f} B", ""),
        ("per customer, all keys", f"{total / customers:,.0f} B", "target <= 4,096 B"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2_000, help="generated customers on top of the demo")
    parser.add_argument("--months", type=int, default=14, help="paid invoices and charges per customer")
    args = parser.parse_args()
    with SandboxServer() as sandbox:
        rows = asyncio.run(bench(sandbox.url, args.n, args.months))
    table(f"Redis bytes per cached customer ({args.months} months of invoices and charges each)", rows)


if __name__ == "__main__":
    main()
