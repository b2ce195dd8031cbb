"""Renewal and trial reminders (issue #10 item 5), on a real Redis (single server and cluster), under
freezegun: contexts built by the real worker from Stripe events, the real scheduler, the worker's outbox
and sweeper, the real rules notifier (``bot.alerts.RulesAlertNotifier``) with a poster that records.

Once per period across restarts (a new scheduler over the same Redis) and duplicate schedulers; a new
period reminds again; the rules' ``interval`` and ``mrr`` filter; a trial ending in 3 days reminds once;
a canceled subscription, or one set to cancel, is never reminded of a renewal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from billing.cache.store import RedisStore
from billing.ports import Transition
from billing.sync.scheduler import ReminderScheduler
from billing.sync.worker import EventWorker
from bot.alerts import RulesAlertNotifier, lead_times
from rules import AlertMatch, RulesFile, load_rules_text
from tests.billing import stripe_factory as sf
from tests.billing.sync.test_worker import NoStripeNeeded, drain, enqueue

START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

RULES = """\
version: 1
alerts:
  - on: subscription.renewal_upcoming
    name: big-yearly
    days_before: 7
    when: {interval: year, mrr: {gt: 500, currency: usd}}
    channel: C_RENEWALS
  - on: subscription.trial_ending
    days_before: 3
    channel: C_TRIALS
"""


class RecordingPoster:
    """Where the alerts would go (Slack is ``bot.slack``'s test): every fired alert, in order."""

    def __init__(self) -> None:
        self.posted: list[tuple[AlertMatch, Transition]] = []

    async def post(self, alert: AlertMatch, transition: Transition) -> None:
        self.posted.append((alert, transition))

    def seen(self) -> list[tuple[str, str, str, int | None]]:
        return [(a.alert, t.customer_id, t.object_id, t.days_before) for a, t in self.posted]


class Harness:
    def __init__(self, store: RedisStore, clock: FrozenDateTimeFactory, rules_text: str = RULES) -> None:
        self.store = store
        self.clock = clock
        self.rules: RulesFile = load_rules_text(rules_text, env={})
        self.poster = RecordingPoster()
        notifier = RulesAlertNotifier(lambda: self.rules, self.poster)
        self.worker = EventWorker(store, NoStripeNeeded(), notifier, block_ms=10)  # type: ignore[arg-type]

    def scheduler(self, **kw: Any) -> ReminderScheduler:
        """A scheduler as a (re)started process makes it: nothing in memory, everything in Redis."""
        return ReminderScheduler(self.store, lead_times(lambda: self.rules), **kw)

    async def apply(self, *events: dict[str, Any]) -> None:
        await self.worker.ensure_group()
        await enqueue(self.store, list(events))
        await drain(self.worker)

    async def yearly_subscriber(self, renews: datetime) -> None:
        """cus_Y on the yearly plan (above the big-yearly rule's mrr) since START, renewing at ``renews``."""
        await self.apply(*customer_events(
            "cus_Y", sub("sub_Y", "cus_Y", price=yearly_price(), period_end=renews), START))

    async def deliver(self) -> None:
        """The worker's sweeper notifies what the scheduler queued: until every outbox is empty (a bounded
        number of sweeps: the frozen clock cannot bound it)."""
        for _ in range(100):
            if not await self.store.client.zcard(self.store.tenant_key("outbox:pending")):
                return
            await self.worker.sweep()
        raise AssertionError("the sweeper did not empty the outboxes")

    async def reminded(self, customer_id: str, sub_id: str, date: datetime, days: int = 7) -> bool:
        """The once-marker of a renewal reminder is set (it was queued, whether an alert fired or not)."""
        marker = f"reminded:subscription.renewal_upcoming:{sub_id}:{_ts(date)}"
        return bool(await self.store.client.hexists(self.store.customer_key(customer_id, marker), str(days)))


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START, real_asyncio=True) as frozen:
        assert isinstance(frozen, FrozenDateTimeFactory)
        yield frozen


def _ts(moment: datetime) -> int:
    return int(moment.timestamp())


def yearly_price(amount: int = 1_200_000) -> dict[str, Any]:  # 12,000.00 USD a year: 1,000.00 USD MRR
    return sf.price(f"price_yearly_{amount}", amount, recurring={"interval": "year", "interval_count": 1,
                                                        "usage_type": "licensed"})


def monthly_price(amount: int = 90_000) -> dict[str, Any]:
    return sf.price("price_monthly", amount, recurring={"interval": "month", "interval_count": 1,
                                                         "usage_type": "licensed"})


