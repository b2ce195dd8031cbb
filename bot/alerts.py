"""Alerts: a transition from the worker, judged by the rules file's `alerts:` section, goes to channels.

This is the composition point between ``billing`` (transitions) and ``rules`` (which alerts fire);
the worker's outbox already makes each transition arrive here exactly once. Posting is a port: today
a logging poster; the Slack app plugs its poster in the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from billing.config import Settings
from billing.ports import Transition
from rules import AlertMatch, RulesFile, RulesWatcher, alerts_for, rules_path

log = logging.getLogger("billing.alerts")


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
        fired = alerts_for(transition.name, transition.context, self._rules(), self._clock())
        log.info("transition %s customer=%s object=%s: %d alert(s)", transition.name, transition.customer_id,
                 transition.object_id, len(fired))
        for alert in fired:
            await self._poster.post(alert, transition)



def alert_notifier(settings: Settings, poster: AlertPoster | None = None) -> RulesAlertNotifier:
    """The notifier `billing serve` and `billing worker` run with: the rules file, watched for changes.

    A bad rules file at start-up raises ``RulesError`` (file, line, reason); a bad edit later keeps the
    previous rules in force.
    """
    watcher = RulesWatcher(rules_path(settings.rules_file))
    return RulesAlertNotifier(watcher.current, poster or LoggingPoster())
