"""The worker's outbox and first sights, against a real Redis (single server and cluster): a failing
notifier never holds an event back nor loses a transition, and a customer the cache never saw is
fetched from Stripe (the sandbox, over HTTP) so its change is still alerted."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from billing.cache.store import RedisStore
from billing.stripe.gateway import StripeGateway
from billing.sync.worker import EventWorker
from tests.billing import stripe_factory as sf
from tests.billing.sync.test_worker import (
    NoStripeNeeded,
    StripeDown,
    drain,
    enqueue,
    gateway,  # noqa: F401 - the fixture
    sandbox_subscriber,
)
from tests.fakes.notifier import RecordingNotifier
from tests.fixtures_sandbox import SandboxHandle


async def pending_outboxes(store: RedisStore) -> list[bytes]:
    found: list[bytes] = await store.client.zrange(store.tenant_key("outbox:pending"), 0, -1)
    return found


async def test_a_failing_notifier_keeps_the_transition_and_acks_the_event(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="billing.sync.worker")
    notifier = RecordingNotifier(fail_times=3)
    w = EventWorker(store, NoStripeNeeded(), notifier, block_ms=10, retry_base=0.05,  # type: ignore[arg-type]
                    retry_max=0.2)
    await w.ensure_group()
    t = sf.T0
    await enqueue(store, [sf.event("customer.created", sf.customer(), t),
                          sf.event("customer.subscription.created", sf.subscription(), t + 1)])
    await drain(w)
    # The subscription goes past due, then its invoice's payment fails: two transitions, one customer.
    past_due = sf.event("customer.subscription.updated", sf.subscription(status="past_due"), t + 2)
    await enqueue(store, [past_due])
    await drain(w)
    await enqueue(store, [sf.event("invoice.payment_failed", sf.invoice(status="open", attempts=1), t + 3)])
    await drain(w)

    # Both events are applied and acknowledged, nothing dead-lettered, though nothing was notified.
    health = await store.health()
    assert (health.stream_length, health.pending, health.dead_letters) == (0, 0, 0)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "past_due" and ctx.payment_status == "failed"
    assert notifier.names() == []
    assert await pending_outboxes(store) == [b"cus_A"]
    failure = next(r for r in caplog.records if "kept in its outbox" in r.getMessage())
    assert failure.exc_info is not None  # logged with its traceback

    # The sweeper retries (with backoff) until the notifier works again, in the transitions' order.
    deadline = time.monotonic() + 10
    while (notifier.names() != ["subscription.past_due", "invoice.payment_failed"]
           or await pending_outboxes(store)):
        assert time.monotonic() < deadline, f"the sweeper did not deliver: {notifier.names()}"
        await w.sweep()
    assert w.stats.notify_failed == 3
    assert await store.client.llen(store.customer_key("cus_A", "outbox")) == 0
    # A redelivery of an event finds nothing left to notify.
    await enqueue(store, [past_due])
    await drain(w)
    await w.sweep()
    assert notifier.names() == ["subscription.past_due", "invoice.payment_failed"]


async def test_an_event_failure_is_logged_with_its_traceback(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="billing.sync.worker")
    w = EventWorker(store, StripeDown(), RecordingNotifier(), block_ms=10)  # type: ignore[arg-type]
    await w.ensure_group()
    await enqueue(store, [sf.event("customer.created", sf.customer(), sf.T0),
                          sf.event("customer.subscription.updated", sf.subscription(), sf.T0 + 1)])
    await drain(w)
    record = next(r for r in caplog.records if r.getMessage().startswith("event evt_sub_A"))
    assert record.exc_info is not None and "Stripe is down" in str(record.exc_info[1])


async def test_a_customer_the_cache_never_saw_is_fetched_and_its_change_alerted_once(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway  # noqa: F811
) -> None:
    control = empty_sandbox.control
    now = int(time.time())
    control.set_clock(now - 30, frozen=True)
    sandbox_subscriber(control, now - 30)  # Jane subscribed before this cache existed
    control.advance_clock(10)
    [change] = [e for e in control.set_subscription_status("sub_A", "past_due")["events"]
                if e["type"] == "customer.subscription.updated"]
    assert change["data"]["previous_attributes"] == {"status": "active"}

    notifier = RecordingNotifier()
    workers = [EventWorker(store, gateway, notifier, block_ms=10, batch_size=1, consumer=f"w{i}")
               for i in range(2)]
    await workers[0].ensure_group()
    control.clear_requests()
    await enqueue(store, [change, change, change])  # the only event this cache ever receives, 3 times
    await drain(*workers)

    assert notifier.names() == ["subscription.past_due"]
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "past_due" and ctx.plan == "Pro Monthly"
    assert ctx.mrr == {"usd": 2900} and ctx.customer is not None and ctx.customer.email == "Jane@Acme.com"
    assert await store.customer_ids_for_email("jane@acme.com") == ["cus_A"]
    paths = [r["path"] for r in control.requests()]
    assert "/v1/customers/cus_A" in paths  # fetched from Stripe
    assert sum(w.stats.fetched_customers for w in workers) == 1
    # Its later news (Stripe's clock is past the fetch now) is news as usual, from the cached state.
    control.set_clock(int(time.time()) + 2, frozen=True)
    recovered: list[dict[str, Any]] = control.set_subscription_status("sub_A", "active")["events"]
    await enqueue(store, recovered)
    await drain(*workers)
    assert notifier.names() == ["subscription.past_due", "subscription.recovered"]
