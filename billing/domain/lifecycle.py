"""Lifecycle stage, segments, urgency and payment status: facts derived from subscriptions and invoices.

Pure functions over Stripe-shaped dicts. Decisions this module makes (documented because support
reads them):

- Stage ``customer`` covers every live, post-trial relationship: ``active``, ``past_due``, ``unpaid``,
  ``incomplete`` and also ``paused`` (a trial that ended without a payment method: it resumes as
  ``active`` once one is added, so it is neither a trial nor churned) and ``pause_collection`` (status
  stays ``active``; collection is only on hold).
- Segment ``past_due`` means a subscription with status ``past_due`` only; ``unpaid`` is already
  reported by ``status`` and by ``payment_status == "failed"``.
- Segment ``paying`` means an ``active`` or ``past_due`` subscription whose primary MRR is above 0
  (so a 100 %-forever-discounted or collection-paused subscription is not paying).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from billing.domain.metrics import compute_mrr
from billing.domain.models import SEGMENTS, LifecycleStage, Money, PaymentStatus, SubscriptionStatus
from billing.domain.snapshot import StripeDict

CUSTOMER_STATUSES = frozenset({"active", "past_due", "unpaid", "incomplete", "paused"})
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
FAILED_STATUSES = frozenset({"past_due", "unpaid"})

# Most urgent first: what support must know about before anything else.
URGENCY: tuple[SubscriptionStatus, ...] = (
    "past_due", "unpaid", "incomplete", "paused", "active", "trialing", "incomplete_expired", "canceled",
)
EXPIRING_TRIAL_WINDOW = timedelta(days=3)
AT_RISK_PAST_DUE = timedelta(days=7)


def to_datetime(value: Any) -> datetime | None:
    """A Stripe unix timestamp (seconds) as an aware UTC datetime; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return datetime.fromtimestamp(value, UTC)


def invoice_subscription_id(invoice: StripeDict) -> str | None:
    """The invoice's subscription: ``parent.subscription_details.subscription`` (or the pre-basil field)."""
    parent = invoice.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, dict) else None
    value = details.get("subscription") if isinstance(details, dict) else None
    if value is None:
        value = invoice.get("subscription")
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


def _created(obj: StripeDict) -> int:
    created = obj.get("created")
    return created if isinstance(created, int) else 0


def lifecycle_stage(subscriptions: Sequence[StripeDict]) -> LifecycleStage:
    """``customer`` if any live post-trial subscription, else ``trial`` if any trialing, else
    ``churned`` if every subscription ended, else ``none`` (no subscriptions)."""
    statuses = {sub.get("status") for sub in subscriptions}
    if statuses & CUSTOMER_STATUSES:
        return "customer"
    if "trialing" in statuses:
        return "trial"
    if statuses and statuses <= ENDED_STATUSES:
        return "churned"
    return "none"


def _is_live(subscription: StripeDict) -> bool:
    return subscription.get("status") not in ENDED_STATUSES


def segments(
    subscriptions: Sequence[StripeDict],
    *,
    now: datetime,
    past_due_since: datetime | None,
    mrr_by_subscription: Mapping[str, Money] | None = None,
    card_expires_at: datetime | None = None,
    next_renewal: datetime | None = None,
) -> list[str]:
    """The segments the customer belongs to, in ``billing.domain.models.SEGMENTS`` order.

    ``card_expiring``: the default card (``card_expires_at``, see ``card_expiry``) stops working
    before ``next_renewal`` (the next charge of a live subscription).

    ``mrr_by_subscription`` (``MrrResult.per_subscription``) decides ``paying``; without it MRR is
    computed here with no coupons or tiers-expanded prices at hand.
    """
    if mrr_by_subscription is None:
        mrr_by_subscription = compute_mrr(subscriptions, as_of=now).per_subscription
    found: set[str] = set()
    for sub in subscriptions:
        status = sub.get("status")
        if status == "trialing":
            found.add("current_trial")
            trial_end = to_datetime(sub.get("trial_end"))
            if trial_end is not None and now <= trial_end <= now + EXPIRING_TRIAL_WINDOW:
                found.add("expiring_trial")
        if status == "past_due":
            found.add("past_due")
        if status in ("active", "past_due"):
            money = mrr_by_subscription.get(sub.get("id") or "", {})
            if any(amount > 0 for amount in money.values()):
                found.add("paying")
        if _is_live(sub) and (sub.get("cancel_at_period_end") or sub.get("cancel_at") is not None):
            found.add("at_risk")
    if lifecycle_stage(subscriptions) == "churned":
        found.add("churned")
    if past_due_since is not None and now - past_due_since > AT_RISK_PAST_DUE:
        found.add("at_risk")
    if (
        card_expires_at is not None
        and next_renewal is not None
        and card_expires_at <= next_renewal
        and any(_is_live(sub) for sub in subscriptions)
    ):
        found.add("card_expiring")
    return [name for name in SEGMENTS if name in found]


