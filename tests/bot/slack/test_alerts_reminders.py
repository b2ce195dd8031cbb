"""A yearly customer renewing in 5 days (the demo's Renewal Yearly Ltd, from the Stripe sandbox over HTTP)
raises one ``subscription.renewal_upcoming`` message through the workers' schedulers, with the default
rules (yearly renewals, 7 days ahead), posted once to the fake Slack Web API whatever the number of
workers and restarts (issue #10 item 5, "Done when")."""

from __future__ import annotations

from bot.alerts import build_scheduler
from tests.bot.slack.test_alerts_slack import (  # noqa: F401 - fixtures
    World,
    fake_slack,
    message_keys,
    text_of,
    wait_until,
    world,
)

RENEWING = "renewal@example.com"


async def test_a_yearly_renewal_in_5_days_is_one_slack_message_from_two_workers_and_a_restart(
    world: World,  # noqa: F811 - the fixture
) -> None:
    w = world
    context = await w.runtime.service.lookup(RENEWING)  # an agent's lookup caches the customer
    assert context.found and context.customer is not None
    workers = await w.start_workers(2)
    for worker in workers:
        worker.scheduler = build_scheduler(w.store, w.runtime.rules)
        worker.scheduler.interval = 0.1

    def reminders() -> list[str]:
        return [k for k in message_keys(w.top_level()) if k.startswith("subscription.renewal_upcoming:")]

    async def reminded() -> bool:
        return len(reminders()) >= 1 and await w.settled()

    await wait_until(reminded, "the renewal reminder")
    [key] = reminders()
    assert key.startswith(f"subscription.renewal_upcoming:{context.subscriptions[0].id}:")
    [message] = [m for m in w.top_level() if m["metadata"]["event_payload"]["key"] == key]
    text = text_of(message)
    assert "Renewal coming up" in text and "Renewal Yearly Ltd" in text
    assert "Business Yearly (every year)" in text and "(in 5 days)" in text
    assert "transition subscription.renewal_upcoming (7 days ahead)" in text

    # A restart: new workers with new schedulers over the same Redis, ticking a while; nothing more.
    w.stop.set()
    for task in w.tasks:
        await task
    w.stop.clear()
    w.tasks.clear()
    w.workers.clear()
    restarted = await w.start_workers(1)
    restarted[0].scheduler = scheduler = build_scheduler(w.store, w.runtime.rules)
    scheduler.interval = 0.05

    async def ticked() -> bool:
        return scheduler.stats.ticks >= 3 and await w.settled()

    await wait_until(ticked, "three ticks of the restarted scheduler")
    assert reminders() == [key]
    assert len(w.post_calls("subscription.renewal_upcoming")) == 1
