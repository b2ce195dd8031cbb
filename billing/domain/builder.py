"""Build a BillingContext from one customer's Stripe objects: pure, data in and data out.

``build_context`` combines ``billing.domain.metrics`` (MRR, LTV, renewal) and
``billing.domain.lifecycle`` (stage, segments, urgency, payment status). Every input is a plain
dict in Stripe's current API shape or a slim projection of one.
These are ALL the fields read by builder, metrics and lifecycle (a slim projection must keep
them; any may be missing or null):

- customer: ``id email name livemode created delinquent currency metadata discount``
- subscription: ``id status created currency items.data discounts default_tax_rates pause_collection
  cancel_at_period_end cancel_at trial_end latest_invoice`` (``latest_invoice`` an id or an invoice),
  and ``current_period_end`` only as a fallback for objects older than API 2025-03-31.basil
- subscription item (``items.data[i]``): ``price`` (dict, or id resolved through ``prices``) or the
  legacy ``plan``, ``quantity discounts tax_rates current_period_end``
- price: ``id currency product nickname type recurring.interval recurring.interval_count
  recurring.usage_type billing_scheme tiers_mode tiers unit_amount unit_amount_decimal
  transform_quantity.divide_by transform_quantity.round tax_behavior``; ``product`` is an id or a
  product dict (``id name``)
- price tier (``tiers[j]``): ``up_to unit_amount unit_amount_decimal flat_amount flat_amount_decimal``
- plan (legacy): ``id currency product nickname interval interval_count usage_type billing_scheme
  tiers_mode tiers amount amount_decimal transform_usage.divide_by transform_usage.round``
- discount (subscription ``discounts[k]``, item ``discounts[k]``, ``customer.discount``): ``start end
  source.coupon`` (an id resolved through ``coupons``, or a coupon dict; legacy ``coupon`` as fallback);
  a discount that is only an id string is ignored
- coupon: ``duration percent_off amount_off currency currency_options.<cur>.amount_off
  applies_to.products``
- tax rate (item ``tax_rates[k]``, subscription ``default_tax_rates[k]``): ``percentage inclusive``
- invoice: ``id number status amount_due amount_paid currency created attempt_count
  next_payment_attempt hosted_invoice_url due_date status_transitions.finalized_at
  parent.subscription_details.subscription`` (legacy ``subscription`` as fallback), and the flags
  ``requires_action`` (set by our webhook worker) / expanded ``payment_intent.status``
- charge: ``id status currency amount_captured amount_refunded`` (``amount captured`` when
  ``amount_captured`` is missing)
- dispute: ``charge status amount``
- credit note: ``currency out_of_band_amount status``
- product (``CustomerData.products`` values): ``name``

Read for the timeline (``billing.domain.timeline``), next invoice, cancellation and payment method:

- customer: ``invoice_settings.default_payment_method`` (expanded: ``card.brand last4 exp_month exp_year``)
- subscription: ``start_date trial_start canceled_at ended_at cancellation_details.reason|feedback|comment
  default_payment_method`` (expanded like the customer's), ``discounts[k].id start end``, and our own
  ``next_invoice_preview`` (``billing.domain.snapshot.PREVIEW_FIELD``)
- invoice: ``billing_reason status_transitions.paid_at``
- charge: ``created amount failure_code failure_message outcome.reason invoice``
- dispute: ``id created currency reason``
- coupon: ``name``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from billing.domain.lifecycle import (
    URGENCY,
    card_expiry,
    invoice_subscription_id,
    lifecycle_stage,
    most_urgent_status,
    past_due_since,
    payment_status,
    segments,
    to_datetime,
)
from billing.domain.metrics import (
    PriceTerms,
    compute_ltv,
    compute_mrr,
    is_licensed,
    items_of,
    next_invoice_estimate,
    price_terms,
    renewal_date,
)
from billing.domain.models import (
    BillingContext,
    Cancellation,
    CustomerInfo,
    InvoiceInfo,
    Match,
    Money,
    MrrDetail,
    NextInvoice,
    OtherCustomer,
    PaymentMethodInfo,
    Source,
    SubscriptionInfo,
)
from billing.domain.snapshot import PREVIEW_FIELD, CustomerData, StripeDict
from billing.domain.timeline import build_timeline

RECENT_INVOICES = 5
# Statuses whose subscription will invoice again (a next invoice is shown and previewed).
INVOICING_STATUSES = frozenset({"active", "trialing", "past_due"})
_EPOCH = datetime.fromtimestamp(0, UTC)


def dashboard_url(
    kind: Literal["customers", "subscriptions", "invoices"], object_id: str, livemode: bool
) -> str:
    """Link to the object in the Stripe Dashboard (test-mode objects live under ``/test``)."""
    mode = "" if livemode else "test/"
    return f"https://dashboard.stripe.com/{mode}{kind}/{object_id}"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _created(obj: StripeDict) -> int:
    return _int(obj.get("created"))


def _customer_info(customer: StripeDict) -> CustomerInfo:
    livemode = customer.get("livemode") is True
    metadata = customer.get("metadata")
    return CustomerInfo(
        id=customer["id"],
        email=_str(customer.get("email")),
        name=_str(customer.get("name")),
        livemode=livemode,
        created=to_datetime(customer.get("created")) or _EPOCH,
        delinquent=customer.get("delinquent") is True,
        dashboard_url=dashboard_url("customers", customer["id"], livemode),
        currency=_str(customer.get("currency")),
        metadata={str(k): str(v) for k, v in metadata.items() if v is not None}
        if isinstance(metadata, dict)
        else {},
    )


def other_customer(customer: StripeDict, status: str | None) -> OtherCustomer:
    """A same-email customer to offer as an alternative; ``status`` is its most urgent subscription status."""
    livemode = customer.get("livemode") is True
    return OtherCustomer(
        id=customer["id"],
        email=_str(customer.get("email")),
        name=_str(customer.get("name")),
        livemode=livemode,
        created=to_datetime(customer.get("created")) or _EPOCH,
        status=status,
        dashboard_url=dashboard_url("customers", customer["id"], livemode),
    )


def _main_item(
    subscription: StripeDict, prices: Mapping[str, StripeDict]
) -> tuple[StripeDict, PriceTerms] | None:
    """The item that names the subscription: the first licensed one, else the first priced one."""
    priced = [
        (item, terms) for item in items_of(subscription) if (terms := price_terms(item, prices)) is not None
    ]
    for item, terms in priced:
        if is_licensed(terms):
            return item, terms
    return priced[0] if priced else None


def _plan_name(terms: PriceTerms, item: StripeDict, products: Mapping[str, StripeDict]) -> str | None:
    if terms.nickname:
        return terms.nickname
    product = products.get(terms.product_id or "")
    if product is None:
        embedded = (item.get("price") or item.get("plan") or {}).get("product")
        product = embedded if isinstance(embedded, dict) else None
    if product is not None and isinstance(product.get("name"), str):
        return str(product["name"])
    return terms.id


def main_item(
    subscription: StripeDict, prices: Mapping[str, StripeDict]
) -> tuple[StripeDict, PriceTerms] | None:
    """The item that names the subscription and its price's terms."""
    return _main_item(subscription, prices)


