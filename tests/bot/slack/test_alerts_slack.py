"""Automatic Slack messages, end to end over real HTTP: the Stripe sandbox signs and delivers webhooks
to the ASGI app under uvicorn, event workers (with the notifier ``build_notifier`` wires) apply them to
a real Redis (single server and cluster) and post to the fake Slack Web API, whose faults stand in for
Slack's bad days.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing.cache.store import RedisStore
from billing.config import Settings
from billing.sync.worker import EventWorker, _transition_from_dict
from bot.alerts import build_notifier
from bot.asgi import build_asgi_app
from bot.runtime import Runtime, load_settings, open_runtime
from bot.slack.alerts import EVENT_TYPE, SlackAlertPoster, idempotency_key
from bot.slack.incidents import message_key, open_incident, recent_alerts
from tests.fakes.notifier import RecordingNotifier
from tests.fakes.slack_api import CHANNEL_ALERTS, FakeSlackAPI
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle
from tests.loopback import run_asgi

DEADLINE = 20.0
LEASE_TIMEOUT = 1.0
EMAIL = "bigco@example.com"


# ---- the world -------------------------------------------------------------------------------
@dataclass
class World:
    runtime: Runtime
    store: RedisStore
    sandbox: SandboxHandle
    slack: FakeSlackAPI
    customer_id: str = ""
    subscription_id: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    workers: list[EventWorker] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def notifier(self) -> SlackAlertPoster:
        notifier = build_notifier(self.runtime)
        assert isinstance(notifier, SlackAlertPoster)
        notifier.lease_timeout = LEASE_TIMEOUT
        return notifier

    def worker(self, name: str, notifier: Any = None) -> EventWorker:
        return EventWorker(self.store, self.runtime.gateway, notifier or self.notifier(), consumer=name,
                           block_ms=50, sweep_interval=0.1, retry_base=0.1, retry_max=0.5)

    async def start_workers(self, count: int) -> list[EventWorker]:
        for n in range(count):
            worker = self.worker(f"w{n}")
            await worker.ensure_group()
            self.workers.append(worker)
            self.tasks.append(asyncio.create_task(worker.run(self.stop)))
        return self.workers

    async def control(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A sandbox control call, off the event loop: its webhooks come back to this loop's server."""
        return await asyncio.to_thread(getattr(self.sandbox.control, method), *args, **kwargs)

    async def settled(self) -> bool:
        """Every event acknowledged and every customer's outbox notified."""
        health = await self.store.health()
        pending_outboxes = await self.store.client.zcard(self.store.tenant_key("outbox:pending"))
        return health.stream_length == 0 and health.pending == 0 and pending_outboxes == 0

    async def one_alert_settled(self) -> bool:
        """One top-level message in the alerts channel, and nothing left to apply or notify."""
        return len(self.top_level()) == 1 and await self.settled()

    def top_level(self) -> list[dict[str, Any]]:
        return [m for m in self.slack.messages(CHANNEL_ALERTS) if m.get("thread_ts") in (None, m["ts"])]

    def replies(self, thread_ts: str) -> list[dict[str, Any]]:
        return [m for m in self.slack.messages(CHANNEL_ALERTS)
                if m.get("thread_ts") == thread_ts and m["ts"] != thread_ts]

    def post_calls(self, key_part: str) -> list[Any]:
        """chat.postMessage calls whose message key contains ``key_part``, in order."""
        return [c for c in self.slack.calls()
                if c.method == "chat.postMessage"
                and key_part in str(((c.params.get("metadata") or {}).get("event_payload") or {}).get("key"))]


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, within: float = DEADLINE) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"{what} did not happen within {within} s")


def message_keys(messages: list[dict[str, Any]]) -> list[str]:
    return [str(m["metadata"]["event_payload"]["key"]) for m in messages
            if (m.get("metadata") or {}).get("event_type") == EVENT_TYPE]


def text_of(message: dict[str, Any]) -> str:
    return message.get("text", "") + json.dumps(message.get("blocks") or [])


@asynccontextmanager
async def webhook_server(store: RedisStore, secret: str) -> AsyncIterator[str]:
    app = build_asgi_app(settings=Settings(), store=store, webhook_secret=secret, tenant=store.tenant)
    async with run_asgi(app, lifespan="on") as url:
        yield f"{url}/stripe/webhook"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as fake:
        yield fake