def sub(sid: str, cid: str, *, price: dict[str, Any], period_end: datetime, status: str = "active",
        **extra: Any) -> dict[str, Any]:
    body = sf.subscription(sid, cid, status, **extra)
    item = body["items"]["data"][0]
    item.update(price=price, current_period_start=_ts(period_end) - 86400 * 30,
                current_period_end=_ts(period_end))
    return body


def customer_events(cid: str, subscription: dict[str, Any], at: datetime) -> list[dict[str, Any]]:
    return [sf.event("customer.created", sf.customer(cid, f"{cid}@acme.com"), _ts(at) - 10),
            sf.event("customer.subscription.created", subscription, _ts(at) - 5)]


async def test_a_yearly_renewal_in_5_days_reminds_once_across_restarts_and_again_next_period(
    store: RedisStore, clock: FrozenDateTimeFactory
) -> None:
    h = Harness(store, clock)
    renews = START + 5 * DAY
    await h.yearly_subscriber(renews)

    assert await h.scheduler().tick() == 1  # due since 2 days (7 ahead): still worth sending
    await h.deliver()
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7)]
    alert, transition = h.poster.posted[0]
    assert transition.name == "subscription.renewal_upcoming"
    assert alert.reasons == ["transition subscription.renewal_upcoming (7 days ahead)", "interval is year",
                             "mrr 1,000.00 USD > 500.00 USD"]

    # The same scheduler again, a restarted one, two at once, and a re-walk an hour later: nothing more.
    again = h.scheduler()
    assert await again.tick() == 0
    assert list(await asyncio.gather(h.scheduler().tick(), h.scheduler().tick())) == [0, 0]
    clock.tick(timedelta(hours=2))
    restarted = h.scheduler()
    assert await restarted.tick() == 0
    assert restarted.stats.walked == 1 and restarted.stats.already == 1
    await h.deliver()
    assert len(h.poster.posted) == 1

    # Renewed: a new period, reminded 7 days before its end (a year later), once.
    clock.move_to(renews + timedelta(minutes=1))
    next_end = renews + 365 * DAY
    renewed = sub("sub_Y", "cus_Y", price=yearly_price(), period_end=next_end)
    await h.apply(sf.event("customer.subscription.updated", renewed, _ts(renews) + 30))
    assert await h.scheduler().tick() == 0  # not due for a year
    clock.move_to(next_end - 7 * DAY - timedelta(minutes=1))
    assert await h.scheduler().tick() == 0
    clock.move_to(next_end - 7 * DAY + timedelta(minutes=1))
    assert await h.scheduler().tick() == 1
    assert await h.scheduler().tick() == 0
    await h.deliver()
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7)] * 2
    periods = [t.event_id for _, t in h.poster.posted]
    assert periods == [f"{_ts(renews)}-7d", f"{_ts(next_end)}-7d"]


async def test_a_reminder_comes_at_its_moment_from_the_schedule(
    store: RedisStore, clock: FrozenDateTimeFactory
) -> None:
    h = Harness(store, clock)
    renews = START + 10 * DAY
    await h.yearly_subscriber(renews)
    # No re-walk for weeks: the moment stored at the first walk alone brings the reminder.
    scheduler = h.scheduler(rewalk_after=30 * 86400)
    assert await scheduler.tick() == 0
    due: float | None = await store.client.zscore(scheduler.due_key, "cus_Y")
    assert due == (renews - 7 * DAY).timestamp()
    clock.move_to(renews - 7 * DAY + timedelta(seconds=1))
    restarted = h.scheduler(rewalk_after=30 * 86400)
    assert await restarted.tick() == 1
    assert restarted.stats.walked == 0
    await h.deliver()
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7)]
    assert await store.client.zscore(scheduler.due_key, "cus_Y") is None  # nothing more this period


async def test_a_new_or_renewed_subscription_is_scheduled_on_the_next_tick_without_a_walk(
    store: RedisStore, clock: FrozenDateTimeFactory
) -> None:
    h = Harness(store, clock)
    scheduler = h.scheduler(rewalk_after=30 * 86400)
    assert await scheduler.tick() == 0  # the walk of an empty tenant: done, none again for weeks
    renews = START + 5 * DAY
    await h.yearly_subscriber(renews)
    # The worker's save put the customer in ``reminders:dirty``: the next tick schedules it.
    assert await scheduler.tick() == 1
    assert scheduler.stats.walked == 0

    # Renewed into a period ending in 6 days (reminded 7 ahead): due at once, still no walk.
    clock.move_to(renews + timedelta(minutes=1))
    next_end = renews + 6 * DAY
    renewed = sub("sub_Y", "cus_Y", price=yearly_price(), period_end=next_end)
    await h.apply(sf.event("customer.subscription.updated", renewed, _ts(renews) + 30))
    assert await scheduler.tick() == 1
    assert scheduler.stats.walked == 0
    await h.deliver()
    assert [t.event_id for _, t in h.poster.posted] == [f"{_ts(renews)}-7d", f"{_ts(next_end)}-7d"]