def plan_name(
    subscription: StripeDict, prices: Mapping[str, StripeDict], products: Mapping[str, StripeDict]
) -> str | None:
    """The name the card gives the subscription's plan (its main item's price nickname, else its
    product's name, else the price id)."""
    main = _main_item(subscription, prices)
    return _plan_name(main[1], main[0], products) if main is not None else None


def _period_end(subscription: StripeDict) -> datetime | None:
    ends = [end for item in items_of(subscription) if (end := to_datetime(item.get("current_period_end")))]
    if ends:
        return min(ends)
    return to_datetime(subscription.get("current_period_end"))


def cancellation(subscription: StripeDict) -> Cancellation | None:
    """A cancellation done or scheduled: ``cancellation_details`` and when it takes (or took) effect."""
    ended = to_datetime(subscription.get("ended_at"))
    cancel_at = to_datetime(subscription.get("cancel_at"))
    if subscription.get("status") == "canceled" or ended is not None:
        effective = ended or to_datetime(subscription.get("canceled_at"))
    elif cancel_at is not None:
        effective = cancel_at
    elif subscription.get("cancel_at_period_end") is True:
        effective = _period_end(subscription)
    else:
        return None
    details = subscription.get("cancellation_details")
    details = details if isinstance(details, dict) else {}
    return Cancellation(
        reason=_str(details.get("reason")),
        feedback=_str(details.get("feedback")),
        comment=_str(details.get("comment")),
        effective_at=effective,
    )


def _next_charge_at(subscription: StripeDict) -> datetime | None:
    if subscription.get("status") == "trialing" and (end := to_datetime(subscription.get("trial_end"))):
        return end
    return _period_end(subscription)


