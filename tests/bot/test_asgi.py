"""The ASGI app served by real uvicorn on a loopback port, with a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.config import Settings
from billing.ports import Transition
from billing.sync.worker import EventWorker
from bot.asgi import SERVER_OPTIONS, build_asgi_app
from tests.billing import stripe_factory as sf
from tests.billing.sync.test_worker import NoStripeNeeded
from tests.cluster import RedisCluster, RedisServer
from tests.fakes.notifier import RecordingNotifier
from tests.fixtures_redis import TEST_TENANT
from tests.loopback import read_response, run_asgi


@asynccontextmanager
async def serve(
    store: RedisStore, worker: EventWorker | None = None, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app = build_asgi_app(settings=Settings(), store=store, webhook_secret=sf.SECRET, tenant=TEST_TENANT,
                         worker=worker, **options)
    # As `billing serve` runs it. Requests wait as long as the test's own deadlines (a loaded machine
    # with a cluster can take longer than httpx's default 5 s; a refusal still fails at once).
    async with run_asgi(app, lifespan="on", **SERVER_OPTIONS) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


async def post_event(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/stripe/webhook", content=body,
                             headers={"Stripe-Signature": sf.sign(body), "Content-Type": "application/json"})


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Wait until ``check()`` holds, polling, for at most ``seconds`` (then the test fails)."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"not true within {seconds} s"
        await asyncio.sleep(0.01)


class SlowNotifier(RecordingNotifier):
    """Records each alert a moment after it is sent, as a real Slack post would take."""

    async def notify(self, transition: Transition) -> None:
        await asyncio.sleep(0.2)
        await super().notify(transition)


async def test_webhook_to_cache_through_the_in_process_worker(store: RedisStore) -> None:
    # The worker saves the context, then alerts: the context shows past_due before the alert is out,
    # so the test waits for each thing it asserts (a slow notifier makes that gap certain).
    notifier = SlowNotifier()
    worker = EventWorker(store, NoStripeNeeded(), notifier, block_ms=50)  # type: ignore[arg-type]
    await worker.ensure_group()
    # As Stripe sends it, the update carries what changed (how the events are batched then cannot
    # matter; without it, see issue #9 item 12).
    past_due = sf.event("customer.subscription.updated", sf.subscription(status="past_due"), sf.T0 + 2)
    past_due["data"]["previous_attributes"] = {"status": "active"}
    async with serve(store, worker) as client:
        for evt in (sf.event("customer.created", sf.customer(), sf.T0),
                    sf.event("customer.subscription.created", sf.subscription(), sf.T0 + 1), past_due):
            assert (await post_event(client, sf.body_of(evt))).status_code == 200

        async def alerted() -> bool:
            return bool(notifier.transitions)

        await eventually(alerted)
        assert notifier.names() == ["subscription.past_due"]
        ctx = await store.get_context("cus_A")
        assert ctx is not None and ctx.status == "past_due" and ctx.source == "cache"
        health = await client.get("/healthz")
        assert health.json()["redis"] == "ok" and health.json()["worker"] == "ok"
        metrics = (await client.get("/metrics")).text
        queued = ("customer.created", "customer.subscription.created", "customer.subscription.updated")
        for event_type in queued:
            assert f'billing_webhook_events_total{{outcome="queued",type="{event_type}"}} 1.0' in metrics
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


async def test_a_validly_signed_body_nested_200000_deep_is_a_400(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    async with serve(store) as client:
        answer = await post_event(client, deep)
    assert answer.status_code == 400
    assert answer.json() == {"error": "The body is not a Stripe event: nested too deeply."}
    assert "RecursionError" not in caplog.text
    assert await store.client.exists(store.stream_key) == 0


async def test_a_body_trickling_in_is_cut_off_with_408_while_others_are_served(store: RedisStore) -> None:
    body = sf.body_of(sf.event("customer.created", sf.customer(), sf.T0))
    bound = 1.5
    async with serve(store, body_timeout=bound) as client:
        port = client.base_url.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /stripe/webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Stripe-Signature: {sf.sign(body)}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        await writer.drain()
        sent_all = asyncio.Event()

        async def trickle() -> None:  # one byte every 0.5 s: the whole body would take minutes
            for i in range(len(body)):
                writer.write(body[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.5)
            sent_all.set()

        sender = asyncio.create_task(trickle())
        answer = asyncio.create_task(read_response(reader))
        try:
            # Meanwhile the app answers others at once: the trickle holds no lock and no worker.
            other = await post_event(client, sf.body_of(sf.event("customer.created", sf.customer("cus_B"),
                                                                 sf.T0)))
            assert other.status_code == 200 and not answer.done()
            async with asyncio.timeout(bound + 10):  # a generous deadline; without a bound: minutes
                status, text = await answer
                with contextlib.suppress(ConnectionResetError):  # a byte sent after the close: RST
                    assert await reader.read() == b""  # and the connection is closed
        finally:
            sender.cancel()
            writer.close()
        assert status == 408 and not sent_all.is_set()
        assert b"in time" in text
    entries = await store.client.xrange(store.stream_key)
    assert len(entries) == 1  # only the other sender's event


async def test_an_endless_header_is_refused_at_16_kib_and_the_connection_closed(store: RedisStore) -> None:
    async with serve(store) as client:
        port = client.base_url.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /stripe/webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Padding: ".encode())

        async def endless_header() -> None:  # the header never ends: without a bound it fills memory
            with contextlib.suppress(ConnectionError):
                for _ in range(1024):
                    writer.write(b"a" * 4096)
                    await writer.drain()

        sender = asyncio.create_task(endless_header())
        try:
            async with asyncio.timeout(10):
                status, _body = await read_response(reader)
        finally:
            sender.cancel()
            writer.close()
        assert status == 400
        assert (await client.get("/healthz")).status_code in (200, 503)  # and the server carries on


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
    caplog.set_level(logging.WARNING, logger="billing.sync.worker")
    task = asyncio.create_task(worker.run(stop))

    async def waiting_or_dead() -> bool:
        return task.done() or "worker waiting for Redis" in caplog.text

    await eventually(waiting_or_dead, seconds=30)
    assert not task.done(), "the worker died instead of waiting for Redis"
    stop.set()
    await task
    await client.aclose()


async def test_metrics_and_status_show_the_preview_and_reminder_schedules(store: RedisStore) -> None:
    # An operator sees whether previews pile up and whether reminders are sent: the due list's size,
    # the refresher's outcomes, the scheduler's due count and last tick, on /metrics and in the
    # sync-health record ``billing status`` prints.
    from billing.sync.scheduler import ReminderScheduler

    worker = EventWorker(store, NoStripeNeeded(), RecordingNotifier(), block_ms=50,  # type: ignore[arg-type]
                         refresh_previews=False)
    worker.scheduler = ReminderScheduler(store, lambda: {})
    before = (await store.health()).to_dict()
    assert (before["previews_due"], before["reminders_due"], before["reminders_scheduled"]) == (0, 0, 0)
    assert before["reminders_last_tick_at"] is None
    pipe = store.client.pipeline(transaction=False)
    store.previews.queue_mark(pipe, ["cus_A", "cus_B"], now_ms=int(time.time() * 1000))
    await pipe.execute()
    state = store.reminder_state()
    await state.set_moments({"cus_A": time.time() - 60, "cus_B": time.time() + 86400})
    assert worker.previews is not None
    worker.previews.stats.failed = 3
    async with serve(store, worker) as client:
        metrics = (await client.get("/metrics")).text
        assert "billing_previews_due 2.0" in metrics
        assert 'billing_reminders{what="scheduled"} 2.0' in metrics
        assert 'billing_reminders{what="due"} 1.0' in metrics
        assert "billing_previews_failed_total 3.0" in metrics
        assert "billing_reminders_queued_total 0.0" in metrics
        assert "billing_reminders_last_tick_age_seconds NaN" in metrics  # never ticked

        await worker.scheduler.tick()

        async def ticked() -> bool:
            text = (await client.get("/metrics")).text
            return "billing_reminders_last_tick_age_seconds NaN" not in text
        await eventually(ticked)
    health = (await store.health()).to_dict()
    # cus_A's moment came and it has no cached context: out of the schedule.
    assert (health["previews_due"], health["reminders_scheduled"], health["reminders_due"]) == (2, 1, 0)
    assert health["reminders_last_tick_at"] is not None