def card_expiry(exp_month: int | None, exp_year: int | None) -> datetime | None:
    """The instant a card stops working: the end of its expiry month (UTC)."""
    if exp_month is None or exp_year is None or not 1 <= exp_month <= 12 or exp_year < 1:
        return None
    if exp_month == 12:
        return datetime(exp_year + 1, 1, 1, tzinfo=UTC)
    return datetime(exp_year, exp_month + 1, 1, tzinfo=UTC)


def most_urgent_status(
    subscriptions: Sequence[StripeDict],
) -> tuple[SubscriptionStatus, StripeDict] | None:
    """The most urgent subscription and its status (ties: the newest); None without subscriptions."""
    known = [sub for sub in subscriptions if sub.get("status") in URGENCY]
    if not known:
        return None
    best = min(known, key=lambda sub: (URGENCY.index(sub["status"]), -_created(sub)))
    return cast(SubscriptionStatus, best["status"]), best


def _unpaid_attempted(invoice: StripeDict) -> bool:
    attempts = invoice.get("attempt_count")
    return invoice.get("status") == "open" and isinstance(attempts, int) and attempts > 0


def past_due_since(
    subscriptions: Sequence[StripeDict], invoices: Sequence[StripeDict]
) -> datetime | None:
    """When the oldest still-unpaid, attempted invoice of a past_due/unpaid subscription fell due:
    its ``due_date``, else ``status_transitions.finalized_at``, else ``created``."""
    failing = {sub.get("id") for sub in subscriptions if sub.get("status") in FAILED_STATUSES}
    candidates = [
        inv for inv in invoices if _unpaid_attempted(inv) and invoice_subscription_id(inv) in failing
    ]
    if not candidates:
        return None
    oldest = min(candidates, key=_created)
    transitions = oldest.get("status_transitions")
    finalized = transitions.get("finalized_at") if isinstance(transitions, dict) else None
    for value in (oldest.get("due_date"), finalized, oldest.get("created")):
        moment = to_datetime(value)
        if moment is not None:
            return moment
    return None


def _requires_action(invoice: StripeDict) -> bool:
    """An invoice flagged as needing the customer (3-D Secure and the like).

    The current API has no such field on the invoice: the webhook worker sets ``requires_action``
    from ``invoice.payment_action_required``; an expanded legacy ``payment_intent`` also tells.
    """
    if invoice.get("status") != "open":
        return False
    if invoice.get("requires_action") is True:
        return True
    intent = invoice.get("payment_intent")
    return isinstance(intent, dict) and intent.get("status") == "requires_action"


def payment_status(
    subscriptions: Sequence[StripeDict], invoices: Sequence[StripeDict]
) -> PaymentStatus:
    """``failed`` > ``action_required`` > ``ok`` > ``none`` (see the checks below, in that order)."""
    by_id = {inv.get("id"): inv for inv in invoices}
    incomplete_subs = {sub.get("id") for sub in subscriptions if sub.get("status") == "incomplete"}
    if any(sub.get("status") in FAILED_STATUSES for sub in subscriptions):
        return "failed"
    # An incomplete subscription's failed first invoice needs the customer to act, so it is not
    # counted as a plain failure here; nor is an invoice waiting for authentication (it was attempted
    # before Stripe asked for the customer's action).
    if any(
        _unpaid_attempted(inv)
        and invoice_subscription_id(inv) not in incomplete_subs
        and not _requires_action(inv)
        for inv in invoices
    ):
        return "failed"
    for sub in subscriptions:
        if sub.get("status") != "incomplete":
            continue
        latest = sub.get("latest_invoice")
        latest_invoice = latest if isinstance(latest, dict) else by_id.get(latest)
        if latest_invoice is None:  # fall back to the newest invoice of that subscription
            own = [inv for inv in invoices if invoice_subscription_id(inv) == sub.get("id")]
            latest_invoice = max(own, key=_created) if own else None
        if latest_invoice is not None and latest_invoice.get("status") == "open":
            return "action_required"
    if any(_requires_action(inv) for inv in invoices):
        return "action_required"
    if not invoices:
        return "none"
    newest = max(invoices, key=_created)
    if newest.get("status") == "uncollectible":
        return "failed"
    return "ok"
