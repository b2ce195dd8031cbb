"""A customer's billing timeline built from the Stripe objects themselves: pure, no I/O.

``build_timeline`` reads the same ``CustomerData`` the builder does, so a customer never seen by a
webhook still has a history (backfill, cold lookup), and the same objects always give the same
timeline whatever order they come in: every entry is keyed by (kind, object id), the list is sorted
by time, then kind, then text, and cut to the newest ``limit``.

What the objects show (and so what is built here): subscription created, trial started and ended, coupon
applied and ended, plan changed (a ``subscription_update`` invoice, with its proration amount),
invoice paid, payment failed (attempt N of its invoice, the decline reason Stripe gives on the charge,
the next retry), refunded, disputed, cancellation scheduled, canceled (reason, feedback, comment),
paused (a trial that ended without a payment method). What they do not show (a quantity change, a
payment method update, a resume, the plan before an upgrade) only webhook events can add
(``billing.domain.event_timeline``, merged in from ``CustomerData.event_entries``).

Failed charges are tied to their invoice by ``charge.invoice`` when Stripe gives it (older API
versions), otherwise to the newest invoice of the same currency and amount created at or before the
charge (since API 2025-03-31.basil a charge no longer names its invoice).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from billing.domain.lifecycle import card_expiry, to_datetime
from billing.domain.models import Cancellation, NextInvoice, PaymentMethodInfo, TimelineEntry
from billing.domain.money import format_money
from billing.domain.snapshot import CustomerData, StripeDict, id_of

TIMELINE_LIMIT = 20

# Ties at one second are ordered by what happened first in a normal history (kinds listed first
# happened earlier), so the newest-first list reads naturally and never depends on input order.
KINDS = (
    "subscription_created",
    "trial_started",
    "coupon_applied",
    "trial_ended",
    "paused",
    "resumed",
    "plan_changed",
    "upgraded",
    "downgraded",
    "plan_switched",
    "quantity_changed",
    "payment_method_updated",
    "payment_failed",
    "invoice_paid",
    "refunded",
    "disputed",
    "coupon_ended",
    "coupon_removed",
    "cancellation_scheduled",
    "canceled",
)
_RANK = {kind: n for n, kind in enumerate(KINDS)}
_GENERIC_REASONS = frozenset({"generic_decline", "card_declined", "declined"})


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _words(code: str) -> str:
    return code.replace("_", " ").strip()


def money(amount: int, currency: str | None) -> str:
    """Major units with the currency code: (2900, usd) -> '29.00 USD'."""
    return format_money(amount, currency or "usd") if currency else str(amount)


def decline_reason(charge: StripeDict) -> str | None:
    """The reason Stripe gives for a failed charge, in words: ``failure_code`` ("card declined"),
    refined by ``outcome.reason`` when it says more ("card declined: insufficient funds"), else the
    ``failure_message`` itself."""
    outcome = charge.get("outcome") if isinstance(charge.get("outcome"), dict) else {}
    code = _str(charge.get("failure_code"))
    reason = _str((outcome or {}).get("reason"))
    words = _words(code) if code else None
    if reason and reason not in _GENERIC_REASONS and (code is None or reason != code):
        words = f"{words}: {_words(reason)}" if words else _words(reason)
    if words:
        return words
    message = _str(charge.get("failure_message"))
    return message.rstrip(".").strip() if message else None


def cancellation_words(subscription: StripeDict) -> str:
    """' (reason: …; feedback: …; comment: "…")' from ``cancellation_details``, or ''."""
    details = subscription.get("cancellation_details")
    if not isinstance(details, dict):
        return ""
    parts = []
    if reason := _str(details.get("reason")):
        parts.append(f"reason: {_words(reason)}")
    if feedback := _str(details.get("feedback")):
        parts.append(f"feedback: {_words(feedback)}")
    if comment := _str(details.get("comment")):
        parts.append(f'comment: "{" ".join(comment.split())}"')
    return f" ({'; '.join(parts)})" if parts else ""


class _Entries:
    """Entries keyed by (kind, key): a second sighting of one event replaces nothing."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], TimelineEntry] = {}

    def add(self, kind: str, key: str, at: datetime | None, text: str) -> None:
        if at is None or (kind, key) in self._by_key:
            return
        self._by_key[(kind, key)] = TimelineEntry(at=at, kind=kind, text=text)

    def newest_first(self, limit: int) -> list[TimelineEntry]:
        entries = sorted(
            self._by_key.values(), key=lambda e: (e.at, _RANK.get(e.kind, len(_RANK)), e.text), reverse=True
        )
        return entries[:limit]