async def test_a_trial_ending_in_3_days_reminds_once(store: RedisStore, clock: FrozenDateTimeFactory) -> None:
    h = Harness(store, clock)
    ends = START + 3 * DAY
    trial = sub("sub_T", "cus_T", price=monthly_price(), period_end=ends, status="trialing",
                trial_start=_ts(START - 11 * DAY), trial_end=_ts(ends))
    await h.apply(*customer_events("cus_T", trial, START))
    assert await h.scheduler().tick() == 1
    assert await h.scheduler().tick() == 0
    clock.tick(timedelta(days=1))
    assert await h.scheduler().tick() == 0
    await h.deliver()
    assert [(a.alert, a.channel, t.name, t.days_before) for a, t in h.poster.posted] == [
        ("subscription.trial_ending", "C_TRIALS", "subscription.trial_ending", 3)]


async def test_the_rules_filter_and_ended_subscriptions_never_remind(
    store: RedisStore, clock: FrozenDateTimeFactory
) -> None:
    h = Harness(store, clock)
    soon = START + 5 * DAY
    await h.apply(
        # A monthly plan (interval: month) and a small yearly one (MRR 100 USD) are reminded of, but no
        # alert of these rules fires for them.
        *customer_events("cus_M", sub("sub_M", "cus_M", price=monthly_price(), period_end=soon), START),
        *customer_events("cus_S", sub("sub_S", "cus_S", price=yearly_price(120_000), period_end=soon), START),
        # Canceled, or set to cancel at the period's end: no renewal to speak of.
        *customer_events("cus_C", sub("sub_C", "cus_C", price=yearly_price(), period_end=soon,
                                      status="canceled", canceled_at=_ts(START - DAY),
                                      ended_at=_ts(START - DAY)), START),
        *customer_events("cus_E", sub("sub_E", "cus_E", price=yearly_price(), period_end=soon,
                                      cancel_at_period_end=True), START),
        *customer_events("cus_Y", sub("sub_Y", "cus_Y", price=yearly_price(), period_end=soon), START),
    )
    assert await h.scheduler().tick() == 3
    await h.deliver()
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7)]
    reminded = [await h.reminded(f"cus_{c}", f"sub_{c}", soon) for c in "MSCEY"]
    assert reminded == [True, True, False, False, True]


async def test_lead_times_from_the_rules_and_a_change_of_them_rewalks(
    store: RedisStore, clock: FrozenDateTimeFactory
) -> None:
    h = Harness(store, clock, RULES.replace("days_before: 7", "days_before: 3"))
    renews = START + 5 * DAY
    await h.yearly_subscriber(renews)
    scheduler = h.scheduler(rewalk_after=30 * 86400)
    assert await scheduler.tick() == 0  # 3 days ahead: in 2 days
    # The rules file now says 7 days: the new lead time applies at the next tick, without a restart.
    h.rules = load_rules_text(RULES, env={})
    assert await scheduler.tick() == 1
    await h.deliver()
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7)]



RULES_7_AND_1 = RULES.replace("""    channel: C_RENEWALS
""", """    channel: C_RENEWALS
  - on: subscription.renewal_upcoming
    name: last-call
    days_before: 1
    when: {interval: year}
    channel: C_RENEWALS
""")


async def test_changing_days_before_after_its_reminder_does_not_remind_again_in_that_period(
    store: RedisStore, clock: FrozenDateTimeFactory
) -> None:
    h = Harness(store, clock)
    await h.apply(*customer_events("cus_Y", sub("sub_Y", "cus_Y", price=yearly_price(),
                                                period_end=START + 5 * DAY), START))
    assert await h.scheduler().tick() == 1
    await h.deliver()
    # The alert now reminds 10 days ahead: due too, but this alert has reminded of this period.
    h.rules = load_rules_text(RULES.replace("days_before: 7", "days_before: 10"), env={})
    scheduler = h.scheduler()
    assert await scheduler.tick() == 0
    assert await h.scheduler().tick() == 0  # a restart
    assert scheduler.stats.already == 1
    await h.deliver()
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7)]


