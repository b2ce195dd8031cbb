"""BillingContext objects for rule tests, built directly (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from billing.domain.models import BillingContext, CustomerInfo, SubscriptionInfo

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def subscription(
    status: str = "active",
    *,
    cancel_at_period_end: bool = False,
    currency: str = "usd",
    sub_id: str = "sub_1",
) -> SubscriptionInfo:
    return SubscriptionInfo(
        id=sub_id,
        status=status,
        plan="Pro Monthly",
        product_id="prod_1",
        price_id="price_1",
        interval="month",
        interval_count=1,
        quantity=1,
        currency=currency,
        current_period_end=None,
        trial_end=None,
        cancel_at_period_end=cancel_at_period_end,
        cancel_at=None,
        dashboard_url=f"https://dashboard.stripe.com/test/subscriptions/{sub_id}",
    )


def context(
    *,
    status: str | None = "active",
    currency: str | None = "usd",
    delinquent: bool = False,
    livemode: bool = False,
    metadata: dict[str, str] | None = None,
    subscriptions: list[SubscriptionInfo] | None = None,
    **fields: Any,
) -> BillingContext:
    """A found customer; ``fields`` override any BillingContext field (mrr, plan, segments, …)."""
    customer = CustomerInfo(
        id="cus_1",
        email="jane@acme.com",
        name="Jane Doe",
        livemode=livemode,
        created=datetime(2025, 1, 3, 10, 0, tzinfo=UTC),
        delinquent=delinquent,
        dashboard_url="https://dashboard.stripe.com/test/customers/cus_1",
        currency=currency,
        metadata=metadata or {},
    )
    subs = subscriptions if subscriptions is not None else ([subscription(status)] if status else [])
    values: dict[str, Any] = {
        "found": True,
        "query": "jane@acme.com",
        "customer": customer,
        "status": status,
        "plan": "Pro Monthly" if status else None,
        "subscriptions": subs,
        "mrr": {},
        **fields,
    }
    return BillingContext(**values)
