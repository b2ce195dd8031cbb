"""What the worker keeps between events beyond the objects themselves (issue #10): next-invoice
previews refreshed after subscription and invoice events (off the event path: a hanging Stripe never
holds an event back), and the default card an event names by id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from billing.cache.store import RedisStore
from billing.domain.models import BillingContext
from billing.stripe.gateway import StripeGateway
from billing.sync.worker import EventWorker
from sandbox.control import SandboxControl
from tests.billing.sync.test_worker import drain, enqueue, frozen_subscriber, recorded_events
from tests.fakes.notifier import RecordingNotifier
from tests.fixtures_sandbox import SandboxHandle


@pytest.fixture
def gateway_attempts() -> int:
    return 2


async def _context(store: RedisStore) -> BillingContext:
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.found
    return ctx


class Delivery:
    """Events recorded by the sandbox, handed to the worker in order, each once."""

    def __init__(self, store: RedisStore, gateway: StripeGateway) -> None:
        self.store, self.gateway = store, gateway
        self.sent: set[str] = set()
        self.worker = EventWorker(store, gateway, RecordingNotifier(), block_ms=10)

    async def new_events(self, *, refresh: bool = True) -> None:
        """Apply the new events, then (``refresh``) one refresh of the previews they made due, as the
        worker's loop runs it between batches."""
        await self.worker.ensure_group()
        fresh = [e for e in await recorded_events(self.gateway) if e["id"] not in self.sent]
        self.sent |= {e["id"] for e in fresh}
        await enqueue(self.store, fresh)
        await drain(self.worker)
        assert self.worker.stats.failed == 0
        if refresh:
            assert self.worker.previews is not None
            await self.worker.previews.refresh_due()


