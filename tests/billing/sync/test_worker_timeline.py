"""Timeline entries only webhook events give (issue #10 item 1): made by the worker from each event's
previous_attributes, kept per customer (bounded), the same whatever the delivery order or repeats."""

from __future__ import annotations

import json
import random
from typing import Any

from billing.cache.event_timeline import TIMELINE_PART, decode_entries
from billing.cache.store import RedisStore
from billing.domain.models import BillingContext
from billing.sync.worker import EventWorker
from tests.billing import stripe_factory as sf
from tests.billing.sync.test_worker import NoStripeNeeded, drain, enqueue
from tests.fakes.notifier import RecordingNotifier

T = sf.T0
BASIC = sf.price("price_basic", amount=1000, nickname="Basic")
COUPON = {"id": "co_half", "object": "coupon", "name": "HALF", "percent_off": 50, "duration": "forever"}
DISCOUNT = {"id": "di_1", "object": "discount", "start": T - 86400, "end": None,
            "source": {"type": "coupon", "coupon": COUPON}, "coupon": COUPON}


def _sub(price: dict[str, Any], quantity: int = 1, **extra: Any) -> dict[str, Any]:
    sub = sf.subscription(**extra)
    sub["items"]["data"][0].update(price=price, quantity=quantity)
    return sub


def _updated(sub: dict[str, Any], at: int, previous: dict[str, Any]) -> dict[str, Any]:
    event = sf.event("customer.subscription.updated", sub, at)
    event["data"]["previous_attributes"] = previous
    return event


def story() -> list[dict[str, Any]]:
    """Jane on Basic with a coupon: upgrades to Pro, takes 3 seats, loses the coupon, pauses and
    resumes collection, changes her card."""
    pro = sf.price()
    basic = _sub(BASIC, discounts=[DISCOUNT])
    upgraded = _sub(pro, discounts=[DISCOUNT])
    seats = _sub(pro, 3, discounts=[DISCOUNT])
    plain = _sub(pro, 3)
    paused = _sub(pro, 3, pause_collection={"behavior": "void", "resumes_at": T + 40 * 86400})
    card = sf.customer(invoice_settings={"default_payment_method": "pm_new"})
    card_event = sf.event("customer.updated", card, T + 7)
    card_event["data"]["previous_attributes"] = {"invoice_settings": {"default_payment_method": None}}
    return [
        sf.event("customer.created", sf.customer(), T),
        sf.event("customer.subscription.created", basic, T + 1),
        _updated(upgraded, T + 2, {"items": basic["items"]}),
        _updated(seats, T + 3, {"items": upgraded["items"]}),
        _updated(plain, T + 4, {"discounts": ["di_1"]}),
        _updated(paused, T + 5, {"pause_collection": None}),
        _updated(plain, T + 6, {"pause_collection": paused["pause_collection"]}),
        card_event,
    ]


EXPECTED = [
    ("payment_method_updated", "Default payment method changed"),
    ("resumed", "Payment collection for Pro Monthly resumed"),
    ("paused", "Payment collection for Pro Monthly paused until 2025-11-18"),
    ("coupon_removed", "Coupon HALF (50% off, forever) removed from Pro Monthly"),
    ("quantity_changed", "Quantity of Pro Monthly changed from 1 to 3 (MRR 14.50 USD → 43.50 USD)"),
    ("upgraded", "Upgraded from Basic to Pro Monthly (MRR 5.00 USD → 14.50 USD)"),
]


def _worker(store: RedisStore, **kw: Any) -> EventWorker:
    return EventWorker(store, NoStripeNeeded(), RecordingNotifier(), block_ms=10,  # type: ignore[arg-type]
                       **kw)


async def _webhook_entries(store: RedisStore) -> list[tuple[str, str]]:
    ctx = await store.get_context("cus_A")
    assert isinstance(ctx, BillingContext) and ctx.found
    kinds = {kind for kind, _ in EXPECTED}
    return [(e.kind, e.text) for e in ctx.timeline if e.kind in kinds]


async def _deliver(store: RedisStore, batches: list[list[dict[str, Any]]], batch_size: int = 200) -> None:
    w = _worker(store, batch_size=batch_size)
    await w.ensure_group()
    for batch in batches:
        await enqueue(store, batch)
        await drain(w)
    assert w.stats.failed == 0


async def test_webhook_only_entries_are_in_the_timeline_in_order_delivery(store: RedisStore) -> None:
    await _deliver(store, [[e] for e in story()])
    assert await _webhook_entries(store) == EXPECTED


async def test_shuffled_and_duplicated_delivery_gives_the_same_timeline(
    store: RedisStore, key_prefix: str
) -> None:
    events = story()
    for seed in (1, 2, 3):
        own = RedisStore(store.client, store.tenant, prefix=f"{key_prefix}:s{seed}")
        # Jane first (a customer never seen would be fetched from Stripe), then every event twice,
        # shuffled, in one batch; then every event again, one batch each.
        storm = events[1:] * 2
        random.Random(seed).shuffle(storm)
        await _deliver(own, [[events[0]], storm, *([e] for e in reversed(events))])
        assert await _webhook_entries(own) == EXPECTED, seed
        raw = await own.client.get(own.customer_key("cus_A", TIMELINE_PART))
        assert len(decode_entries(raw)) == len(EXPECTED)  # one per event, none twice


async def test_the_kept_entries_are_bounded_to_the_newest(store: RedisStore) -> None:
    pro = sf.price()
    events = [sf.event("customer.created", sf.customer(), T),
              sf.event("customer.subscription.created", _sub(pro, 1), T + 1)]
    for n in range(1, 26):
        events.append(_updated(_sub(pro, n + 1), T + 1 + n, {"items": _sub(pro, n)["items"]}))
    await _deliver(store, [events])
    raw = await store.client.get(store.customer_key("cus_A", TIMELINE_PART))
    kept = decode_entries(raw)
    assert len(kept) == 20 and [e.at for e in kept] == [T + 1 + n for n in range(25, 5, -1)]
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.timeline[0].text.startswith("Quantity of Pro Monthly changed from 25 to")
    assert json.loads(raw)[0]["kind"] == "quantity_changed"


async def test_a_lookup_rebuilding_the_context_keeps_the_webhook_entries(store: RedisStore) -> None:
    from datetime import UTC, datetime

    from billing.domain.builder import build_context
    from billing.domain.models import Match
    from billing.domain.snapshot import CustomerData

    await _deliver(store, [story()])
    # A lookup fetched the customer from Stripe: its snapshot is folded into the stored objects and
    # the context rebuilt from them.
    data = CustomerData(customer=sf.customer(name="Jane Q."), subscriptions=[_sub(sf.price(), 3)])
    fetched = build_context(data, query="jane@acme.com", match=Match(method="email", confidence="exact"),
                            now=datetime.fromtimestamp(T + 60, UTC))
    await store.save_customer(data, fetched, fetched_at=T + 60)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.customer is not None and ctx.customer.name == "Jane Q."
    assert await _webhook_entries(store) == EXPECTED
