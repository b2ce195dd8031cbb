"""The fields a rule can test, what kind of value each holds, and how it is read from a context.

Derived day counts are whole days, rounded down, computed at the evaluation's ``now``: a renewal
36 hours away is ``days_until_renewal 1``. A field without a value (no renewal date, no trial, not
past due) is *missing*: every test on it fails except ``exists: false``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import get_args

from billing.domain.models import (
    SEGMENTS,
    BillingContext,
    LifecycleStage,
    Money,
    PaymentStatus,
    SubscriptionStatus,
)


class Kind(Enum):
    """What a field holds; it decides which operators and values a test may use."""

    TEXT = "text"  # free text (plan, metadata values)
    CHOICE = "choice"  # one of a closed set of words (status, payment_status, lifecycle_stage)
    MONEY = "money"  # integer minor units per currency
    BOOL = "bool"
    DAYS = "days"  # whole days, may be missing
    WORDS = "words"  # a list of words (segments, currency)


OPERATORS: dict[Kind, tuple[str, ...]] = {
    Kind.TEXT: ("eq", "ne", "in", "not_in", "contains", "exists"),
    Kind.CHOICE: ("eq", "ne", "in", "not_in", "exists"),
    Kind.MONEY: ("eq", "ne", "gt", "gte", "lt", "lte", "exists"),
    Kind.BOOL: ("eq", "ne", "exists"),
    Kind.DAYS: ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists"),
    Kind.WORDS: ("eq", "ne", "in", "not_in", "contains", "exists"),
}
ALL_OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "exists")

_LIVE_STATUSES = frozenset({"trialing", "active", "past_due", "unpaid", "paused", "incomplete"})
_DAY = timedelta(days=1)

FieldValue = str | bool | int | list[str] | Money | None


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: Kind
    read: Callable[[BillingContext, datetime], FieldValue]
    choices: tuple[str, ...] = ()  # the accepted words of a CHOICE or WORDS field; empty = any


def _whole_days(delta: timedelta) -> int:
    return delta // _DAY


def aware(moment: datetime) -> datetime:
    """A naive datetime is taken as UTC, so a naive ``now`` and aware context dates can be subtracted."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _status(ctx: BillingContext, now: datetime) -> FieldValue:
    return ctx.status


def _plan(ctx: BillingContext, now: datetime) -> FieldValue:
    return ctx.plan


def _mrr(ctx: BillingContext, now: datetime) -> FieldValue:
    return dict(ctx.mrr)


def _ltv(ctx: BillingContext, now: datetime) -> FieldValue:
    return dict(ctx.ltv)


def customer_currencies(ctx: BillingContext) -> list[str]:
    """The customer's currency, else the currencies of its MRR (sorted), else none."""
    if ctx.customer is not None and ctx.customer.currency:
        return [ctx.customer.currency.lower()]
    return sorted(code.lower() for code in ctx.mrr)


def _currency(ctx: BillingContext, now: datetime) -> FieldValue:
    return customer_currencies(ctx)


INTERVALS = ("day", "week", "month", "year")


def _interval(ctx: BillingContext, now: datetime) -> FieldValue:
    # Every live subscription's billing interval; an alert about one subscription (a reminder) sees
    # only that one (``focus``).
    return sorted({s.interval for s in ctx.subscriptions if s.status in _LIVE_STATUSES and s.interval})


def focus(ctx: BillingContext, subscription_id: str) -> BillingContext:
    """``ctx`` as seen by an alert about one of its subscriptions: that subscription alone, its renewal
    and trial end (the customer's MRR, LTV and status stay the customer's). Unchanged when the
    subscription is not in the context."""
    sub = next((s for s in ctx.subscriptions if s.id == subscription_id), None)
    if sub is None:
        return ctx
    return ctx.model_copy(update={"subscriptions": [sub], "renewal_date": sub.current_period_end,
                                  "trial_end": sub.trial_end if sub.status == "trialing" else None})


