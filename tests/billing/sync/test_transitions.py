from __future__ import annotations

from datetime import UTC, datetime

from billing.domain.builder import build_context
from billing.domain.models import BillingContext, Match
from billing.domain.snapshot import CustomerData
from billing.sync.transitions import diff_contexts, facts_of, facts_of_data
from tests.billing import stripe_factory as sf


def ctx(status: str = "active", invoice_status: str = "paid", attempts: int = 1) -> BillingContext:
    data = CustomerData(
        customer=sf.customer(), subscriptions=[sf.subscription(status=status)],
        invoices=[sf.invoice(status=invoice_status, attempts=attempts)],
    )
    return build_context(data, query="cus_A", match=Match(method="customer_id", confidence="exact"),
                         now=datetime.fromtimestamp(sf.T0, UTC))


def test_status_changes_map_to_transitions() -> None:
    assert [t.name for t in diff_contexts(ctx("active"), ctx("past_due"))] == ["subscription.past_due"]
    assert [t.name for t in diff_contexts(ctx("past_due"), ctx("active"))] == ["subscription.recovered"]
    assert [t.name for t in diff_contexts(ctx("active"), ctx("canceled"))] == ["subscription.canceled"]
    assert diff_contexts(ctx("active"), ctx("active")) == []
    assert diff_contexts(None, ctx("past_due")) == []  # first sight, no event: nothing known to have changed


def test_a_failed_attempt_is_a_transition_keyed_by_attempt() -> None:
    found = diff_contexts(ctx(invoice_status="open", attempts=1), ctx(invoice_status="open", attempts=2))
    assert [(t.name, t.dedup_key) for t in found] == [
        ("invoice.payment_failed", "invoice.payment_failed:in_A:attempt-2")
    ]


def test_keys_depend_on_the_state_change_not_the_delivery() -> None:
    first = diff_contexts(ctx("active"), ctx("past_due"), {"id": "evt_1"}, versions={"sub_A": "evt_9"})
    again = diff_contexts(ctx("active"), ctx("past_due"), {"id": "evt_2"}, versions={"sub_A": "evt_9"})
    assert [t.dedup_key for t in first] == [t.dedup_key for t in again]


def test_trial_will_end_comes_from_the_event() -> None:
    event = {"type": "customer.subscription.trial_will_end",
             "data": {"object": {"id": "sub_A", "trial_end": sf.T0}}}
    found = diff_contexts(ctx(), ctx(), event)
    assert [t.name for t in found] == ["subscription.trial_will_end"]


def updated(status: str, previous: str) -> dict[str, object]:
    return {"id": "evt_7", "type": "customer.subscription.updated",
            "data": {"object": {"id": "sub_A", "status": status},
                     "previous_attributes": {"status": previous}}}


def test_first_sight_trusts_what_the_event_itself_shows() -> None:
    # A customer the cache has never seen goes past due: the alert must not be lost.
    assert [t.name for t in diff_contexts(None, ctx("past_due"), updated("past_due", "active"))] == [
        "subscription.past_due"
    ]
    # A recovery is news only to whoever heard of the trouble, which needs an old context.
    assert diff_contexts(None, ctx("active"), updated("active", "past_due")) == []
    failed = {"id": "evt_8", "type": "invoice.payment_failed",
              "data": {"object": {"id": "in_A", "attempt_count": 2}}}
    assert [t.name for t in diff_contexts(None, ctx(invoice_status="open", attempts=2), failed)] == [
        "invoice.payment_failed"
    ]


def test_first_sight_ignores_an_event_that_the_stored_state_contradicts() -> None:
    # The event says past_due, but newer state (already applied) is active: nothing is claimed.
    assert diff_contexts(None, ctx("active"), updated("past_due", "active")) == []
    # No status in previous_attributes: nothing known to have changed.
    quiet = {"id": "evt_9", "type": "customer.subscription.updated",
             "data": {"object": {"id": "sub_A", "status": "past_due"},
                      "previous_attributes": {"metadata": {}}}}
    assert diff_contexts(None, ctx("past_due"), quiet) == []


def test_first_sight_and_later_sight_give_the_same_key() -> None:
    versions = {"sub_A": "evt_7"}
    first = diff_contexts(None, ctx("past_due"), updated("past_due", "active"), versions=versions)
    later = diff_contexts(ctx("active"), ctx("past_due"), updated("past_due", "active"), versions=versions)
    assert [t.dedup_key for t in first] == [t.dedup_key for t in later]


def test_facts_found_without_building_are_those_of_the_built_context() -> None:
    # What the worker compares after each event (no build) must be what diff_contexts reads of the
    # context the same data builds: listed subscriptions (known statuses only), newest invoices.
    subs = [sf.subscription(sid="sub_A", status="past_due"), sf.subscription(sid="sub_B", status="weird"),
            sf.subscription(sid="sub_C", status="canceled", created=sf.T0 - 5)]
    invoices = [sf.invoice(iid=f"in_{n}", status=("open" if n % 3 else "paid"), attempts=n % 4,
                           created=sf.T0 - 86400 * (n % 4)) for n in range(8)]
    invoices.append({"object": "invoice", "status": "open"})  # no id: never listed
    invoices.append({**sf.invoice(iid="in_x"), "amount_paid": None, "attempt_count": True})
    data = CustomerData(customer=sf.customer(), subscriptions=subs, invoices=invoices)
    built = build_context(data, query="cus_A", match=Match(method="customer_id", confidence="exact"),
                          now=datetime.fromtimestamp(sf.T0, UTC))
    assert facts_of_data(data) == facts_of(built)
    assert [s for s, _ in facts_of_data(data).statuses] == ["sub_C", "sub_A"]
