"""Automatic Slack messages: the worker's transitions, judged by the rules' ``alerts:``, posted once.

``SlackAlertPoster`` is the ``billing.ports.Notifier`` that ``billing serve`` and ``billing worker`` run
with when Slack is configured (``bot.alerts.build_notifier``):

- A transition for which the rules' alerts fire (``bot.alerts.transition_alerts``) is a top-level
  message in the alert's channel, carrying the priority and tags of ``evaluate_rules`` and a card summary
  (``cards.alert_message``). A ``subscription.past_due`` message opens the customer's INCIDENT.
- While an incident is open, the customer's later transitions (a failed retry, another past due, the
  recovery, the cancellation) are replies in its thread (``cards.thread_reply``); a recovery or a
  cancellation that leaves no subscription in trouble closes it. A follow-up with no open incident
  posts nothing unless the rules' alerts fire for it.

Exactly once per message, across duplicate deliveries, several workers and crashes: each message has
an idempotency key (the transition's ``dedup_key``, the channel and the kind) and goes through

    LEASE  SET key "lease:<time>:<owner>" NX        (one poster wins)
    POST   chat.postMessage with metadata {"event_type": "billing_lens_alert", "event_payload": {"key"}}
    MARK   SET key "sent:<channel>:<ts>"            (with its incident and recent-alerts entry, one MULTI)

A lease found unmarked is left alone while it is younger than ``lease_timeout`` (its poster may still
be posting: ``AlertPending`` is raised and the worker retries later). Older, it belongs to a poster
that crashed or lost its answer: Slack is asked (``conversations.history`` of the channel, or
``conversations.replies`` of the thread, from the lease's time minus a margin, with metadata) whether
a message carrying the key is there. Found: it is marked sent with its ts, and not posted again. Not
found: the lease is taken over and the message posted. So a poster crash after Slack accepted the
message does not post it twice, and one before does not lose it.

``chat.postMessage`` is never retried blindly: a dropped connection or a 5xx may come after Slack
accepted the message, so only 429s (never accepted) are retried by the Web client; any other failure
raises, and the lease settles it as above. A failure that certainly posted nothing (refused
connection, Slack's own ``ok: false`` answer, 429s beyond the retries) releases the lease at once.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from redis.exceptions import WatchError
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from billing.cache.connections import as_text
from billing.cache.store import Namespace
from billing.ports import NotifyLater, Transition
from bot.alerts import transition_alerts
from bot.slack import cards
from bot.slack.incidents import Incident, incident_key, message_key, open_incident, queue_recent
from rules import AlertMatch, RulesFile
from rules.evaluator import evaluate_rules

log = logging.getLogger("billing.alerts")

EVENT_TYPE = "billing_lens_alert"
"""The Slack message metadata ``event_type`` of every automatic message (its payload holds the key)."""
MESSAGE_KEY_TTL_SECONDS = 8 * 24 * 3600  # longer than the worker remembers events (7 days)
LEASE_TIMEOUT_SECONDS = 30.0
HISTORY_MARGIN_SECONDS = 120.0  # clocks of workers and Slack differ a little
FOLLOW_UPS = frozenset({
    "subscription.past_due", "invoice.payment_failed", "subscription.recovered", "subscription.canceled",
})
CLOSERS = frozenset({"subscription.recovered", "subscription.canceled"})
_TROUBLED = frozenset({"past_due", "unpaid"})
_HISTORY_PAGE = 200
_MAX_ROUNDS = 10

Kind = Literal["alert", "reply"]


class AlertPending(NotifyLater):
    """A message is leased by a poster that may still be posting it: try again after the lease timeout."""


@dataclass(frozen=True)
class PlannedMessage:
    """One message a transition gives: a top-level ``alert`` or a ``reply`` in an incident's thread."""

    kind: Kind
    channel: str
    thread_ts: str | None = None
    alert: AlertMatch | None = None
    opens_incident: bool = False

    def idempotency_key(self, transition: Transition) -> str:
        return idempotency_key(transition, self.channel, self.kind)


def idempotency_key(transition: Transition, channel: str, kind: Kind) -> str:
    """The identity of one message about one transition: the same whatever delivered the transition."""
    return f"{transition.dedup_key}|{channel}|{kind}"