def _lifecycle_stage(ctx: BillingContext, now: datetime) -> FieldValue:
    return ctx.lifecycle_stage


def _segments(ctx: BillingContext, now: datetime) -> FieldValue:
    return list(ctx.segments)


def _payment_status(ctx: BillingContext, now: datetime) -> FieldValue:
    return ctx.payment_status


def _delinquent(ctx: BillingContext, now: datetime) -> FieldValue:
    return None if ctx.customer is None else ctx.customer.delinquent


def _livemode(ctx: BillingContext, now: datetime) -> FieldValue:
    return None if ctx.customer is None else ctx.customer.livemode


def _cancel_at_period_end(ctx: BillingContext, now: datetime) -> FieldValue:
    # A canceled subscription's leftover flag says nothing about the customer today.
    return any(s.cancel_at_period_end for s in ctx.subscriptions if s.status in _LIVE_STATUSES)


def _days_until_renewal(ctx: BillingContext, now: datetime) -> FieldValue:
    if ctx.renewal_date is None:
        return None
    return _whole_days(aware(ctx.renewal_date) - aware(now))


def _trial_days_left(ctx: BillingContext, now: datetime) -> FieldValue:
    if ctx.trial_end is None:
        return None
    # A trial that ended minutes ago (before the webhook landed) has 0 days left, not -1.
    return max(0, _whole_days(aware(ctx.trial_end) - aware(now)))


def _days_past_due(ctx: BillingContext, now: datetime) -> FieldValue:
    since = ctx.past_due_since
    if since is None and ctx.status == "past_due":
        # Older contexts may lack past_due_since: the oldest unpaid, attempted invoice stands in.
        unpaid = [i.created for i in ctx.recent_invoices if i.status == "open" and i.attempt_count > 0]
        since = min(unpaid, default=None)
    if since is None:
        return None
    return max(0, _whole_days(aware(now) - aware(since)))


FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        FieldSpec("status", Kind.CHOICE, _status, get_args(SubscriptionStatus)),
        FieldSpec("plan", Kind.TEXT, _plan),
        FieldSpec("mrr", Kind.MONEY, _mrr),
        FieldSpec("ltv", Kind.MONEY, _ltv),
        FieldSpec("currency", Kind.WORDS, _currency),
        FieldSpec("interval", Kind.WORDS, _interval, INTERVALS),
        FieldSpec("lifecycle_stage", Kind.CHOICE, _lifecycle_stage, get_args(LifecycleStage)),
        FieldSpec("segments", Kind.WORDS, _segments, SEGMENTS),
        FieldSpec("payment_status", Kind.CHOICE, _payment_status, get_args(PaymentStatus)),
        FieldSpec("delinquent", Kind.BOOL, _delinquent),
        FieldSpec("cancel_at_period_end", Kind.BOOL, _cancel_at_period_end),
        FieldSpec("livemode", Kind.BOOL, _livemode),
        FieldSpec("days_until_renewal", Kind.DAYS, _days_until_renewal),
        FieldSpec("trial_days_left", Kind.DAYS, _trial_days_left),
        FieldSpec("days_past_due", Kind.DAYS, _days_past_due),
    )
}
METADATA_PREFIX = "metadata."
FIELD_NAMES = (*FIELDS, "metadata.<key>")


def _metadata_reader(key: str) -> Callable[[BillingContext, datetime], FieldValue]:
    def read(ctx: BillingContext, now: datetime) -> FieldValue:
        return None if ctx.customer is None else ctx.customer.metadata.get(key)

    return read


def field_spec(name: str) -> FieldSpec | None:
    """The spec of a field name as written in a rule, or None when there is no such field."""
    if name in FIELDS:
        return FIELDS[name]
    if name.startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX):
        return FieldSpec(name, Kind.TEXT, _metadata_reader(name[len(METADATA_PREFIX):]))
    return None
