"""Alerts: a transition from the worker, judged by the rules file's `alerts:` section, goes to channels.

This is the composition point between ``billing`` (transitions) and ``rules`` (which alerts fire).
``build_notifier`` picks the notifier a process runs with: the Slack poster
(``bot.slack.alerts.SlackAlertPoster``: one message per alert, exactly once, one thread per customer
incident) when Slack is configured, else a logging poster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from billing.config import Settings
from billing.domain.reminders import REMINDER_KINDS, LeadTimes
from billing.ports import Notifier, Transition
from rules import AlertMatch, RulesFile, RulesWatcher, alerts_for, rules_path

if TYPE_CHECKING:
    from slack_sdk.web.async_client import AsyncWebClient

    from billing.cache.store import RedisStore
    from billing.sync.scheduler import ReminderScheduler
    from bot.runtime import Runtime

log = logging.getLogger("billing.alerts")


def transition_alerts(transition: Transition, rules: RulesFile, now: datetime) -> list[AlertMatch]:
    """The alerts ``transition`` fires: a reminder's conditions see its subscription, and only the
    alerts sent as many days ahead as the reminder fire."""
    reminder = transition.days_before is not None
    return alerts_for(transition.name, transition.context, rules, now,
                      subscription_id=transition.object_id if reminder else None,
                      days_before=transition.days_before)


def lead_times(rules: Callable[[], RulesFile]) -> Callable[[], LeadTimes]:
    """The scheduler's lead times, read from the rules in force at each call (a reload applies)."""

    def current() -> LeadTimes:
        leads = rules().lead_times()
        return {kind: leads[kind] for kind in REMINDER_KINDS if kind in leads}

    return current


def build_scheduler(store: RedisStore, rules: Callable[[], RulesFile]) -> ReminderScheduler:
    """The renewal and trial reminder scheduler ``serve``'s and ``worker``'s event worker ticks."""
    from billing.sync.scheduler import ReminderScheduler

    return ReminderScheduler(store, lead_times(rules))


class AlertPoster(Protocol):
    async def post(self, alert: AlertMatch, transition: Transition) -> None: ...


class LoggingPoster:
    """Writes one log line per fired alert (no Slack configured)."""

    async def post(self, alert: AlertMatch, transition: Transition) -> None:
        log.info(
            "alert %s -> %s customer=%s object=%s: %s", alert.alert, alert.channel, transition.customer_id,
            transition.object_id, "; ".join(alert.reasons),
        )


class RulesAlertNotifier:
    """A ``billing.ports.Notifier`` that posts every alert the current rules fire for a transition.

    ``rules`` is called per transition so a reloaded rules file (``RulesWatcher.current``) takes effect
    without a restart.
    """

    def __init__(
        self,
        rules: Callable[[], RulesFile],
        poster: AlertPoster,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._rules = rules
        self._poster = poster
        self._clock = clock or (lambda: datetime.now(UTC))

    async def notify(self, transition: Transition) -> None:
        fired = transition_alerts(transition, self._rules(), self._clock())
        log.info("transition %s customer=%s object=%s: %d alert(s)", transition.name, transition.customer_id,
                 transition.object_id, len(fired))
        for alert in fired:
            await self._poster.post(alert, transition)


def build_notifier(runtime: Runtime, *, slack_client: AsyncWebClient | None = None) -> Notifier:
    """The notifier of ``serve``, ``worker``, ``backfill`` and ``reconcile``.

    With Slack configured (``SLACK_BOT_TOKEN``, or a ``slack_client`` given) and a store: the Slack
    poster, with the runtime's rules (reloaded when the file changes) and its keys in the tenant's
    ``slack`` namespace. Otherwise each fired alert is a log line.
    """
    settings = runtime.settings
    store = runtime.store
    if (slack_client is not None or settings.slack_bot_token is not None) and store is not None:
        from bot.slack.alerts import SlackAlertPoster  # Slack's client is only loaded when used

        if slack_client is None:
            from bot.slack.app import slack_web_client

            slack_client = slack_web_client(settings)
        return SlackAlertPoster(slack_client, store.namespace("slack"), runtime.rules)
    if settings.slack_bot_token is not None:
        log.warning("Slack alerts need Redis (exactly-once posting); alerts are written to this log.")
    return RulesAlertNotifier(runtime.rules, LoggingPoster())


def alert_notifier(settings: Settings, poster: AlertPoster | None = None) -> RulesAlertNotifier:
    """The notifier `billing serve` and `billing worker` run with: the rules file, watched for changes.

    A bad rules file at start-up raises ``RulesError`` (file, line, reason); a bad edit later keeps the
    previous rules in force.
    """
    watcher = RulesWatcher(rules_path(settings.rules_file))
    return RulesAlertNotifier(watcher.current, poster or LoggingPoster())
