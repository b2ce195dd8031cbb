"""Shared set-up for the benchmarks: the in-process sandbox, a private key prefix on REDIS_URL, and the
world most of them measure (generated customers backfilled into that prefix)."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/x.py`

from world import customer_id_of, email_of, history, recurring_price

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.ports import Tenant
from billing.stripe.gateway import StripeGateway
from billing.sync.backfill import Backfill
from sandbox.control import SandboxControl
from sandbox.server import SandboxServer

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SANDBOX_KEY = "rk_test_sandboxBillingLens0001"


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(title: str, rows: Sequence[tuple[str, str, str]]) -> None:
    """Print figures as `name  value  target` lines (the smoke test reads them)."""
    print(title)
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:>14}  {target}")


async def unlink_prefix(prefix: str) -> None:
    client = await open_redis(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for key in keys:
            await client.unlink(key)
    finally:
        await client.aclose()


@asynccontextmanager
async def private_store(tenant: Tenant) -> AsyncIterator[RedisStore]:
    """A store under a fresh key prefix, unlinked afterwards."""
    prefix = f"blbench{uuid.uuid4().hex[:8]}"
    client = await open_redis(REDIS_URL)
    try:
        yield RedisStore(client, tenant, prefix=prefix)
    finally:
        await client.aclose()
        await unlink_prefix(prefix)


def gateway_for(url: str) -> StripeGateway:
    return StripeGateway(SANDBOX_KEY, api_base=url, rate_limit=500)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Figures = dict[str, float]
"""One run of a benchmark: figure name -> value (seconds, events/s, bytes …)."""

T = TypeVar("T")


def in_sandbox(run: Callable[[str], Awaitable[T]]) -> T:
    """``run(url)`` against the sandbox in this process (a script run standalone)."""
    with SandboxServer() as sandbox:
        return asyncio.run(run(sandbox.url))


@dataclass
class World:
    """Generated customers, cached by a backfill under a private prefix."""

    url: str
    gateway: StripeGateway
    store: RedisStore
    customers: int
    contexts: int  # cached contexts, the sandbox's demo customers included
    price_id: str  # the price of every generated subscription

    def email(self, n: int) -> str:
        return email_of(n)

    def customer_id(self, n: int) -> str:
        return customer_id_of(n)


@asynccontextmanager
async def cached_world(url: str, customers: int, months: int = 14) -> AsyncIterator[World]:
    """``customers`` generated customers (none: the sandbox's demo alone) in the sandbox at ``url``,
    backfilled into a fresh prefix (removed on exit)."""
    async with gateway_for(url) as gateway:
        price_id = recurring_price([p async for p in gateway.iter_objects("prices", {})])
        if customers:
            with SandboxControl(url, timeout=300) as control:
                control.load(history(customers, price_id, int(time.time()), months))
        async with private_store(await gateway.tenant()) as store:
            report = await Backfill(gateway, store).run()
            yield World(url, gateway, store, customers, report.contexts_built, price_id)