async def _until(check: Callable[[], Awaitable[bool]], what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting: {what}")
        await asyncio.sleep(0.02)


def _preview_hangs(control: SandboxControl) -> None:
    """Stripe answers previews after 20 s (longer than these tests let a request wait)."""
    control.set_faults(latency_ms=20_000, path_prefix="/v1/invoices/create_preview")


def _one_more_in_flight(control: SandboxControl) -> Callable[[], Awaitable[bool]]:
    """A request in flight beyond those already (a hanging request of an earlier test answers late)."""
    before = control.in_flight()

    async def check() -> bool:
        return control.in_flight() > before

    return check


async def _amount_due(store: RedisStore) -> int | None:
    upcoming = (await _context(store)).subscriptions[0].next_invoice
    return upcoming.amount_due if upcoming is not None and not upcoming.estimate else None


def _set_quantity(control: SandboxControl, quantity: int) -> None:
    sub = control.get("sub_A")
    items: dict[str, Any] = sub["items"]
    items["data"][0]["quantity"] = quantity
    control.update("sub_A", {"items": items})


async def _subscriber_whose_next_preview_hangs(
    store: RedisStore, control: SandboxControl, gateway: StripeGateway
) -> Delivery:
    """Jane's card shows her preview (2900); then Stripe stops answering previews and she goes to a
    quantity of 2, an event recorded but not yet delivered."""
    frozen_subscriber(control)
    delivery = Delivery(store, gateway)
    await delivery.new_events()
    assert await _amount_due(store) == 2900
    _preview_hangs(control)
    control.advance_clock(1)
    _set_quantity(control, 2)
    return delivery


async def test_next_invoice_previews_follow_subscription_events_and_survive_a_stripe_failure(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    control = empty_sandbox.control
    frozen_subscriber(control)
    delivery = Delivery(store, gateway)
    await delivery.new_events()
    first = (await _context(store)).subscriptions[0].next_invoice
    assert first is not None and not first.estimate and first.amount_due == 2900

    control.advance_clock(1)
    _set_quantity(control, 2)  # customer.subscription.updated
    await delivery.new_events()
    second = (await _context(store)).subscriptions[0]
    assert second.quantity == 2 and second.next_invoice is not None
    assert not second.next_invoice.estimate and second.next_invoice.amount_due == 5800

    # Stripe fails every preview: the event is applied all the same, the card keeps its preview and
    # the customer is refreshed again later (a backoff).
    control.set_faults(error_probability=1.0, error_status=500, path_prefix="/v1/invoices/create_preview")
    control.advance_clock(1)
    _set_quantity(control, 3)
    await delivery.new_events()
    third = (await _context(store)).subscriptions[0]
    assert third.quantity == 3 and third.next_invoice == second.next_invoice
    previews = [r for r in control.requests() if r["path"] == "/v1/invoices/create_preview"]
    assert previews and previews[-1]["status"] == 500
    retry = await store.previews.when("cus_A")
    assert retry is not None and retry > time.time() * 1000

    control.clear_faults()
    control.advance_clock(1)
    control.update("in_A", {"metadata": {"note": "x"}})  # an invoice event previews again
    await delivery.new_events()
    fourth = (await _context(store)).subscriptions[0].next_invoice
    assert fourth is not None and not fourth.estimate and fourth.amount_due == 8700


async def test_a_past_due_event_is_saved_and_alerted_while_its_preview_is_still_in_flight(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    control = empty_sandbox.control
    delivery = await _subscriber_whose_next_preview_hangs(store, control, gateway)
    control.advance_clock(1)
    control.set_subscription_status("sub_A", "past_due")
    notifier = RecordingNotifier()
    worker = EventWorker(store, gateway, notifier, block_ms=10, preview_timeout=2.0)
    assert worker.previews is not None
    worker.previews.retry_base = 0.05
    await enqueue(store, [e for e in await recorded_events(gateway) if e["id"] not in delivery.sent])
    stop = asyncio.Event()
    in_flight = _one_more_in_flight(control)
    running = asyncio.create_task(worker.run(stop))
    try:
        # While Stripe still holds the preview request, the card already says past_due and the
        # alert went out; the card shows the preview it had.
        await _until(in_flight, "a preview request in flight")
        ctx = await _context(store)
        assert (ctx.subscriptions[0].status, ctx.subscriptions[0].quantity) == ("past_due", 2)
        assert "subscription.past_due" in notifier.names()
        assert await _amount_due(store) == 2900

        control.clear_faults()  # Stripe answers again: the retried preview reaches the card
        await _until(lambda: _amount_is(store, 5800), "the new preview on the card")
    finally:
        stop.set()
        await running


async def _amount_is(store: RedisStore, amount: int) -> bool:
    return await _amount_due(store) == amount


async def test_a_restarted_worker_finishes_a_refresh_the_stopped_one_left_in_flight(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    control = empty_sandbox.control
    delivery = await _subscriber_whose_next_preview_hangs(store, control, gateway)
    await enqueue(store, [e for e in await recorded_events(gateway) if e["id"] not in delivery.sent])
    first = EventWorker(store, gateway, RecordingNotifier(), block_ms=10, preview_timeout=30.0)
    assert first.previews is not None
    first.previews.lease = 0.5  # how long a stopped worker's customers wait for the next one
    stop = asyncio.Event()
    in_flight = _one_more_in_flight(control)
    running = asyncio.create_task(first.run(stop))
    await _until(in_flight, "the first worker's preview request in flight")
    stop.set()
    await running  # stopped mid-request: the customer stays due, leased
    assert await store.previews.when("cus_A") is not None
    assert await _amount_due(store) == 2900

    control.clear_faults()
    restarted = EventWorker(store, gateway, RecordingNotifier(), block_ms=10)
    stop = asyncio.Event()
    running = asyncio.create_task(restarted.run(stop))
    try:
        await _until(lambda: _amount_is(store, 5800), "the restarted worker's preview on the card")
        await _until(lambda: _not_due(store), "the refresh finished")
    finally:
        stop.set()
        await running


async def _not_due(store: RedisStore) -> bool:
    return await store.previews.when("cus_A") is None


async def test_a_preview_never_goes_onto_a_newer_subscription_version(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    control = empty_sandbox.control
    frozen_subscriber(control)
    delivery = Delivery(store, gateway)
    await delivery.new_events()
    worker = delivery.worker
    objects = await store.get_objects("cus_A")
    asked = {"sub_A": (0, "an older version")}
    preview = {"amount_due": 1, "currency": "usd", "total": 1, "subtotal": 1, "lines": {"data": []}}
    assert not await worker.save_previews("cus_A", asked, {"sub_A": preview})
    assert await store.get_objects("cus_A") == objects
    assert await _amount_due(store) == 2900


def _card(control: SandboxControl, pm_id: str, last4: str) -> dict[str, Any]:
    pm = {"id": pm_id, "object": "payment_method", "type": "card", "customer": "cus_A", "created": 1,
          "livemode": False, "card": {"brand": "visa", "last4": last4, "exp_month": 4, "exp_year": 2031}}
    control.load([pm])
    return pm


async def test_a_customer_event_naming_the_card_by_id_keeps_or_fetches_its_details(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    control = empty_sandbox.control
    frozen_subscriber(control)
    _card(control, "pm_one", "4242")
    control.advance_clock(1)
    control.update("cus_A", {"invoice_settings": {"default_payment_method": "pm_one", "footer": None}})
    delivery = Delivery(store, gateway)
    await delivery.new_events()  # customer.updated names pm_one by id: its details are fetched
    card = (await _context(store)).payment_method
    assert card is not None and (card.brand, card.last4, card.exp_year) == ("visa", "4242", 2031)

    control.clear_requests()
    control.advance_clock(1)
    control.update("cus_A", {"name": "Jane Q. Doe"})  # same card, by id again
    await delivery.new_events()
    ctx = await _context(store)
    assert ctx.customer is not None and ctx.customer.name == "Jane Q. Doe"
    assert ctx.payment_method == card
    assert not [r for r in control.requests() if r["path"].startswith("/v1/customers")]  # nothing fetched

    _card(control, "pm_two", "0005")
    control.advance_clock(1)
    control.update("cus_A", {"invoice_settings": {"default_payment_method": "pm_two", "footer": None}})
    await delivery.new_events()
    changed = (await _context(store)).payment_method
    assert changed is not None and changed.last4 == "0005"

    control.advance_clock(1)
    control.update("cus_A", {"invoice_settings": {"default_payment_method": None, "footer": None}})
    await delivery.new_events()
    assert (await _context(store)).payment_method is None
