"""Slack Block Kit messages for Billing Lens. Pure: data in, ``SlackMessage`` (or a view dict) out.

Safety rules every builder follows:

- Stripe and user text reaches ``mrkdwn`` only through ``bot.slack.mrkdwn.inline`` (escaped, one line,
  cut); the only ``<…>`` we emit are links to validated https urls and mentions of validated Slack ids.
  mrkdwn objects are ``verbatim`` so Slack does not auto-link urls, emails or ``#channel`` names
  found in customer text.
- Names stand alone in ``plain_text`` (headers, menu options) with ``emoji`` off, so a customer called
  ``:white_check_mark: paid`` is shown as typed.
- Blocks are built with ``slack_sdk.models.blocks`` and ``to_dict()`` (which validates most limits),
  then pass :func:`fit_blocks`, the safety net for every Block Kit limit and the cumulative size.

Datetimes are shown in UTC. ``now`` should be timezone-aware (a naive one is read as UTC).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    LinkButtonElement,
    MarkdownTextObject,
    Option,
    PlainTextObject,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from billing.domain.lifecycle import URGENCY
from billing.domain.matching import matched_by
from billing.domain.models import BillingContext, CustomerInfo, InvoiceInfo, Money, SubscriptionInfo
from billing.domain.money import format_money
from billing.domain.timeline import cancellation_details_text, next_invoice_text, payment_method_text
from bot.slack.mrkdwn import (
    ELLIPSIS,
    channel_mention,
    escape_mrkdwn,
    inline,
    link,
    one_line,
    safe_url,
    text_length,
    truncate,
    truncate_mrkdwn,
    user_mention,
)
from rules.evaluator import RuleEvaluation

__all__ = [
    "ACTION_OPEN_STRIPE",
    "ACTION_REFRESH",
    "ACTION_SHARE",
    "ACTION_SWITCH",
    "SlackMessage",
    "alert_message",
    "customer_card",
    "escape_mrkdwn",
    "fit_blocks",
    "help_message",
    "home_view",
    "looking_message",
    "not_found_message",
    "notice",
    "shared_card",
    "status_message",
    "thread_reply",
    "truncate",
    "with_notice",
]

# ---- interaction ids (the app's action listeners match these) ---------------------------------
ACTION_OPEN_STRIPE: Final = "billing_open_stripe"  # a url button: Slack still sends it, ack it
ACTION_REFRESH: Final = "billing_refresh"  # value: customer id
ACTION_SHARE: Final = "billing_share"  # value: customer id
ACTION_SWITCH: Final = "billing_switch"  # selected_option.value: customer id

# ---- Slack's limits --------------------------------------------------------------------------
TIMELINE_SHOWN: Final = 5  # the customer card's newest billing events
MAX_BLOCKS: Final = 50  # per message (a home view may hold 100; we stay at 50 there too)
MAX_TEXT: Final = 3000  # any text object, and the fallback text
MAX_HEADER: Final = 150
MAX_FIELDS: Final = 10
MAX_FIELD_TEXT: Final = 2000
MAX_CONTEXT_ELEMENTS: Final = 10
MAX_ACTIONS_ELEMENTS: Final = 25
MAX_BUTTON_TEXT: Final = 75
MAX_BUTTON_VALUE: Final = 2000
MAX_OPTION_TEXT: Final = 75
MAX_OPTION_VALUE: Final = 150
MAX_OPTIONS: Final = 100
MAX_PLACEHOLDER: Final = 150
# chat.postMessage refuses blocks whose texts add up to roughly 12,000 characters
# (msg_blocks_too_long, undocumented; slackapi/bolt-js#2509, #2867 report failures from ~11,300).
MAX_TOTAL_TEXT: Final = 8000
MAX_BLOCKS_JSON: Final = 24_000

# ---- what a card shows at most ---------------------------------------------------------------
SUBSCRIPTIONS_SHOWN: Final = 8
SHARED_SUBSCRIPTIONS_SHOWN: Final = 3
INVOICES_SHOWN: Final = 5
OTHERS_IN_MENU: Final = 25
RULES_SHOWN: Final = 10
REASONS_SHOWN: Final = 10
METADATA_SHOWN: Final = 10
ALERTS_SHOWN: Final = 10

STATUS_MARKER: Final = {
    "past_due": ":red_circle:",
    "unpaid": ":red_circle:",
    "incomplete": ":large_yellow_circle:",
    "paused": ":double_vertical_bar:",
    "active": ":large_green_circle:",
    "trialing": ":large_blue_circle:",
    "incomplete_expired": ":white_circle:",
    "canceled": ":white_circle:",
}
PAYMENT_TEXT: Final = {
    "ok": ":white_check_mark: ok",
    "failed": ":x: failed",
    "action_required": ":warning: action required",
    "none": "—",
}
INVOICE_MARKER: Final = {
    "paid": ":white_check_mark:",
    "open": ":hourglass:",
    "void": ":heavy_minus_sign:",
    "uncollectible": ":no_entry_sign:",
    "draft": ":memo:",
}
MATCH_TEXT: Final = {
    "email": "exact email",
    "email_lowercase": "lower-cased email",
    "search": "Stripe search",
    "customer_id": "customer id",
    "manual_link": "manual link",
    "subscription": "subscription id",
    "invoice": "invoice id",
    "invoice_number": "invoice number",
    "charge": "charge id",
    "payment_intent": "payment intent id",
    "metadata": "customer metadata",
}
# (shortcode for mrkdwn, the same emoji as a character for plain_text headers, title)
TRANSITION_TITLE: Final = {
    "subscription.past_due": (":rotating_light:", "\U0001f6a8", "Payment past due"),
    "invoice.payment_failed": (":x:", "\u274c", "Payment failed"),
    "subscription.recovered": (":white_check_mark:", "\u2705", "Payment recovered"),
    "subscription.canceled": (":wave:", "\U0001f44b", "Subscription canceled"),
    "subscription.trial_will_end": (":hourglass_flowing_sand:", "\u23f3", "Trial ending soon"),
    "subscription.renewal_upcoming": (":calendar:", "\U0001f4c5", "Renewal coming up"),
    "subscription.trial_ending": (":hourglass_flowing_sand:", "\u23f3", "Trial ending"),
}
_REMINDED_DATE: Final = {"subscription.renewal_upcoming": "Renews", "subscription.trial_ending": "Trial ends"}
_ENDED = frozenset({"canceled", "incomplete_expired"})


# ================================================================================================
# The message
# ================================================================================================
@dataclass(frozen=True)
class SlackMessage:
    """A Slack message: ``text`` is the plain fallback (notifications, screen readers), ``blocks`` the card.

    ``text`` is mrkdwn-escaped like the blocks, because Slack parses it too.
    """

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.text.strip() or text_length(self.text) > MAX_TEXT:
            raise ValueError("a Slack message needs a fallback text of 1 to 3000 characters")

    def to_payload(self) -> dict[str, Any]:
        """``{"text", "blocks"}`` for ``respond()``/``chat.postMessage``; a copy the caller may extend."""
        return {"text": self.text, "blocks": copy.deepcopy(self.blocks)}


def _message(text: str, blocks: Iterable[Block | None]) -> SlackMessage:
    fallback = truncate_mrkdwn(text, MAX_TEXT) or "Billing Lens"
    return SlackMessage(text=fallback, blocks=fit_blocks(_to_dicts(blocks)))


def _to_dicts(blocks: Iterable[Block | None]) -> list[dict[str, Any]]:
    return [block.to_dict() for block in blocks if block is not None]


# ================================================================================================
# Small formatters
# ================================================================================================
def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def money_text(amounts: Money) -> str:
    """``{"usd": 2900, "jpy": 3000}`` -> ``3,000 JPY + 29.00 USD`` (escaped); empty -> ``—``."""
    if not amounts:
        return "—"
    return escape_mrkdwn(" + ".join(format_money(v, c) for c, v in sorted(amounts.items())))


def _money(amount: int, currency: str) -> str:
    return escape_mrkdwn(format_money(amount, currency))


def date_text(value: datetime | None) -> str:
    return _utc(value).strftime("%Y-%m-%d") if value is not None else "—"


def datetime_text(value: datetime | None) -> str:
    return _utc(value).strftime("%Y-%m-%d %H:%M UTC") if value is not None else "—"


def days_text(value: datetime, now: datetime) -> str:
    """Calendar days from ``now`` (UTC): ``today``, ``in 3 days``, ``1 day ago``."""
    days = (_utc(value).date() - _utc(now).date()).days
    if days == 0:
        return "today"
    unit = "day" if abs(days) == 1 else "days"
    return f"in {days} {unit}" if days > 0 else f"{-days} {unit} ago"


def date_with_days(value: datetime | None, now: datetime) -> str:
    """``2026-12-01 (in 9 days)``; ``—`` when unknown."""
    return "—" if value is None else f"{date_text(value)} ({days_text(value, now)})"


def age_text(then: datetime, now: datetime) -> str:
    """How old data is: ``12 s ago``, ``3 min ago``, ``3 h ago``, ``2 d ago``."""
    seconds = int((_utc(now) - _utc(then)).total_seconds())
    if seconds < 0:
        return "just now"  # the clocks disagree a little; never show a negative age
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86_400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86_400} d ago"


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _status_text(status: str | None) -> str:
    if status is None:
        return ":heavy_minus_sign: no subscription"
    return f"{STATUS_MARKER.get(status, ':white_circle:')} {inline(status, 40)}"


def _who(customer: CustomerInfo) -> str:
    """The customer's display name as plain (unescaped) text: name, else email, else id."""
    for candidate in (customer.name, customer.email, customer.id):
        if candidate and one_line(candidate):
            return one_line(candidate)
    return "Unnamed customer"


