"""The Slack card with issue #10's fields: timeline (last 5), next invoice, card, cancellation."""

from __future__ import annotations

from datetime import timedelta

from billing.domain.models import Cancellation, NextInvoice, PaymentMethodInfo, TimelineEntry
from bot.slack import cards
from tests.bot.slack.test_cards import NOW, _all_text, _past_due, assert_message_ok

HOSTILE = "<!channel> *bold* <https://evil.example|click> & `code` " + "x" * 3000


def _rich(text: str = "Payment of 29.00 USD failed (attempt 2, card declined)") -> object:
    base = _past_due()
    [sub] = base.subscriptions
    sub = sub.model_copy(update={
        "next_invoice": NextInvoice(amount_due=2900, currency="usd", date=NOW + timedelta(days=12)),
        "cancel_at": NOW + timedelta(days=12),
        "cancellation": Cancellation(reason="cancellation_requested", feedback="too_expensive",
                                     comment=HOSTILE, effective_at=NOW + timedelta(days=12)),
    })
    timeline = [TimelineEntry(at=NOW - timedelta(days=n), kind="payment_failed", text=f"{text} #{n}")
                for n in range(20)]
    return base.model_copy(update={
        "subscriptions": [sub], "timeline": timeline,
        "payment_method": PaymentMethodInfo(brand="visa", last4="4242", exp_month=12, exp_year=2030),
    })


def test_card_shows_five_events_next_invoice_card_and_cancellation() -> None:
    message = cards.customer_card(_rich(), None, now=NOW)  # type: ignore[arg-type]
    assert_message_ok(message)
    text = _all_text(message)
    assert "attempt 2, card declined) #0" in text and "#4" in text and "#5" not in text
    assert "and 15 earlier events" in text
    assert "*Next invoice* 29.00 USD on " in text
    assert "visa •••• 4242, expires 12/2030, in " in text
    assert "feedback: too expensive" in text


def test_hostile_stripe_text_stays_escaped_and_within_limits() -> None:
    message = cards.customer_card(_rich(HOSTILE), None, now=NOW)  # type: ignore[arg-type]
    assert_message_ok(message)
    shared = cards.customer_card(_rich(HOSTILE), None, now=NOW, shared_by="U0123ABCD")  # type: ignore[arg-type]
    assert_message_ok(shared)
    assert "4242" not in _all_text(shared)  # the card stays on the private card
