"""Cache-hit ``BillingService.lookup`` latency: p50/p99 over N lookups (target p99 <= 1 ms).

Backfills the sandbox demo into a private prefix on REDIS_URL, then looks the demo customers up by
email in turn; every lookup is a cache hit (no Stripe request is made: the bench checks it).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import gateway_for, median, percentile, private_store, table

from billing.backfill import Backfill
from billing.service import BillingService
from sandbox.server import SandboxServer


async def bench(url: str, n: int) -> list[tuple[str, str, str]]:
    async with gateway_for(url) as gateway, private_store(await gateway.tenant()) as store:
        await Backfill(gateway, store).run()
        service = BillingService(gateway, store)
        emails = ["jane@acme.com", "bigco@example.com", "trial@startup.io", "shared@example.com"]
        for email in emails:  # warm up, and prove they are hits
            assert (await service.lookup(email)).source == "cache", email
        samples: list[float] = []
        for i in range(n):
            start = time.perf_counter()
            context = await service.lookup(emails[i % len(emails)])
            samples.append(time.perf_counter() - start)
            assert context.source == "cache"
    return [
        ("lookups", f"{n:,}", ""),
        ("lookup p50", f"{median(samples) * 1000:.3f} ms", ""),
        ("lookup p99", f"{percentile(samples, 99) * 1000:.3f} ms", "target <= 1 ms"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    with SandboxServer() as sandbox:
        rows = asyncio.run(bench(sandbox.url, args.n))
    table("BillingService.lookup, cache hit", rows)


if __name__ == "__main__":
    main()
