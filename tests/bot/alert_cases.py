"""What the alert tests judge: one customer's transitions against one rules file's alerts."""

from __future__ import annotations

from datetime import UTC, datetime

from billing.domain.models import BillingContext, CustomerInfo
from billing.ports import Transition

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
RULES = """
version: 1
alerts:
  - on: subscription.past_due
    channel: C-BILLING
  - on: subscription.past_due
    when: {mrr: {gt: 1000, currency: usd}}
    channel: C-VIP
  - on: subscription.canceled
    channel: C-CHURN
"""


def transition(name: str, *, mrr: int = 2900, status: str = "past_due") -> Transition:
    """Jane's subscription ``sub_1`` (customer ``cus_1``, ``mrr`` cents a month in USD) went ``name``."""
    context = BillingContext(
        found=True, query="jane@acme.com", status=status, mrr={"usd": mrr},
        customer=CustomerInfo(id="cus_1", email="jane@acme.com", name="Jane", livemode=False, created=NOW,
                              delinquent=True, dashboard_url="https://dashboard.stripe.com/test/customers/cus_1"),
    )
    return Transition(name=name, customer_id="cus_1", object_id="sub_1", event_id="evt_2",  # type: ignore[arg-type]
                      context=context)