def _transition_title(transition: str) -> tuple[str, str, str]:
    known = TRANSITION_TITLE.get(transition)
    if known is not None:
        return known
    return ":bell:", "\U0001f514", one_line(transition) or "Billing event"


def _code(text: str, limit: int = 40) -> str:
    """Inline code for a short identifier; a backtick inside would end the span early."""
    return "`" + inline(text, limit).replace("`", "ˋ") + "`"


def _bounded_lines(lines: Sequence[str], *, more: Callable[[int], str], head: str = "",
                   total: int | None = None, limit: int = MAX_TEXT) -> str:
    """``head`` and as many whole ``lines`` as fit in ``limit`` characters, then ``more(n_not_shown)``.

    ``total`` counts the items ``lines`` were taken from (default: ``len(lines)``), so a list already
    capped to a few items still says how many were left out.
    """
    total = len(lines) if total is None else total
    out = [head] if head else []
    used = text_length(head)
    shown = 0
    for line in lines:
        # Keep room for the "… and N more" line while anything may still be left out.
        reserve = text_length(more(total)) + 1 if total - shown > 1 else 0
        budget = limit - used - 1 - reserve
        if text_length(line) > budget:
            if shown or budget <= 40:
                break
            line = truncate_mrkdwn(line, budget)  # a lone huge first line is cut, not dropped
        out.append(line)
        used += text_length(line) + 1
        shown += 1
    if shown < total:
        out.append(more(total - shown))
    return "\n".join(out)


# ---- Slack objects ------------------------------------------------------------------------------
def _mrkdwn(text: str, limit: int = MAX_TEXT) -> MarkdownTextObject:
    # verbatim: Slack must not auto-link urls, emails or #names inside customer text.
    return MarkdownTextObject(text=truncate_mrkdwn(text, limit) or "—", verbatim=True)


def _plain(text: str, limit: int) -> PlainTextObject:
    return PlainTextObject(text=truncate(one_line(text), limit) or "—", emoji=False)


def _section(text: str) -> SectionBlock:
    return SectionBlock(text=_mrkdwn(text))


def _context(*parts: str) -> ContextBlock:
    shown = [p for p in parts if p]
    return ContextBlock(elements=[_mrkdwn(" · ".join(shown) or "—")])


def _header(text: str) -> HeaderBlock:
    return HeaderBlock(text=_plain(text, MAX_HEADER))