def _lease_parts(value: str) -> tuple[float, str]:
    """``lease:<time>:<owner>`` -> (time, owner); a malformed lease counts as infinitely old."""
    _, _, rest = value.partition(":")
    at, _, owner = rest.partition(":")
    try:
        return float(at), owner
    except ValueError:
        return 0.0, owner


def _certainly_not_posted(error: BaseException) -> bool:
    """True when Slack certainly did not post the message (so it can be posted again at once)."""
    if isinstance(error, SlackApiError):
        status = getattr(error.response, "status_code", None)
        # 200 with ok:false is Slack's own refusal; 429 is never applied; other 4xx are refusals too.
        return isinstance(status, int) and status < 500
    # Refused or unresolvable: the request never reached Slack.
    return isinstance(error, aiohttp.ClientConnectorError)


def posting_client(client: AsyncWebClient) -> AsyncWebClient:
    """``client`` for ``chat.postMessage``: only the rate-limit retry handler is kept.

    A 429 was never applied, so it is retried; a dropped connection or a 5xx may come after Slack
    posted the message, and a blind retry would post it twice (the lease protocol settles those).
    """
    clone = copy.copy(client)
    kept: list[AsyncRetryHandler] = [
        h for h in client.retry_handlers if isinstance(h, AsyncRateLimitErrorRetryHandler)
    ]
    clone.retry_handlers = kept
    if not clone.retry_handlers:
        clone.retry_handlers = [AsyncRateLimitErrorRetryHandler(max_retry_count=3)]
    return clone