def next_invoice(subscription: StripeDict, *, data: CustomerData, now: datetime) -> NextInvoice | None:
    """The preview Stripe gave (while its date is ahead), else an estimate from the subscription;
    None for a subscription that will not invoice again (ended, paused, or canceling first)."""
    if subscription.get("status") not in INVOICING_STATUSES or subscription.get("pause_collection"):
        return None
    at = _next_charge_at(subscription)
    if subscription.get("cancel_at_period_end") is True:
        return None
    cancel_at = to_datetime(subscription.get("cancel_at"))
    if cancel_at is not None and (at is None or cancel_at <= at):
        return None
    preview = subscription.get(PREVIEW_FIELD)
    if isinstance(preview, dict) and isinstance(preview.get("amount_due"), int):
        date = (
            to_datetime(preview.get("next_payment_attempt"))
            or to_datetime(preview.get("period_end"))
            or to_datetime(preview.get("created"))
        )
        if date is None or date >= now:
            return NextInvoice(
                amount_due=preview["amount_due"],
                currency=_str(preview.get("currency")) or _str(subscription.get("currency")) or "",
                date=date,
                estimate=False,
            )
    estimate = next_invoice_estimate(
        subscription, customer=data.customer, coupons=data.coupons, prices=data.prices, at=at or now
    )
    if estimate is None:
        return None
    currency, amount = estimate
    return NextInvoice(amount_due=amount, currency=currency, date=at, estimate=True)


def _card_of(value: Any) -> PaymentMethodInfo | None:
    if not isinstance(value, dict):
        return None  # an unexpanded id says nothing about the card
    card = value.get("card")
    if not isinstance(card, dict):
        return None
    month, year = card.get("exp_month"), card.get("exp_year")
    return PaymentMethodInfo(
        brand=_str(card.get("brand")),
        last4=_str(card.get("last4")),
        exp_month=month if isinstance(month, int) and not isinstance(month, bool) else None,
        exp_year=year if isinstance(year, int) and not isinstance(year, bool) else None,
    )


def default_payment_method(
    customer: StripeDict, subscriptions: Sequence[StripeDict]
) -> PaymentMethodInfo | None:
    """The card that pays next: the default payment method of the most urgent live subscription that
    has one (it overrides the customer's), else the customer's ``invoice_settings`` default."""
    live = [sub for sub in subscriptions if sub.get("status") not in ("canceled", "incomplete_expired")]
    ranked = sorted(live, key=lambda s: URGENCY.index(s["status"]) if s.get("status") in URGENCY else 99)
    for sub in ranked:
        if (card := _card_of(sub.get("default_payment_method"))) is not None:
            return card
    settings = customer.get("invoice_settings")
    return _card_of(settings.get("default_payment_method")) if isinstance(settings, dict) else None


def _subscription_info(
    subscription: StripeDict,
    *,
    data: CustomerData,
    livemode: bool,
    mrr: Money,
    now: datetime,
) -> SubscriptionInfo:
    main = _main_item(subscription, data.prices)
    item, terms = main if main is not None else ({}, None)
    quantity = item.get("quantity")
    return SubscriptionInfo(
        id=subscription["id"],
        status=subscription["status"],
        plan=_plan_name(terms, item, data.products) if terms else None,
        product_id=terms.product_id if terms else None,
        price_id=terms.id if terms else None,
        interval=terms.interval if terms and terms.recurring else None,
        interval_count=terms.interval_count if terms and terms.recurring else None,
        quantity=quantity if isinstance(quantity, int) and not isinstance(quantity, bool) else None,
        currency=_str(subscription.get("currency"))
        or (terms.currency if terms else None)
        or _str(data.customer.get("currency"))
        or "",
        current_period_end=_period_end(subscription),
        trial_end=to_datetime(subscription.get("trial_end")),
        cancel_at_period_end=subscription.get("cancel_at_period_end") is True,
        cancel_at=to_datetime(subscription.get("cancel_at")),
        dashboard_url=dashboard_url("subscriptions", subscription["id"], livemode),
        created=to_datetime(subscription.get("created")),
        paused=subscription.get("status") == "paused" or bool(subscription.get("pause_collection")),
        mrr=mrr,
        next_invoice=next_invoice(subscription, data=data, now=now),
        cancellation=cancellation(subscription),
    )


InvoicePayment = tuple[str, str | None, int, int, int]
"""(id, status, attempt_count, amount_paid, amount_due): an invoice's payment state as a context shows it."""


def invoice_payment(invoice: StripeDict) -> InvoicePayment:
    return (
        invoice["id"],
        _str(invoice.get("status")),
        _int(invoice.get("attempt_count")),
        _int(invoice.get("amount_paid")),
        _int(invoice.get("amount_due")),
    )


