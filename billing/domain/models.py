"""The BillingContext and its parts: the public JSON contract (see ARCHITECTURE.md).

Money is integer minor units per lower-case currency code. Datetimes are UTC and serialise as
``2026-11-22T10:00:00Z``. Fields may be added; none is renamed or removed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

Money = dict[str, int]
"""Integer minor units per lower-case ISO currency code: ``{"usd": 2900}`` is $29.00."""

MatchMethod = Literal[
    "email", "email_lowercase", "search", "customer_id", "manual_link",
    "subscription", "invoice", "invoice_number", "charge", "payment_intent", "metadata",
]
MatchConfidence = Literal["exact", "case_insensitive", "manual"]
PaymentStatus = Literal["ok", "failed", "action_required", "none"]
LifecycleStage = Literal["trial", "customer", "churned", "none"]
Source = Literal["cache", "stripe"]
SubscriptionStatus = Literal[
    "incomplete", "incomplete_expired", "trialing", "active", "past_due", "canceled", "unpaid", "paused"
]

SEGMENTS = (
    "current_trial", "expiring_trial", "past_due", "paying", "churned", "at_risk", "card_expiring"
)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Match(_Model):
    method: MatchMethod
    confidence: MatchConfidence


class CustomerInfo(_Model):
    id: str
    email: str | None
    name: str | None
    livemode: bool
    created: datetime
    delinquent: bool
    dashboard_url: str
    currency: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_serializer("created")
    def _ser_created(self, value: datetime) -> str | None:
        return _iso(value)


class TimelineEntry(_Model):
    """One billing event in plain words: ``kind`` is a stable name (``payment_failed``), ``text`` is
    for people (money in major units with the currency)."""

    at: datetime
    kind: str
    text: str

    @field_serializer("at")
    def _ser_at(self, value: datetime) -> str | None:
        return _iso(value)


class PaymentMethodInfo(_Model):
    """The default card: the subscription's default payment method, else the customer's."""

    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None


class NextInvoice(_Model):
    """The next invoice of a subscription: Stripe's invoice preview, or (``estimate``) a figure
    computed from the subscription's items, quantities and discounts when the preview is unavailable."""

    amount_due: int
    currency: str
    date: datetime | None = None
    estimate: bool = False

    @field_serializer("date")
    def _ser_date(self, value: datetime | None) -> str | None:
        return _iso(value)


class Cancellation(_Model):
    """A subscription's cancellation, done or scheduled: ``cancellation_details`` and when it takes effect."""

    reason: str | None = None
    feedback: str | None = None
    comment: str | None = None
    effective_at: datetime | None = None

    @field_serializer("effective_at")
    def _ser_effective_at(self, value: datetime | None) -> str | None:
        return _iso(value)


class SubscriptionInfo(_Model):
    id: str
    status: SubscriptionStatus
    plan: str | None
    product_id: str | None
    price_id: str | None
    interval: str | None
    interval_count: int | None
    quantity: int | None
    currency: str
    current_period_end: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    dashboard_url: str
    created: datetime | None = None
    paused: bool = False
    mrr: Money = Field(default_factory=dict)
    next_invoice: NextInvoice | None = None
    cancellation: Cancellation | None = None

    @field_serializer("current_period_end", "trial_end", "cancel_at", "created")
    def _ser_dt(self, value: datetime | None) -> str | None:
        return _iso(value)


class InvoiceInfo(_Model):
    id: str
    number: str | None
    status: str | None
    amount_due: int
    amount_paid: int
    currency: str
    created: datetime
    attempt_count: int
    next_payment_attempt: datetime | None
    hosted_invoice_url: str | None
    subscription_id: str | None = None
    due_date: datetime | None = None

    @field_serializer("created", "next_payment_attempt", "due_date")
    def _ser_dt(self, value: datetime | None) -> str | None:
        return _iso(value)


class MrrDetail(_Model):
    with_temporary_discounts: Money = Field(default_factory=dict)
    scheduled_cancel: bool = False
    has_metered_items: bool = False
    excluded_trialing: Money = Field(default_factory=dict)
    excluded_paused: Money = Field(default_factory=dict)


class OtherCustomer(_Model):
    """Another Stripe customer with the same email, shown so the agent can switch."""

    id: str
    email: str | None
    name: str | None
    livemode: bool
    created: datetime
    status: str | None
    dashboard_url: str

    @field_serializer("created")
    def _ser_created(self, value: datetime) -> str | None:
        return _iso(value)


class BillingContext(_Model):
    """Who a customer is to us, in money. ``found=False`` carries only the query."""

    found: bool
    query: str
    match: Match | None = None
    customer: CustomerInfo | None = None
    plan: str | None = None
    status: SubscriptionStatus | None = None
    subscriptions: list[SubscriptionInfo] = Field(default_factory=list)
    mrr: Money = Field(default_factory=dict)
    mrr_detail: MrrDetail = Field(default_factory=MrrDetail)
    ltv: Money = Field(default_factory=dict)
    renewal_date: datetime | None = None
    trial_end: datetime | None = None
    payment_status: PaymentStatus = "none"
    recent_invoices: list[InvoiceInfo] = Field(default_factory=list)
    lifecycle_stage: LifecycleStage = "none"
    segments: list[str] = Field(default_factory=list)
    other_customers: list[OtherCustomer] = Field(default_factory=list)
    as_of: datetime | None = None
    source: Source = "stripe"
    past_due_since: datetime | None = None
    stale: bool = False
    timeline: list[TimelineEntry] = Field(default_factory=list)
    payment_method: PaymentMethodInfo | None = None

    @field_serializer("renewal_date", "trial_end", "as_of", "past_due_since")
    def _ser_dt(self, value: datetime | None) -> str | None:
        return _iso(value)

    @classmethod
    def not_found(cls, query: str) -> BillingContext:
        return cls(found=False, query=query)

    def to_json_dict(self) -> dict[str, Any]:
        """The contract JSON: a not-found context is exactly ``{"found": false, "query": …}``."""
        if not self.found:
            return {"found": False, "query": self.query}
        return self.model_dump(mode="json")

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> BillingContext:
        return cls.model_validate(data)
