"""The preview refresher (``billing.sync.previews``) on a real Redis with two refreshers (two worker
processes) at once: a customer is fetched by one of them, however long the others of its batch wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from freezegun import freeze_time

from billing.cache.store import RedisStore
from billing.domain.snapshot import StripeDict
from billing.sync.previews import PreviewRefresher
from tests.billing import stripe_factory as sf
from tests.billing.sync.test_worker import NoStripeNeeded, drain, enqueue, worker
from tests.fakes.notifier import RecordingNotifier


class GatedStripe(NoStripeNeeded):
    """Stripe's previews, each answered (no preview: the key may not) when the test opens its gate."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.gates: list[asyncio.Event] = []

    async def preview_next_invoices(
        self, subscriptions: Iterable[StripeDict]
    ) -> dict[str, StripeDict | None]:
        ids = [str(s["id"]) for s in subscriptions]
        self.asked += ids
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return dict.fromkeys(ids)

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()
        return None


async def _until(check: Callable[[], bool], polls: int = 2000) -> None:
    """Poll ``check`` (the clock is frozen: a number of polls bounds the wait, about 10 s)."""
    for _ in range(polls):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("not true in time")


async def test_a_customer_waiting_its_turn_in_a_batch_is_not_taken_by_another_refresher(
    store: RedisStore
) -> None:
    events: list[dict[str, Any]] = []
    for c in "ABC":
        events += [sf.event("customer.created", sf.customer(f"cus_{c}", f"{c}@acme.com"), sf.T0),
                   sf.event("customer.subscription.created", sf.subscription(f"sub_{c}", f"cus_{c}"),
                            sf.T0 + 1)]
    applying = worker(store, RecordingNotifier())
    await applying.ensure_group()
    await enqueue(store, events)
    await drain(applying)
    assert await store.previews.due_count() == 3  # each subscription event marked its customer
    stripe = GatedStripe()
    # Frozen after the marks (a refresher takes what is due by the wall clock).
    with freeze_time(datetime.now(UTC) + timedelta(seconds=1), real_asyncio=True) as clock:
        def refresher() -> PreviewRefresher:
            # One at a time, each fetch within 30 s, leased 40 s: enough for one fetch, not for three.
            return PreviewRefresher(store, stripe, applying.save_previews, timeout=30, lease=40,  # type: ignore[arg-type]
                                    concurrency=1)
        first = asyncio.create_task(refresher().refresh_due())
        await _until(lambda: len(stripe.gates) == 1)
        clock.tick(25)
        stripe.gates[0].set()  # the first customer's preview came after 25 s
        await _until(lambda: len(stripe.gates) == 2)
        clock.tick(25)  # 50 s after the batch was taken; the second fetch is 25 s old
        second = asyncio.create_task(refresher().refresh_due())
        await _until(lambda: len(stripe.gates) == 3 or second.done())
        stripe.open_all()
        await _until(lambda: stripe.open_all() or (first.done() and second.done()))
        await first
        await second
    assert sorted(stripe.asked) == ["sub_A", "sub_B", "sub_C"]  # each asked once
    left = await store.client.zrange(store.previews.due_key, 0, -1, withscores=True)
    assert left == [], (left, stripe.asked)
