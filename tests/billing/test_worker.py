"""The worker against a real Redis (single server and cluster), with events built like Stripe's."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

from billing.notify import RecordingNotifier
from billing.ports import Tenant
from billing.snapshot import CustomerData, StripeDict
from billing.store import RedisStore
from billing.worker import EventWorker
from tests.billing import stripe_factory as sf


class NoStripeNeeded:
    """These scenarios never need Stripe (no ties, no unknown objects): any call is a test failure."""

    async def tenant(self) -> Tenant:
        raise AssertionError("unexpected Stripe call")

    async def retrieve(self, resource: str, object_id: str) -> StripeDict | None:
        raise AssertionError(f"unexpected Stripe call: retrieve {resource} {object_id}")

    async def retrieve_customer(self, customer_id: str) -> StripeDict | None:
        raise AssertionError("unexpected Stripe call")

    async def price_with_tiers(self, price_id: str) -> StripeDict:
        return sf.price(price_id)

    async def coupon(self, coupon_id: str) -> StripeDict | None:
        raise AssertionError("unexpected Stripe call")

    async def fetch_customer_data(self, customer: StripeDict) -> CustomerData:
        raise AssertionError("unexpected Stripe call")


class StripeNow(NoStripeNeeded):
    """Stripe's current state after the scenario (what a re-fetch returns); stands in for the sandbox
    until its fixture is available."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = {o["id"]: o for o in objects}
        self.calls = 0

    async def retrieve(self, resource: str, object_id: str) -> StripeDict | None:
        self.calls += 1
        return self.objects.get(object_id)

    async def retrieve_customer(self, customer_id: str) -> StripeDict | None:
        self.calls += 1
        return self.objects.get(customer_id)


def scenario() -> list[dict[str, Any]]:
    """A customer subscribes, a payment fails (past_due), is paid (recovered), then cancels."""
    t = sf.T0
    return [
        sf.event("customer.created", sf.customer(), t),
        sf.event("customer.subscription.created", sf.subscription(), t + 1),
        sf.event("invoice.created", sf.invoice(status="open", attempts=0), t + 2),
        sf.event("invoice.payment_failed", sf.invoice(status="open", attempts=1), t + 3),
        sf.event("customer.subscription.updated", sf.subscription(status="past_due"), t + 4),
        sf.event("invoice.paid", sf.invoice(status="paid", attempts=2), t + 5),
        sf.event("customer.subscription.updated", sf.subscription(status="active"), t + 6),
        sf.event("customer.subscription.deleted", sf.subscription(status="canceled"), t + 7),
    ]


async def enqueue(store: RedisStore, events: list[dict[str, Any]]) -> None:
    for evt in events:
        await store.client.xadd(store.stream_key, {"e": json.dumps(evt)})


def worker(store: RedisStore, notifier: RecordingNotifier, **kw: Any) -> EventWorker:
    return EventWorker(store, NoStripeNeeded(), notifier, block_ms=10, **kw)  # type: ignore[arg-type]


async def drain(*workers: EventWorker) -> None:
    for _ in range(50):
        handled = 0
        for w in workers:
            handled += await w.run_once(block_ms=10)
        if not handled:
            return


def final_state(ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ctx.items() if k not in {"as_of"}}


async def test_in_order_delivery_builds_the_context_and_each_transition(store: RedisStore) -> None:
    notifier = RecordingNotifier()
    w = worker(store, notifier)
    await w.ensure_group()
    for evt in scenario():  # one at a time, as Stripe would send them
        await enqueue(store, [evt])
        await drain(w)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "canceled"
    assert notifier.names() == [
        "invoice.payment_failed", "subscription.past_due", "subscription.recovered",
        "subscription.canceled",
    ]
    assert await store.customer_ids_for_email("jane@acme.com") == ["cus_A"]
    health = await store.health()
    assert health.pending == 0 and health.dead_letters == 0 and health.last_event_id is not None