def _fields(pairs: Sequence[tuple[str, str]]) -> SectionBlock | None:
    if not pairs:
        return None
    return SectionBlock(fields=[_mrkdwn(f"*{label}*\n{value}", MAX_FIELD_TEXT)
                                for label, value in pairs[:MAX_FIELDS]])


# ================================================================================================
# fit_blocks: the safety net
# ================================================================================================
def fit_blocks(blocks: Sequence[dict[str, Any]], *, max_blocks: int = MAX_BLOCKS) -> list[dict[str, Any]]:
    """``blocks`` (dicts) cut to Slack's limits; returns new dicts, the input is left untouched.

    Per block: header 150, texts 3000, at most 10 fields of 2000, 10 context elements, 25 actions
    elements, button labels 75 and values 2000, option labels 75 and values 150 (an element or option
    whose value would have to be cut is dropped: a cut id would act on the wrong customer).
    Then at most ``max_blocks`` blocks (the last one says how many were left out), then the cumulative
    size: texts are cut shorter, step by step, and trailing blocks dropped as a last resort.
    """
    fitted = [b for b in (_fit_block(copy.deepcopy(block), MAX_TEXT) for block in blocks) if b is not None]
    if len(fitted) > max_blocks:
        left_out = len(fitted) - (max_blocks - 1)
        note = _context(f"_{ELLIPSIS} {_plural(left_out, 'more item')} not shown_").to_dict()
        fitted = [*fitted[: max_blocks - 1], note]
    for limit in (1500, 750, 300, 150):
        if _fits(fitted):
            return fitted
        fitted = [b for b in (_fit_block(block, limit) for block in fitted) if b is not None]
    while len(fitted) > 1 and not _fits(fitted):
        fitted.pop()
    return fitted


def _fits(blocks: list[dict[str, Any]]) -> bool:
    return (_text_size(blocks) <= MAX_TOTAL_TEXT
            and len(json.dumps(blocks, ensure_ascii=False)) <= MAX_BLOCKS_JSON)


def _text_size(node: Any) -> int:
    """Characters in every ``text`` string, the measure Slack's cumulative limit appears to use."""
    if isinstance(node, dict):
        return sum(len(v) if k == "text" and isinstance(v, str) else _text_size(v) for k, v in node.items())
    if isinstance(node, list):
        return sum(_text_size(v) for v in node)
    return 0


def _fit_text(obj: Any, limit: int) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return None
    cut = truncate_mrkdwn if obj.get("type") == "mrkdwn" else truncate
    obj["text"] = cut(obj["text"], limit) or "—"  # Slack refuses empty text objects
    return obj


def _fit_block(block: dict[str, Any], text_limit: int) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "header":
        return block if _fit_text(block.get("text"), min(MAX_HEADER, text_limit)) else None
    if kind == "section":
        return _fit_section(block, text_limit)
    if kind == "context":
        elements = [e for e in block.get("elements", [])[:MAX_CONTEXT_ELEMENTS]
                    if e.get("type") == "image" or _fit_text(e, text_limit)]
        block["elements"] = elements
        return block if elements else None
    if kind == "actions":
        elements = [e for e in (_fit_element(e) for e in block.get("elements", [])) if e is not None]
        block["elements"] = elements[:MAX_ACTIONS_ELEMENTS]
        return block if elements else None
    return block


def _fit_section(block: dict[str, Any], text_limit: int) -> dict[str, Any] | None:
    if "text" in block and _fit_text(block["text"], text_limit) is None:
        del block["text"]
    if "fields" in block:
        fields = [f for f in block["fields"][:MAX_FIELDS] if _fit_text(f, min(MAX_FIELD_TEXT, text_limit))]
        if fields:
            block["fields"] = fields
        else:
            del block["fields"]
    if "accessory" in block and _fit_element(block["accessory"]) is None:
        del block["accessory"]
    return block if "text" in block or "fields" in block else None


def _fit_element(element: dict[str, Any]) -> dict[str, Any] | None:
    kind = element.get("type")
    if kind == "button":
        if len(element.get("value", "")) > MAX_BUTTON_VALUE:
            return None
        if "url" in element and safe_url(element["url"]) is None:
            return None
        return element if _fit_text(element.get("text"), MAX_BUTTON_TEXT) else None
    if kind == "static_select":
        options = [o for o in element.get("options", [])
                   if len(o.get("value", "")) <= MAX_OPTION_VALUE
                   and _fit_text(o.get("text"), MAX_OPTION_TEXT)]
        element["options"] = options[:MAX_OPTIONS]
        if "placeholder" in element:
            _fit_text(element["placeholder"], MAX_PLACEHOLDER)
        return element if options else None
    return element


# ================================================================================================
# Customer card pieces
# ================================================================================================
def _failed_invoice(context: BillingContext) -> InvoiceInfo | None:
    """The newest open invoice Stripe has tried to collect: the one a failed payment is about."""
    tried = [i for i in context.recent_invoices if i.status == "open" and i.attempt_count > 0]
    return max(tried, key=lambda i: i.created) if tried else None


def _retry_text(invoice: InvoiceInfo, now: datetime) -> str:
    if invoice.next_payment_attempt is None:
        return "no retry scheduled"
    return f"next retry {date_with_days(invoice.next_payment_attempt, now)}"


def _mrr_text(context: BillingContext) -> str:
    detail = context.mrr_detail
    text = money_text(context.mrr)
    if detail.has_metered_items:
        text += " + metered usage"
    if detail.scheduled_cancel:
        text += " (cancellation scheduled)"
    notes = []
    if detail.with_temporary_discounts and detail.with_temporary_discounts != context.mrr:
        notes.append(f"{money_text(detail.with_temporary_discounts)} with temporary discounts")
    if detail.excluded_trialing:
        notes.append(f"{money_text(detail.excluded_trialing)} once trials convert")
    if detail.excluded_paused:
        notes.append(f"{money_text(detail.excluded_paused)} paused")
    return "\n".join([text, *notes])