@pytest.fixture
async def world(
    sandbox: SandboxHandle, fake_slack: FakeSlackAPI, any_redis_url: str, key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[World]:
    monkeypatch.setenv("BILLING_ALERT_CHANNEL", CHANNEL_ALERTS)  # read by the default rules file
    monkeypatch.delenv("BILLING_RULES_FILE", raising=False)
    settings = load_settings(
        STRIPE_API_KEY=sandbox.api_key, STRIPE_API_BASE=sandbox.url, REDIS_URL=any_redis_url,
        BILLING_KEY_PREFIX=key_prefix, BILLING_STRIPE_RETRIES="1", SLACK_BOT_TOKEN="xoxb-test-token",
        SLACK_API_URL=fake_slack.url,
    )
    secret = f"whsec_{secrets.token_hex(16)}"
    try:
        async with open_runtime(settings, require_store=True) as runtime:
            assert runtime.store is not None
            w = World(runtime, runtime.store, sandbox, fake_slack)
            customer = (await runtime.gateway.list_customers_by_email(EMAIL))[0]
            w.customer_id = str(customer["id"])
            w.subscription_id = str(customer["subscriptions"]["data"][0]["id"])
            async with webhook_server(runtime.store, secret) as url:
                sandbox.control.register_webhook(url, secret)
                try:
                    yield w
                finally:
                    w.stop.set()
                    await asyncio.gather(*w.tasks)
                    sandbox.control.clear_webhooks()
    finally:
        await unlink_prefix(any_redis_url, key_prefix)


async def open_invoice(w: World, invoice_id: str = "in_alertstory") -> str:
    """An open, not yet attempted invoice of the customer's subscription (as Stripe bills a renewal)."""
    now = int(time.time())
    invoice = {
        "id": invoice_id, "object": "invoice", "customer": w.customer_id, "number": "BIG-0099",
        "status": "open", "amount_due": 125000, "amount_paid": 0, "amount_remaining": 125000,
        "currency": "usd", "created": now, "attempt_count": 0, "attempted": False,
        "next_payment_attempt": None, "hosted_invoice_url": "https://invoice.stripe.com/i/alertstory",
        "due_date": None, "livemode": False, "status_transitions": {},
        "parent": {"type": "subscription_details",
                   "subscription_details": {"subscription": w.subscription_id}},
        "lines": {"object": "list", "data": []},
    }
    await w.control("load", [invoice])
    return invoice_id


async def warm(w: World) -> None:
    """An agent's lookup: the customer is cached before anything happens."""
    context = await w.runtime.service.lookup(EMAIL)
    assert context.found and context.status == "active"


# ---- the story -------------------------------------------------------------------------------
async def test_past_due_delivered_three_times_to_two_workers_is_one_message_and_its_thread(
    world: World,
) -> None:
    w = world
    invoice_id = await open_invoice(w)
    await warm(w)
    await w.start_workers(2)

    # The renewal fails: Stripe sends the failed payment and the subscription going past due...
    events = (await w.control("fail_invoice", invoice_id))["events"]
    assert "customer.subscription.updated" in [e["type"] for e in events]
    # ... and, delivering at least once, sends every one of those events twice more.
    again = await w.control("deliver", [e["id"] for e in events], times=2)
    assert again["delivered"] == 2 * len(events)

    async def one_alert_and_settled() -> bool:
        return len(w.top_level()) >= 1 and await w.settled()

    await wait_until(one_alert_and_settled, "the past_due alert")
    [alert] = w.top_level()
    assert message_keys([alert])[0].startswith("subscription.past_due:")
    text = text_of(alert)
    assert "urgent" in text and "billing" in text  # priority and tags of the default rules
    incident = await open_incident(w.store.namespace("slack"), w.customer_id)
    assert incident is not None and incident.ts == alert["ts"] and incident.channel == CHANNEL_ALERTS

    # Stripe retries and fails again: a reply in the incident's thread.
    await w.control("fail_invoice", invoice_id)

    async def retry_replied() -> bool:
        return any("attempt 2" in text_of(m) for m in w.replies(alert["ts"])) and await w.settled()

    await wait_until(retry_replied, "the failed retry in the thread")

    # Three days later the invoice is paid: the recovery closes the incident in its thread.
    for notifier in (wk.notifier for wk in w.workers):
        assert isinstance(notifier, SlackAlertPoster)
        notifier.clock = lambda: datetime.now(UTC) + timedelta(days=3)
    await w.control("pay_invoice", invoice_id)

    async def recovered() -> bool:
        return any("recovered" in text_of(m) for m in w.replies(alert["ts"])) and await w.settled()

    await wait_until(recovered, "the recovery in the thread")
    recovery = [m for m in w.replies(alert["ts"]) if "recovered" in text_of(m)]
    assert len(recovery) == 1 and "recovered after 3 days" in recovery[0]["text"]
    assert await open_incident(w.store.namespace("slack"), w.customer_id) is None

    # Exactly once: one top-level message, and no message key twice in Slack.
    assert len(w.top_level()) == 1
    keys = message_keys(w.slack.messages(CHANNEL_ALERTS))
    assert len(keys) == len(set(keys))
    # The App Home's list: newest first, the alert last.
    recent = await recent_alerts(w.store.namespace("slack"), limit=10)
    assert recent[0]["transition"] == "subscription.recovered" and recent[0]["thread"] is True
    assert recent[-1]["transition"] == "subscription.past_due" and recent[-1]["thread"] is False
    assert recent[-1]["ts"] == alert["ts"] and recent[-1]["customer"] == "BigCo Inc"
    assert recent[-1]["customer_id"] == w.customer_id and recent[-1]["channel"] == CHANNEL_ALERTS
    assert isinstance(recent[-1]["at"], float)


async def test_a_cancellation_lands_in_the_thread_and_closes_the_incident(world: World) -> None:
    w = world
    invoice_id = await open_invoice(w)
    await warm(w)
    await w.start_workers(1)
    await w.control("fail_invoice", invoice_id)

    await wait_until(w.one_alert_settled, "the past_due alert")
    [alert] = w.top_level()
    # One worker applies Stripe's events in their order: the card shows the payment that failed.
    assert "Priority: *urgent*" in text_of(alert) and "`billing`" in text_of(alert)
    assert "1,250.00 USD due" in text_of(alert) and "attempt 1" in text_of(alert)
    assert "next retry" in text_of(alert)
    assert "past-due-billing: status is past_due" in text_of(alert)  # why: the rules that matched
    await w.control("set_subscription_status", w.subscription_id, "canceled")

    async def canceled() -> bool:
        return any("canceled" in text_of(m) for m in w.replies(alert["ts"])) and await w.settled()

    await wait_until(canceled, "the cancellation in the thread")
    assert len(w.top_level()) == 1
    assert await open_incident(w.store.namespace("slack"), w.customer_id) is None


async def test_a_customer_the_cache_never_saw_is_fetched_from_stripe_and_alerted(world: World) -> None:
    w = world
    [worker] = await w.start_workers(1)
    assert await w.store.get_context(w.customer_id) is None  # no backfill, no lookup
    w.sandbox.control.clear_requests()
    await w.control("set_subscription_status", w.subscription_id, "past_due")

    await wait_until(w.one_alert_settled, "the past_due alert of a customer never cached")
    [alert] = w.top_level()
    assert message_keys([alert])[0].startswith(f"subscription.past_due:{w.subscription_id}:")
    assert "urgent" in text_of(alert) and "BigCo Inc" in text_of(alert)
    context = await w.store.get_context(w.customer_id)
    assert context is not None and context.status == "past_due"
    paths = [r["path"] for r in w.sandbox.control.requests()]
    assert f"/v1/customers/{w.customer_id}" in paths  # what the cache lacked came from Stripe
    assert worker.stats.fetched_customers == 1


# ---- Slack's bad days ------------------------------------------------------------------------
async def test_a_rate_limited_post_is_retried_and_posted_once(world: World) -> None:
    w = world
    invoice_id = await open_invoice(w)
    await warm(w)
    w.slack.fail_next("chat.postMessage", "rate_limited")
    await w.start_workers(1)
    await w.control("fail_invoice", invoice_id)

    await wait_until(w.one_alert_settled, "the alert after a 429")
    calls = w.post_calls("subscription.past_due:")
    assert [c.fault for c in calls] == ["rate_limited", None]  # retried by the Web client, once
    assert len(w.top_level()) == 1


async def test_slack_down_loses_nothing_and_the_sweeper_posts_once_it_is_back(world: World) -> None:
    w = world
    invoice_id = await open_invoice(w)
    await warm(w)
    w.slack.set_down(True)
    [worker] = await w.start_workers(1)
    await w.control("fail_invoice", invoice_id)

    async def acked_but_waiting() -> bool:
        health = await w.store.health()
        context = await w.store.get_context(w.customer_id)
        waiting = await w.store.client.zscore(w.store.tenant_key("outbox:pending"), w.customer_id)
        return (health.stream_length == 0 and health.pending == 0 and waiting is not None
                and context is not None and context.status == "past_due" and worker.stats.notify_failed >= 1)

    await wait_until(acked_but_waiting, "the events acked while the alert waits")
    assert (await w.store.health()).dead_letters == 0
    assert w.slack.messages(CHANNEL_ALERTS) == []

    w.slack.set_down(False)

    await wait_until(w.one_alert_settled, "the alert once Slack is back")
    posted = [c for c in w.post_calls("subscription.past_due:") if c.fault is None]
    assert len(posted) == 1 and len(w.top_level()) == 1


async def test_a_post_slack_accepted_but_whose_answer_was_lost_is_found_not_posted_again(
    world: World,
) -> None:
    w = world
    invoice_id = await open_invoice(w)
    await warm(w)
    w.slack.fail_next("chat.postMessage", "accept_then_drop")
    await w.start_workers(1)
    await w.control("fail_invoice", invoice_id)

    async def settled_with_history_checked() -> bool:
        looked = any(c.method == "conversations.history" for c in w.slack.calls())
        return looked and await w.settled()

    await wait_until(settled_with_history_checked, "the sweeper settling the lost answer")
    [alert] = w.top_level()
    assert [c.fault for c in w.post_calls("subscription.past_due:")] == ["accept_then_drop"]
    [key] = message_keys([alert])
    record = await w.store.client.get(message_key(w.store.namespace("slack"), key))
    assert record == f"sent:{CHANNEL_ALERTS}:{alert['ts']}".encode()
    incident = await open_incident(w.store.namespace("slack"), w.customer_id)
    assert incident is not None and incident.ts == alert["ts"]  # found in history, thread and all

    # The next retry's reply is accepted and its answer lost too: found in the thread, not re-posted.
    w.slack.fail_next("chat.postMessage", "accept_then_drop")
    await w.control("fail_invoice", invoice_id)

    async def retry_replied() -> bool:
        looked = any(c.method == "conversations.replies" for c in w.slack.calls())
        return looked and any("attempt 2" in text_of(m) for m in w.replies(alert["ts"])) and await w.settled()

    await wait_until(retry_replied, "the next retry in the recovered thread")
    assert len(w.top_level()) == 1
    [reply] = [m for m in w.replies(alert["ts"]) if "attempt 2" in text_of(m)]
    [reply_key] = message_keys([reply])
    assert [c.fault for c in w.post_calls(reply_key)] == ["accept_then_drop"]
    reply_record = await w.store.client.get(message_key(w.store.namespace("slack"), reply_key))
    assert reply_record == f"sent:{CHANNEL_ALERTS}:{reply['ts']}".encode()


async def test_a_poster_that_died_after_leasing_and_before_posting_loses_nothing(world: World) -> None:
    w = world
    invoice_id = await open_invoice(w)
    await warm(w)
    # A worker applies the events, then dies before its notifier posts: the transitions stay in the
    # customer's outbox ...
    dying = w.worker("dying", RecordingNotifier(fail_times=1_000))
    await dying.ensure_group()
    await w.control("fail_invoice", invoice_id)

    async def applied() -> bool:
        await dying.run_once(block_ms=10)
        health = await w.store.health()
        return health.stream_length == 0 and health.pending == 0

    await wait_until(applied, "the dying worker applying the events")
    outbox = await w.store.client.lrange(w.store.customer_key(w.customer_id, "outbox"), 0, -1)
    past_due = next(t for t in map(lambda raw: _transition_from_dict(json.loads(raw)), outbox)
                    if t.name == "subscription.past_due")
    # ... and its Slack poster had leased the channel message, two minutes ago, without posting it.
    key = idempotency_key(past_due, CHANNEL_ALERTS, "alert")
    record = message_key(w.store.namespace("slack"), key)
    await w.store.client.set(record, f"lease:{time.time() - 120:.6f}:dead-worker")

    survivor = w.worker("survivor")

    async def swept() -> bool:
        await survivor.sweep()
        return len(w.top_level()) == 1 and await w.settled()

    await wait_until(swept, "the sweeper posting the message of the dead poster")
    [alert] = w.top_level()
    assert message_keys([alert]) == [key]
    assert len(w.post_calls(key)) == 1
    assert await w.store.client.get(record) == f"sent:{CHANNEL_ALERTS}:{alert['ts']}".encode()