async def test_duplicate_storm_in_shuffled_order_gives_the_same_state_and_no_repeat(
    store: RedisStore, key_prefix: str
) -> None:
    events = scenario()
    reference = RedisStore(store.client, store.tenant, prefix=f"{key_prefix}:ref")
    ref_notifier = RecordingNotifier()
    ref_worker = worker(reference, ref_notifier)
    await ref_worker.ensure_group()
    await enqueue(reference, events)
    await drain(ref_worker)

    storm = events * 3
    random.Random(7).shuffle(storm)
    notifier = RecordingNotifier()
    stripe_now = StripeNow([events[0]["data"]["object"], events[-1]["data"]["object"],
                            events[-3]["data"]["object"]])
    workers = [
        EventWorker(store, stripe_now, notifier, block_ms=10, batch_size=5,  # type: ignore[arg-type]
                    consumer=f"w{i}")
        for i in range(2)
    ]
    await workers[0].ensure_group()
    await enqueue(store, storm)
    await drain(*workers)

    expected = await reference.get_context("cus_A")
    got = await store.get_context("cus_A")
    assert expected is not None and got is not None
    assert final_state(got.model_dump(mode="json")) == final_state(expected.model_dump(mode="json"))
    names = notifier.names()
    assert len(names) == len(set((t.name, t.object_id) for t in notifier.transitions))
    assert sum(w.stats.duplicates for w in workers) > 0


async def test_an_older_snapshot_after_a_newer_one_is_ignored(store: RedisStore) -> None:
    notifier = RecordingNotifier()
    w = worker(store, notifier)
    await w.ensure_group()
    t = sf.T0
    await enqueue(store, [
        sf.event("customer.created", sf.customer(), t),
        sf.event("customer.subscription.created", sf.subscription(), t + 1),
        sf.event("customer.subscription.updated", sf.subscription(status="past_due"), t + 10),
    ])
    await drain(w)
    await enqueue(store, [sf.event("customer.subscription.updated", sf.subscription(status="active"), t + 5)])
    await drain(w)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "past_due"
    assert (await store.get_objects("cus_A"))["sub_A"]["_v"][0] == t + 10


async def test_entries_of_a_killed_worker_are_finished_by_another(store: RedisStore) -> None:
    notifier = RecordingNotifier()
    doomed = worker(store, notifier, consumer="doomed")
    await doomed.ensure_group()
    await enqueue(store, scenario())
    # The doomed worker reads a batch and dies before processing or acknowledging it.
    read = await store.client.xreadgroup(store.GROUP, "doomed", {store.stream_key: ">"}, count=4)
    assert len(read[0][1]) == 4
    survivor = worker(store, notifier, consumer="survivor", claim_idle_ms=0)
    await drain(survivor)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "canceled"
    assert (await store.health()).pending == 0
    # The claimed batch (creation up to the first failure) is a first sight: the failed payment event
    # speaks for itself; the rest settles in one batch on canceled.
    assert notifier.names() == ["invoice.payment_failed", "subscription.canceled"]


async def test_an_event_failing_five_times_goes_to_the_dead_letter_stream(store: RedisStore) -> None:
    notifier = RecordingNotifier(fail_times=100)
    w = worker(store, notifier, claim_idle_ms=0)
    await w.ensure_group()
    t = sf.T0
    await enqueue(store, [
        sf.event("customer.created", sf.customer(), t),
        sf.event("customer.subscription.created", sf.subscription(), t + 1),
    ])
    await drain(w)
    past_due = sf.subscription(status="past_due")
    await enqueue(store, [sf.event("customer.subscription.updated", past_due, t + 2)])
    for _ in range(8):
        w._last_claim = 0.0
        await w.run_once(block_ms=10)
    health = await store.health()
    assert health.dead_letters == 1
    assert health.pending == 0
    dead = await store.client.xrange(store.dead_letter_key)
    assert b"notifier failure" in dead[0][1][b"error"]


async def test_trial_will_end_is_notified_once_across_duplicates(store: RedisStore) -> None:
    notifier = RecordingNotifier()
    w = worker(store, notifier)
    await w.ensure_group()
    t = sf.T0
    sub = sf.subscription(status="trialing", trial_end=t + 3 * 86400)
    warn = sf.event("customer.subscription.trial_will_end", sub, t + 2)
    await enqueue(store, [
        sf.event("customer.created", sf.customer(), t),
        sf.event("customer.subscription.created", sub, t + 1), warn,
    ])
    await drain(w)
    # Stripe re-sends the same event with a new delivery; also a second, distinct notice of it.
    other = sf.event("customer.subscription.trial_will_end", sub, t + 2, eid="evt_other")
    await enqueue(store, [warn, other])
    await drain(w)
    assert notifier.names() == ["subscription.trial_will_end"]