def _card_fields(context: BillingContext, customer: CustomerInfo, now: datetime, *,
                 full: bool) -> list[tuple[str, str]]:
    pairs = [
        ("Email", inline(customer.email or "", 200) or "—"),
        ("Plan", inline(context.plan or "", 200) or "—"),
        ("Status", _status_text(context.status)),
        ("Payment", PAYMENT_TEXT.get(context.payment_status, "—")),
        ("MRR", _mrr_text(context)),
        ("LTV (paid so far)", money_text(context.ltv)),
        ("Renews", date_with_days(context.renewal_date, now)),
    ]
    if context.trial_end is not None:
        pairs.append(("Trial ends", date_with_days(context.trial_end, now)))
    if full:
        pairs.append(("Lifecycle", inline(context.lifecycle_stage, 40)))
        pairs.append(("Segments", inline(", ".join(context.segments), 300) or "—"))
    return pairs


def _payment_problem(context: BillingContext, now: datetime, *, links: bool) -> str | None:
    """The failed or blocked payment in one line: what is due, how often it was tried, what happens next."""
    if context.payment_status not in ("failed", "action_required"):
        return None
    if context.payment_status == "failed":
        parts = [":warning: *Payment failed*"]
    else:
        parts = [":warning: *Payment needs the customer's action* (authentication or a new card)"]
    invoice = _failed_invoice(context)
    if invoice is not None:
        due = f"{_money(invoice.amount_due, invoice.currency)} due"
        if links:
            due += f" on {link(invoice.hosted_invoice_url, invoice.number or invoice.id, limit=60)}"
        parts += [due, f"attempt {invoice.attempt_count}", _retry_text(invoice, now)]
    if context.past_due_since is not None:
        parts.append(f"past due since {date_with_days(context.past_due_since, now)}")
    return " · ".join(parts)


def _cancellations(context: BillingContext, now: datetime) -> str | None:
    """Subscriptions that will end by themselves: agents must know before promising anything.
    Stripe's cancellation reason, the customer's feedback and comment follow, escaped."""
    lines = []
    for sub in context.subscriptions:
        if sub.status in _ENDED or not (sub.cancel_at_period_end or sub.cancel_at is not None):
            continue
        when = (sub.cancellation.effective_at if sub.cancellation else None) or sub.cancel_at \
            or sub.current_period_end
        line = f":hourglass: *Cancels* {date_with_days(when, now)}: {inline(sub.plan or sub.id, 80)}"
        details = cancellation_details_text(sub.cancellation) if sub.cancellation else ""
        if details:
            line += f" ({inline(details, 300)})"
        lines.append(line)
    if not lines:
        return None
    return _bounded_lines(lines[:5], total=len(lines), more=lambda n: f"{ELLIPSIS} and {_plural(n, 'more')}")


def _upcoming(context: BillingContext, now: datetime, *, card: bool) -> str | None:
    """What comes next: the primary subscription's next invoice and (``card``) the default card."""
    parts = []
    primary = next(iter(_ordered_subscriptions(context)), None)
    if primary is not None and (next_text := next_invoice_text(primary.next_invoice)) is not None:
        parts.append(f":calendar: *Next invoice* {inline(next_text, 80)}")
    if card and (card_text := payment_method_text(context.payment_method, now)) is not None:
        marker = ":warning:" if "card_expiring" in context.segments else ":credit_card:"
        parts.append(f"{marker} *Card* {inline(card_text, 120)}")
    return "\n".join(parts) or None


def _timeline(context: BillingContext, *, shown: int) -> str | None:
    """The newest billing events, one line each (Stripe's words escaped)."""
    if not context.timeline:
        return None
    lines = [f"{_code(date_text(entry.at), 12)} {inline(entry.text, 240)}"
             for entry in context.timeline[:shown]]
    return _bounded_lines(lines, total=len(context.timeline), head="*Timeline*",
                          more=lambda n: f"{ELLIPSIS} and {_plural(n, 'earlier event')}")


def _ordered_subscriptions(context: BillingContext) -> list[SubscriptionInfo]:
    """The primary subscription (the one ``status``/``plan`` describe) first, then the most urgent."""
    primary = next((s for s in context.subscriptions
                    if s.status == context.status and s.plan == context.plan), None)

    def rank(sub: SubscriptionInfo) -> tuple[int, int, float]:
        urgency = URGENCY.index(sub.status) if sub.status in URGENCY else len(URGENCY)
        ends = sub.current_period_end.timestamp() if sub.current_period_end else float("inf")
        return (0 if sub is primary else 1, urgency, ends)

    return sorted(context.subscriptions, key=rank)


def _subscription_line(sub: SubscriptionInfo, now: datetime) -> str:
    parts = [f"{STATUS_MARKER.get(sub.status, ':white_circle:')} *{inline(sub.plan or sub.id, 80)}*",
             inline(sub.status, 30)]
    if sub.quantity and sub.quantity > 1:
        parts.append(f"× {sub.quantity}")
    if sub.mrr:
        parts.append(f"MRR {money_text(sub.mrr)}")
    if sub.status == "trialing" and sub.trial_end is not None:
        parts.append(f"trial ends {date_with_days(sub.trial_end, now)}")
    elif sub.cancel_at_period_end or sub.cancel_at is not None:
        parts.append(f"cancels {date_with_days(sub.cancel_at or sub.current_period_end, now)}")
    elif sub.status not in _ENDED and sub.current_period_end is not None:
        parts.append(f"renews {date_with_days(sub.current_period_end, now)}")
    if sub.paused:
        parts.append("collection paused")
    return " · ".join(parts)


def _subscriptions(context: BillingContext, now: datetime, *, shown: int) -> str | None:
    # One subscription is already told by the Plan/Status/Renews fields.
    if len(context.subscriptions) < 2:
        return None
    ordered = _ordered_subscriptions(context)
    lines = [_subscription_line(sub, now) for sub in ordered[:shown]]
    return _bounded_lines(lines, total=len(ordered), head=f"*Subscriptions* ({len(ordered)})",
                          more=lambda n: f"{ELLIPSIS} and {_plural(n, 'more subscription')}")