def _invoice_info(invoice: StripeDict) -> InvoiceInfo:
    invoice_id, status, attempt_count, amount_paid, amount_due = invoice_payment(invoice)
    return InvoiceInfo(
        id=invoice_id,
        number=_str(invoice.get("number")),
        status=status,
        amount_due=amount_due,
        amount_paid=amount_paid,
        currency=_str(invoice.get("currency")) or "",
        created=to_datetime(invoice.get("created")) or _EPOCH,
        attempt_count=attempt_count,
        next_payment_attempt=to_datetime(invoice.get("next_payment_attempt")),
        hosted_invoice_url=_str(invoice.get("hosted_invoice_url")),
        subscription_id=invoice_subscription_id(invoice),
        due_date=to_datetime(invoice.get("due_date")),
    )


def _trial_end(subscriptions: Sequence[StripeDict], now: datetime) -> datetime | None:
    """The trial end of the most urgent trialing subscription, else the earliest one still ahead."""
    trialing = [sub for sub in subscriptions if sub.get("status") == "trialing"]
    urgent = most_urgent_status(trialing)
    if urgent is not None and (end := to_datetime(urgent[1].get("trial_end"))) is not None:
        return end
    ahead = [end for sub in subscriptions if (end := to_datetime(sub.get("trial_end"))) and end > now]
    return min(ahead) if ahead else None


def listed_subscriptions(data: CustomerData) -> list[StripeDict]:
    """The subscriptions a context lists, newest first: a subscription without an id or a known
    status cannot be shown or linked."""
    return sorted(
        (s for s in data.subscriptions if isinstance(s.get("id"), str) and s.get("status") in URGENCY),
        key=_created,
        reverse=True,
    )


def listed_invoices(data: CustomerData) -> list[StripeDict]:
    """The invoices a context reads, newest first (the first ``RECENT_INVOICES`` are listed)."""
    return sorted((i for i in data.invoices if isinstance(i.get("id"), str)), key=_created, reverse=True)


def build_context(
    data: CustomerData,
    *,
    query: str,
    match: Match,
    now: datetime,
    source: Source = "stripe",
    other_customers: Sequence[OtherCustomer] = (),
) -> BillingContext:
    """The BillingContext of ``data.customer`` as of ``now``."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if not isinstance(data.customer.get("id"), str):
        raise ValueError("A customer object needs an 'id' (a cus_… string) to build its billing context.")
    customer = _customer_info(data.customer)
    subscriptions = listed_subscriptions(data)
    invoices = listed_invoices(data)
    mrr = compute_mrr(
        subscriptions, customer=data.customer, coupons=data.coupons, prices=data.prices, as_of=now
    )
    infos = [
        _subscription_info(
            sub, data=data, livemode=customer.livemode, mrr=mrr.per_subscription.get(sub["id"], {}), now=now
        )
        for sub in subscriptions
    ]
    card = default_payment_method(data.customer, subscriptions)
    renewal = renewal_date(subscriptions, prices=data.prices)
    trial_end = _trial_end(subscriptions, now)
    upcoming = [end for end in (renewal, trial_end) if end is not None and end >= now]
    urgent = most_urgent_status(subscriptions)
    urgent_info = next((info for info in infos if urgent and info.id == urgent[1]["id"]), None)
    overdue_since = past_due_since(subscriptions, invoices)
    return BillingContext(
        found=True,
        query=query,
        match=match,
        customer=customer,
        plan=urgent_info.plan if urgent_info else None,
        status=urgent[0] if urgent else None,
        subscriptions=infos,
        mrr=mrr.mrr,
        mrr_detail=MrrDetail(
            with_temporary_discounts=mrr.with_temporary_discounts,
            scheduled_cancel=mrr.scheduled_cancel,
            has_metered_items=mrr.has_metered_items,
            excluded_trialing=mrr.excluded_trialing,
            excluded_paused=mrr.excluded_paused,
        ),
        ltv=compute_ltv(data.charges, disputes=data.disputes, credit_notes=data.credit_notes),
        renewal_date=renewal,
        trial_end=trial_end,
        payment_status=payment_status(subscriptions, invoices),
        recent_invoices=[_invoice_info(inv) for inv in invoices[:RECENT_INVOICES]],
        lifecycle_stage=lifecycle_stage(subscriptions),
        segments=segments(
            subscriptions,
            now=now,
            past_due_since=overdue_since,
            mrr_by_subscription=mrr.per_subscription,
            card_expires_at=card_expiry(card.exp_month, card.exp_year) if card else None,
            next_renewal=min(upcoming) if upcoming else None,
        ),
        other_customers=list(other_customers),
        as_of=now,
        source=source,
        past_due_since=overdue_since,
        timeline=build_timeline(data, plans={info.id: info.plan for info in infos}, now=now),
        payment_method=card,
    )
