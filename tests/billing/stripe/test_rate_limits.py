"""Stripe's real limits (issue #9 item 14): one budget per account shared by every process through
Redis, search on its own budget, and long backoff on 429 before work counts as failed."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.stripe.gateway import RetryPolicy, SharedRateLimit, StripeGateway, TokenBucket, background_work
from billing.sync.backfill import Backfill
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle


@pytest.fixture
async def limit_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"bltest{uuid.uuid4().hex[:10]}"
    yield f"{prefix}:acct_x:test"
    await unlink_prefix(redis_url, prefix)


def _gateway(sandbox: SandboxHandle, **options: Any) -> StripeGateway:
    return StripeGateway(sandbox.api_key, api_base=sandbox.url, **options)


async def test_two_processes_sharing_redis_stay_within_one_budget(
    sandbox: SandboxHandle, redis_url: str, limit_prefix: str
) -> None:
    # Two gateways, each with its own client and its own (generous) local bucket, as two processes.
    rate = 5.0
    clients = [await open_redis(redis_url) for _ in range(2)]
    gateways = [_gateway(sandbox, rate_limit=rate) for _ in range(2)]
    try:
        for gateway, client in zip(gateways, clients, strict=True):
            gateway.share_limits(client, limit_prefix)
        sandbox.control.clear_requests()

        async def burst(gateway: StripeGateway) -> None:
            await asyncio.gather(*(gateway.retrieve("customers", "cus_missing") for _ in range(6)))

        await asyncio.gather(*(burst(g) for g in gateways))
    finally:
        for gateway in gateways:
            await gateway.aclose()
        for client in clients:
            await client.aclose()

    assert len(sandbox.control.requests()) == 12
    granted: Counter[int] = Counter()
    for gateway in gateways:
        limiter = gateway.limiter
        assert isinstance(limiter, SharedRateLimit)
        granted.update(limiter.granted)
        assert limiter.fallbacks == 0
    assert sum(granted.values()) == 12
    # Each window of the shared budget granted at most its share, whichever process asked.
    budget = gateways[0].limiter
    assert isinstance(budget, SharedRateLimit)
    assert max(granted.values()) <= budget.limit
    assert len(granted) >= 12 // budget.limit


async def test_a_lookup_never_fails_because_the_limiters_redis_is_down(sandbox: SandboxHandle) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    gateway = _gateway(sandbox, rate_limit=1000)
    try:
        gateway.share_limits(dead, "bltest:acct_x:test")
        [jane] = await gateway.list_customers_by_email("jane@acme.com")
        assert jane["email"] == "jane@acme.com"
        assert await gateway.search_customers_by_email("JANE@acme.com")
        limiter = gateway.limiter
        assert isinstance(limiter, SharedRateLimit) and limiter.fallbacks >= 1
    finally:
        await gateway.aclose()
        await dead.aclose()


async def test_search_has_its_own_budget(sandbox: SandboxHandle, redis_url: str, limit_prefix: str) -> None:
    client = await open_redis(redis_url)
    gateway = _gateway(sandbox, rate_limit=1000)
    try:
        gateway.share_limits(client, limit_prefix)
        for _ in range(3):
            await gateway.search_customers_by_email("jane@acme.com")
        await gateway.list_customers_by_email("jane@acme.com")
        search, general = gateway.search_limiter, gateway.limiter
        assert isinstance(search, SharedRateLimit) and isinstance(general, SharedRateLimit)
        assert search.rate == 20.0 * 0.9
        # Every search request spends the search budget (20/s) and, being a request, the account's.
        assert sum(search.granted.values()) == 3
        assert sum(general.granted.values()) == 4
    finally:
        await gateway.aclose()
        await client.aclose()


def test_a_local_gateway_gives_search_its_own_bucket(sandbox: SandboxHandle) -> None:
    gateway = _gateway(sandbox, rate_limit=1000)
    assert isinstance(gateway.search_limiter, TokenBucket) and gateway.search_limiter.rate == 18.0
    assert gateway.search_limiter is not gateway.limiter


def test_429_waits_longer_and_follows_retry_after() -> None:
    policy = RetryPolicy()
    # Without a hint, the n-th wait after a 429 is at least half its exponential ceiling.
    assert policy.wait_after_rate_limit(1, None) >= policy.rate_limited_base_seconds / 2
    assert policy.wait_after_rate_limit(5, None) >= min(
        policy.rate_limited_cap_seconds, policy.rate_limited_base_seconds * 16) / 2
    assert policy.wait_after_rate_limit(1, 3.0) >= 3.0
    assert policy.wait_after_rate_limit(1, 10_000.0) <= 60.0
    assert policy.attempts_after_rate_limit(background=True) > policy.attempts_after_rate_limit(
        background=False) == policy.attempts


async def test_a_429_storm_is_waited_out_and_the_backfill_completes(
    sandbox: SandboxHandle, store: RedisStore
) -> None:
    # A background attempt budget the storm cannot spend (0.6³⁰ a request): four would not do (0.6⁴).
    quick = RetryPolicy(
        rate_limited_base_seconds=0.005, rate_limited_cap_seconds=0.05, background_attempts=30
    )
    async with _gateway(sandbox, rate_limit=1000, retry=quick) as gateway:
        expected = (await Backfill(gateway, store, windows=2).run()).contexts_built
        sandbox.control.clear_requests()
        sandbox.control.set_faults(rate_limit_probability=0.6, seed=7)
        report = await Backfill(gateway, store, windows=2).run()
    statuses = Counter(r["status"] for r in sandbox.control.requests())
    assert statuses[429] > statuses[200] > 0 and statuses[429] + statuses[200] == sum(statuses.values())
    assert report.contexts_built == expected > 0


async def test_an_interactive_lookup_gives_up_after_its_attempts(sandbox: SandboxHandle) -> None:
    quick = RetryPolicy(rate_limited_base_seconds=0.001, rate_limited_cap_seconds=0.002)
    sandbox.control.set_faults(rate_limit_probability=1.0)
    async with _gateway(sandbox, retry=quick) as gateway:
        sandbox.control.clear_requests()
        with pytest.raises(Exception, match="after 4 attempts"):
            await gateway.list_customers_by_email("jane@acme.com")
        assert len(sandbox.control.requests()) == 4
        sandbox.control.clear_requests()
        with background_work(), pytest.raises(Exception, match="after 12 attempts"):
            await gateway.list_customers_by_email("jane@acme.com")
        assert len(sandbox.control.requests()) == 12