def _invoice_line(invoice: InvoiceInfo) -> str:
    marker = INVOICE_MARKER.get(invoice.status or "", ":page_facing_up:")
    if invoice.status == "open" and invoice.attempt_count > 0:
        marker = ":x:"
    parts = [f"{marker} {link(invoice.hosted_invoice_url, invoice.number or invoice.id, limit=60)}",
             inline(invoice.status or "unknown", 30), _money(invoice.amount_due, invoice.currency),
             date_text(invoice.created)]
    if invoice.status == "open" and invoice.attempt_count > 0:
        parts.append(_plural(invoice.attempt_count, "attempt"))
    return " · ".join(parts)


def _invoices(context: BillingContext) -> str | None:
    if not context.recent_invoices:
        return None
    newest = sorted(context.recent_invoices, key=lambda i: i.created, reverse=True)
    lines = [_invoice_line(inv) for inv in newest[:INVOICES_SHOWN]]
    return _bounded_lines(lines, total=len(newest), head="*Recent invoices*",
                          more=lambda n: f"_{ELLIPSIS} and {_plural(n, 'older invoice')}_")


def _actions_line(evaluation: RuleEvaluation) -> str | None:
    actions = evaluation.actions
    parts = []
    if actions.assign:
        parts.append(f"Assign: *{inline(actions.assign, 80)}*")
    if actions.priority:
        parts.append(f"Priority: *{inline(actions.priority, 20)}*")
    if actions.tags:
        parts.append("Tags: " + ", ".join(_code(tag) for tag in actions.tags[:20]))
    return " · ".join(parts) or None


def _routing(evaluation: RuleEvaluation | None, *, reasons: bool) -> str | None:
    if evaluation is None or not (evaluation.matched or _actions_line(evaluation)):
        return None
    head = "*Routing*"
    if (line := _actions_line(evaluation)) is not None:
        head += f"\n{line}"
    if not reasons:
        return head
    lines = [f"• *{inline(m.rule, 60)}*: {inline('; '.join(m.reasons), 400) or 'matched'}"
             for m in evaluation.matched[:RULES_SHOWN]]
    return _bounded_lines(lines, total=len(evaluation.matched), head=head,
                          more=lambda n: f"{ELLIPSIS} and {_plural(n, 'more rule')}")


def _metadata(customer: CustomerInfo) -> str | None:
    if not customer.metadata:
        return None
    items = sorted(customer.metadata.items())
    lines = [f"{inline(k, 40)}: {inline(v, 100)}" for k, v in items[:METADATA_SHOWN]]
    if len(items) > METADATA_SHOWN:
        lines.append(f"{ELLIPSIS} and {len(items) - METADATA_SHOWN} more")
    return "*Metadata*\n" + " · ".join(lines)


def _other_label(other_name: str | None, email: str | None, oid: str, status: str | None,
                 livemode: bool) -> str:
    suffix = f" · {one_line(status or '') or 'no subscription'} · {'live' if livemode else 'test'}"
    suffix = truncate(suffix, 40)
    who = next((one_line(v) for v in (other_name, email, oid) if v and one_line(v)), "customer")
    return truncate(who, MAX_OPTION_TEXT - text_length(suffix)) + suffix


def _others(context: BillingContext) -> SectionBlock | None:
    """The same-email customers, with a menu to switch the card to one of them."""
    others = [o for o in context.other_customers if 0 < len(o.id) <= MAX_OPTION_VALUE]
    if not context.other_customers:
        return None
    count = len(context.other_customers)
    shared = "email"
    if context.match is not None and context.match.method == "metadata":
        shared = inline(context.query.partition(":")[0], 40)  # the operator's id they all carry
    elif context.match is not None and context.match.method == "invoice_number":
        shared = "invoice number"  # found by a number several customers' invoices carry
    text = (f":busts_in_silhouette: {_plural(count, 'other customer')} "
            f"{'shares' if count == 1 else 'share'} this {shared}")
    if count > OTHERS_IN_MENU:
        text += f" (the menu lists the first {OTHERS_IN_MENU})"
    options = []
    for other in dict((o.id, o) for o in others).values():
        label = _other_label(other.name, other.email, other.id, other.status, other.livemode)
        options.append(Option(value=other.id, text=PlainTextObject(text=label, emoji=False)))
    if not options:
        return _section(text)
    menu = StaticSelectElement(
        action_id=ACTION_SWITCH,
        placeholder=PlainTextObject(text="Switch customer", emoji=False),
        options=options[:OTHERS_IN_MENU],
    )
    return SectionBlock(text=_mrkdwn(text), accessory=menu)


def _buttons(customer: CustomerInfo) -> ActionsBlock | None:
    elements: list[ButtonElement] = []
    url = safe_url(customer.dashboard_url)
    if url is not None:
        elements.append(LinkButtonElement(text=PlainTextObject(text="Open in Stripe", emoji=False), url=url,
                                          action_id=ACTION_OPEN_STRIPE))
    # A cut id would refresh or share the wrong customer: no buttons for an id Slack cannot carry.
    if 0 < len(customer.id) <= MAX_BUTTON_VALUE:
        elements.append(ButtonElement(text=PlainTextObject(text="Refresh", emoji=False),
                                      action_id=ACTION_REFRESH, value=customer.id))
        elements.append(ButtonElement(text=PlainTextObject(text="Share to channel", emoji=False),
                                      action_id=ACTION_SHARE, value=customer.id))
    return ActionsBlock(elements=elements) if elements else None


def _provenance(context: BillingContext, now: datetime) -> list[str]:
    """Where the card's data came from: how the customer was matched, live or test, and how old it is."""
    customer = context.customer
    parts = []
    if context.match is not None:
        # Not the email: say by what, with what was typed ("Matched by invoice 0HIAXQK6-0004").
        found_by = matched_by(context.query, context.match)
        method = MATCH_TEXT.get(context.match.method, inline(context.match.method, 30))
        parts.append(inline("M" + found_by[1:], 120) if found_by else f"Matched by {method}")
    if customer is not None:
        parts.append(":large_orange_circle: *LIVE*" if customer.livemode else ":test_tube: test mode")
        parts.append(_code(customer.id, 60))
    if context.as_of is not None:
        parts.append(f"as of {age_text(context.as_of, now)}")
    if context.stale:
        parts.append(":warning: *stale*: Stripe did not answer, this is the last copy we had")
    return parts


