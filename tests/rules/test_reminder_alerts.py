"""Reminder alerts in the rules file (issue #10 item 5): ``days_before``, the ``interval`` field, and which
alerts a reminder fires."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing.domain.models import SubscriptionInfo
from billing.domain.reminders import already_reminded, stand_in
from rules import RulesError, alerts_for, evaluate_rules, load_rules_text
from tests.rules.factory import NOW, context, subscription

RULES = """\
version: 1
alerts:
  - on: subscription.renewal_upcoming
    name: big-yearly
    days_before: 7
    when: {interval: year, mrr: {gt: 500, currency: usd}}
    channel: C_RENEWALS
  - on: subscription.renewal_upcoming
    name: monthly
    days_before: 2
    when: {interval: month}
    channel: C_MONTHLY
  - on: subscription.trial_ending
    channel: C_TRIALS
"""
RENEWAL = "subscription.renewal_upcoming"
TRIAL = "subscription.trial_ending"


def _sub(sub_id: str, interval: str, *, status: str = "active") -> SubscriptionInfo:
    return subscription(status, sub_id=sub_id).model_copy(update={
        "interval": interval, "current_period_end": NOW + timedelta(days=5),
        "trial_end": NOW + timedelta(days=3) if status == "trialing" else None,
    })


def _alert_file(line: str) -> str:
    return ("version: 1\nalerts:\n  - on: subscription.renewal_upcoming\n    name: renewals\n"
            f"    {line}\n    channel: C1\n")


@pytest.mark.parametrize(("value", "shown"), [
    ("soon", "'soon'"), ("0", "0"), ("-3", "-3"), ("366", "366"), ("2.5", "2.5"), ("true", "true"),
    ("[7]", "a list"), ("{d: 7}", "a mapping"),
])
def test_a_bad_days_before_is_one_sentence_with_its_line(value: str, shown: str) -> None:
    with pytest.raises(RulesError) as err:
        load_rules_text(_alert_file(f"days_before: {value}"), "rules.yml", env={})
    assert err.value.lines == [
        "rules.yml:5: days_before in alert 'renewals' must be a whole number of days from 1 to 365, "
        f"not {shown}"
    ]


def test_days_before_on_an_alert_that_is_no_reminder_is_refused() -> None:
    text = "version: 1\nalerts:\n  - on: subscription.past_due\n    days_before: 3\n    channel: C1\n"
    with pytest.raises(RulesError) as err:
        load_rules_text(text, "rules.yml", env={})
    assert err.value.lines == [
        "rules.yml:4: days_before in alert 'subscription.past_due' applies only to "
        "subscription.renewal_upcoming and subscription.trial_ending, not to subscription.past_due"
    ]


def test_an_unknown_interval_is_refused_naming_the_accepted_ones() -> None:
    with pytest.raises(RulesError, match=r"^rules.yml:5: wrong value for 'interval' in alert 'renewals': "
                                         r"'yearly' is not one of day, week, month, year$"):
        load_rules_text(_alert_file("when: {interval: yearly}"), "rules.yml", env={})


def test_lead_times_default_per_kind_and_skip_alerts_that_are_off() -> None:
    off = "  - on: subscription.trial_ending\n    days_before: 9\n    channel: ''\n"
    rules = load_rules_text(RULES + off, env={})
    assert [a.lead_days for a in rules.alerts] == [7, 2, 3, 9]
    assert rules.lead_times() == {"subscription.renewal_upcoming": {7, 2}, "subscription.trial_ending": {3}}


def test_a_reminder_fires_only_the_alerts_sent_that_many_days_ahead() -> None:
    rules = load_rules_text(RULES, env={})
    ctx = context(subscriptions=[_sub("sub_y", "year")], mrr={"usd": 60000})
    seven = alerts_for(RENEWAL, ctx, rules, NOW, subscription_id="sub_y", days_before=7)
    assert [(a.alert, a.channel) for a in seven] == [("big-yearly", "C_RENEWALS")]
    assert seven[0].reasons == ["transition subscription.renewal_upcoming (7 days ahead)", "interval is year",
                                "mrr 600.00 USD > 500.00 USD"]
    assert alerts_for("subscription.renewal_upcoming", ctx, rules, NOW, subscription_id="sub_y",
                      days_before=2) == []  # the 2-day alert is for monthly plans


def test_interval_and_mrr_filter_reminders() -> None:
    rules = load_rules_text(RULES, env={})
    small = context(subscriptions=[_sub("sub_y", "year")], mrr={"usd": 40000})
    fired = alerts_for(RENEWAL, small, rules, NOW, subscription_id="sub_y", days_before=7)
    assert fired == []
    # A customer with a yearly and a monthly plan: the monthly plan's reminder is about the monthly plan.
    both = context(subscriptions=[_sub("sub_y", "year"), _sub("sub_m", "month")], mrr={"usd": 90000})
    about_monthly = alerts_for("subscription.renewal_upcoming", both, rules, NOW, subscription_id="sub_m",
                               days_before=7)
    assert about_monthly == []
    monthly = alerts_for("subscription.renewal_upcoming", both, rules, NOW, subscription_id="sub_m",
                         days_before=2)
    assert [a.alert for a in monthly] == ["monthly"]


def test_trial_ending_uses_the_default_three_days() -> None:
    rules = load_rules_text(RULES, env={})
    ctx = context(status="trialing", subscriptions=[_sub("sub_t", "month", status="trialing")])
    fired = alerts_for("subscription.trial_ending", ctx, rules, NOW, subscription_id="sub_t", days_before=3)
    assert [a.channel for a in fired] == ["C_TRIALS"]


def test_a_reminder_of_a_lead_time_no_alert_has_any_more_goes_to_the_alert_at_the_nearest_one() -> None:
    # Queued 7 days ahead before a reload made the trial alert's days_before 3 (the default): that
    # alert sends it (the scheduler counts it as that alert's reminder), once.
    rules = load_rules_text(RULES, env={})
    ctx = context(status="trialing", subscriptions=[_sub("sub_t", "month", status="trialing")])
    fired = alerts_for(TRIAL, ctx, rules, NOW, subscription_id="sub_t", days_before=7)
    assert [(a.channel, a.reasons[0]) for a in fired] == [("C_TRIALS", f"transition {TRIAL} (7 days ahead)")]
    assert stand_in(7, {3}) == 3 and stand_in(7, {4, 10}) == 10 and stand_in(7, {1, 6}) == 6
    assert stand_in(7, ()) is None


def test_one_reminder_per_alert_per_period_when_lead_times_change() -> None:
    # Sent at 7, the alert now says 10: reminded. Two alerts (7 and 1), 7 sent: the 1-day one is not.
    assert already_reminded(10, sent={7}, leads={10})
    assert already_reminded(7, sent={7}, leads={7, 1}) and not already_reminded(1, sent={7}, leads={7, 1})
    # 7 became 10 beside a 3-day alert: 10 is the 7's, 3 still reminds.
    assert already_reminded(10, sent={7}, leads={10, 3}) and not already_reminded(3, sent={7}, leads={10, 3})
    # A new alert at 10 beside the 7 that reminded: a reminder of its own.
    assert not already_reminded(10, sent={7}, leads={7, 10})
    assert not already_reminded(7, sent=set(), leads={7})


def test_interval_in_a_routing_rule_reads_every_live_subscription() -> None:
    rules = load_rules_text(
        "version: 1\nrules:\n  - name: yearly\n    when: {interval: year}\n    then: {assign: am}\n", env={})
    yearly_and_monthly = context(subscriptions=[_sub("a", "month"), _sub("b", "year")])
    assert evaluate_rules(yearly_and_monthly, rules, NOW).actions.assign == "am"
    canceled_yearly = context(subscriptions=[_sub("a", "month"), _sub("b", "year", status="canceled")])
    evaluation = evaluate_rules(canceled_yearly, rules, NOW)
    assert evaluation.actions.assign is None
