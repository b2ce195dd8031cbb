"""Lifecycle stage, segments, urgency, past-due start and payment status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing.domain.lifecycle import (
    invoice_subscription_id,
    lifecycle_stage,
    most_urgent_status,
    past_due_since,
    payment_status,
    segments,
)
from tests.billing.domain.test_metrics_shapes import AS_OF, DAY, NOW, item, price, subscription


def sub(status: str, **extra: Any) -> dict[str, Any]:
    return subscription(item(price(2900)), status=status, **extra)


def invoice(
    sub_id: str | None,
    *,
    status: str = "paid",
    attempt_count: int = 1,
    created: int = NOW - DAY,
    due_date: int | None = None,
    finalized_at: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"in_{created}_{status}",
        "object": "invoice",
        "amount_due": 2900,
        "amount_paid": 2900 if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else 2900,
        "attempt_count": attempt_count,
        "attempted": attempt_count > 0,
        "created": created,
        "currency": "usd",
        "customer": "cus_jane",
        "due_date": due_date,
        "hosted_invoice_url": "https://invoice.stripe.com/i/x",
        "next_payment_attempt": None,
        "number": "ABC-0001",
        "parent": None if sub_id is None else {
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": sub_id},
            "type": "subscription_details",
        },
        "status": status,
        "status_transitions": {"finalized_at": finalized_at, "marked_uncollectible_at": None,
                               "paid_at": None, "voided_at": None},
    }
    body.update(extra)
    return body


# ---------------------------------------------------------------- stage


@pytest.mark.parametrize(
    ("statuses", "stage"),
    [
        ([], "none"),
        (["trialing"], "trial"),
        (["trialing", "canceled"], "trial"),
        (["trialing", "active"], "customer"),
        (["past_due"], "customer"),
        (["unpaid"], "customer"),
        (["incomplete"], "customer"),
        (["paused"], "customer"),
        (["canceled", "incomplete_expired"], "churned"),
        (["canceled", "active"], "customer"),
    ],
)
def test_lifecycle_stage(statuses: list[str], stage: str) -> None:
    assert lifecycle_stage([sub(s) for s in statuses]) == stage


def test_pause_collection_is_still_a_customer() -> None:
    paused = sub("active", pause_collection={"behavior": "void", "resumes_at": None})
    assert lifecycle_stage([paused]) == "customer"


# ---------------------------------------------------------------- segments


def test_segments_trial_expiring_within_three_days() -> None:
    soon = sub("trialing", trial_end=NOW + 2 * DAY)
    later = sub("trialing", trial_end=NOW + 10 * DAY)
    assert segments([soon], now=AS_OF, past_due_since=None) == ["current_trial", "expiring_trial"]
    assert segments([later], now=AS_OF, past_due_since=None) == ["current_trial"]


def test_segments_past_due_and_paying_in_contract_order() -> None:
    assert segments([sub("past_due")], now=AS_OF, past_due_since=AS_OF - timedelta(days=2)) == [
        "past_due", "paying",
    ]


def test_segments_long_past_due_is_at_risk() -> None:
    since = AS_OF - timedelta(days=8)
    assert segments([sub("past_due")], now=AS_OF, past_due_since=since) == ["past_due", "paying", "at_risk"]


def test_segments_scheduled_cancel_is_at_risk() -> None:
    assert segments([sub("active", cancel_at_period_end=True)], now=AS_OF, past_due_since=None) == [
        "paying", "at_risk",
    ]
    assert segments([sub("trialing", cancel_at=NOW + 5 * DAY)], now=AS_OF, past_due_since=None) == [
        "current_trial", "at_risk",
    ]


def test_segments_churned_and_ended_cancellation_not_at_risk() -> None:
    ended = sub("canceled", cancel_at=NOW - DAY)
    assert segments([ended], now=AS_OF, past_due_since=None) == ["churned"]


def test_segments_paying_needs_mrr_above_zero() -> None:
    free = subscription(item(price(0)))
    assert segments([free], now=AS_OF, past_due_since=None) == []
    paying = sub("active")
    by_sub = {paying["id"]: {"usd": 0}}  # e.g. a 100 % forever discount worked out by the caller
    assert segments([paying], now=AS_OF, past_due_since=None, mrr_by_subscription=by_sub) == []


# ---------------------------------------------------------------- urgency


def test_most_urgent_status_order_and_newest_tie() -> None:
    assert most_urgent_status([]) is None
    old_active = sub("active", created=NOW - 100 * DAY)
    new_active = sub("active", created=NOW - 10 * DAY)
    trial = sub("trialing")
    assert most_urgent_status([old_active, trial, new_active]) == ("active", new_active)
    overdue = sub("past_due")
    assert most_urgent_status([trial, sub("unpaid"), overdue, sub("canceled")]) == ("past_due", overdue)
    assert most_urgent_status([sub("canceled"), sub("incomplete_expired")])[0] == "incomplete_expired"  # type: ignore[index]


# ---------------------------------------------------------------- past_due_since


def test_past_due_since_prefers_due_date_then_finalized_then_created() -> None:
    failing = sub("past_due")
    oldest = invoice(failing["id"], status="open", created=NOW - 9 * DAY, finalized_at=NOW - 8 * DAY)
    newer = invoice(failing["id"], status="open", created=NOW - 2 * DAY, due_date=NOW - DAY)
    paid = invoice(failing["id"], created=NOW - 30 * DAY)
    assert past_due_since([failing], [newer, oldest, paid]) == datetime.fromtimestamp(NOW - 8 * DAY, UTC)
    with_due = invoice(failing["id"], status="open", created=NOW - 9 * DAY, due_date=NOW - 5 * DAY)
    assert past_due_since([failing], [with_due]) == datetime.fromtimestamp(NOW - 5 * DAY, UTC)
    bare = invoice(failing["id"], status="open", created=NOW - 4 * DAY)
    assert past_due_since([failing], [bare]) == datetime.fromtimestamp(NOW - 4 * DAY, UTC)


def test_past_due_since_ignores_other_subscriptions_and_unattempted_invoices() -> None:
    active, failing = sub("active"), sub("unpaid")
    other = invoice(active["id"], status="open", created=NOW - 9 * DAY)
    unattempted = invoice(failing["id"], status="open", attempt_count=0, created=NOW - 8 * DAY)
    assert past_due_since([active, failing], [other, unattempted]) is None


# ---------------------------------------------------------------- payment status


def test_payment_status_none_without_invoices() -> None:
    assert payment_status([sub("active")], []) == "none"


def test_payment_status_failed_from_subscription_or_invoice() -> None:
    assert payment_status([sub("past_due")], []) == "failed"
    active = sub("active")
    assert payment_status([active], [invoice(active["id"], status="open", attempt_count=2)]) == "failed"


def test_payment_status_action_required_for_incomplete_subscription() -> None:
    first = sub("incomplete")
    open_invoice = invoice(first["id"], status="open", attempt_count=1)
    first["latest_invoice"] = open_invoice["id"]
    assert payment_status([first], [open_invoice]) == "action_required"


def test_payment_status_action_required_from_flagged_invoice() -> None:
    active = sub("active")
    flagged = invoice(active["id"], status="open", attempt_count=0, requires_action=True)
    assert payment_status([active], [flagged]) == "action_required"
    # invoice.payment_action_required follows a payment attempt: the flagged invoice has been attempted
    attempted = invoice(active["id"], status="open", attempt_count=1, requires_action=True)
    assert payment_status([active], [attempted]) == "action_required"
    one_off = invoice(None, status="open", attempt_count=1, requires_action=True)
    assert payment_status([], [one_off]) == "action_required"


def test_payment_status_ok_when_latest_paid_or_nothing_owed() -> None:
    active = sub("active")
    assert payment_status([active], [invoice(active["id"])]) == "ok"
    upcoming = invoice(active["id"], status="open", attempt_count=0)
    assert payment_status([active], [upcoming, invoice(active["id"], created=NOW - 40 * DAY)]) == "ok"


def test_payment_status_uncollectible_latest_is_failed() -> None:
    active = sub("active")
    assert payment_status([active], [invoice(active["id"], status="uncollectible")]) == "failed"


def test_invoice_subscription_id_reads_parent() -> None:
    assert invoice_subscription_id(invoice("sub_1")) == "sub_1"
    assert invoice_subscription_id(invoice(None)) is None
    assert invoice_subscription_id({"subscription": "sub_legacy"}) == "sub_legacy"