def _card_fallback(context: BillingContext, customer: CustomerInfo) -> str:
    who = inline(_who(customer), 200)
    email = f" ({inline(customer.email, 200)})" if customer.email and customer.name else ""
    facts: list[str] = [context.status or "no subscription"]
    if context.plan:
        facts.append(inline(context.plan, 200))
    facts.append(f"MRR {money_text(context.mrr)}")
    if context.payment_status in ("failed", "action_required"):
        facts.append(f"payment {context.payment_status.replace('_', ' ')}")
    return f"Billing context for {who}{email}: {', '.join(facts)}"


# ================================================================================================
# Customer card
# ================================================================================================
def customer_card(
    context: BillingContext,
    evaluation: RuleEvaluation | None,
    *,
    now: datetime,
    shared_by: str | None = None,
) -> SlackMessage:
    """The private (ephemeral) card, with Refresh / Share / Open-in-Stripe buttons and a switch menu.

    With ``shared_by`` (a Slack user id) it is :func:`shared_card` instead: a channel summary with no
    interactive element. A not-found context gives :func:`not_found_message`.
    """
    if shared_by is not None:
        return shared_card(context, evaluation, now=now, shared_by=shared_by)
    customer = context.customer
    if not context.found or customer is None:
        return not_found_message(context.query, ())
    blocks: list[Block | None] = [
        _header(_who(customer)),
        _fields(_card_fields(context, customer, now, full=True)),
        _optional_section(_payment_problem(context, now, links=True)),
        _optional_section(_cancellations(context, now)),
        _optional_section(_upcoming(context, now, card=True)),
        _optional_section(_subscriptions(context, now, shown=SUBSCRIPTIONS_SHOWN)),
        _optional_section(_timeline(context, shown=TIMELINE_SHOWN)),
        _optional_section(_invoices(context)),
        _optional_section(_routing(evaluation, reasons=True)),
        _optional_section(_metadata(customer)),
        _others(context),
        _buttons(customer),
        _context(*_provenance(context, now)),
    ]
    return _message(_card_fallback(context, customer), blocks)


def shared_card(
    context: BillingContext,
    evaluation: RuleEvaluation | None,
    *,
    now: datetime,
    shared_by: str,
) -> SlackMessage:
    """The card as posted to a channel by "Share to channel": a summary, nothing to click but a link.

    Left out on purpose: hosted invoice links (anyone holding one can see and pay the invoice),
    metadata, segments, rule reasons and the other same-email customers.
    """
    customer = context.customer
    if not context.found or customer is None:
        return not_found_message(context.query, ())
    sharer = user_mention(shared_by)
    dashboard = link(customer.dashboard_url, "Open in Stripe") if safe_url(customer.dashboard_url) else ""
    blocks: list[Block | None] = [
        _header(_who(customer)),
        _fields(_card_fields(context, customer, now, full=False)),
        _optional_section(_payment_problem(context, now, links=False)),
        _optional_section(_cancellations(context, now)),
        _optional_section(_upcoming(context, now, card=False)),
        _optional_section(_subscriptions(context, now, shown=SHARED_SUBSCRIPTIONS_SHOWN)),
        _optional_section(_routing(evaluation, reasons=False)),
        _context(f"Shared by {sharer}", *_provenance(context, now), dashboard),
    ]
    return _message(f"{_card_fallback(context, customer)} (shared by {sharer})", blocks)


def _optional_section(text: str | None) -> SectionBlock | None:
    return _section(text) if text else None


# ================================================================================================
# Short messages
# ================================================================================================
def not_found_message(query: str, tried: Sequence[str]) -> SlackMessage:
    """"No Stripe customer found for …" and how we looked (match method names or free text)."""
    shown = inline(query, 200)
    line = f":mag: No Stripe customer found for *{shown}*." if shown else ":mag: No Stripe customer found."
    ways = [MATCH_TEXT.get(t, inline(t, 60)) for t in tried]
    tried_text = f"Tried: {', '.join(w for w in ways if w)}." if any(ways) else ""
    hint = "Check the spelling, or look up the customer id (`cus_…`) from the Stripe dashboard."
    fallback = f"No Stripe customer found for {shown or 'that query'}. {tried_text}".strip()
    return _short_message(line, tried_text, hint, fallback=fallback)


def notice(text: str) -> SlackMessage:
    """One short sentence (an error, a refusal, a confirmation), shown as typed."""
    return _short_message(inline(text, MAX_TEXT - 10) or "Something went wrong.")


def _short_message(line: str, *details: str, fallback: str | None = None) -> SlackMessage:
    """``line`` (mrkdwn, already escaped) with ``details`` in small print below it, when any."""
    blocks = [_section(line), _context(*details) if any(details) else None]
    return _message(fallback or line, blocks)


def with_notice(message: SlackMessage, text: str) -> SlackMessage:
    """``message`` with one warning sentence (escaped) above it, e.g. "showing the cached card"."""
    shown = inline(text, 500) or "Note"
    note = _section(f":warning: {shown}").to_dict()
    fallback = truncate_mrkdwn(f":warning: {shown} {message.text}", MAX_TEXT)
    return SlackMessage(text=fallback, blocks=fit_blocks([note, *message.blocks]))


def looking_message(query: str) -> SlackMessage:
    """The immediate answer to a slash command while Stripe is asked (Slack wants an ack in 3 s)."""
    shown = inline(query, 200) or "the customer"
    text = f":hourglass_flowing_sand: Looking up {shown} in Stripe{ELLIPSIS}"
    return _message(text, [_context(text)])


def help_message() -> SlackMessage:
    """How to use the command and the shortcut."""
    usage = "\n".join([
        "*Billing Lens* shows a customer's Stripe billing context, privately to you.",
        "• `/billing jane@acme.com` or `/billing cus_…`: the customer's card (only you see it)",
        "• `/billing help`: this help",
        "• `/billing status`: how current the billing data is",
        "• `/billing link jane@acme.com cus_…`: always answer that email with that customer",
        "• `/billing unlink jane@acme.com`: remove such a link",
        "• `/billing resync`: reload every customer from Stripe",
        "• Message shortcut *Billing context* (the ⋯ menu of a message): the card for the author's email",
    ])
    note = (":lock: `link`, `unlink` and `resync` are for workspace admins. "
            "The card is private until you press *Share to channel*.")
    return _message("Billing Lens: /billing EMAIL or /billing cus_…; /billing help|status|link|unlink|resync",
                    [_section(usage), _context(note)])


