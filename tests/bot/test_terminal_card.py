"""The terminal card renders Stripe's text as text, never as rich markup."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from billing.domain.models import (
    BillingContext,
    CustomerInfo,
    InvoiceInfo,
    Match,
    OtherCustomer,
    SubscriptionInfo,
)
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


# --- issue #9 item 5: freshness where the eye lands ----------------------------------------------------


def _lines(context: BillingContext, width: int = 80, now: datetime | None = None) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(render_context(context, now=now))
    return console.export_text().splitlines()


def test_a_stale_card_says_so_in_its_header_at_80_columns() -> None:
    base = _context("Pro", "INV-1")
    assert base.customer is not None
    customer = base.customer.model_copy(
        update={"name": "Jane Doe-Featherstonehaugh of the Very Long Company Name Limited"})
    long_name = base.model_copy(update={"stale": True, "customer": customer})
    header = _lines(long_name, now=datetime(2026, 11, 22, 13, 5, tzinfo=UTC))[0]
    assert "STALE" in header and "cached 3 h ago" in header, header


def test_where_the_card_came_from_is_whole_at_80_columns() -> None:
    # The provenance line (id, how it matched, source and time) sat in the bottom border, which an
    # 80-column terminal cut to "cache as of 20─": the time, the point of the line, was lost.
    base = _context("Pro", "INV-1")
    assert base.customer is not None
    real_length = base.customer.model_copy(update={"id": "cus_1DemoMF7RvwVs2qEKbQ"})  # as Stripe's are
    card = base.model_copy(update={"customer": real_length})
    text = " ".join(line.strip("│ ") for line in _lines(card))
    assert "matched by" in text and f"as of {AS_OF.strftime('%Y-%m-%d %H:%M:%SZ')}" in text, text


def test_a_fresh_card_has_no_stale_marker() -> None:
    assert not any("STALE" in line for line in _lines(_context("Pro", "INV-1")))


def test_age_text_reads_like_a_person_would_say_it() -> None:
    from datetime import timedelta

    from bot.terminal_card import age_text

    cases = {timedelta(seconds=12): "12 s", timedelta(minutes=5, seconds=40): "5 min",
             timedelta(hours=3, minutes=5): "3 h", timedelta(hours=49): "2 d", timedelta(seconds=-3): "0 s"}
    assert {age: age_text(age) for age in cases} == cases


def test_other_customers_are_said_to_share_what_found_them() -> None:
    other = OtherCustomer(id="cus_2", email="x@acme.com", name=None, livemode=False, created=AS_OF,
                          status=None, dashboard_url="https://dashboard.stripe.com/test/customers/cus_2")
    context = _context("Pro", "ABCD-0004").model_copy(update={
        "query": "ABCD-0004", "match": Match(method="invoice_number", confidence="exact"),
        "other_customers": [other]})
    text = _text(context)
    assert "Other customers with this invoice number: cus_2" in text and "this email" not in text