def coupon_label(discount: StripeDict, coupons: Mapping[str, StripeDict]) -> str:
    source = discount.get("source") if isinstance(discount.get("source"), dict) else {}
    ref = (source or {}).get("coupon") or discount.get("coupon")
    coupon = coupons.get(ref) if isinstance(ref, str) else ref if isinstance(ref, dict) else None
    if not isinstance(coupon, dict):
        return f"Coupon {ref}" if isinstance(ref, str) else "A coupon"
    name = _str(coupon.get("name")) or _str(coupon.get("id")) or "a coupon"
    if coupon.get("percent_off") is not None:
        off = f"{coupon['percent_off']:g}% off"
    elif isinstance(coupon.get("amount_off"), int):
        off = f"{money(coupon['amount_off'], _str(coupon.get('currency')))} off"
    else:
        off = None
    duration = _str(coupon.get("duration"))
    terms = ", ".join(p for p in (off, duration) if p)
    return f"Coupon {name}" + (f" ({terms})" if terms else "")


def _subscription_events(
    out: _Entries, sub: StripeDict, plan: str, coupons: Mapping[str, StripeDict], now: datetime
) -> None:
    sub_id = str(sub["id"])
    status = sub.get("status")
    created = to_datetime(sub.get("start_date")) or to_datetime(sub.get("created"))
    out.add("subscription_created", sub_id, created, f"Subscription to {plan} created")
    trial_start, trial_end = to_datetime(sub.get("trial_start")), to_datetime(sub.get("trial_end"))
    if trial_end is not None:
        started = f"Trial of {plan} started, ends {_day(trial_end)}"
        out.add("trial_started", sub_id, trial_start or created, started)
        if trial_end <= now:
            out.add("trial_ended", sub_id, trial_end, f"Trial of {plan} ended")
    if status == "paused":
        out.add(
            "paused", sub_id, trial_end,
            f"Subscription to {plan} paused (the trial ended without a payment method)",
        )
    for discount in sub.get("discounts") or []:
        if not isinstance(discount, dict):
            continue
        key = _str(discount.get("id")) or f"{sub_id}:{discount.get('start')}"
        label = coupon_label(discount, coupons)
        out.add("coupon_applied", key, to_datetime(discount.get("start")), f"{label} applied to {plan}")
        end = to_datetime(discount.get("end"))
        if end is not None and end <= now:
            out.add("coupon_ended", key, end, f"{label} on {plan} ended")
    why = cancellation_words(sub)
    ended = to_datetime(sub.get("ended_at"))
    canceled_at = to_datetime(sub.get("canceled_at"))
    if status == "canceled" or ended is not None:
        out.add("canceled", sub_id, ended or canceled_at, f"Subscription to {plan} canceled{why}")
        return
    cancel_at = to_datetime(sub.get("cancel_at"))
    if cancel_at is not None or sub.get("cancel_at_period_end") is True:
        when = f" for {_day(cancel_at)}" if cancel_at is not None else " at the end of the period"
        out.add(
            "cancellation_scheduled", sub_id, canceled_at,
            f"Cancellation of {plan} scheduled{when}{why}",
        )


def _invoice_label(invoice: StripeDict) -> str:
    number = _str(invoice.get("number"))
    return f"Invoice {number}" if number else "An invoice"