async def test_a_reminder_marked_by_the_version_before_hashed_markers_is_not_sent_again(
    store: RedisStore, clock: FrozenDateTimeFactory
) -> None:
    h = Harness(store, clock)
    renews = START + 5 * DAY
    await h.yearly_subscriber(renews)
    old = f"reminded:subscription.renewal_upcoming:sub_Y:{_ts(renews)}:7"  # a string per lead time
    await store.client.set(store.customer_key("cus_Y", old), START.isoformat(), ex=7 * 86400)
    assert await h.scheduler().tick() == 0
    await h.deliver()
    assert h.poster.seen() == []


async def test_a_reminder_queued_before_its_alerts_days_before_changed_is_delivered_once(
    store: RedisStore, clock: FrozenDateTimeFactory
) -> None:
    h = Harness(store, clock)
    await h.apply(*customer_events("cus_Y", sub("sub_Y", "cus_Y", price=yearly_price(),
                                                period_end=START + 5 * DAY), START))
    assert await h.scheduler().tick() == 1
    h.rules = load_rules_text(RULES.replace("days_before: 7", "days_before: 10"), env={})
    await h.deliver()  # queued 7 days ahead, delivered under the rules saying 10: the same alert's
    assert await h.scheduler().tick() == 0
    await h.deliver()
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7)]


async def test_two_alerts_at_7_and_1_days_remind_once_each_across_restarts_and_a_change(
    store: RedisStore, clock: FrozenDateTimeFactory
) -> None:
    h = Harness(store, clock, RULES_7_AND_1)
    renews = START + 5 * DAY
    await h.yearly_subscriber(renews)
    assert await h.scheduler().tick() == 1
    assert await h.scheduler().tick() == 0
    await h.deliver()
    # The first alert now says 10 days: it has reminded; the 1-day one still will.
    h.rules = load_rules_text(RULES_7_AND_1.replace("days_before: 7", "days_before: 10"), env={})
    assert await h.scheduler().tick() == 0
    clock.move_to(renews - DAY + timedelta(minutes=1))
    assert await h.scheduler().tick() == 1
    assert await h.scheduler().tick() == 0
    await h.deliver()
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7), ("last-call", "cus_Y", "sub_Y", 1)]


async def test_a_tick_that_dies_between_taking_dirty_customers_and_storing_their_moments_loses_none(
    store: RedisStore, clock: FrozenDateTimeFactory
) -> None:
    h = Harness(store, clock)
    assert await h.scheduler(rewalk_after=30 * 86400).tick() == 0  # walked (empty): none for weeks
    await h.apply(*customer_events("cus_Y", sub("sub_Y", "cus_Y", price=yearly_price(),
                                                period_end=START + 5 * DAY), START))

    async def die(ids: Sequence[str]) -> None:
        assert list(ids) == ["cus_Y"]
        raise ConnectionError("the process died (or Redis went away) mid-tick")

    with pytest.raises(ConnectionError):
        await h.scheduler(rewalk_after=30 * 86400, taken=die).tick()
    # A restarted scheduler takes the customer again on its first tick, not at the next walk.
    again = h.scheduler(rewalk_after=30 * 86400)
    assert await again.tick() == 1
    assert again.stats.walked == 0
    assert await again.tick() == 0
    await h.deliver()
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7)]


async def test_an_unreadable_cached_context_is_skipped_and_the_others_are_reminded(
    store: RedisStore, clock: FrozenDateTimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(store, clock)
    soon = START + 5 * DAY
    await h.apply(*(event for c in "BY" for event in customer_events(
        f"cus_{c}", sub(f"sub_{c}", f"cus_{c}", price=yearly_price(), period_end=soon), START)))
    await store.client.set(store.customer_key("cus_B", "ctx"), b"\x00 not a context")
    assert await h.scheduler().maybe_tick() == 1
    await h.deliver()
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7)]
    assert "customer cus_B: cached context unreadable" in caplog.text


async def test_the_worker_loop_ticks_its_scheduler(store: RedisStore) -> None:
    # The clock runs (from START): the worker's loop times its sweeps and ticks by it.
    with freeze_time(START, tick=True, real_asyncio=True) as clock:
        await _worker_loop_reminds(store, clock)  # type: ignore[arg-type]


async def _worker_loop_reminds(store: RedisStore, clock: FrozenDateTimeFactory) -> None:
    h = Harness(store, clock)
    await h.yearly_subscriber(START + 5 * DAY)
    h.worker.scheduler = h.scheduler(interval=0.05)
    h.worker.sweep_interval = 0.05
    stop = asyncio.Event()
    task = asyncio.create_task(h.worker.run(stop))
    try:
        deadline = time.monotonic() + 10
        while not h.poster.posted:
            assert time.monotonic() < deadline, "the worker's loop sent no reminder"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
    assert h.poster.seen() == [("big-yearly", "cus_Y", "sub_Y", 7)]
