"""Reconcile: missed webhooks repaired from ``/v1/events`` through the worker (sandbox + real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing.cache.store import RedisStore
from billing.stripe.gateway import StripeGateway
from billing.sync.backfill import Backfill
from billing.sync.reconcile import EVENT_RETENTION_SECONDS, reconcile, reconcile_start
from billing.sync.worker import EventWorker
from sandbox.server import SandboxServer
from tests.fakes.notifier import RecordingNotifier
from tests.fixtures_sandbox import TEST_KEY, SandboxHandle

NOW = 1_790_000_000


def test_start_is_the_previous_reconcile_horizon_minus_the_overlap() -> None:
    # A later applied event does not prove that earlier ones arrived: the horizon wins.
    start = reconcile_start(
        now=NOW, reconciled_through=NOW - 100, last_event_created=NOW - 50, backfill_started_at=NOW - 9000,
        overlap_seconds=300,
    )
    assert start == NOW - 100 - 300


def test_start_before_any_reconcile_is_the_backfill_start_then_the_last_applied_event() -> None:
    assert reconcile_start(now=NOW, reconciled_through=None, last_event_created=NOW - 50,
                           backfill_started_at=NOW - 9000, overlap_seconds=300) == NOW - 9000 - 300
    assert reconcile_start(now=NOW, reconciled_through=None, last_event_created=NOW - 50,
                           backfill_started_at=None, overlap_seconds=300) == NOW - 50 - 300


def test_start_without_history_is_everything_stripe_keeps() -> None:
    start = reconcile_start(
        now=NOW, reconciled_through=None, last_event_created=None, backfill_started_at=None
    )
    assert start == NOW - EVENT_RETENTION_SECONDS


def test_start_never_goes_back_beyond_retention() -> None:
    start = reconcile_start(
        now=NOW, reconciled_through=None, last_event_created=None, backfill_started_at=NOW - 90 * 86_400
    )
    assert start == NOW - EVENT_RETENTION_SECONDS


@pytest.fixture
async def gateway(sandbox_server: SandboxServer) -> AsyncIterator[StripeGateway]:
    gw = StripeGateway(TEST_KEY, api_base=sandbox_server.url, rate_limit=200)
    try:
        yield gw
    finally:
        await gw.aclose()


async def test_missed_events_are_applied_through_the_worker_once(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    await Backfill(gateway, store, windows=2).run()
    [bigco] = await store.customer_ids_for_email("bigco@example.com")
    before = await store.get_context(bigco)
    assert before is not None and before.status == "active"

    # Stripe changes while no webhook reaches us (none is registered in the sandbox).
    sandbox.control.set_subscription_status(before.subscriptions[0].id, "past_due")
    notifier = RecordingNotifier()
    worker = EventWorker(store, gateway, notifier, block_ms=1)

    report = await reconcile(gateway, store, worker)

    assert report.queued >= 1 and report.applied == report.queued
    after = await store.get_context(bigco)
    assert after is not None and after.status == "past_due"
    assert notifier.names() == ["subscription.past_due"]
    health = await store.health()
    assert health.stream_length == 0 and health.pending == 0

    again = await reconcile(gateway, store, worker)
    assert again.listed >= report.queued and again.queued == 0 and again.applied == 0
    assert notifier.names() == ["subscription.past_due"]  # nothing notified twice


async def test_explicit_since_lists_from_there(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    worker = EventWorker(store, gateway, RecordingNotifier(), block_ms=1)
    sandbox.control.clear_requests()
    report = await reconcile(gateway, store, worker, since=NOW)
    requests = [r for r in sandbox.control.requests() if r["path"] == "/v1/events"]
    assert requests and all(r["query"]["created[gte]"] == str(NOW) for r in requests)
    assert report.since == NOW


async def test_events_are_listed_by_routed_type_and_applied_page_by_page(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    await Backfill(gateway, store, windows=2).run()
    customers = [c async for c in gateway.iter_objects("customers")]
    subscriptions = [s async for s in gateway.iter_objects("subscriptions", {"status": "all"})]
    live = [s for s in subscriptions if s["status"] in {"active", "trialing"}]
    assert len(live) >= 3
    for sub in live:  # missed while no webhook reaches us
        sandbox.control.set_subscription_status(sub["id"], "past_due")
    for customer in customers[:4]:
        sandbox.control.update(customer["id"], {"metadata": {"crm": "x"}})
    # An event type the worker does not route: never listed.
    sandbox.control.emit("balance.available", customers[0]["id"])
    worker = EventWorker(store, gateway, RecordingNotifier(), block_ms=1)
    fed: list[int] = []
    process = worker.process

    async def counting(entries: Any) -> None:
        fed.append(len(entries))
        await process(entries)

    worker.process = counting  # type: ignore[method-assign]
    sandbox.control.clear_requests()

    report = await reconcile(gateway, store, worker, page_size=3)

    listings = [r for r in sandbox.control.requests() if r["path"] == "/v1/events"]
    assert len(listings) >= 3  # several pages, never one list of everything
    for request in listings:
        types = [v for k, v in request["query"].items() if k.startswith("types")]
        assert 0 < len(types) <= 20 and "balance.available" not in types
    assert report.queued >= len(live) + 4 and report.applied == report.queued
    assert fed and max(fed) <= 3  # the worker was fed a page at a time
    assert sum(fed) == report.queued
    health = await store.health()
    assert health.stream_length == 0 and health.pending == 0
