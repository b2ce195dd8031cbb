"""The terminal card renders Stripe's text as text, never as rich markup."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from billing.models import BillingContext, CustomerInfo, InvoiceInfo, Match, SubscriptionInfo
from bot.terminal_card import render_context

AS_OF = datetime(2026, 11, 22, 10, tzinfo=UTC)


def _context(plan: str, invoice_number: str) -> BillingContext:
    return BillingContext(
        found=True,
        query="jane@acme.com",
        match=Match(method="email", confidence="exact"),
        customer=CustomerInfo(id="cus_1", email="jane@acme.com", name="Jane [admin]", livemode=False,
                              created=AS_OF, delinquent=False,
                              dashboard_url="https://dashboard.stripe.com/test/customers/cus_1"),
        plan=plan,
        status="active",
        subscriptions=[SubscriptionInfo(
            id="sub_1", status="active", plan=plan, product_id="prod_1", price_id="price_1",
            interval="month", interval_count=1, quantity=1, currency="usd", current_period_end=AS_OF,
            trial_end=None, cancel_at_period_end=False, cancel_at=None,
            dashboard_url="https://dashboard.stripe.com/test/subscriptions/sub_1", mrr={"usd": 2900},
        )],
        mrr={"usd": 2900},
        recent_invoices=[InvoiceInfo(
            id="in_1", number=invoice_number, status="paid", amount_due=2900, amount_paid=2900,
            currency="usd", created=AS_OF, attempt_count=1, next_payment_attempt=None,
            hosted_invoice_url=None,
        )],
        as_of=AS_OF,
    )


def _text(context: BillingContext) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(render_context(context))
    return console.export_text()


def test_merchant_text_in_brackets_is_shown_as_typed() -> None:
    text = _text(_context("Pro [annual]", "INV-[2026]-0001"))
    assert text.count("Pro [annual]") == 2  # the facts and the subscriptions table
    assert "INV-[2026]-0001" in text
    assert "Jane [admin]" in text


def test_a_stray_closing_tag_in_a_plan_name_does_not_crash_the_card() -> None:
    text = _text(_context("Legacy [/] plan", "[/bold]"))
    assert "Legacy [/] plan" in text and "[/bold]" in text
