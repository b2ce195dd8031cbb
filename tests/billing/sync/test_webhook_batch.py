"""Concurrent webhooks written as one batch land in the stream as separate entries, in arrival order,
each exactly as sent, on a single Redis server and on a cluster (the batch is one scripted command)."""

from __future__ import annotations

import asyncio

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.sync.webhook import WebhookIngest
from tests.billing import stripe_factory as sf
from tests.fixtures_redis import TEST_TENANT, unlink_prefix


async def test_a_batch_of_concurrent_webhooks_is_one_entry_each_in_order(any_redis_url: str,
                                                                         key_prefix: str) -> None:
    client = await open_redis(any_redis_url)
    try:
        store = RedisStore(client, TEST_TENANT, prefix=key_prefix)
        ingest = WebhookIngest(store, sf.SECRET)
        bodies = [sf.body_of(sf.event("customer.created", sf.customer(f"cus_B{n:03d}"), sf.T0 + n))
                  for n in range(60)]
        # The first batch carries the health record (a pipeline); the next ones, within the second,
        # are the script alone.
        for part in (bodies[:30], bodies[30:]):
            results = await asyncio.gather(*(ingest.handle(body, sf.sign(body)) for body in part))
            assert [r.status for r in results] == [200] * len(part)
        entries = await client.xrange(store.stream_key) or []
        assert [fields for _, fields in entries] == [{b"e": body} for body in bodies]
        assert b"last_webhook_at" in await client.hgetall(store.tenant_key("health"))
    finally:
        await client.aclose()
        await unlink_prefix(any_redis_url, key_prefix)