# ================================================================================================
# Sync health
# ================================================================================================
def _when(value: Any) -> datetime | None:
    """An ISO string (``…Z`` included) or a unix timestamp as an aware datetime; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            return _utc(datetime.fromisoformat(value.strip()))
        except ValueError:
            return None
    return None


def _moment(value: Any, now: datetime) -> str:
    when = _when(value)
    return f"{datetime_text(when)} ({age_text(when, now)})" if when is not None else "never"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "—"


def _health_fields(health: dict[str, Any], now: datetime) -> list[tuple[str, str]]:
    last_event = _moment(health.get("last_event_at"), now)
    if isinstance(health.get("last_event_id"), str) and health["last_event_id"]:
        last_event += f"\n{_code(health['last_event_id'], 60)}"
    started, finished = health.get("backfill_started_at"), health.get("backfill_finished_at")
    backfill = _moment(finished, now)
    started_at, finished_at = _when(started), _when(finished)
    if started_at is not None and (finished_at is None or finished_at < started_at):
        backfill = f":arrows_counterclockwise: running since {_moment(started, now)}"
    dead = health.get("dead_letters")
    dead_text = _count(dead)
    if isinstance(dead, int) and dead > 0:
        dead_text = f":warning: {dead_text}"
    return [
        ("Customers cached", _count(health.get("customers_cached"))),
        ("Last webhook", _moment(health.get("last_webhook_at"), now)),
        ("Last event", last_event),
        ("Last backfill", backfill),
        ("Stream lag", _count(health.get("stream_lag"))),
        ("Pending", _count(health.get("pending"))),
        ("Dead letters", dead_text),
    ]


def _health_blocks(health: dict[str, Any], now: datetime) -> list[Block | None]:
    tenant = health.get("tenant")
    title = "*Sync health*" + (f" ({inline(tenant, 60)})" if isinstance(tenant, str) and tenant else "")
    return [_section(title), _fields(_health_fields(health, now))]


def status_message(health: dict[str, Any], *, now: datetime) -> SlackMessage:
    """``/billing status``: how current the cache is (``billing.cache.store.SyncHealth.to_dict()``)."""
    text = (f"Sync health: {_count(health.get('customers_cached'))} customers cached, "
            f"last webhook {_moment(health.get('last_webhook_at'), now)}, "
            f"{_count(health.get('dead_letters'))} dead letters")
    return _message(text, _health_blocks(health, now))


# ================================================================================================
# Alerts and incident threads
# ================================================================================================
def _alert_who(context: BillingContext) -> str:
    """Name and email as plain text (for a header)."""
    customer = context.customer
    if customer is None:
        return one_line(context.query) or "unknown customer"
    who = _who(customer)
    if customer.email and customer.name and one_line(customer.email) != who:
        who += f" ({one_line(customer.email)})"
    return who


def _priority_line(priority: str | None, tags: Sequence[str]) -> str | None:
    parts = []
    if priority:
        parts.append(f"Priority: *{inline(priority, 20)}*")
    if tags:
        parts.append("Tags: " + ", ".join(_code(t) for t in list(tags)[:20]))
    return " · ".join(parts) or None


def _alert_fields(context: BillingContext, now: datetime) -> list[tuple[str, str]]:
    pairs = [
        ("Plan", inline(context.plan or "", 200) or "—"),
        ("Status", _status_text(context.status)),
        ("MRR", money_text(context.mrr)),
    ]
    invoice = _failed_invoice(context)
    if invoice is not None:
        pairs.append(("Failed payment", f"{_money(invoice.amount_due, invoice.currency)} due · "
                                        f"attempt {invoice.attempt_count}\n{_retry_text(invoice, now)}"))
    if context.past_due_since is not None:
        pairs.append(("Past due since", date_with_days(context.past_due_since, now)))
    return pairs


def _reminder_fields(context: BillingContext, transition: str, subscription_id: str | None,
                     now: datetime) -> list[tuple[str, str]]:
    """A renewal or trial reminder's subscription: its plan and interval, and the date it is about."""
    label = _REMINDED_DATE.get(transition)
    sub = next((s for s in context.subscriptions if s.id == subscription_id), None)
    if label is None or sub is None:
        return []
    plan = inline(sub.plan or "", 200) or "—"
    if sub.interval:
        every = sub.interval if (sub.interval_count or 1) == 1 else f"{sub.interval_count} {sub.interval}s"
        plan += f" (every {inline(every, 40)})"
    date = sub.current_period_end if transition == "subscription.renewal_upcoming" else sub.trial_end
    when = date_with_days(date, now)
    upcoming = next_invoice_text(sub.next_invoice)
    if upcoming:
        when += f"\nNext invoice {escape_mrkdwn(upcoming)}"
    return [("Subscription", plan), (label, when)]


def alert_message(
    context: BillingContext,
    *,
    transition: str,
    priority: str | None,
    tags: Sequence[str],
    reasons: Sequence[str],
    now: datetime,
    subscription_id: str | None = None,
) -> SlackMessage:
    """A channel alert for a transition (``subscription.past_due`` and any other name).

    No buttons: a channel message should not need our interactivity to be useful; the dashboard is a
    plain link. Post replies about the same incident with :func:`thread_reply`. A reminder
    (``subscription.renewal_upcoming``, ``subscription.trial_ending``) names its subscription
    (``subscription_id``) and the date.
    """
    code, glyph, title = _transition_title(transition)
    who = _alert_who(context)
    priority_line = _priority_line(priority, tags)
    reason_lines = [f"• {inline(r, 300)}" for r in list(reasons)[:REASONS_SHOWN]]
    reason_text = _bounded_lines(reason_lines, total=len(reasons), head="*Why*",
                                 more=lambda n: f"{ELLIPSIS} and {_plural(n, 'more reason')}")
    customer = context.customer
    dashboard = link(customer.dashboard_url, "Open in Stripe") if customer and safe_url(
        customer.dashboard_url) else ""
    blocks: list[Block | None] = [
        _header(f"{glyph} {title} — {who}"),
        _optional_section(priority_line),
        _fields([*_alert_fields(context, now), *_reminder_fields(context, transition, subscription_id, now)])
        if context.found else None,
        _optional_section(reason_text if reason_lines else None),
        _context(dashboard, *_provenance(context, now)),
    ]
    fallback = f"{code} {inline(title, 100)} — {inline(who, 300)}"
    if priority_line:
        fallback += f" · {priority_line}"
    return _message(fallback, blocks)


