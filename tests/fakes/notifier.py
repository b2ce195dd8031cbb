"""A Notifier that records transitions in order, for tests that inspect what was sent.

The product's notifier is ``bot.alerts.RulesAlertNotifier``: the rules decide which channel hears."""

from __future__ import annotations

from billing.ports import Transition


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
