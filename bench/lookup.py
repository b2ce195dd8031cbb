"""Cache-hit ``BillingService.lookup`` next to the bare read it cannot beat.

Loads ``--customers`` generated customers (a subscription and 14 months of paid invoices and charges
each) into the sandbox, backfills them into a private prefix on REDIS_URL, then makes ``--n`` lookups
by email of customers picked at random (seeded), each followed by one ``GET`` + decode of the same
customer's stored context: the least a cache hit can cost (one round trip, one decode). Every lookup
is checked to be a cache hit. Prints p50/p99 of both and their ratio (goal: p99 <= 2x the bare read).
"""

from __future__ import annotations

import argparse
import random
import time

from common import Figures, World, cached_world, in_sandbox, median, percentile, table

from billing.cache.store import decode_context
from billing.service import BillingService


async def measure(world: World, lookups: int, *, seed: int = 0) -> Figures:
    """``lookups`` cache hits by email, each followed by the bare read of the same stored context."""
    service = BillingService(world.gateway, world.store)
    client = world.store.client
    picks = random.Random(seed)
    for n in range(min(world.customers, 50)):  # warm the connection pool and the script cache
        assert (await service.lookup(world.email(n))).source == "cache", world.email(n)
    ours: list[float] = []
    bare: list[float] = []
    for _ in range(lookups):
        n = picks.randrange(world.customers)
        email, key = world.email(n), world.store.customer_key(world.customer_id(n), "ctx")
        start = time.perf_counter()
        context = await service.lookup(email)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        decode_context(await client.get(key))
        bare.append(time.perf_counter() - start)
        if context.source != "cache":
            raise RuntimeError(f"{email} was not a cache hit: the figure would be wrong")
    return {
        "ours_p50": median(ours), "ours_p99": percentile(ours, 99),
        "bare_p50": median(bare), "bare_p99": percentile(bare, 99),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def bench(url: str, customers: int, lookups: int) -> list[tuple[str, str, str]]:
    async with cached_world(url, customers) as world:
        figures = await measure(world, lookups)
    return [
        ("customers cached", f"{customers:,}", ""),
        ("lookups", f"{lookups:,}", ""),
        ("lookup p50", _ms(figures["ours_p50"]), ""),
        ("lookup p99", _ms(figures["ours_p99"]), ""),
        ("bare GET+decode p50", _ms(figures["bare_p50"]), "one round trip and one decode"),
        ("bare GET+decode p99", _ms(figures["bare_p99"]), ""),
        ("p99 ratio", f"{figures['ours_p99'] / figures['bare_p99']:.2f}x", "goal <= 2x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="lookups")
    parser.add_argument("--customers", type=int, default=1_000)
    args = parser.parse_args()
    rows = in_sandbox(lambda url: bench(url, args.customers, args.n))
    table("BillingService.lookup, cache hit, vs one GET + decode of the same context", rows)


if __name__ == "__main__":
    main()
