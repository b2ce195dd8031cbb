"""Transitions judged by the rules file's alerts: which channel hears about which customer."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing.config import Settings
from billing.ports import Transition
from bot.alerts import RulesAlertNotifier, alert_notifier
from rules import AlertMatch, RulesError, load_rules_text
from tests.bot.alert_cases import NOW, RULES, transition


class RecordingPoster:
    def __init__(self) -> None:
        self.posts: list[tuple[str, str, str]] = []

    async def post(self, alert: AlertMatch, transition: Transition) -> None:
        self.posts.append((alert.channel, transition.name, transition.customer_id))


@pytest.mark.parametrize(
    ("name", "mrr", "expected"),
    [
        ("subscription.past_due", 2900, ["C-BILLING"]),
        ("subscription.past_due", 250000, ["C-BILLING", "C-VIP"]),
        ("subscription.canceled", 2900, ["C-CHURN"]),
        ("subscription.recovered", 2900, []),
    ],
)
async def test_each_alert_whose_conditions_hold_is_posted(name: str, mrr: int, expected: list[str]) -> None:
    poster = RecordingPoster()
    notifier = RulesAlertNotifier(lambda: load_rules_text(RULES), poster, clock=lambda: NOW)
    await notifier.notify(transition(name, mrr=mrr))
    assert [channel for channel, _, _ in poster.posts] == expected
    assert all(t == name and c == "cus_1" for _, t, c in poster.posts)


async def test_the_rules_are_read_per_transition_so_a_reload_takes_effect() -> None:
    poster = RecordingPoster()
    current = {"text": RULES}
    notifier = RulesAlertNotifier(lambda: load_rules_text(current["text"]), poster, clock=lambda: NOW)
    await notifier.notify(transition("subscription.canceled"))
    current["text"] = "version: 1\nalerts: []\n"
    await notifier.notify(transition("subscription.canceled"))
    assert poster.posts == [("C-CHURN", "subscription.canceled", "cus_1")]


def test_a_bad_rules_file_at_start_up_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text("version: 1\nalerts:\n  - on: subscription.exploded\n    channel: C1\n")
    settings = Settings.model_validate({"BILLING_RULES_FILE": str(path)})
    with pytest.raises(RulesError, match=rf"{path}:3: "):
        alert_notifier(settings)
