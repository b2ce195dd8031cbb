"""The worker against a real Redis (single server and cluster), with events built like Stripe's."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from billing.cache.store import RedisStore
from billing.domain.builder import build_context
from billing.domain.models import Match
from billing.domain.snapshot import CustomerData, StripeDict
from billing.errors import StripeUnavailableError
from billing.ports import Tenant
from billing.stripe.gateway import StripeGateway
from billing.sync.worker import EventWorker
from sandbox.control import SandboxControl
from tests.billing import stripe_factory as sf
from tests.fakes.notifier import RecordingNotifier
from tests.fixtures_sandbox import SandboxHandle


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


DAY = 86400


@pytest.fixture
async def gateway(empty_sandbox: SandboxHandle) -> AsyncIterator[StripeGateway]:
    async with StripeGateway(empty_sandbox.api_key, api_base=empty_sandbox.url, rate_limit=500) as gw:
        yield gw


def frozen_subscriber(control: SandboxControl) -> int:
    """Jane subscribed an hour ago, on a sandbox clock held still there (events then carry set times);
    returns that time."""
    now = int(time.time()) - 3600
    control.set_clock(now, frozen=True)
    sandbox_subscriber(control, now)
    return now


def sandbox_subscriber(control: SandboxControl, now: int) -> list[dict[str, Any]]:
    """Jane subscribes to Pro Monthly with an open first invoice; returns the ``*.created`` events."""
    sub = sf.subscription(created=now)
    for item in sub["items"]["data"]:
        item.update(price={"id": "price_pro"}, current_period_start=now - 5 * DAY,
                    current_period_end=now + 25 * DAY)
    product = {"id": "prod_pro", "object": "product", "name": "Pro", "active": True, "metadata": {}}
    objects = [product, sf.price(), sf.customer(created=now), sub,
               sf.invoice(status="open", attempts=0, created=now, attempted=False)]
    events: list[dict[str, Any]] = control.load(objects, emit_events=True)["events"]
    return events


def sandbox_scenario(control: SandboxControl) -> None:
    """In the sandbox: Jane subscribes, a payment fails (past_due), is paid (recovered), she cancels.

    The sandbox clock moves one second per step, as a real account's would between these events.
    The failure is recorded as two events a second apart so that its intermediate state is
    well-defined; the payment's three invoice events share one second (a tie, settled by re-fetching).
    """
    now = frozen_subscriber(control)
    steps: list[Callable[[], object]] = [
        lambda: control.update("in_A", {"attempt_count": 1, "attempted": True,
                                        "next_payment_attempt": now + 3 * DAY}),
        lambda: control.emit("invoice.payment_failed", "in_A"),
        lambda: control.set_subscription_status("sub_A", "past_due"),
        lambda: control.pay_invoice("in_A"),
        lambda: control.set_subscription_status("sub_A", "canceled"),
    ]
    for step in steps:
        control.advance_clock(1)
        step()


async def recorded_events(gateway: StripeGateway) -> list[dict[str, Any]]:
    """Every event the sandbox recorded, oldest first, as ``/v1/events`` lists them."""
    events = [e async for e in gateway.iter_objects("events")]
    return sorted(events, key=lambda e: (e["created"], e["id"]))


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


EXPECTED_STORY = [
    "invoice.payment_failed", "subscription.past_due", "subscription.recovered", "subscription.canceled",
]


async def deliver_in_order(store: RedisStore, gateway: StripeGateway, events: list[dict[str, Any]],
                           ) -> RecordingNotifier:
    """Every event once, in order, one delivery at a time (as Stripe would send them)."""
    notifier = RecordingNotifier()
    w = EventWorker(store, gateway, notifier, block_ms=10)
    await w.ensure_group()
    for evt in events:
        await enqueue(store, [evt])
        await drain(w)
    return notifier


async def test_in_order_delivery_builds_the_context_and_each_transition(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    sandbox_scenario(empty_sandbox.control)
    events = await recorded_events(gateway)
    notifier = await deliver_in_order(store, gateway, events)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "canceled" and ctx.plan == "Pro Monthly"
    assert ctx.ltv == {"usd": 2900} and ctx.payment_status == "ok"
    assert notifier.names() == EXPECTED_STORY
    assert await store.customer_ids_for_email("jane@acme.com") == ["cus_A"]
    health = await store.health()
    assert health.pending == 0 and health.dead_letters == 0 and health.last_event_id == events[-1]["id"]


async def test_duplicate_storm_in_shuffled_order_gives_the_same_state_and_no_repeat(
    store: RedisStore, key_prefix: str, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    sandbox_scenario(empty_sandbox.control)
    events = await recorded_events(gateway)
    # The scenario really went through the sandbox's event log.
    assert events[0]["type"] == "product.created" and events[-1]["type"] == "customer.subscription.deleted"

    # Reference: every event once, in order, one delivery at a time, on a fresh prefix.
    reference = RedisStore(store.client, store.tenant, prefix=f"{key_prefix}:ref")
    assert (await deliver_in_order(reference, gateway, events)).names() == EXPECTED_STORY

    # Storm: every event three times, shuffled, shared by two workers reading small batches.
    storm = events * 3
    random.Random(7).shuffle(storm)
    notifier = RecordingNotifier()
    workers = [EventWorker(store, gateway, notifier, block_ms=10, batch_size=5, consumer=f"w{i}")
               for i in range(2)]
    await workers[0].ensure_group()
    await enqueue(store, storm)
    await drain(*workers)

    expected = await reference.get_context("cus_A")
    got = await store.get_context("cus_A")
    assert expected is not None and got is not None
    assert got.status == "canceled" and got.payment_status == expected.payment_status
    assert final_state(got.model_dump(mode="json")) == final_state(expected.model_dump(mode="json"))
    keys = [t.dedup_key for t in notifier.transitions]
    assert len(keys) == len(set(keys))  # no transition notified twice
    # Fewer alerts than the story is expected: a customer first seen after the shuffle has delivered
    # its story is a first sight with no history to alert on. With this seed the first batch already
    # holds the cancellation, and the customer is first fetched from Stripe already canceled: of the
    # story, only the cancellation (carried by its own event) is news, once.
    assert "customer.subscription.deleted" in [e["type"] for e in storm[:5]]
    assert notifier.names() == ["subscription.canceled"]
    # Every delivery was applied or recognised as a duplicate. The workers take turns reading batches
    # of 5 in stream order; a copy is a duplicate when an earlier batch held its event (two copies in
    # one batch are both new to the dedupe check, and applying an event twice changes nothing).
    seen: set[str] = set()
    expected_duplicates = 0
    for start in range(0, len(storm), 5):
        batch = {e["id"] for e in storm[start:start + 5]}
        expected_duplicates += sum(e["id"] in seen for e in storm[start:start + 5])
        seen |= batch
    assert sum(w.stats.failed for w in workers) == 0
    assert sum(w.stats.duplicates for w in workers) == expected_duplicates
    assert sum(w.stats.applied for w in workers) == len(storm) - expected_duplicates
    assert (await store.health()).pending == 0


async def test_an_older_state_delivered_after_a_newer_one_is_ignored(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    control = empty_sandbox.control
    frozen_subscriber(control)
    control.advance_clock(5)
    control.set_subscription_status("sub_A", "past_due")
    control.advance_clock(5)
    control.set_subscription_status("sub_A", "active")
    events = await recorded_events(gateway)
    subs = [e for e in events if e["type"] == "customer.subscription.updated"]
    assert [e["data"]["object"]["status"] for e in subs] == ["past_due", "active"]
    older, newer = subs

    notifier = RecordingNotifier()
    w = EventWorker(store, gateway, notifier, block_ms=10)
    await w.ensure_group()
    await enqueue(store, [e for e in events if e not in subs] + [newer])
    await drain(w)
    requests_before = len(empty_sandbox.control.requests())
    alerted_before = notifier.names()
    await enqueue(store, [older])  # Stripe's earlier delivery arrives late
    await drain(w)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "active"
    assert (await store.get_objects("cus_A"))["sub_A"]["_v"][0] == newer["created"]
    assert notifier.names() == alerted_before  # the stale past_due is no news
    # Distinct seconds: settled by the version alone, without asking Stripe.
    assert len(empty_sandbox.control.requests()) == requests_before


async def test_entries_of_a_killed_worker_are_finished_by_another(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    sandbox_scenario(empty_sandbox.control)
    events = await recorded_events(gateway)
    notifier = RecordingNotifier()
    doomed = EventWorker(store, gateway, notifier, block_ms=10, consumer="doomed")
    await doomed.ensure_group()
    await enqueue(store, events)
    # The doomed worker reads a batch and dies before processing or acknowledging it.
    read: Any = await store.client.xreadgroup(store.GROUP, "doomed", {store.stream_key: ">"}, count=4)
    assert len(read[0][1]) == 4
    assert (await store.health()).pending == 4
    survivor = EventWorker(store, gateway, notifier, block_ms=10, consumer="survivor", claim_idle_ms=0)
    await drain(survivor)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "canceled"
    health = await store.health()
    assert health.pending == 0 and health.stream_length == 0 and health.dead_letters == 0
    # Claimed first, the doomed batch (the subscriber's creation) is a first sight; the rest of the
    # story is then seen in one batch whose last word is the cancellation.
    assert "subscription.canceled" in notifier.names()
    keys = [t.dedup_key for t in notifier.transitions]
    assert len(keys) == len(set(keys))


class StripeDown(NoStripeNeeded):
    """Every re-fetch fails, as when Stripe is unreachable."""

    async def retrieve(self, resource: str, object_id: str) -> StripeDict | None:
        raise StripeUnavailableError("Stripe is down (requested by the test)")


async def test_an_event_failing_five_times_goes_to_the_dead_letter_stream(store: RedisStore) -> None:
    w = EventWorker(store, StripeDown(), RecordingNotifier(), block_ms=10, claim_idle_ms=0)  # type: ignore[arg-type]
    await w.ensure_group()
    t = sf.T0
    await enqueue(store, [sf.event("customer.created", sf.customer(), t)])
    await drain(w)
    # An update of a subscription the cache never saw needs Stripe's current state, which never comes.
    past_due = sf.subscription(status="past_due")
    await enqueue(store, [sf.event("customer.subscription.updated", past_due, t + 2)])
    for _ in range(8):
        w._last_claim = 0.0
        await w.run_once(block_ms=10)
    health = await store.health()
    assert health.dead_letters == 1
    assert health.pending == 0
    dead: Any = await store.client.xrange(store.dead_letter_key)
    assert b"Stripe is down" in dead[0][1][b"error"]


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


async def test_a_batch_of_many_customers_stays_within_the_connection_pool(store: RedisStore) -> None:
    # 150 customers in one batch: more than redis-py's default pool of 100 connections would allow
    # if every customer were applied at once.
    customers = [sf.customer(cid=f"cus_M{n:03d}", email=f"m{n}@example.com") for n in range(150)]
    await enqueue(store, [sf.event("customer.created", c, sf.T0) for c in customers])
    w = worker(store, RecordingNotifier(), batch_size=200)
    await w.ensure_group()
    assert await w.run_once(block_ms=10) == 150
    assert w.stats.failed == 0 and w.stats.dead_lettered == 0
    contexts = [await store.get_context(c["id"]) for c in customers]
    assert [(ctx.customer.id, ctx.customer.email) if ctx and ctx.found and ctx.customer else None
            for ctx in contexts] == [(c["id"], c["email"]) for c in customers]


async def test_a_deleted_customer_is_not_brought_back_by_a_late_older_event(store: RedisStore) -> None:
    notifier = RecordingNotifier()
    w = worker(store, notifier)
    await w.ensure_group()
    t = sf.T0
    await enqueue(store, [
        sf.event("customer.created", sf.customer(), t),
        sf.event("customer.subscription.created", sf.subscription(), t + 1),
    ])
    await drain(w)
    assert await store.get_context("cus_A") is not None
    await enqueue(store, [sf.event("customer.deleted", sf.customer(), t + 5)])
    await drain(w)
    assert await store.get_context("cus_A") is None
    # Stripe's earlier delivery of a change made before the deletion arrives late.
    await enqueue(store, [sf.event("customer.updated", sf.customer(name="Jane D."), t + 3)])
    await drain(w)
    assert await store.get_context("cus_A") is None
    assert await store.customer_ids_for_email("jane@acme.com") == []
    assert (await store.health()).customers_cached == 0


async def test_a_price_change_reaches_a_customer_first_seen_through_its_subscription(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    control = empty_sandbox.control
    now = int(time.time())
    control.set_clock(now - 60, frozen=True)
    created = {e["type"]: e for e in sandbox_subscriber(control, now - 60)}
    w = EventWorker(store, gateway, RecordingNotifier(), block_ms=10)
    await w.ensure_group()
    # Unordered delivery: the subscription (carrying its price) arrives before its customer is known,
    # so the worker fetches the customer from Stripe.
    await enqueue(store, [created["customer.subscription.created"]])
    await drain(w)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.mrr == {"usd": 2900}
    await enqueue(store, [created["customer.created"]])
    await drain(w)
    control.set_clock(now + 60, frozen=True)  # the price changes after the worker's fetch
    await enqueue(store, control.update(
        "price_pro", {"unit_amount": 3900, "unit_amount_decimal": "3900"})["events"])
    await drain(w)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.mrr == {"usd": 3900}


async def test_tenant_objects_keep_what_events_never_carry(
    store: RedisStore, empty_sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    # A coupon first seen in an event is fetched whole (its applies_to only comes when expanded) ...
    coupon = {"id": "ADDON50", "object": "coupon", "percent_off": 50.0, "duration": "forever",
              "livemode": False, "created": sf.T0, "valid": True, "applies_to": {"products": ["prod_x"]}}
    empty_sandbox.control.load([coupon])
    event_coupon = {k: v for k, v in coupon.items() if k != "applies_to"}
    w = EventWorker(store, gateway, RecordingNotifier(), block_ms=10)
    await w.ensure_group()
    await enqueue(store, [sf.event("coupon.created", event_coupon, sf.T0)])
    await drain(w)
    stored = await store.get_tenant_objects("coupons", ["ADDON50"])
    assert stored["ADDON50"]["applies_to"] == {"products": ["prod_x"]}
    # ... and a later event without it keeps the stored one, asking Stripe nothing.
    empty_sandbox.control.clear_requests()
    await enqueue(store, [sf.event("coupon.updated", {**event_coupon, "name": "Renamed"}, sf.T0 + 5)])
    await drain(w)
    stored = await store.get_tenant_objects("coupons", ["ADDON50"])
    assert stored["ADDON50"]["name"] == "Renamed"
    assert stored["ADDON50"]["applies_to"] == {"products": ["prod_x"]}
    assert empty_sandbox.control.requests() == []


async def test_a_change_a_lookup_stored_first_is_still_alerted_once(store: RedisStore) -> None:
    now = int(time.time())
    past_due = sf.subscription(status="past_due")
    # An agent's lookup fetched the customer right after the subscription went past due ...
    data = CustomerData(customer=sf.customer(), subscriptions=[past_due])
    context = build_context(data, query="cus_A", match=Match(method="customer_id", confidence="exact"),
                            now=datetime.fromtimestamp(now, UTC))
    await store.save_customer(data, context, fetched_at=now)
    # ... and Stripe's webhook for that change arrives after it, twice.
    event = sf.event("customer.subscription.updated", past_due, now - 2)
    event["data"]["previous_attributes"] = {"status": "active"}
    notifier = RecordingNotifier()
    w = worker(store, notifier)
    await w.ensure_group()
    await enqueue(store, [event, event])
    await drain(w)
    assert notifier.names() == ["subscription.past_due"]
    # An old event (beyond the dedup window) that a snapshot absorbed is no news.
    stale = sf.event("customer.subscription.updated", past_due, now - 30 * 86400, eid="evt_old")
    stale["data"]["previous_attributes"] = {"status": "active"}
    await enqueue(store, [stale])
    await drain(w)
    assert notifier.names() == ["subscription.past_due"]


def _story_without_previous_attributes(recover: bool) -> list[dict[str, Any]]:
    """Jane appears, subscribes, falls past due (and maybe recovers): ``*.updated`` events without
    ``previous_attributes``, so only the state before each event can tell what changed."""
    t = sf.T0
    events = [
        sf.event("customer.created", sf.customer(), t),
        sf.event("customer.subscription.created", sf.subscription(status="active"), t + 1),
        sf.event("customer.subscription.updated", sf.subscription(status="past_due"), t + 2),
    ]
    if recover:
        events.append(sf.event("customer.subscription.updated", sf.subscription(status="active"), t + 3))
    return events


async def _keys_when_grouped(
    store: RedisStore, prefix: str, batches: list[list[dict[str, Any]]]
) -> list[str]:
    """The dedup keys notified when ``batches`` are handed to ``EventWorker.process`` one by one."""
    own = RedisStore(store.client, store.tenant, prefix=prefix)
    notifier = RecordingNotifier()
    w = worker(own, notifier)
    await w.ensure_group()
    n = 0
    for batch in batches:
        entries = []
        for evt in batch:
            n += 1
            entries.append((f"{n}-0", {b"e": json.dumps(evt).encode()}))
        await w.process(entries)
    assert w.stats.failed == 0
    keys = [t.dedup_key for t in notifier.transitions]
    assert len(keys) == len(set(keys))  # each transition notified once
    return keys


@pytest.mark.parametrize("recover", [False, True])
async def test_transitions_do_not_depend_on_how_events_are_batched(
    store: RedisStore, key_prefix: str, recover: bool
) -> None:
    events = _story_without_previous_attributes(recover)
    shuffled = list(events)
    random.Random(3).shuffle(shuffled)
    assert shuffled != events
    twice = events * 2
    random.Random(5).shuffle(twice)
    groupings = {
        "one per batch": [[e] for e in events],
        "one batch": [events],
        "one shuffled batch": [shuffled],
        "shuffled duplicates in one batch": [twice],
        "one batch then every event again": [events, *([e] for e in events), events],
    }
    found = {
        name: sorted(await _keys_when_grouped(store, f"{key_prefix}:g{i}", batches))
        for i, (name, batches) in enumerate(groupings.items())
    }
    sub_updates = [e["id"] for e in events if e["type"] == "customer.subscription.updated"]
    expected = [f"subscription.past_due:sub_A:past_due@{sub_updates[0]}"]
    if recover:
        expected.append(f"subscription.recovered:sub_A:active@{sub_updates[1]}")
    assert found == {name: sorted(expected) for name in groupings}


def _dunning_story(t: int) -> list[dict[str, Any]]:
    """Jane renews, the payment fails (past due), is retried and paid (recovered), then a receipt."""
    sub = sf.subscription
    due = sf.invoice(iid="in_R", status="open", attempts=0, attempted=False, created=t + 2)
    return [
        sf.event("customer.created", sf.customer(), t),
        sf.event("customer.subscription.created", sub(status="active"), t + 1),
        sf.event("invoice.created", due, t + 2),
        sf.event("invoice.payment_failed", {**due, "attempt_count": 1, "attempted": True}, t + 3),
        sf.event("customer.subscription.updated", sub(status="past_due"), t + 4),
        sf.event("invoice.paid", sf.invoice(iid="in_R", status="paid", attempts=2, created=t + 2), t + 5),
        sf.event("customer.subscription.updated", sub(status="active"), t + 6),
        sf.event("charge.succeeded", sf.charge(chid="ch_R", created=t + 5), t + 7),
    ]


def _counting(calls: list[str]) -> Any:
    def build(data: CustomerData, **kw: Any) -> Any:
        calls.append(str(data.customer["id"]))
        return build_context(data, **kw)

    return build


async def test_each_transition_carries_the_context_of_the_state_that_made_it(store: RedisStore) -> None:
    notifier = RecordingNotifier()
    w = worker(store, notifier)
    await w.ensure_group()
    await enqueue(store, _dunning_story(sf.T0))
    assert await w.run_once(block_ms=10) == 8  # one batch
    found = {t.name: t.context for t in notifier.transitions}
    assert sorted(found) == ["invoice.payment_failed", "subscription.past_due", "subscription.recovered"]
    failed = found["invoice.payment_failed"]
    assert failed.status == "active"
    assert [(i.id, i.status, i.attempt_count) for i in failed.recent_invoices] == [("in_R", "open", 1)]
    assert found["subscription.past_due"].status == "past_due"
    recovered = found["subscription.recovered"]
    assert recovered.status == "active" and recovered.recent_invoices[0].status == "paid"
    assert recovered.ltv == {}  # the charge came after: not in the state that recovered
    saved = await store.get_context("cus_A")
    assert saved is not None and saved.ltv == {"usd": 2900} and saved.plan == "Pro Monthly"


async def test_a_batch_builds_a_customer_once_unless_an_event_makes_a_transition(store: RedisStore) -> None:
    # Events with no transition: one build for the batch, however many events (was one per event).
    calls: list[str] = []
    w = worker(store, RecordingNotifier(), build=_counting(calls))
    await w.ensure_group()
    quiet = [e for e in _dunning_story(sf.T0) if e["type"] in {
        "customer.created", "customer.subscription.created", "invoice.created", "charge.succeeded"}]
    await enqueue(store, quiet)
    assert await w.run_once(block_ms=10) == 4
    assert calls == ["cus_A"]
    # Three transitions: one build for each state that made one, the last of them also the state
    # saved (nothing changed after it).
    calls.clear()
    rest = [e for e in _dunning_story(sf.T0) if e not in quiet]
    await enqueue(store, rest)
    assert await w.run_once(block_ms=10) == 4
    assert calls == ["cus_A"] * 3


async def test_facts_of_stored_objects_are_those_of_the_context_they_build(store: RedisStore) -> None:
    from billing.stripe.slim import with_version
    from billing.sync.transitions import facts_of
    from billing.sync.worker import _facts_of_state

    objects = [sf.customer(), sf.subscription(status="past_due"), sf.subscription(sid="sub_B", status="?"),
               *(sf.invoice(iid=f"in_{n}", status="open", attempts=n, created=sf.T0 - n) for n in range(7)),
               {**sf.invoice(iid="in_gone", created=sf.T0 + 9), "deleted": True}, sf.charge()]
    state = {o["id"]: with_version(o, (sf.T0, f"evt_{n}")) for n, o in enumerate(objects)}
    data = await store.load_customer_data("cus_A", state)
    assert data is not None
    built = build_context(data, query="cus_A", match=Match(method="customer_id", confidence="exact"),
                          now=datetime.fromtimestamp(sf.T0, UTC))
    assert _facts_of_state(state) == facts_of(built)
    deleted = {**state, "cus_A": {**state["cus_A"], "deleted": True}}
    assert await store.load_customer_data("cus_A", deleted) is None and _facts_of_state(deleted) is None
