"""Backfill against Stripe's rate limit: our ``billing.sync.backfill.Backfill`` next to the floor (the list
pages the account needs ÷ the rate) and to naive sequential auto-pagination.

The sandbox runs in its own process with ``--latency-ms`` (50) on every request and a rate limit of
``--rate`` requests/s (100; a request over it is a 429, which the gateway retries); the gateway is
configured to the same rate (``BILLING_STRIPE_RATE``). The account: ``--customers`` customers and
1.2x as many subscriptions, 4x invoices and 12x charges (the issue's 10,000 / 12,000 / 40,000 /
120,000 at ``--customers 10000``). Requests needed = the 100-object pages of every list (customers,
subscriptions, invoices, charges, disputes, credit notes) plus the next-invoice preview of every
renewing subscription (one request each: the card shows the next invoice). Naive: customers,
subscriptions, invoices and charges listed one page after another with the SDK's auto-pagination (no
contexts built, no previews).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time

from cold_lookup import naive_client
from common import SANDBOX_KEY, Figures, private_store, table
from stripe_proc import StripeProcess
from world import account, recurring_price

from billing.stripe.gateway import StripeGateway
from billing.sync.backfill import Backfill, SilentObserver

LIST_LIMIT = 100


def totals(customers: int) -> dict[str, int]:
    return {"customers": customers, "subscriptions": customers * 6 // 5, "invoices": customers * 4,
            "charges": customers * 12}


def pages_needed(counts: dict[str, int]) -> int:
    """Every list read in 100-object pages (an empty list still takes one request)."""
    return sum(max(1, math.ceil(count / LIST_LIMIT)) for count in counts.values())


async def load_account(stripe_proc: StripeProcess, customers: int) -> dict[str, int]:
    """The demo data plus a generated account; the object counts of every list the backfill reads."""
    async with StripeGateway(SANDBOX_KEY, api_base=stripe_proc.url, rate_limit=1000) as gateway:
        price_id = recurring_price([p async for p in gateway.iter_objects("prices", {})])
    counts = totals(customers)
    stripe_proc.load(account(counts["customers"], counts["subscriptions"], counts["invoices"],
                             counts["charges"], price_id, int(time.time())))
    status = stripe_proc._http.get("/_sandbox/status").json()["counts"]
    return {kind: int(status.get(kind[:-1], 0)) for kind in
            ("customers", "subscriptions", "invoices", "charges", "disputes", "credit_notes")}


PREVIEW_PATH = "/v1/invoices/create_preview"


class _Phases(SilentObserver):
    """When the backfill stopped fetching and began building contexts."""

    def __init__(self) -> None:
        self.building_at: float | None = None

    def building(self, total: int) -> None:
        self.building_at = time.perf_counter()


async def ours(stripe_proc: StripeProcess, rate: float) -> tuple[float, float, int, int, int]:
    """Seconds (in all, and fetching), Stripe requests, 429s and invoice previews (one per renewing
    subscription, for the card's next invoice) of one backfill into a fresh prefix."""
    stripe_proc.clear_requests()
    async with StripeGateway(SANDBOX_KEY, api_base=stripe_proc.url, rate_limit=rate) as gateway:
        tenant = await gateway.tenant()
        async with private_store(tenant) as store:
            stripe_proc.clear_requests()
            phases = _Phases()
            start = time.perf_counter()
            await Backfill(gateway, store, observer=phases).run()
            seconds = time.perf_counter() - start
            fetching = (phases.building_at or time.perf_counter()) - start
    log = stripe_proc.requests()
    previews = sum(1 for r in log if r.path == PREVIEW_PATH and r.status != 429)
    return seconds, fetching, len(log), sum(1 for r in log if r.status == 429), previews


async def naive(stripe_proc: StripeProcess, counts: dict[str, int], max_pages: int | None = None
                ) -> tuple[float, int]:
    """Seconds and pages of sequential auto-pagination over the four lists. With ``max_pages``, each list
    reads at most a quarter of them and its time is scaled to all its pages (sequential pages of one
    list cost the same each)."""
    client, http = naive_client(stripe_proc.url)
    total_seconds, total_pages = 0.0, 0
    try:
        for name, service, params in (("customers", client.v1.customers, {}),
                                      ("subscriptions", client.v1.subscriptions, {"status": "all"}),
                                      ("invoices", client.v1.invoices, {}),
                                      ("charges", client.v1.charges, {})):
            budget = None if max_pages is None else max(1, max_pages // 4)
            start = time.perf_counter()
            page = await service.list_async(params={"limit": LIST_LIMIT, **params})
            pages = 1
            while page.has_more and (budget is None or pages < budget):
                page = await service.list_async(params={"limit": LIST_LIMIT, **params,
                                                        "starting_after": page.data[-1].id})
                pages += 1
            all_pages = max(1, math.ceil(counts[name] / LIST_LIMIT))
            total_seconds += (time.perf_counter() - start) * (all_pages / pages if page.has_more else 1)
            total_pages += pages
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    return total_seconds, total_pages


async def measure(stripe_proc: StripeProcess, counts: dict[str, int], rate: float, latency_ms: float,
                  naive_pages: int | None) -> Figures:
    stripe_proc.set_faults(latency_ms=latency_ms)
    stripe_proc.set_rate(rate)
    try:
        seconds, fetching, requests, limited, previews = await ours(stripe_proc, rate)
        stripe_proc.set_rate(0)
        naive_seconds, pages = await naive(stripe_proc, counts, naive_pages)
    finally:
        stripe_proc.set_faults(latency_ms=0)
        stripe_proc.set_rate(0)
    # What the product needs from Stripe: every list in 100-object pages, and the next-invoice
    # preview of each renewing subscription (the card shows it); the naive run lists only.
    pages_only = pages_needed(counts)
    needed = pages_only + previews
    return {
        "ours": seconds, "fetching": fetching, "building": seconds - fetching, "requests": requests,
        "rate_limited": limited, "needed": needed,
        "pages": pages_only, "previews": previews, "floor": needed / rate, "list_floor": pages_only / rate,
        "naive": naive_seconds, "naive_pages": pages,
    }


async def bench(customers: int, rate: float, latency_ms: float, naive_pages: int | None
                ) -> list[tuple[str, str, str]]:
    with StripeProcess() as stripe_proc:
        counts = await load_account(stripe_proc, customers)
        f = await measure(stripe_proc, counts, rate, latency_ms, naive_pages)
    return [
        ("objects", ", ".join(f"{v:,} {k}" for k, v in counts.items()), ""),
        ("requests needed / made", f"{f['needed']:.0f} / {f['requests']:.0f}",
         f"{f['pages']:.0f} list pages + {f['previews']:.0f} invoice previews; "
         f"{f['rate_limited']:.0f} got 429"),
        ("floor (needed / rate)", f"{f['floor']:.1f} s", f"{rate:g} requests/s, {latency_ms:g} ms latency; "
         f"list pages alone {f['list_floor']:.1f} s"),
        ("ours", f"{f['ours']:.1f} s", f"{f['ours'] / f['floor']:.2f}x the floor; goal <= 1.15x"),
        ("ours: fetching, then building contexts", f"{f['fetching']:.1f} s + {f['building']:.1f} s",
         f"fetching {f['fetching'] / f['floor']:.2f}x the floor"),
        ("naive sequential", f"{f['naive']:.1f} s", f"{f['naive'] / f['ours']:.2f}x ours; goal >= 5x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--naive-pages", type=int, default=0,
                        help="pages the naive run reads before its time is scaled to all (0: all)")
    args = parser.parse_args()
    rows = asyncio.run(bench(args.customers, args.rate, args.latency_ms, args.naive_pages or None))
    table("Backfill vs the rate-limit floor and naive sequential auto-pagination", rows)


if __name__ == "__main__":
    main()