def default_owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class SlackAlertPoster:
    """A ``billing.ports.Notifier`` that posts transitions to Slack, exactly once per message.

    ``rules`` is called per transition (a reloaded rules file takes effect at once). ``clock`` dates the
    messages and incidents (``now`` of the cards); ``wall_clock`` (unix seconds) dates leases, which are
    compared with Slack's message timestamps.
    """

    def __init__(
        self,
        client: AsyncWebClient,
        namespace: Namespace,
        rules: Callable[[], RulesFile],
        *,
        clock: Callable[[], datetime] | None = None,
        wall_clock: Callable[[], float] = time.time,
        lease_timeout: float = LEASE_TIMEOUT_SECONDS,
        history_margin: float = HISTORY_MARGIN_SECONDS,
        owner: str | None = None,
    ) -> None:
        self.client = client
        self._post_client = posting_client(client)
        self.namespace = namespace
        self._rules = rules
        self.clock = clock or (lambda: datetime.now(UTC))
        self._wall = wall_clock
        self.lease_timeout = lease_timeout
        self.history_margin = history_margin
        self.owner = (owner or default_owner()).replace(":", "-")

    # ---- Notifier ----------------------------------------------------------------------------
    async def notify(self, transition: Transition) -> None:
        """Post every message ``transition`` gives (none, one or several), each exactly once.

        Raises when a message could not be posted (Slack down, a lease held by another poster): the
        worker keeps the transition in the customer's outbox and calls again later; what was already
        posted is not posted again.
        """
        now = self.clock()
        rules = self._rules()
        fired = transition_alerts(transition, rules, now)
        log.info("transition %s customer=%s object=%s: %d alert(s)", transition.name, transition.customer_id,
                 transition.object_id, len(fired))
        incident = await open_incident(self.namespace, transition.customer_id)
        # The incident this very transition opened (an earlier call posted its message) is no prior
        # incident: planning again gives the same messages, which are then found sent.
        prior = None if incident is not None and incident.opened_by == transition.dedup_key else incident
        plan = plan_messages(transition, fired, prior)
        for message in plan:
            await self._deliver(message, transition, rules, now, prior)
        if prior is not None and plan and transition.name in CLOSERS and not _in_trouble(transition):
            await self._close(transition.customer_id, prior)

    # ---- one message ------------------------------------------------------------------------
    async def _deliver(
        self, message: PlannedMessage, transition: Transition, rules: RulesFile, now: datetime,
        incident: Incident | None,
    ) -> None:
        key = message.idempotency_key(transition)
        record = message_key(self.namespace, key)
        for _round in range(_MAX_ROUNDS):
            value = await self.namespace.get(record)
            if value is None:
                lease = self._lease()
                if await self.namespace.set(record, lease, nx=True, ex=MESSAGE_KEY_TTL_SECONDS):
                    await self._post(message, transition, key, record, lease,
                                     lambda: self._render(message, transition, rules, now, incident))
                    return
                continue  # another poster leased it first: read what it wrote
            if value.startswith("sent:"):
                return
            leased_at, owner = _lease_parts(value)
            age = self._wall() - leased_at
            if age < self.lease_timeout:
                raise AlertPending(f"{key} is leased by {owner or 'another poster'} since {age:.1f} s; "
                                   f"settled after {self.lease_timeout:.0f} s",
                                   retry_after=self.lease_timeout - age + 0.01)
            ts = await self._find_posted(message, key, since=leased_at - self.history_margin)
            if ts is not None:
                log.info("%s was posted (ts %s) by %s, which did not record it: marked sent", key, ts, owner)
                await self._mark(record, value, message, transition, ts, now)
                continue  # re-read: sent
            lease = self._lease()
            if await self._replace(record, value, lease):
                log.warning("%s: leased %.0f s ago by %s and not in Slack; posting it", key, age, owner)
                await self._post(message, transition, key, record, lease,
                                 lambda: self._render(message, transition, rules, now, incident))
                return
        raise AlertPending(f"{key} kept changing under this poster")

    def _lease(self) -> str:
        return f"lease:{self._wall():.6f}:{self.owner}"

    async def _post(
        self, message: PlannedMessage, transition: Transition, key: str, record: str, lease: str,
        render: Callable[[], cards.SlackMessage],
    ) -> None:
        body = render()
        try:
            response = await self._post_client.chat_postMessage(
                channel=message.channel, thread_ts=message.thread_ts, text=body.text, blocks=body.blocks,
                metadata={"event_type": EVENT_TYPE, "event_payload": {
                    "key": key, "customer_id": transition.customer_id, "transition": transition.name,
                }},
                unfurl_links=False, unfurl_media=False,
            )
        except Exception as error:
            if _certainly_not_posted(error):
                await self._release(record, lease)
            raise
        ts = response.get("ts")
        if not isinstance(ts, str) or not ts:
            raise RuntimeError(f"chat.postMessage answered without a ts for {key}")
        now = self.clock()
        if not await self._mark(record, lease, message, transition, ts, now):
            current = await self.namespace.get(record)
            if current is None or not current.startswith("sent:"):
                log.warning("%s: posted as %s after its lease was taken over; Slack may show it twice",
                            key, ts)

    async def _mark(
        self, record: str, expected: str, message: PlannedMessage, transition: Transition, ts: str,
        now: datetime,
    ) -> bool:
        """Record the message sent (from ``expected``, a lease), with its recent-alerts entry and, for
        the message that opens an incident, the incident. False when the record no longer holds
        ``expected``."""
        customer = transition.context.customer
        entry = {
            "at": now.timestamp(),
            "customer": (customer.name or customer.email or transition.customer_id) if customer
            else transition.customer_id,
            "customer_id": transition.customer_id,
            "transition": transition.name,
            "channel": message.channel,
            "ts": ts,
            "thread": message.thread_ts is not None,
        }

        def write(pipe: Any) -> None:
            pipe.set(record, f"sent:{message.channel}:{ts}", ex=MESSAGE_KEY_TTL_SECONDS)
            queue_recent(pipe, self.namespace, entry)
            if message.opens_incident:
                incident = Incident(
                    channel=message.channel, ts=ts, started_at=now.timestamp(),
                    subscription_id=transition.object_id, opened_by=transition.dedup_key,
                )
                pipe.set(incident_key(self.namespace, transition.customer_id), incident.to_json(), nx=True)

        return await self._compare_and_set(record, lambda raw: as_text(raw) == expected, write)

    async def _replace(self, record: str, expected: str, new: str) -> bool:
        """Compare-and-set: ``record`` becomes ``new`` if it still holds ``expected``."""
        return await self._compare_and_set(record, lambda raw: as_text(raw) == expected,
                                           lambda pipe: pipe.set(record, new, ex=MESSAGE_KEY_TTL_SECONDS))

    async def _release(self, record: str, lease: str) -> None:
        """Drop our lease (nothing was posted): the next attempt posts at once."""
        await self._compare_and_set(
            record, lambda raw: as_text(raw) == lease, lambda pipe: pipe.delete(record)
        )

    async def _compare_and_set(
        self, key: str, holds: Callable[[Any], bool], write: Callable[[Any], object]
    ) -> bool:
        """Queue ``write`` in a MULTI on ``key`` if ``holds`` its current (present) value; True if written.

        WATCH makes the write fail when another poster changed ``key`` between the read and the write;
        the value is then read and judged again, so ``holds`` always decides on what is really there.
        """
        for _attempt in range(_MAX_ROUNDS):
            async with self.namespace.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    current = await pipe.get(key)
                    if current is None or not holds(current):
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    write(pipe)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        return False

    async def _find_posted(self, message: PlannedMessage, key: str, *, since: float) -> str | None:
        """The ts of the message carrying ``key`` in Slack (the channel, or the thread), or None."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"channel": message.channel, "oldest": f"{max(since, 0.0):.6f}",
                                      "include_all_metadata": True, "limit": _HISTORY_PAGE}
            if cursor:
                params["cursor"] = cursor
            if message.thread_ts is not None:
                response = await self.client.conversations_replies(ts=message.thread_ts, **params)
            else:
                response = await self.client.conversations_history(**params)
            for found in response.get("messages") or []:
                metadata = found.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if metadata.get("event_type") == EVENT_TYPE and payload.get("key") == key:
                    return str(found["ts"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                return None

    async def _close(self, customer_id: str, incident: Incident) -> None:
        """Close the customer's incident if it is still ``incident`` (a newer one stays open)."""
        key = incident_key(self.namespace, customer_id)
        await self._compare_and_set(key, lambda raw: Incident.from_json(raw).ts == incident.ts,
                                    lambda pipe: pipe.delete(key))

    # ---- content ----------------------------------------------------------------------------
    def _render(
        self, message: PlannedMessage, transition: Transition, rules: RulesFile, now: datetime,
        incident: Incident | None,
    ) -> cards.SlackMessage:
        context = transition.context
        if message.kind == "reply":
            started = datetime.fromtimestamp(incident.started_at, UTC) if incident is not None else None
            return cards.thread_reply(context, transition=transition.name, now=now,
                                      incident_started_at=started)
        evaluation = evaluate_rules(context, rules, now)
        reasons = list(message.alert.reasons) if message.alert is not None else []
        reasons += [f"{m.rule}: {'; '.join(m.reasons)}" for m in evaluation.matched]
        reminded = transition.object_id if transition.days_before is not None else None
        return cards.alert_message(context, transition=transition.name, priority=evaluation.actions.priority,
                                   tags=evaluation.actions.tags, reasons=reasons, now=now,
                                   subscription_id=reminded)


