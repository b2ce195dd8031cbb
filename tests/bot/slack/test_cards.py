"""The Slack cards: money to the cent, customer text never becomes markup, every Block Kit limit holds."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.domain.models import (
    BillingContext,
    CustomerInfo,
    InvoiceInfo,
    Match,
    MatchMethod,
    OtherCustomer,
    SubscriptionInfo,
    SubscriptionStatus,
)
from bot.slack import cards
from bot.slack.mrkdwn import escape_mrkdwn, text_length, truncate, truncate_mrkdwn
from rules.evaluator import MatchedRule, RuleActions, RuleEvaluation

NOW = datetime(2026, 11, 22, 10, tzinfo=UTC)
DASHBOARD = "https://dashboard.stripe.com/test/customers/cus_1"
HOSTILE = "<!channel> *pay* <https://x|click>"

# The only `<…>` our messages may hold: links to https urls and mentions of Slack ids.
_OURS = re.compile(r"<https://[^\s|<>]+\|[^<>]*>|<@[UW][A-Z0-9]+>|<#[CGD][A-Z0-9]+>")


# ---- building contexts ---------------------------------------------------------------------------
def _sub(
    sub_id: str = "sub_1",
    *,
    status: SubscriptionStatus = "active",
    plan: str | None = "Pro Monthly",
    currency: str = "usd",
    mrr: int = 2900,
    period_end: datetime | None = NOW + timedelta(days=12),
    trial_end: datetime | None = None,
    cancel_at_period_end: bool = False,
) -> SubscriptionInfo:
    return SubscriptionInfo(
        id=sub_id, status=status, plan=plan, product_id="prod_1", price_id="price_1", interval="month",
        interval_count=1, quantity=1, currency=currency, current_period_end=period_end, trial_end=trial_end,
        cancel_at_period_end=cancel_at_period_end, cancel_at=None,
        dashboard_url=f"https://dashboard.stripe.com/test/subscriptions/{sub_id}",
        mrr={currency: mrr} if mrr else {},
    )


def _invoice(
    n: int = 1,
    *,
    status: str = "paid",
    amount: int = 2900,
    currency: str = "usd",
    attempts: int = 1,
    next_attempt: datetime | None = None,
    number: str | None = None,
    url: str | None = "https://invoice.stripe.com/i/acct_1/test_1",
) -> InvoiceInfo:
    return InvoiceInfo(
        id=f"in_{n}", number=number if number is not None else f"INV-{n:04d}", status=status,
        amount_due=amount, amount_paid=amount if status == "paid" else 0, currency=currency,
        created=NOW - timedelta(days=n), attempt_count=attempts, next_payment_attempt=next_attempt,
        hosted_invoice_url=url,
    )


def _context(
    *,
    name: str | None = "Jane Doe",
    email: str | None = "jane@acme.com",
    status: SubscriptionStatus | None = "active",
    plan: str | None = "Pro Monthly",
    subscriptions: list[SubscriptionInfo] | None = None,
    invoices: list[InvoiceInfo] | None = None,
    mrr: dict[str, int] | None = None,
    ltv: dict[str, int] | None = None,
    payment_status: str = "ok",
    others: list[OtherCustomer] | None = None,
    method: MatchMethod = "email",
    livemode: bool = False,
    as_of: datetime = NOW - timedelta(seconds=12),
    stale: bool = False,
    trial_end: datetime | None = None,
    past_due_since: datetime | None = None,
    metadata: dict[str, str] | None = None,
) -> BillingContext:
    return BillingContext.model_validate({
        "found": True,
        "query": email or "cus_1",
        "match": Match(method=method, confidence="exact"),
        "customer": CustomerInfo(
            id="cus_1", email=email, name=name, livemode=livemode, created=NOW - timedelta(days=300),
            delinquent=payment_status == "failed", dashboard_url=DASHBOARD, metadata=metadata or {},
        ),
        "plan": plan,
        "status": status,
        "subscriptions": subscriptions if subscriptions is not None else [_sub(status=status or "active")],
        "mrr": mrr if mrr is not None else {"usd": 2900},
        "ltv": ltv if ltv is not None else {"usd": 8700},
        "renewal_date": NOW + timedelta(days=12),
        "trial_end": trial_end,
        "payment_status": payment_status,
        "recent_invoices": invoices if invoices is not None else [_invoice(1)],
        "lifecycle_stage": "customer",
        "segments": ["paying"],
        "other_customers": others or [],
        "as_of": as_of,
        "stale": stale,
        "past_due_since": past_due_since,
    })


def _past_due(name: str | None = "Jane Doe") -> BillingContext:
    return _context(
        name=name, status="past_due", payment_status="failed", past_due_since=NOW - timedelta(days=3),
        invoices=[
            _invoice(1, status="open", attempts=2, next_attempt=NOW + timedelta(days=2)),
            _invoice(30), _invoice(60), _invoice(90),
        ],
    )


def _other(n: int, *, status: str | None = "active", livemode: bool = False) -> OtherCustomer:
    return OtherCustomer(id=f"cus_other{n}", email="jane@acme.com", name=f"Jane {n}", livemode=livemode,
                         created=NOW - timedelta(days=n), status=status,
                         dashboard_url=f"https://dashboard.stripe.com/test/customers/cus_other{n}")


EVALUATION = RuleEvaluation(
    actions=RuleActions(assign="senior-agents", priority="urgent", tags=["billing", "vip"]),
    matched=[MatchedRule(rule="past-due-billing", reasons=["status is past_due"]),
             MatchedRule(rule="senior-agent-for-high-mrr", reasons=["mrr 1,250.00 USD > 1,000.00 USD"])],
)


# ---- reading messages ----------------------------------------------------------------------------
def _text_objects(node: Any) -> Iterator[dict[str, Any]]:
    return (d for d in _walk_dicts(node)
            if d.get("type") in ("mrkdwn", "plain_text") and isinstance(d.get("text"), str))


def _mrkdwn_texts(message: cards.SlackMessage) -> list[str]:
    """Everything Slack parses as mrkdwn: the fallback text and every mrkdwn object."""
    return [message.text, *(o["text"] for o in _text_objects(message.blocks) if o["type"] == "mrkdwn")]


def _all_text(message: cards.SlackMessage) -> str:
    return "\n".join([message.text, *(o["text"] for o in _text_objects(message.blocks))])


def _elements(message: cards.SlackMessage, kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == kind:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message.blocks)
    return found


def assert_within_limits(blocks: list[dict[str, Any]], *, max_blocks: int = 50) -> None:
    """Every Block Kit limit the cards rely on, checked on the JSON Slack receives."""
    assert 0 < len(blocks) <= max_blocks
    total_text = 0
    for block in blocks:
        kind = block["type"]
        if kind == "header":
            assert block["text"]["type"] == "plain_text"
            assert 0 < text_length(block["text"]["text"]) <= 150
        if kind == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert 0 < text_length(block["text"]["text"]) <= 3000
            assert len(block.get("fields", [])) <= 10
            for item in block.get("fields", []):
                assert 0 < text_length(item["text"]) <= 2000
        if kind == "context":
            assert 0 < len(block["elements"]) <= 10
        if kind == "actions":
            assert 0 < len(block["elements"]) <= 25
        for element in _walk_dicts(block):
            if element.get("type") == "button":
                assert 0 < text_length(element["text"]["text"]) <= 75
                assert len(element.get("value", "")) <= 2000
                if "url" in element:
                    assert element["url"].startswith("https://") and len(element["url"]) <= 3000
            if element.get("type") == "static_select":
                assert 0 < len(element["options"]) <= 100
                values = [o["value"] for o in element["options"]]
                assert len(values) == len(set(values))
                for option in element["options"]:
                    assert option["text"]["type"] == "plain_text"
                    assert 0 < text_length(option["text"]["text"]) <= 75
                    assert 0 < len(option["value"]) <= 150
        for obj in _text_objects(block):
            assert 0 < text_length(obj["text"]) <= 3000
            total_text += len(obj["text"])
    assert total_text <= cards.MAX_TOTAL_TEXT
    assert len(json.dumps(blocks, ensure_ascii=False)) <= cards.MAX_BLOCKS_JSON


def assert_message_ok(message: cards.SlackMessage) -> None:
    assert message.text.strip() and text_length(message.text) <= 3000
    assert_within_limits(message.blocks)
    assert message.to_payload() == {"text": message.text, "blocks": message.blocks}
    assert_no_foreign_markup(message)


def assert_no_foreign_markup(message: cards.SlackMessage) -> None:
    """No `<`/`>` in anything Slack parses, except the links and mentions we build ourselves."""
    for text in _mrkdwn_texts(message):
        rest = _OURS.sub("", text)
        assert "<" not in rest and ">" not in rest, text


def _walk_dicts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_dicts(value)


# ---- mrkdwn helpers ------------------------------------------------------------------------------
def test_escape_mrkdwn_escapes_ampersand_first() -> None:
    assert escape_mrkdwn("a & <b>") == "a &amp; &lt;b&gt;"
    assert escape_mrkdwn("&lt;") == "&amp;lt;"  # shown as typed, not decoded to "<"
    assert cards.escape_mrkdwn is escape_mrkdwn


def test_truncate_marks_the_cut() -> None:
    assert truncate("abcdef", 10) == "abcdef"
    assert truncate("abcdef", 4) == "abc…"
    assert cards.truncate("x" * 3000, 150) == "x" * 149 + "…"


def test_truncate_mrkdwn_never_cuts_inside_a_link_or_an_entity() -> None:
    text = "see <https://invoice.stripe.com/i/1|INV-0001> now"
    assert truncate_mrkdwn(text, 20) == "see…"
    assert truncate_mrkdwn("a &amp; b", 5) == "a…"


# ---- the private card ----------------------------------------------------------------------------
def test_past_due_card_shows_money_to_the_cent_and_the_failed_payment() -> None:
    message = cards.customer_card(_past_due(), EVALUATION, now=NOW)
    assert_message_ok(message)
    text = _all_text(message)
    assert message.blocks[0] == {"type": "header",
                                 "text": {"type": "plain_text", "text": "Jane Doe", "emoji": False}}
    assert "*MRR*\n29.00 USD" in text
    assert "*LTV (paid so far)*\n87.00 USD" in text
    assert ":red_circle: past_due" in text
    assert "*Renews*\n2026-12-04 (in 12 days)" in text
    problem = next(t for t in _mrkdwn_texts(message) if t.startswith(":warning: *Payment failed*"))
    assert "29.00 USD due on <https://invoice.stripe.com/i/acct_1/test_1|INV-0001>" in problem
    assert "attempt 2" in problem
    assert "next retry 2026-11-24 (in 2 days)" in problem
    assert "past due since 2026-11-19 (3 days ago)" in problem
    assert "payment failed" in message.text


def test_card_shows_routing_with_reasons() -> None:
    text = _all_text(cards.customer_card(_past_due(), EVALUATION, now=NOW))
    assert "Assign: *senior-agents* · Priority: *urgent* · Tags: `billing`, `vip`" in text
    assert "• *past-due-billing*: status is past_due" in text
    assert "• *senior-agent-for-high-mrr*: mrr 1,250.00 USD &gt; 1,000.00 USD" in text


def test_card_buttons_and_provenance() -> None:
    message = cards.customer_card(_context(method="email_lowercase"), None, now=NOW)
    assert_message_ok(message)
    buttons = _elements(message, "button")
    assert [(b["text"]["text"], b.get("action_id"), b.get("value"), b.get("url")) for b in buttons] == [
        ("Open in Stripe", "billing_open_stripe", None, DASHBOARD),
        ("Refresh", "billing_refresh", "cus_1", None),
        ("Share to channel", "billing_share", "cus_1", None),
    ]
    footer = message.blocks[-1]
    assert footer["type"] == "context"
    line = footer["elements"][0]["text"]
    assert "Matched by lower-cased email" in line and "test mode" in line and "as of 12 s ago" in line
    assert "stale" not in line
    assert "Routing" not in _all_text(message)  # no evaluation, no routing section


def test_data_age_live_badge_and_stale_marker() -> None:
    def footer(context: BillingContext) -> str:
        text: str = cards.customer_card(context, None, now=NOW).blocks[-1]["elements"][0]["text"]
        return text

    assert "as of 3 min ago" in footer(_context(as_of=NOW - timedelta(minutes=3, seconds=20)))
    live_stale = footer(_context(as_of=NOW - timedelta(hours=3), livemode=True, stale=True))
    assert "as of 3 h ago" in live_stale and "LIVE" in live_stale and "*stale*" in live_stale


def test_trialing_card_shows_the_trial_end() -> None:
    trial_end = NOW + timedelta(days=10)
    context = _context(status="trialing", mrr={}, trial_end=trial_end,
                       subscriptions=[_sub(status="trialing", mrr=0, trial_end=trial_end)])
    message = cards.customer_card(context, None, now=NOW)
    assert_message_ok(message)
    text = _all_text(message)
    assert ":large_blue_circle: trialing" in text
    assert "*Trial ends*\n2026-12-02 (in 10 days)" in text
    assert "*MRR*\n—" in text


def test_multi_currency_and_zero_decimal_money() -> None:
    context = _context(mrr={"usd": 125001, "eur": 2700, "jpy": 3000}, ltv={"jpy": 1234567, "kwd": 1500})
    text = _all_text(cards.customer_card(context, None, now=NOW))
    assert "*MRR*\n27.00 EUR + 3,000 JPY + 1,250.01 USD" in text
    assert "*LTV (paid so far)*\n1,234,567 JPY + 1.500 KWD" in text


def test_scheduled_cancellation_is_shown() -> None:
    context = _context(subscriptions=[_sub(cancel_at_period_end=True)])
    text = _all_text(cards.customer_card(context, None, now=NOW))
    assert ":hourglass: *Cancels* 2026-12-04 (in 12 days): Pro Monthly" in text


def test_forty_subscriptions_show_the_primary_and_most_urgent_first() -> None:
    subs = [_sub(f"sub_{i}", plan=f"Plan {i}", status="active") for i in range(38)]
    subs.insert(20, _sub("sub_pd", plan="Urgent plan", status="past_due"))
    subs.insert(30, _sub("sub_canceled", plan="Old plan", status="canceled"))
    context = _context(status="past_due", plan="Urgent plan", subscriptions=subs)
    message = cards.customer_card(context, None, now=NOW)
    assert_message_ok(message)
    listing = next(t for t in _mrkdwn_texts(message) if t.startswith("*Subscriptions* (40)"))
    lines = listing.split("\n")
    assert "*Urgent plan*" in lines[1]
    assert len(lines) == 1 + cards.SUBSCRIPTIONS_SHOWN + 1
    assert lines[-1] == "… and 32 more subscriptions"
    assert "Old plan" not in listing


def test_two_hundred_invoices_show_five() -> None:
    context = _context(invoices=[_invoice(n) for n in range(1, 201)])
    message = cards.customer_card(context, None, now=NOW)
    assert_message_ok(message)
    listing = next(t for t in _mrkdwn_texts(message) if t.startswith("*Recent invoices*"))
    assert listing.count("<https://invoice.stripe.com/") == 5
    assert "INV-0001" in listing and "INV-0005" in listing and "INV-0006" not in listing
    assert listing.endswith("_… and 195 older invoices_")


def test_a_3000_character_name_is_cut() -> None:
    message = cards.customer_card(_context(name="N" * 3000), EVALUATION, now=NOW)
    assert_message_ok(message)
    header = message.blocks[0]["text"]["text"]
    assert len(header) == 150 and header.endswith("…")


def test_hostile_names_are_shown_as_typed_and_never_ping_or_link() -> None:
    for name in (HOSTILE, "&lt;b&gt; already escaped", "<@U123>", "*bold* _it_ `code` :tada:\n*Plan*\nfake"):
        context = _past_due(name=name)
        context = context.model_copy(update={"plan": name})
        for message in (cards.customer_card(context, EVALUATION, now=NOW),
                        cards.shared_card(context, EVALUATION, now=NOW, shared_by="U0ABC"),
                        cards.alert_message(context, transition="subscription.past_due", priority="urgent",
                                            tags=[name], reasons=[name], now=NOW)):
            assert_message_ok(message)
            for text in _mrkdwn_texts(message):
                assert "<!channel>" not in text and "<https://x" not in text and "<@U123>" not in text
    text = _all_text(cards.customer_card(_context(name="&lt;b&gt; x", plan="&lt;b&gt; x"), None, now=NOW))
    assert "&amp;lt;b&amp;gt; x" in text  # Slack shows "&lt;b&gt; x", as typed
    escaped = cards.customer_card(_context(name=HOSTILE, plan=HOSTILE), None, now=NOW)
    assert "&lt;!channel&gt; *pay* &lt;https://x|click&gt;" in escaped.text


def test_newlines_in_customer_text_cannot_fake_a_line() -> None:
    message = cards.customer_card(_context(plan="Pro\n*Priority*: low"), None, now=NOW)
    assert "*Plan*\nPro *Priority*: low" in _all_text(message)


def test_hostile_invoice_number_and_url_never_become_links() -> None:
    invoices = [
        _invoice(1, number="<https://evil.example|Pay here>"),
        _invoice(2, url="https://evil.example/a|b"),
        _invoice(3, url="javascript:alert(1)"),
        _invoice(4, url="http://plain.example/i"),
        _invoice(5, url=None),
    ]
    message = cards.customer_card(_context(invoices=invoices), None, now=NOW)
    assert_message_ok(message)
    listing = next(t for t in _mrkdwn_texts(message) if t.startswith("*Recent invoices*"))
    assert "<https://invoice.stripe.com/i/acct_1/test_1|&lt;https://evil.example|Pay here&gt;>" in listing
    assert listing.count("<") == 1
    assert "INV-0002" in listing and "javascript" not in listing and "http://" not in listing


def test_other_customers_get_a_switch_menu() -> None:
    others = [_other(n) for n in range(30)] + [_other(99, status=None, livemode=True)]
    message = cards.customer_card(_context(others=others), None, now=NOW)
    assert_message_ok(message)
    menus = _elements(message, "static_select")
    assert len(menus) == 1 and menus[0]["action_id"] == "billing_switch"
    options = menus[0]["options"]
    assert len(options) == 25
    assert options[0] == {"text": {"type": "plain_text", "text": "Jane 0 · active · test", "emoji": False},
                          "value": "cus_other0"}
    assert "31 other customers share this email" in _all_text(message)


def test_one_other_customer_reads_well() -> None:
    message = cards.customer_card(_context(others=[_other(1)]), None, now=NOW)
    assert "1 other customer shares this email" in _all_text(message)
    assert not _elements(cards.customer_card(_context(), None, now=NOW), "static_select")


def test_other_customers_are_said_to_share_what_found_them() -> None:
    by_number = _context(others=[_other(1), _other(2)]).model_copy(update={
        "query": "ABCD-0004", "match": Match(method="invoice_number", confidence="exact")})
    text = _all_text(cards.customer_card(by_number, None, now=NOW))
    assert "2 other customers share this invoice number" in text and "share this email" not in text
    by_metadata = by_number.model_copy(update={
        "query": "user_id:1234", "match": Match(method="metadata", confidence="exact")})
    metadata_card = cards.customer_card(by_metadata, None, now=NOW)
    assert "2 other customers share this user_id" in _all_text(metadata_card)


# ---- the shared card -----------------------------------------------------------------------------
def test_shared_card_has_nothing_to_click_and_fewer_details() -> None:
    context = _past_due().model_copy(update={"other_customers": [_other(1)]})
    context = context.model_copy(update={"customer": context.customer.model_copy(  # type: ignore[union-attr]
        update={"metadata": {"secret_note": "VIP"}})})
    private = cards.customer_card(context, EVALUATION, now=NOW)
    assert "secret_note" in _all_text(private)
    for message in (cards.customer_card(context, EVALUATION, now=NOW, shared_by="U0ABC123"),
                    cards.shared_card(context, EVALUATION, now=NOW, shared_by="U0ABC123")):
        assert_message_ok(message)
        assert not any(b["type"] == "actions" for b in message.blocks)
        assert not _elements(message, "button") and not _elements(message, "static_select")
        text = _all_text(message)
        assert "Shared by <@U0ABC123>" in text
        assert "secret_note" not in text and "invoice.stripe.com" not in text
        assert "29.00 USD" in text and "Priority: *urgent*" in text
        assert f"<{DASHBOARD}|Open in Stripe>" in text


def test_shared_by_that_is_not_a_user_id_is_escaped() -> None:
    message = cards.shared_card(_context(), None, now=NOW, shared_by="<!channel>")
    assert_message_ok(message)
    assert "Shared by &lt;!channel&gt;" in _all_text(message)


def test_not_found_context_gives_the_not_found_message() -> None:
    message = cards.customer_card(BillingContext.not_found("nobody@example.com"), None, now=NOW)
    assert "No Stripe customer found for nobody@example.com" in message.text


# ---- short messages ------------------------------------------------------------------------------
def test_not_found_message_says_what_was_tried() -> None:
    message = cards.not_found_message("<!here>@x.com", ["email", "email_lowercase", "search", "manual links"])
    assert_message_ok(message)
    assert message.text.startswith("No Stripe customer found for &lt;!here&gt;@x.com.")
    assert "Tried: exact email, lower-cased email, Stripe search, manual links." in _all_text(message)


def test_notice_looking_and_help() -> None:
    note = cards.notice("Stripe did not answer; try again in a minute. <!channel>")
    assert_message_ok(note)
    assert note.text == "Stripe did not answer; try again in a minute. &lt;!channel&gt;"
    looking = cards.looking_message("jane@acme.com")
    assert_message_ok(looking)
    assert looking.text.endswith("Looking up jane@acme.com in Stripe…")
    help_text = _all_text(cards.help_message())
    assert_message_ok(cards.help_message())
    for part in ("/billing jane@acme.com", "/billing help", "/billing status",
                 "/billing link jane@acme.com cus_", "/billing unlink", "/billing resync",
                 "*Billing context*", "admins"):
        assert part in help_text


def test_with_notice_puts_a_warning_above_the_card() -> None:
    card = cards.customer_card(_context(), None, now=NOW)
    message = cards.with_notice(card, "Stripe did not answer; showing the card cached 3 min ago.")
    assert_message_ok(message)
    assert message.blocks[0]["text"]["text"].startswith(":warning: Stripe did not answer")
    assert message.blocks[1:] == card.blocks


def test_status_message_shows_sync_health() -> None:
    health = {
        "tenant": "default", "customers_cached": 1234, "last_webhook_at": "2026-11-22T09:57:00Z",
        "last_event_at": "2026-11-22T09:57:00Z", "last_event_id": "evt_123",
        "backfill_started_at": "2026-11-22T07:00:00Z", "backfill_finished_at": None,
        "stream_length": 40, "stream_lag": 3, "pending": 2, "dead_letters": 1,
    }
    message = cards.status_message(health, now=NOW)
    assert_message_ok(message)
    text = _all_text(message)
    assert "*Customers cached*\n1,234" in text
    assert "*Last webhook*\n2026-11-22 09:57 UTC (3 min ago)" in text
    assert "`evt_123`" in text
    assert "*Last backfill*\n:arrows_counterclockwise: running since 2026-11-22 07:00 UTC (3 h ago)" in text
    assert "*Stream lag*\n3" in text and "*Pending*\n2" in text and "*Dead letters*\n:warning: 1" in text
    empty = cards.status_message({"customers_cached": 0, "last_webhook_at": None}, now=NOW)
    assert_message_ok(empty)
    assert "*Last webhook*\nnever" in _all_text(empty)


# ---- alerts and threads --------------------------------------------------------------------------
def test_past_due_alert() -> None:
    message = cards.alert_message(
        _past_due(), transition="subscription.past_due", priority="urgent", tags=["billing"],
        reasons=["transition subscription.past_due", "status is past_due"], now=NOW,
    )
    assert_message_ok(message)
    assert message.text.startswith(":rotating_light: Payment past due — Jane Doe (jane@acme.com)")
    assert message.blocks[0]["text"]["text"].startswith("\U0001f6a8 Payment past due — Jane Doe")
    text = _all_text(message)
    assert "Priority: *urgent* · Tags: `billing`" in text
    assert "*Plan*\nPro Monthly" in text and "*MRR*\n29.00 USD" in text
    assert "*Failed payment*\n29.00 USD due · attempt 2\nnext retry 2026-11-24 (in 2 days)" in text
    assert f"<{DASHBOARD}|Open in Stripe>" in text
    assert "• status is past_due" in text
    assert not _elements(message, "button")


def test_alert_for_any_transition_and_many_reasons() -> None:
    message = cards.alert_message(_context(email=None), transition="customer.<!channel>", priority=None,
                                  tags=[], reasons=[f"reason {i}" for i in range(40)], now=NOW)
    assert_message_ok(message)
    assert message.text.startswith(":bell: customer.&lt;!channel&gt; — Jane Doe")
    assert "… and 30 more reasons" in _all_text(message)


def test_thread_replies() -> None:
    failed = cards.thread_reply(_past_due(), transition="invoice.payment_failed", now=NOW,
                                incident_started_at=None, max_attempts=4)
    assert_message_ok(failed)
    assert failed.text == (":x: Payment retry failed: attempt 2 of 4, amount due 29.00 USD, "
                           "next retry 2026-11-24 (in 2 days)")

    recovered = _context(invoices=[_invoice(0)], past_due_since=NOW - timedelta(days=9))
    by_incident = cards.thread_reply(recovered, transition="subscription.recovered", now=NOW,
                                     incident_started_at=NOW - timedelta(days=5, hours=2))
    assert by_incident.text == ":white_check_mark: Paid (29.00 USD), recovered after 5 days"
    by_context = cards.thread_reply(recovered, transition="subscription.recovered", now=NOW,
                                    incident_started_at=None)
    assert by_context.text.endswith("recovered after 9 days")

    canceled = _context(status="canceled", subscriptions=[_sub(status="canceled")])
    reply = cards.thread_reply(canceled, transition="subscription.canceled", now=NOW,
                               incident_started_at=None)
    assert reply.text == ":wave: Subscription canceled: Pro Monthly, on 2026-11-22"

    other = cards.thread_reply(_context(), transition="subscription.trial_will_end", now=NOW,
                               incident_started_at=None)
    assert_message_ok(other)
    assert other.text.startswith(":hourglass_flowing_sand: Trial ending soon")


# ---- App Home ------------------------------------------------------------------------------------
ALERTS: list[dict[str, Any]] = [
    {"at": "2026-11-22T09:00:00Z", "customer": "<!channel> Jane", "transition": "subscription.past_due",
     "channel": "C0ALERTS", "permalink": "https://acme.slack.com/archives/C0ALERTS/p1"},
    {"at": NOW.timestamp() - 30, "customer": "BigCo", "transition": "subscription.recovered",
     "channel": "#billing"},
]
HEALTH: dict[str, Any] = {
    "tenant": "default", "customers_cached": 12, "last_webhook_at": "2026-11-22T09:59:00Z", "dead_letters": 0,
}


def test_home_view_for_an_allowed_user() -> None:
    view = cards.home_view(allowed=True, health=HEALTH, recent_alerts=ALERTS, now=NOW)
    assert view["type"] == "home"
    assert_within_limits(view["blocks"], max_blocks=100)
    text = json.dumps(view)
    assert "Sync health" in text and "Customers cached" in text
    assert "&lt;!channel&gt; Jane" in text and "<!channel>" not in text
    assert "<#C0ALERTS>" in text and "<https://acme.slack.com/archives/C0ALERTS/p1|view>" in text
    assert "BigCo" in text and "#billing" in text


def test_home_view_hides_billing_data_from_others() -> None:
    view = cards.home_view(allowed=False, health=HEALTH, recent_alerts=ALERTS, now=NOW)
    assert_within_limits(view["blocks"], max_blocks=100)
    text = json.dumps(view)
    assert "You do not have access to billing data" in text
    assert "/billing" in text
    for secret in ("Jane", "BigCo", "Customers cached", "Sync health", "Recent alerts", "C0ALERTS"):
        assert secret not in text


# ---- the safety net ------------------------------------------------------------------------------
def test_fit_blocks_enforces_every_limit_without_touching_its_input() -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "H" * 500}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 5000},
         "fields": [{"type": "mrkdwn", "text": "f" * 2500} for _ in range(14)]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "c"} for _ in range(12)]},
        {"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "B" * 90}, "value": "v",
             "action_id": "a"},
            {"type": "button", "text": {"type": "plain_text", "text": "bad"}, "value": "v" * 2001},
            {"type": "button", "text": {"type": "plain_text", "text": "url"}, "url": "https://x.example/<|>"},
        ]},
        *({"type": "section", "text": {"type": "mrkdwn", "text": f"block {i}"}} for i in range(60)),
    ]
    snapshot = json.dumps(blocks)
    fitted = cards.fit_blocks(blocks)
    assert json.dumps(blocks) == snapshot
    assert_within_limits(fitted)
    assert fitted[0]["text"]["text"].endswith("…")
    assert len(fitted) == 50 and "more items not shown" in fitted[-1]["elements"][0]["text"]
    assert [b["text"]["text"] for b in fitted[3]["elements"]] == ["B" * 74 + "…"]


def test_fit_blocks_keeps_the_cumulative_text_under_slacks_limit() -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "y" * 2900}} for _ in range(20)]
    fitted = cards.fit_blocks(blocks)
    assert_within_limits(fitted)
    assert len(fitted) == 20


# ---- property: arbitrary Stripe text ------------------------------------------------------------
_ANY_TEXT = st.text(max_size=3500)
_MARKUP_TEXT = st.text(alphabet=st.sampled_from(list("<>&|*_~`:@!#/\n \u202e😀aZ")), max_size=400)
_TEXTS = st.one_of(_ANY_TEXT, _MARKUP_TEXT)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.one_of(st.none(), _TEXTS),
    email=st.one_of(st.none(), _TEXTS),
    plan=st.one_of(st.none(), _TEXTS),
    numbers=st.lists(st.one_of(st.none(), _TEXTS), max_size=8),
    url=st.one_of(st.none(), _TEXTS, st.just("https://invoice.stripe.com/i/1")),
    others=st.lists(st.tuples(st.one_of(st.none(), _TEXTS), st.one_of(st.none(), _TEXTS)), max_size=30),
    shared_by=st.one_of(st.none(), _TEXTS, st.just("U0ABC")),
)
def test_any_customer_text_respects_every_limit_and_never_becomes_markup(
    name: str | None, email: str | None, plan: str | None, numbers: list[str | None], url: str | None,
    others: list[tuple[str | None, str | None]], shared_by: str | None,
) -> None:
    invoices = [_invoice(i + 1, status="open", attempts=1, number=number, url=url)
                for i, number in enumerate(numbers)]
    other_customers = [
        OtherCustomer(id=f"cus_o{i}", email=o_email, name=o_name, livemode=False, created=NOW,
                      status=o_name, dashboard_url="https://dashboard.stripe.com/test/customers/x")
        for i, (o_name, o_email) in enumerate(others)
    ]
    subs = [_sub(f"sub_{i}", plan=plan, status="past_due" if i % 2 else "active") for i in range(12)]
    context = _context(name=name, email=email, plan=plan, status="past_due", payment_status="failed",
                       subscriptions=subs, invoices=invoices, others=other_customers,
                       metadata={plan or "k": name or "v"})
    evaluation = RuleEvaluation(
        actions=RuleActions(assign=plan, tags=[t for t in (name, email) if t]),
        matched=[MatchedRule(rule=name or "r", reasons=[plan or "", email or ""])],
    )
    messages = [
        cards.customer_card(context, evaluation, now=NOW, shared_by=shared_by),
        cards.alert_message(context, transition=plan or "subscription.past_due", priority=name,
                            tags=[email or ""], reasons=[name or "", plan or ""], now=NOW),
        cards.thread_reply(context, transition="invoice.payment_failed", now=NOW, incident_started_at=None),
        cards.not_found_message(name or "", [plan or "", email or ""]),
        cards.notice(name or ""),
        cards.looking_message(email or ""),
    ]
    for message in messages:
        assert_message_ok(message)
    view = cards.home_view(allowed=True, health={"tenant": name}, now=NOW,
                           recent_alerts=[{"at": plan, "customer": name, "transition": email,
                                           "channel": plan, "permalink": url}] * 12)
    assert_within_limits(view["blocks"], max_blocks=100)
