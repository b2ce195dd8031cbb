"""Redis bytes per cached customer, all keys (target <= 4 KiB).

Backfills the sandbox demo plus N generated customers (each with a subscription and ``--months`` paid
invoices and charges) into a private prefix, then sums ``MEMORY USAGE`` of every
key under the prefix (contexts, objects, email index, shared prices/products/coupons, refs, health).
Measured in the steady state a running worker keeps: its reminder scheduler has looked at every
customer the backfill saved (``reminders:dirty`` drained, each next reminder moment scheduled).
"""

from __future__ import annotations

import argparse

from common import REDIS_URL, Figures, cached_world, in_sandbox, table

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from bot.alerts import build_scheduler
from rules.loader import default_rules_path, load_rules


async def settle_scheduler(store: RedisStore) -> int:
    """Tick the worker's reminder scheduler (default rules) until it has looked at every saved
    customer, as a running worker does within seconds of a backfill; returns the ticks taken."""
    rules = load_rules(default_rules_path())
    scheduler = build_scheduler(store, lambda: rules)
    state = store.reminder_state()
    ticks = 0
    while await store.client.scard(state.dirty_key) and ticks < 10_000:
        await scheduler.tick()
        ticks += 1
    return ticks


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
    async with cached_world(url, n, months) as world:
        await settle_scheduler(world.store)
        f = await measure(world.store, world.contexts)
    return [
        ("customers cached", f"{world.contexts:,}", ""),
        ("bytes, all keys", f"{f['total']:,.0f}", ""),
        ("per customer, own keys", f"{f['own_per_customer']:,.0f} B", ""),
        ("per customer, all keys", f"{f['per_customer']:,.0f} B", "target <= 4,096 B"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2_000, help="generated customers on top of the demo")
    parser.add_argument("--months", type=int, default=14, help="paid invoices and charges per customer")
    args = parser.parse_args()
    rows = in_sandbox(lambda url: bench(url, args.n, args.months))
    table(f"Redis bytes per cached customer ({args.months} months of invoices and charges each)", rows)


if __name__ == "__main__":
    main()
