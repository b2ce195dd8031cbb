"""Issue #3 ("fresh data"), done when: a Stripe change reaches the cached card within seconds.

Real parts only: ``billing serve`` and ``billing lookup`` run as subprocesses (the installed console
script), the Stripe sandbox signs and delivers the webhooks over HTTP, and the cache is the shared
Redis server, or the suite's local 3-master cluster, under a key prefix of this test (unlinked
afterwards, nothing else is touched).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.stripe.gateway import StripeGateway
from tests.e2e.conftest import Served
from tests.fixtures_sandbox import SandboxHandle

FRESH_WITHIN_SECONDS = 10.0  # generous so a loaded machine does not fail it; the figure is printed


@dataclass(frozen=True)
class Product(Served):
    """``billing serve`` (on a single Redis and on the local cluster) and its cache, read directly."""

    store: RedisStore

    def lookup(self, query: str) -> dict[str, Any]:
        result = self.billing("lookup", query, "--json")
        assert result.returncode == 0, result.stderr
        body: dict[str, Any] = json.loads(result.stdout)
        return body

    def transitions_logged(self, name: str, customer_id: str) -> int:
        """How many times the server logged this transition (its notifier logs each one it handles)."""
        pattern = rf"transition {re.escape(name)} customer={re.escape(customer_id)}\b"
        return len(re.findall(pattern, self.log()))


@pytest.fixture
async def product(served: Served, sandbox: SandboxHandle, any_redis_url: str, key_prefix: str
                  ) -> AsyncIterator[Product]:
    async with StripeGateway(sandbox.api_key, api_base=sandbox.url) as gateway:
        tenant = await gateway.tenant()  # the account the server's keys are under
    client = await open_redis(any_redis_url)
    try:
        yield Product(served.url, served.env, served.log_path, RedisStore(client, tenant, prefix=key_prefix))
    finally:
        await client.aclose()


async def wait_for(check: Callable[[], Any], what: str, within: float = FRESH_WITHIN_SECONDS) -> float:
    """Poll ``check`` (an async callable) until it returns true; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if await check():
            return time.monotonic() - start
        await _pause()
    pytest.fail(f"{what} did not happen within {within} s")


async def _pause() -> None:
    await asyncio.sleep(0.02)


async def stream_drained(store: RedisStore) -> bool:
    health = await store.health()
    return health.stream_length == 0 and health.pending == 0


async def test_past_due_reaches_the_cached_card_within_seconds(
    product: Product, sandbox: SandboxHandle
) -> None:
    warm = product.lookup("bigco@example.com")  # the first lookup fills the cache from Stripe
    assert (warm["status"], warm["source"]) == ("active", "stripe")
    assert product.lookup("bigco@example.com")["source"] == "cache"
    customer_id, sub_id = warm["customer"]["id"], warm["subscriptions"][0]["id"]

    started = time.monotonic()
    sandbox.control.set_subscription_status(sub_id, "past_due")  # signed webhook to the server

    async def cached_past_due() -> bool:
        ctx = await product.store.get_context(customer_id)
        return ctx is not None and ctx.status == "past_due"

    await wait_for(cached_past_due, "the past_due status reaching the cache")
    latency = time.monotonic() - started
    print(f"\nfresh data: Stripe change -> cached card in {latency * 1000:.0f} ms")

    card = product.lookup("bigco@example.com")
    assert (card["status"], card["source"]) == ("past_due", "cache")
    assert card["subscriptions"][0]["status"] == "past_due"
    assert card["mrr"] == {"usd": 125000}  # past_due still counts (MRR.md)
    assert "past_due" in card["segments"]
    await wait_for(lambda: stream_drained(product.store), "the worker acknowledging every event")
    assert product.transitions_logged("subscription.past_due", customer_id) == 1


async def test_a_failed_payment_reaches_the_cache(product: Product, sandbox: SandboxHandle) -> None:
    before = product.lookup("jane@acme.com")
    customer_id = before["customer"]["id"]
    invoice = before["recent_invoices"][0]
    assert (invoice["status"], invoice["attempt_count"]) == ("open", 2)

    started = time.monotonic()
    sandbox.control.fail_invoice(invoice["id"])

    async def third_attempt_cached() -> bool:
        ctx = await product.store.get_context(customer_id)
        return ctx is not None and ctx.recent_invoices[0].attempt_count == 3

    await wait_for(third_attempt_cached, "the failed payment reaching the cache")
    print(f"\nfresh data: failed payment -> cached card in {(time.monotonic() - started) * 1000:.0f} ms")
    card = product.lookup("jane@acme.com")
    assert card["source"] == "cache" and card["payment_status"] == "failed"
    assert card["recent_invoices"][0]["attempt_count"] == 3
    assert card["customer"]["delinquent"] is True
    await wait_for(lambda: stream_drained(product.store), "the worker acknowledging every event")
    assert product.transitions_logged("invoice.payment_failed", customer_id) == 1


async def test_redelivered_events_change_nothing(product: Product, sandbox: SandboxHandle) -> None:
    warm = product.lookup("bigco@example.com")
    customer_id, sub_id = warm["customer"]["id"], warm["subscriptions"][0]["id"]
    events = sandbox.control.set_subscription_status(sub_id, "past_due")["events"]

    async def cached_past_due() -> bool:
        ctx = await product.store.get_context(customer_id)
        return ctx is not None and ctx.status == "past_due"

    await wait_for(cached_past_due, "the past_due status reaching the cache")
    await wait_for(lambda: stream_drained(product.store), "the worker acknowledging every event")
    settled = await product.store.get_context_raw(customer_id)
    objects = await product.store.get_objects(customer_id)

    # Stripe delivers at least once: the same events again, three times each, and a retry round.
    delivered = sandbox.control.deliver([e["id"] for e in events], times=3)["delivered"]
    assert delivered == 3 * len(events)
    await wait_for(lambda: stream_drained(product.store), "the worker acknowledging the duplicates")

    assert await product.store.get_context_raw(customer_id) == settled  # not even as_of moved
    assert await product.store.get_objects(customer_id) == objects
    assert product.transitions_logged("subscription.past_due", customer_id) == 1
    async with httpx.AsyncClient(base_url=product.url, timeout=5) as http:
        metrics = (await http.get("/metrics")).text
    duplicates = next(line for line in metrics.splitlines()
                      if line.startswith("billing_worker_duplicates_total"))
    assert float(duplicates.split()[-1]) >= delivered
