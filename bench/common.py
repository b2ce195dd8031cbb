"""Shared set-up for the benchmarks: the in-process sandbox, a private key prefix on REDIS_URL."""

from __future__ import annotations

import os
import socket
import statistics
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/x.py`

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.ports import Tenant
from billing.stripe.gateway import StripeGateway

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
