"""Notifier implementations that need no Slack: a logging one and a recording one for tests."""

from __future__ import annotations

import logging

from billing.ports import Transition

log = logging.getLogger("billing.notify")


class LoggingNotifier:
    """Logs each transition (Slack alerts replace it later, through the same ``Notifier`` protocol)."""

    async def notify(self, transition: Transition) -> None:
        log.info(
            "transition %s customer=%s object=%s", transition.name, transition.customer_id,
            transition.object_id,
        )


class RecordingNotifier:
    """Keeps every transition in order; ``fail_times`` makes the first N calls raise (retry tests)."""

    def __init__(self, fail_times: int = 0) -> None:
        self.transitions: list[Transition] = []
        self.fail_times = fail_times

    async def notify(self, transition: Transition) -> None:
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("notifier failure requested by the test")
        self.transitions.append(transition)

    def names(self) -> list[str]:
        return [t.name for t in self.transitions]