def _invoice_events(out: _Entries, invoice: StripeDict) -> None:
    invoice_id = str(invoice["id"])
    currency = _str(invoice.get("currency"))
    created = to_datetime(invoice.get("created"))
    if invoice.get("billing_reason") == "subscription_update":
        out.add(
            "plan_changed", invoice_id, created,
            f"Subscription changed: {money(_int(invoice.get('amount_due')), currency)} invoiced "
            "for the change",
        )
    paid = _int(invoice.get("amount_paid"))
    if invoice.get("status") == "paid" and paid > 0:
        transitions = invoice.get("status_transitions")
        paid_at = to_datetime(transitions.get("paid_at")) if isinstance(transitions, dict) else None
        out.add(
            "invoice_paid", invoice_id, paid_at or created,
            f"{_invoice_label(invoice)} paid: {money(paid, currency)}",
        )


def _invoice_of(charge: StripeDict, invoices: Sequence[StripeDict]) -> StripeDict | None:
    named = id_of(charge.get("invoice"))
    if named is not None:
        return next((inv for inv in invoices if inv.get("id") == named), None)
    at = _int(charge.get("created"))
    candidates = [
        inv for inv in invoices
        if inv.get("currency") == charge.get("currency")
        and _int(inv.get("amount_due")) == _int(charge.get("amount"))
        and _int(inv.get("created")) <= at
        and inv.get("status") in ("open", "paid", "uncollectible", "void")
    ]
    return max(candidates, key=lambda inv: (_int(inv.get("created")), str(inv.get("id"))), default=None)


def _charge_events(
    out: _Entries, charges: Sequence[StripeDict], invoices: Sequence[StripeDict]
) -> None:
    ordered = sorted(charges, key=lambda c: (_int(c.get("created")), str(c.get("id"))))
    by_invoice: dict[str, list[StripeDict]] = {}
    invoice_by_id: dict[str, StripeDict] = {}
    for charge in ordered:
        invoice = _invoice_of(charge, invoices)
        if invoice is not None:
            by_invoice.setdefault(str(invoice["id"]), []).append(charge)
            invoice_by_id[str(invoice["id"])] = invoice
    attempt_of: dict[str, tuple[int, StripeDict, bool]] = {}
    for invoice_id, linked in by_invoice.items():
        invoice = invoice_by_id[invoice_id]
        known = _int(invoice.get("attempt_count"))
        offset = max(0, known - len(linked))  # attempts older than the charges we can see
        for n, charge in enumerate(linked):
            attempt_of[str(charge["id"])] = (offset + n + 1, invoice, n == len(linked) - 1)
    for charge in ordered:
        charge_id = str(charge["id"])
        currency = _str(charge.get("currency"))
        at = to_datetime(charge.get("created"))
        amount = _int(charge.get("amount"))
        if charge.get("status") == "failed":
            details = []
            linked_to = attempt_of.get(charge_id)
            if linked_to is not None:
                details.append(f"attempt {linked_to[0]}")
            if reason := decline_reason(charge):
                details.append(reason)
            text = f"Payment of {money(amount, currency)} failed"
            if details:
                text += f" ({', '.join(details)})"
            if linked_to is not None and linked_to[2] and linked_to[1].get("status") == "open":
                retry = to_datetime(linked_to[1].get("next_payment_attempt"))
                text += f"; next retry {_day(retry)}" if retry is not None else "; no further retry"
            out.add("payment_failed", charge_id, at, text)
        refunded = _int(charge.get("amount_refunded"))
        if refunded > 0 and at is not None:
            out.add(
                "refunded", charge_id, at,
                f"Refund of {money(refunded, currency)} on the {money(amount, currency)} "
                f"payment of {_day(at)}",
            )


