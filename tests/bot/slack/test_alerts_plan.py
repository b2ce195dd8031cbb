"""Which messages a transition gives (pure), the posting client's retries, the bounded recent list."""

from __future__ import annotations

import pytest
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from billing.cache.store import RedisStore
from bot.slack.alerts import PlannedMessage, plan_messages, posting_client
from bot.slack.incidents import RECENT_KEPT, Incident, queue_recent, recent_alerts
from rules import AlertMatch, alerts_for, load_rules_text
from tests.bot.alert_cases import NOW, RULES, transition

INCIDENT = Incident(channel="C-BILLING", ts="1700000000.000100", started_at=NOW.timestamp(),
                    subscription_id="sub_1", opened_by="subscription.past_due:sub_1:past_due@evt_1")
RULES_FILE = load_rules_text(RULES)


def plan(name: str, incident: Incident | None, **kw: int | str) -> list[PlannedMessage]:
    t = transition(name, **kw)  # type: ignore[arg-type]
    fired: list[AlertMatch] = alerts_for(name, t.context, RULES_FILE, NOW)
    return plan_messages(t, fired, incident)


def shape(messages: list[PlannedMessage]) -> list[tuple[str, str, str | None, bool]]:
    return [(m.kind, m.channel, m.thread_ts, m.opens_incident) for m in messages]


def test_past_due_is_a_channel_message_that_opens_an_incident() -> None:
    assert shape(plan("subscription.past_due", None)) == [("alert", "C-BILLING", None, True)]


def test_only_the_first_channel_message_opens_the_incident() -> None:
    assert shape(plan("subscription.past_due", None, mrr=250000)) == [
        ("alert", "C-BILLING", None, True), ("alert", "C-VIP", None, False),
    ]


def test_a_follow_up_without_an_incident_posts_nothing() -> None:
    assert plan("invoice.payment_failed", None) == []
    assert plan("subscription.recovered", None, status="active") == []


@pytest.mark.parametrize("name", ["invoice.payment_failed", "subscription.recovered"])
def test_a_follow_up_of_an_open_incident_is_a_reply_in_its_thread(name: str) -> None:
    assert shape(plan(name, INCIDENT)) == [("reply", "C-BILLING", INCIDENT.ts, False)]


def test_an_alert_in_the_incidents_channel_is_a_reply_and_one_elsewhere_a_channel_message() -> None:
    # Another subscription goes past due during the incident: a reply, no second incident.
    assert shape(plan("subscription.past_due", INCIDENT)) == [("reply", "C-BILLING", INCIDENT.ts, False)]
    # The cancellation fires an alert in another channel and is also told in the thread.
    assert shape(plan("subscription.canceled", INCIDENT, status="canceled")) == [
        ("alert", "C-CHURN", None, False), ("reply", "C-BILLING", INCIDENT.ts, False),
    ]


def test_the_posting_client_retries_only_what_slack_never_applied() -> None:
    client = AsyncWebClient(token="xoxb-test", retry_handlers=[
        AsyncRateLimitErrorRetryHandler(max_retry_count=3), AsyncServerErrorRetryHandler(max_retry_count=2),
        AsyncConnectionErrorRetryHandler(max_retry_count=1),
    ])
    poster = posting_client(client)
    assert [type(h) for h in poster.retry_handlers] == [AsyncRateLimitErrorRetryHandler]
    assert len(client.retry_handlers) == 3  # the shared client keeps its retries for reads
    assert poster.base_url == client.base_url and poster.token == client.token
    bare = posting_client(AsyncWebClient(token="xoxb-test"))  # the SDK's default retries connections
    assert [type(h) for h in bare.retry_handlers] == [AsyncRateLimitErrorRetryHandler]


async def test_the_recent_alerts_are_bounded_newest_first(store: RedisStore) -> None:
    namespace = store.namespace("slack")
    for n in range(RECENT_KEPT + 10):
        pipe = store.client.pipeline(transaction=True)
        queue_recent(pipe, namespace, {"at": float(n), "customer": f"c{n}", "customer_id": f"cus_{n}",
                                       "transition": "subscription.past_due", "channel": "C1",
                                       "ts": f"{n}.0", "thread": False})
        await pipe.execute()
    recent = await recent_alerts(namespace, limit=10)
    newest = range(RECENT_KEPT + 9, RECENT_KEPT - 1, -1)
    assert [r["customer_id"] for r in recent] == [f"cus_{n}" for n in newest]
    assert len(await recent_alerts(namespace, limit=1000)) == RECENT_KEPT
    assert await recent_alerts(namespace, limit=0) == []