def _in_trouble(transition: Transition) -> bool:
    return any(s.status in _TROUBLED for s in transition.context.subscriptions)


def plan_messages(
    transition: Transition, fired: list[AlertMatch], incident: Incident | None
) -> list[PlannedMessage]:
    """The messages a transition gives (pure): each fired alert is a top-level message in its channel,
    or a reply when the customer's open incident is in that channel; a follow-up of an open incident
    is a reply in its thread even when no alert fires. The first top-level ``subscription.past_due``
    message opens an incident when none is open."""
    plan: list[PlannedMessage] = []
    covered: set[str] = set()
    opening = incident is None and transition.name == "subscription.past_due"
    for alert in fired:
        if alert.channel in covered:
            continue
        covered.add(alert.channel)
        if incident is not None and alert.channel == incident.channel:
            plan.append(PlannedMessage("reply", alert.channel, incident.ts, alert))
        else:
            plan.append(PlannedMessage("alert", alert.channel, None, alert, opens_incident=opening))
            opening = False
    if incident is not None and incident.channel not in covered and transition.name in FOLLOW_UPS:
        plan.append(PlannedMessage("reply", incident.channel, incident.ts))
    return plan


__all__ = [
    "EVENT_TYPE", "AlertPending", "PlannedMessage", "SlackAlertPoster", "idempotency_key", "plan_messages",
    "posting_client",
]
