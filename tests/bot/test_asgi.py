"""The ASGI app served by real uvicorn on a loopback port, with a real Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from billing.config import Settings
from billing.notify import RecordingNotifier
from billing.redis_conn import open_redis
from billing.store import RedisStore
from billing.worker import EventWorker
from bot.asgi import build_asgi_app
from tests.billing import stripe_factory as sf
from tests.billing.test_worker import NoStripeNeeded
from tests.cluster import RedisCluster, RedisServer, free_port
from tests.fixtures_redis import TEST_TENANT


@asynccontextmanager
async def serve(store: RedisStore, worker: EventWorker | None = None) -> AsyncIterator[httpx.AsyncClient]:
    app = build_asgi_app(settings=Settings(), store=store, webhook_secret=sf.SECRET, tenant=TEST_TENANT,
                         worker=worker)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        server.should_exit = True
        await task


async def post_event(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/stripe/webhook", content=body,
                             headers={"Stripe-Signature": sf.sign(body), "Content-Type": "application/json"})


async def test_webhook_to_cache_through_the_in_process_worker(store: RedisStore) -> None:
    notifier = RecordingNotifier()
    worker = EventWorker(store, NoStripeNeeded(), notifier, block_ms=50)  # type: ignore[arg-type]
    await worker.ensure_group()
    async with serve(store, worker) as client:
        for evt in (sf.event("customer.created", sf.customer(), sf.T0),
                    sf.event("customer.subscription.created", sf.subscription(), sf.T0 + 1),
                    sf.event("customer.subscription.updated", sf.subscription(status="past_due"), sf.T0 + 2)):
            assert (await post_event(client, sf.body_of(evt))).status_code == 200
        for _ in range(200):
            ctx = await store.get_context("cus_A")
            if ctx is not None and ctx.status == "past_due":
                break
            await asyncio.sleep(0.02)
        assert ctx is not None and ctx.status == "past_due" and ctx.source == "cache"
        assert notifier.names() == ["subscription.past_due"]
        health = await client.get("/healthz")
        assert health.json()["redis"] == "ok" and health.json()["worker"] == "ok"
        metrics = (await client.get("/metrics")).text
        assert 'billing_webhook_events_total{outcome="queued"} 3.0' in metrics
        assert "billing_worker_applied_total" in metrics


async def test_bad_requests_get_4xx_over_http(store: RedisStore) -> None:
    async with serve(store) as client:
        body = sf.body_of(sf.event("customer.created", sf.customer(), sf.T0))
        bad_sig = await client.post("/stripe/webhook", content=body,
                                    headers={"Stripe-Signature": "t=1,v1=00"})
        assert bad_sig.status_code == 400 and "Stripe-Signature" in bad_sig.json()["error"]
        assert (await client.post("/stripe/webhook", content=body)).status_code == 400
        big = b"{" + b" " * (1024 * 1024 + 1) + b"}"
        assert (await client.post("/stripe/webhook", content=big,
                                  headers={"Stripe-Signature": sf.sign(big)})).status_code == 413

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
            for _ in range(20):
                yield b" " * 65536

        streamed = await client.post("/stripe/webhook", content=chunked(),
                                     headers={"Stripe-Signature": "t=1,v1=0"})
        assert streamed.status_code == 413
    assert await store.client.exists(store.stream_key) == 0


async def test_redis_down_means_503_and_nothing_lost_after_retry(
    private_redis: RedisServer, key_prefix: str
) -> None:
    client = await open_redis(private_redis.url)
    store = RedisStore(client, TEST_TENANT, prefix=key_prefix)
    events = [sf.event("customer.created", sf.customer(), sf.T0),
              sf.event("customer.subscription.created", sf.subscription(), sf.T0 + 1)]
    async with serve(store) as http:
        assert (await post_event(http, sf.body_of(events[0]))).status_code == 200
        private_redis.stop()
        down = await post_event(http, sf.body_of(events[1]))
        assert down.status_code == 503
        assert (await http.get("/healthz")).status_code == 503
        private_redis.start()
        for _ in range(100):  # Stripe retries until it gets a 2xx
            if (await post_event(http, sf.body_of(events[1]))).status_code == 200:
                break
            await asyncio.sleep(0.05)
    worker = EventWorker(store, NoStripeNeeded(), RecordingNotifier(), block_ms=10)  # type: ignore[arg-type]
    await worker.ensure_group()
    while await worker.run_once(block_ms=10):
        pass
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "active"  # both events: the 200'd one and the retried one
    await client.aclose()


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path / "private-cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_a_cluster_that_goes_down_means_503_and_a_waiting_worker(
    private_cluster: RedisCluster, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The cluster client says "cannot be connected" with an exception that is no RedisError.
    client = await open_redis(private_cluster.url)
    store = RedisStore(client, TEST_TENANT, prefix=key_prefix)
    worker = EventWorker(store, NoStripeNeeded(), RecordingNotifier(), block_ms=10)  # type: ignore[arg-type]
    await worker.ensure_group()
    body = sf.body_of(sf.event("customer.created", sf.customer(), sf.T0))
    async with serve(store) as http:
        assert (await post_event(http, body)).status_code == 200
        for node in private_cluster.nodes:
            node.stop()
        down = await post_event(http, body)
        assert down.status_code == 503 and down.json()["error"].startswith("The event queue is unavailable")
        health = await http.get("/healthz")
        assert health.status_code == 503 and health.json()["redis"] == "unavailable"
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="billing.worker")
    task = asyncio.create_task(worker.run(stop))
    for _ in range(1000):
        if task.done() or "worker waiting for Redis" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert not task.done(), "the worker died instead of waiting for Redis"
    stop.set()
    await task
    await client.aclose()