def _dispute_events(out: _Entries, disputes: Sequence[StripeDict], charges: Sequence[StripeDict]) -> None:
    charge_at = {str(c.get("id")): to_datetime(c.get("created")) for c in charges}
    for dispute in disputes:
        dispute_id = _str(dispute.get("id"))
        if dispute_id is None:
            continue
        at = to_datetime(dispute.get("created")) or charge_at.get(id_of(dispute.get("charge")) or "")
        text = f"Payment of {money(_int(dispute.get('amount')), _str(dispute.get('currency')))} disputed"
        if reason := _str(dispute.get("reason")):
            text += f" (reason: {_words(reason)})"
        if status := _str(dispute.get("status")):
            text += f"; dispute {_words(status)}"
        out.add("disputed", dispute_id, at, text)


def _unique(objects: Sequence[StripeDict]) -> list[StripeDict]:
    """One object per id (a copy delivered twice is one object), in id order."""
    by_id: dict[str, StripeDict] = {}
    for obj in objects:
        if isinstance(obj.get("id"), str):
            by_id.setdefault(obj["id"], obj)
    return [by_id[key] for key in sorted(by_id)]


def build_timeline(
    data: CustomerData,
    *,
    plans: Mapping[str, str | None],
    now: datetime,
    limit: int = TIMELINE_LIMIT,
) -> list[TimelineEntry]:
    """The customer's newest ``limit`` billing events, newest first. ``plans`` names each subscription
    (by id) as the card does; a subscription without a name is called by its id. The entries only
    webhook events gave (``data.event_entries``) are merged in."""
    out = _Entries()
    for entry in data.event_entries:
        out.add(entry.kind, f"event:{entry.at.isoformat()}:{entry.text}", entry.at, entry.text)
    for sub in _unique(data.subscriptions):
        plan = plans.get(sub["id"]) or str(sub["id"])
        _subscription_events(out, sub, plan, data.coupons, now)
    invoices = _unique(data.invoices)
    for invoice in invoices:
        _invoice_events(out, invoice)
    charges = _unique(data.charges)
    _charge_events(out, charges, invoices)
    _dispute_events(out, _unique(data.disputes), charges)
    return out.newest_first(limit)


# -- plain words for the cards and the tool content (pure) ------------------------------------------


def next_invoice_text(next_invoice: NextInvoice | None) -> str | None:
    """'29.00 USD on 2026-12-01' (', estimated' when it is not Stripe's preview)."""
    if next_invoice is None:
        return None
    text = money(next_invoice.amount_due, next_invoice.currency)
    if next_invoice.date is not None:
        text += f" on {_day(next_invoice.date)}"
    return text + (" (estimate)" if next_invoice.estimate else "")


def cancellation_text(cancellation: Cancellation | None, now: datetime) -> str | None:
    """'cancels on 2026-12-01 (reason: …; feedback: …)' or 'canceled on …'."""
    if cancellation is None:
        return None
    when = cancellation.effective_at
    verb = "canceled" if when is not None and when <= now else "cancels"
    text = f"{verb} on {_day(when)}" if when is not None else verb
    details = cancellation_details_text(cancellation)
    return f"{text} ({details})" if details else text


def cancellation_details_text(cancellation: Cancellation) -> str:
    """'reason: cancellation requested; feedback: too expensive; comment: "…"' (Stripe's words)."""
    parts = []
    if cancellation.reason:
        parts.append(f"reason: {_words(cancellation.reason)}")
    if cancellation.feedback:
        parts.append(f"feedback: {_words(cancellation.feedback)}")
    if cancellation.comment:
        parts.append(f'comment: "{" ".join(cancellation.comment.split())}"')
    return "; ".join(parts)


def payment_method_text(card: PaymentMethodInfo | None, now: datetime) -> str | None:
    """'visa •••• 4242, expires 12/2030, in 1,500 days' ('expired' once past)."""
    if card is None:
        return None
    text = f"{card.brand or 'card'} •••• {card.last4 or '????'}"
    if card.exp_month is not None and card.exp_year is not None:
        text += f", expires {card.exp_month:02d}/{card.exp_year}"
        end = card_expiry(card.exp_month, card.exp_year)
        if end is not None:
            days = (end - now).days
            text += f", in {days:,} days" if end > now else ", expired"
    return text
