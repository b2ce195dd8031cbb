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

from common import REDIS_URL, Figures, gateway_for, private_store, table
from world import history, recurring_price

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.sync.backfill import Backfill
from sandbox.control import SandboxControl
from sandbox.server import SandboxServer


def generated(count: int, price_id: str, now: int, months: int = 14) -> list[dict[str, Any]]:
    """``count`` customers with a subscription and ``months`` paid invoices and charges each."""
    return history(count, price_id, now, months)


async def measure(store: RedisStore, customers: int) -> Figures:
    """``MEMORY USAGE`` of every key under the store's prefix: in all, per customer (all keys, and the
    customer's own keys, those of its hash tag)."""
    client = await open_redis(REDIS_URL)
    try:
        total = own = 0
        async for key in client.scan_iter(match=f"{store.prefix}:*", count=1000):
            size = int(await client.memory_usage(key, samples=0) or 0)
            total += size
            if b":{cus_" in key:
                own += size
    finally:
        await client.aclose()
    return {"total": total, "per_customer": total / customers, "own_per_customer": own / customers}


async def bench(url: str, n: int, months: int) -> list[tuple[str, str, str]]:
    async with gateway_for(url) as gateway:
        prices = [p async for p in gateway.iter_objects("prices", {})]
        with SandboxControl(url) as control:
            control.load(generated(n, recurring_price(prices), int(time.time()), months))
        async with private_store(await gateway.tenant()) as store:
            report = await Backfill(gateway, store).run()
            f = await measure(store, report.contexts_built)
    return [
        ("customers cached", f"{report.contexts_built:,}", ""),
        ("bytes, all keys", f"{f['total']:,.0f}", ""),
        ("per customer, own keys", f"{f['own_per_customer']:,.0f} B", ""),
        ("per customer, all keys", f"{f['per_customer']:,.0f} B", "target <= 4,096 B"),
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
