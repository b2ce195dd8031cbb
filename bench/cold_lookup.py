"""A lookup that misses the cache, at a simulated Stripe latency, next to its round-trip floor and to a
naive SDK lookup.

The sandbox runs in its own process and answers every ``/v1`` request after ``--latency-ms`` (150).
Ours: ``BillingService.lookup`` by email over an empty private prefix (a miss: Stripe, build, save),
on a gateway that has served one earlier lookup (a running server's: prices and products cached);
its Stripe requests and the sequential round trips on its critical path are read from the sandbox's
request log (start and end of each request). The floor is those round trips x latency; beside it, the
time Stripe (the sandbox, in its own process) actually held the lookup's requests, which at a large
account includes its own processing, and ours outside that time. Naive: what a
sidebar that calls Stripe on every question does with the SDK: the customer by email, then its
subscriptions, invoices and charges one after another, each auto-paginated.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import stripe
from common import SANDBOX_KEY, Figures, gateway_for, median, private_store, table
from stripe_proc import StripeProcess, busy_seconds, round_trips
from world import email_of, history, recurring_price

from billing.service import BillingService


async def naive_lookup(client: stripe.StripeClient, email: str) -> int:
    """The customer, then subscriptions, invoices and charges, one after another; objects seen."""
    customers = await client.v1.customers.list_async(params={"email": email, "limit": 100})
    customer_id = customers.data[0].id
    seen = 1
    for service, params in (
        (client.v1.subscriptions, {"customer": customer_id, "status": "all", "limit": 100}),
        (client.v1.invoices, {"customer": customer_id, "limit": 100}),
        (client.v1.charges, {"customer": customer_id, "limit": 100}),
    ):
        page: Any = await service.list_async(params=params)
        async for _ in page.auto_paging_iter():
            seen += 1
    return seen


def naive_client(url: str) -> tuple[stripe.StripeClient, stripe.HTTPXClient]:
    """The SDK as a naive integration uses it (no retries of ours, no cache); close the second."""
    http = stripe.HTTPXClient(timeout=30)
    return stripe.StripeClient(SANDBOX_KEY, base_addresses={"api": url}, max_network_retries=0,
                               http_client=http), http


async def measure(stripe_proc: StripeProcess, customers: list[int], latency_ms: float) -> Figures:
    """Each customer looked up cold by us and by the naive client; medians over the customers."""
    ours_wall: list[float] = []
    ours_requests: list[float] = []
    ours_trips: list[float] = []
    ours_stripe: list[float] = []
    naive_wall: list[float] = []
    naive_requests: list[float] = []
    naive_trips: list[float] = []
    client, http = naive_client(stripe_proc.url)
    async with gateway_for(stripe_proc.url) as gateway, private_store(await gateway.tenant()) as store:
        service = BillingService(gateway, store)
        await service.lookup("jane@acme.com")  # a running server's gateway: reference data cached
        stripe_proc.set_faults(latency_ms=latency_ms)
        try:
            for n in customers:
                email = email_of(n)
                stripe_proc.clear_requests()
                start = time.perf_counter()
                context = await service.lookup(email)
                ours_wall.append(time.perf_counter() - start)
                if context.source != "stripe" or context.customer is None:
                    raise RuntimeError(f"{email} was not a cold lookup: the figure would be wrong")
                log = stripe_proc.requests()
                ours_requests.append(len(log))
                ours_trips.append(round_trips(log))
                ours_stripe.append(busy_seconds(log))
                stripe_proc.clear_requests()
                start = time.perf_counter()
                await naive_lookup(client, email)
                naive_wall.append(time.perf_counter() - start)
                log = stripe_proc.requests()
                naive_requests.append(len(log))
                naive_trips.append(round_trips(log))
        finally:
            stripe_proc.set_faults(latency_ms=0)
            await http.close_async()  # type: ignore[no-untyped-call]
    trips = median(ours_trips)
    return {
        "ours_wall": median(ours_wall), "ours_requests": median(ours_requests), "ours_trips": trips,
        "floor": trips * latency_ms / 1000, "ours_stripe": median(ours_stripe),
        "ours_outside": median([w - s for w, s in zip(ours_wall, ours_stripe, strict=True)]),
        "naive_wall": median(naive_wall), "naive_requests": median(naive_requests),
        "naive_trips": median(naive_trips),
    }


async def bench(stripe_proc: StripeProcess, count: int, latency_ms: float, others: int = 0
                ) -> list[tuple[str, str, str]]:
    async with gateway_for(stripe_proc.url) as gateway:
        prices = [p async for p in gateway.iter_objects("prices", {})]
    # the account's other customers (14 months each, as `make bench` loads them) make Stripe's lists
    # run over a realistic account, not only the looked-up customers' own objects
    stripe_proc.load(history(count + others, recurring_price(prices), int(time.time())))
    f = await measure(stripe_proc, list(range(count)), latency_ms)
    return [
        ("customers", f"{count} (account: {count + others:,})", f"Stripe latency {latency_ms:g} ms"),
        ("ours: wall", f"{f['ours_wall'] * 1000:.0f} ms", ""),
        ("ours: requests / round trips", f"{f['ours_requests']:.0f} / {f['ours_trips']:.0f}", ""),
        ("floor (round trips x latency)", f"{f['floor'] * 1000:.0f} ms", ""),
        ("ours / floor", f"{f['ours_wall'] / f['floor']:.2f}x", "goal <= 1.1x"),
        ("Stripe's time on the path / ours outside it",
         f"{f['ours_stripe'] * 1000:.0f} / {f['ours_outside'] * 1000:.0f} ms", "from the sandbox's log"),
        ("naive: wall", f"{f['naive_wall'] * 1000:.0f} ms", ""),
        ("naive: requests / round trips", f"{f['naive_requests']:.0f} / {f['naive_trips']:.0f}", ""),
        ("naive / ours", f"{f['naive_wall'] / f['ours_wall']:.2f}x", "goal >= 2x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5, help="customers looked up cold")
    parser.add_argument("--latency-ms", type=float, default=150.0)
    parser.add_argument("--account", type=int, default=1_000,
                        help="other customers in the account, 14 months of history each (make bench: 1,000)")
    args = parser.parse_args()
    with StripeProcess() as stripe_proc:
        rows = asyncio.run(bench(stripe_proc, args.n, args.latency_ms, args.account))
    table("Cold lookup vs its round-trip floor and a naive SDK lookup", rows)


if __name__ == "__main__":
    main()
