"""Renewal and trial reminder alerts in Slack (issue #10 item 5): they name the subscription and the date,
and Stripe's text (plan names, customer names) never becomes markup."""

from __future__ import annotations

from datetime import timedelta

from billing.domain.models import NextInvoice
from bot.slack import cards
from tests.bot.slack.test_cards import HOSTILE, NOW, _all_text, _context, _sub, assert_message_ok


def test_a_renewal_reminder_names_the_yearly_plan_its_date_and_next_invoice() -> None:
    yearly = _sub("sub_y", plan="Pro Yearly", mrr=100000, period_end=NOW + timedelta(days=5)).model_copy(
        update={"interval": "year", "next_invoice": NextInvoice(amount_due=1_200_000, currency="usd",
                                                                date=NOW + timedelta(days=5))})
    context = _context(subscriptions=[_sub("sub_m"), yearly], mrr={"usd": 102900})
    message = cards.alert_message(
        context, transition="subscription.renewal_upcoming", priority=None, tags=[],
        reasons=["transition subscription.renewal_upcoming (7 days ahead)", "interval is year"], now=NOW,
        subscription_id="sub_y",
    )
    assert_message_ok(message)
    assert message.text.startswith(":calendar: Renewal coming up — Jane Doe (jane@acme.com)")
    text = _all_text(message)
    assert "*Subscription*\nPro Yearly (every year)" in text
    assert "*Renews*\n2026-11-27 (in 5 days)\nNext invoice 12,000.00 USD on 2026-11-27" in text
    assert "• transition subscription.renewal_upcoming (7 days ahead)" in text


def test_a_trial_reminder_escapes_stripe_text() -> None:
    trial = _sub("sub_t", status="trialing", plan=HOSTILE, trial_end=NOW + timedelta(days=3))
    context = _context(name=HOSTILE, status="trialing", subscriptions=[trial])
    message = cards.alert_message(context, transition="subscription.trial_ending", priority="high",
                                  tags=["<!here>"], reasons=[HOSTILE], now=NOW, subscription_id="sub_t")
    assert_message_ok(message)  # no `<` Slack would parse: no ping, no link, no mention
    text = _all_text(message)
    assert "*Subscription*\n&lt;!channel&gt; *pay* &lt;https://x|click&gt; (every month)" in text
    assert "*Trial ends*\n2026-11-25 (in 3 days)" in text
    assert message.text.startswith(":hourglass_flowing_sand: Trial ending — &lt;!channel&gt;")


def test_a_reminder_about_a_subscription_no_longer_there_shows_the_customer_only() -> None:
    message = cards.alert_message(_context(), transition="subscription.renewal_upcoming", priority=None,
                                  tags=[], reasons=[], now=NOW, subscription_id="sub_gone")
    assert_message_ok(message)
    assert "*Renews*" not in _all_text(message) and "*Plan*\nPro Monthly" in _all_text(message)