def thread_reply(
    context: BillingContext,
    *,
    transition: str,
    now: datetime,
    incident_started_at: datetime | None,
    max_attempts: int | None = None,
) -> SlackMessage:
    """One line in the incident's thread: a failed retry, the recovery, the cancellation, or any other.

    ``max_attempts`` (the account's retry schedule, unknown to the BillingContext) adds "of X".
    """
    if transition == "invoice.payment_failed":
        line = _retry_failed_line(context, now, max_attempts)
    elif transition == "subscription.recovered":
        line = _recovered_line(context, now, incident_started_at)
    elif transition == "subscription.canceled":
        line = _canceled_line(context, now)
    else:
        code, _, title = _transition_title(transition)
        line = f"{code} {inline(title, 100)}"
        if context.status is not None:
            line += f" · status {_status_text(context.status)}"
    return _message(line, [_section(line), _context(f"as of {datetime_text(now)}")])


def _retry_failed_line(context: BillingContext, now: datetime, max_attempts: int | None) -> str:
    invoice = _failed_invoice(context)
    if invoice is None:
        return ":x: Payment retry failed"
    attempt = f"attempt {invoice.attempt_count}"
    if max_attempts is not None and max_attempts >= invoice.attempt_count:
        attempt += f" of {max_attempts}"
    due = _money(invoice.amount_due, invoice.currency)
    return f":x: Payment retry failed: {attempt}, amount due {due}, {_retry_text(invoice, now)}"


def _recovered_line(context: BillingContext, now: datetime, started: datetime | None) -> str:
    started = started or context.past_due_since
    line = ":white_check_mark: Paid"
    paid = [i for i in context.recent_invoices if i.status == "paid" and i.amount_paid > 0]
    if paid:
        newest = max(paid, key=lambda i: i.created)
        line += f" ({_money(newest.amount_paid, newest.currency)})"
    if started is None:
        return line + ", recovered"
    days = (_utc(now) - _utc(started)).days
    if days < 1:
        return line + ", recovered within a day"
    return line + f", recovered after {_plural(days, 'day')}"


def _canceled_line(context: BillingContext, now: datetime) -> str:
    """The cancellation date is the scheduled ``cancel_at`` when it has passed, else ``now``: the
    transition is reported as it happens, and Stripe's ``current_period_end`` is not the end date of an
    immediate cancellation."""
    canceled = [s for s in context.subscriptions if s.status == "canceled"]
    line = ":wave: Subscription canceled"
    if not canceled:
        return f"{line} on {date_text(now)}"
    sub = max(canceled, key=lambda s: _utc(s.cancel_at or s.created or now))
    ended = sub.cancel_at if sub.cancel_at is not None and _utc(sub.cancel_at) <= _utc(now) else now
    return f"{line}: {inline(sub.plan or sub.id, 80)}, on {date_text(ended)}"


# ================================================================================================
# App Home
# ================================================================================================
def _alert_entry(alert: dict[str, Any], now: datetime) -> str:
    code, _, title = _transition_title(str(alert.get("transition") or ""))
    at = _when(alert.get("at"))
    parts = [f"{code} *{inline(title, 60)}*", inline(str(alert.get("customer") or "unknown customer"), 80)]
    channel = alert.get("channel")
    if isinstance(channel, str) and channel:
        parts.append(f"in {channel_mention(channel)}")
    if at is not None:
        parts.append(f"{datetime_text(at)} ({age_text(at, now)})")
    permalink = alert.get("permalink")
    if isinstance(permalink, str) and safe_url(permalink):
        parts.append(link(permalink, "view"))
    return " · ".join(parts)


def _recent_alerts(recent_alerts: Sequence[dict[str, Any]], now: datetime) -> str:
    if not recent_alerts:
        return "*Recent alerts*\nNo alerts yet."
    lines = [_alert_entry(a, now) for a in list(recent_alerts)[:ALERTS_SHOWN]]
    return _bounded_lines(lines, head="*Recent alerts*",
                          more=lambda n: f"{ELLIPSIS} and {_plural(n, 'more')}")


def home_view(
    *,
    allowed: bool,
    health: dict[str, Any] | None,
    recent_alerts: Sequence[dict[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """The App Home tab (``views.publish``). Without ``allowed``, nothing from billing is in it."""
    intro = ("Billing Lens shows a customer's Stripe billing context in Slack: plan, status, MRR, "
             "failed payments and recent invoices, privately to you, with routing hints from the rules.")
    blocks: list[Block | None] = [
        HeaderBlock(text=PlainTextObject(text="Billing Lens", emoji=False)),
        _section(intro),
        _section("\n".join([
            "• `/billing jane@acme.com` or `/billing cus_…` in any channel",
            "• the message shortcut *Billing context* on a customer's message",
            "• `/billing help` for everything else",
        ])),
        DividerBlock(),
    ]
    if not allowed:
        blocks.append(_section(":lock: You do not have access to billing data. "
                               "Ask a workspace admin if you need it."))
    else:
        if health is not None:
            blocks += _health_blocks(health, now)
        blocks.append(_section(_recent_alerts(recent_alerts, now)))
    view = View(type="home", blocks=_to_dicts(blocks))
    data: dict[str, Any] = view.to_dict()
    data["blocks"] = fit_blocks(data["blocks"])
    return data
