"""build_context on realistic Stripe-shaped data, slim projections, and the contract JSON."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billing.domain.builder import build_context, dashboard_url, other_customer
from billing.domain.models import BillingContext, Match
from billing.domain.snapshot import CustomerData
from tests.billing.domain.test_lifecycle import invoice
from tests.billing.domain.test_metrics_shapes import (
    AS_OF,
    DAY,
    NOW,
    charge,
    coupon,
    discount,
    item,
    price,
    subscription,
)

# shared/ lies beside the repository root (in CI too).
FIXTURES = Path(__file__).resolve().parents[4] / "shared" / "stripe" / "fixtures3.json"
MATCH = Match(method="email", confidence="exact")
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def customer(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "cus_jane",
        "object": "customer",
        "balance": 0,
        "created": 1735898400,  # 2025-01-03T10:00:00Z
        "currency": "usd",
        "default_source": None,
        "delinquent": True,
        "description": None,
        "discount": None,
        "email": "jane@acme.com",
        "invoice_prefix": "7FE1103",
        "livemode": False,
        "metadata": {"tier": "gold", "seats": "12"},
        "name": "Jane Doe",
        "phone": None,
        "preferred_locales": [],
        "tax_exempt": "none",
    }
    body.update(extra)
    return body


def past_due_customer() -> CustomerData:
    """Jane: a past-due Pro Monthly, an older canceled Starter, a trial of an add-on."""
    pro_price = price(2900, price_id="price_pro", product="prod_pro", nickname="Pro Monthly")
    pro = subscription(item(pro_price, period_end=NOW + 9 * DAY), status="past_due", sub_id="sub_pro",
                       created=NOW - 60 * DAY)
    starter = subscription(item(price(900, price_id="price_starter", product="prod_starter")),
                           status="canceled", sub_id="sub_starter", created=NOW - 400 * DAY)
    addon = subscription(item(price(1500, price_id="price_addon", product="prod_addon")),
                         status="trialing", sub_id="sub_addon", created=NOW - 5 * DAY,
                         trial_end=NOW + 2 * DAY)
    invoices = [
        invoice("sub_pro", status="open", attempt_count=2, created=NOW - 10 * DAY - i,
                next_payment_attempt=NOW + DAY) if i == 0
        else invoice("sub_pro", created=NOW - (10 + 30 * i) * DAY)
        for i in range(7)
    ]
    for n, inv in enumerate(invoices):
        inv["id"] = f"in_{n}"
    return CustomerData(
        customer=customer(),
        subscriptions=[starter, pro, addon],  # deliberately not newest first
        invoices=invoices,
        charges=[charge(2900), charge(2900), charge(900, refunded=900)],
        products={"prod_starter": {"id": "prod_starter", "name": "Starter"}},
    )


def build(data: CustomerData, **kw: Any) -> BillingContext:
    return build_context(data, query="jane@acme.com", match=MATCH, now=AS_OF, **kw)


def test_past_due_customer_context() -> None:
    ctx = build(past_due_customer())
    assert ctx.found and ctx.customer is not None
    assert ctx.customer.created == datetime(2025, 1, 3, 10, tzinfo=UTC)
    assert ctx.customer.delinquent is True
    assert ctx.customer.metadata == {"tier": "gold", "seats": "12"}
    assert ctx.status == "past_due"
    assert ctx.plan == "Pro Monthly"
    assert [s.id for s in ctx.subscriptions] == ["sub_addon", "sub_pro", "sub_starter"]
    assert [s.plan for s in ctx.subscriptions] == ["price_addon", "Pro Monthly", "Starter"]
    pro = ctx.subscriptions[1]
    assert (pro.interval, pro.interval_count, pro.quantity, pro.mrr) == ("month", 1, 1, {"usd": 2900})
    assert pro.current_period_end == datetime.fromtimestamp(NOW + 9 * DAY, UTC)
    assert ctx.mrr == {"usd": 2900}
    assert ctx.mrr_detail.excluded_trialing == {"usd": 1500}
    assert ctx.ltv == {"usd": 5800}
    assert ctx.renewal_date == datetime.fromtimestamp(NOW + 9 * DAY, UTC)
    assert ctx.trial_end == datetime.fromtimestamp(NOW + 2 * DAY, UTC)
    assert ctx.payment_status == "failed"
    assert [i.id for i in ctx.recent_invoices] == ["in_0", "in_1", "in_2", "in_3", "in_4"]
    assert ctx.recent_invoices[0].subscription_id == "sub_pro"
    assert ctx.lifecycle_stage == "customer"
    assert ctx.past_due_since == datetime.fromtimestamp(NOW - 10 * DAY, UTC)
    assert ctx.segments == ["current_trial", "expiring_trial", "past_due", "paying", "at_risk"]
    assert ctx.as_of == AS_OF and ctx.source == "stripe"


def test_contract_json_shape() -> None:
    other = other_customer(customer(id="cus_other", livemode=True), "active")
    ctx = build(past_due_customer(), source="cache", other_customers=[other])
    doc = json.loads(json.dumps(ctx.to_json_dict()))
    contract_keys = {
        "found", "query", "match", "customer", "plan", "status", "subscriptions", "mrr", "mrr_detail", "ltv",
        "renewal_date", "trial_end", "payment_status", "recent_invoices", "lifecycle_stage", "segments",
        "other_customers", "as_of", "source",
    }
    assert contract_keys <= doc.keys()
    assert doc["match"] == {"method": "email", "confidence": "exact"}
    assert doc["customer"]["created"] == "2025-01-03T10:00:00Z"
    assert doc["customer"]["dashboard_url"] == "https://dashboard.stripe.com/test/customers/cus_jane"
    assert doc["as_of"] == "2026-11-22T10:00:00Z"
    assert doc["source"] == "cache"
    assert doc["mrr"] == {"usd": 2900} and doc["ltv"] == {"usd": 5800}
    assert set(doc["mrr_detail"]) >= {"with_temporary_discounts", "scheduled_cancel", "has_metered_items",
                                      "excluded_trialing", "excluded_paused"}
    sub_keys = {"id", "status", "plan", "product_id", "price_id", "interval", "interval_count", "quantity",
                "currency", "current_period_end", "trial_end", "cancel_at_period_end", "cancel_at",
                "dashboard_url"}
    for sub in doc["subscriptions"]:
        assert sub_keys <= sub.keys()
        assert sub["current_period_end"] is None or ISO.match(sub["current_period_end"])
    invoice_keys = {"id", "number", "status", "amount_due", "amount_paid", "currency", "created",
                    "attempt_count", "next_payment_attempt", "hosted_invoice_url"}
    for inv in doc["recent_invoices"]:
        assert invoice_keys <= inv.keys()
        assert ISO.match(inv["created"])
    assert ISO.match(doc["renewal_date"]) and ISO.match(doc["trial_end"])
    assert doc["other_customers"][0]["dashboard_url"] == "https://dashboard.stripe.com/customers/cus_other"
    assert BillingContext.from_json_dict(doc) == ctx


def test_slim_projection_gives_the_same_context() -> None:
    full = past_due_customer()
    slim_subs = []
    for sub in full.subscriptions:
        slim_items = [
            {"quantity": it["quantity"], "current_period_end": it["current_period_end"],
             "price": {k: it["price"][k] for k in ("id", "currency", "product", "nickname", "recurring",
                                                   "unit_amount_decimal")}}
            for it in sub["items"]["data"]
        ]
        timeline_keys = ("start_date", "trial_start", "canceled_at", "ended_at", "cancel_at",
                         "cancel_at_period_end", "cancellation_details", "discounts",
                         "default_payment_method")
        slim_subs.append({k: sub[k] for k in ("id", "status", "created", "currency", "trial_end")}
                         | {k: sub[k] for k in timeline_keys if k in sub}
                         | {"items": {"data": slim_items}})
    slim_invoices = [
        {k: inv[k] for k in ("id", "status", "amount_due", "amount_paid", "currency", "created",
                             "attempt_count", "next_payment_attempt", "hosted_invoice_url", "number",
                             "parent")}
        | {k: inv[k] for k in ("status_transitions", "billing_reason") if k in inv}
        for inv in full.invoices
    ]
    slim_charges = [{k: ch[k] for k in ("id", "status", "currency", "amount_captured", "amount_refunded")}
                    | {k: ch[k] for k in ("created", "amount", "failure_code", "failure_message", "outcome")
                       if k in ch}
                    for ch in full.charges]
    slim_customer = {k: full.customer[k] for k in ("id", "email", "name", "livemode", "created",
                                                   "delinquent", "metadata")}
    slim_customer |= {k: full.customer[k] for k in ("invoice_settings",) if k in full.customer}
    slim = CustomerData(customer=slim_customer, subscriptions=slim_subs, invoices=slim_invoices,
                        charges=slim_charges, products=full.products)
    a, b = build(full).to_json_dict(), build(slim).to_json_dict()
    a["customer"].pop("currency")
    b["customer"].pop("currency")
    assert a == b


def test_customer_without_subscriptions_or_invoices() -> None:
    ctx = build(CustomerData(customer=customer(delinquent=False)))
    assert (ctx.status, ctx.plan, ctx.lifecycle_stage, ctx.payment_status) == (None, None, "none", "none")
    assert ctx.mrr == {} and ctx.ltv == {} and ctx.segments == [] and ctx.subscriptions == []
    assert ctx.renewal_date is None and ctx.trial_end is None


def test_discounts_and_tiers_come_from_the_mappings() -> None:
    tiers = [{"up_to": 5, "unit_amount": 700, "unit_amount_decimal": "700", "flat_amount": None,
              "flat_amount_decimal": None},
             {"up_to": None, "unit_amount": 600, "unit_amount_decimal": "600", "flat_amount": None,
              "flat_amount_decimal": None}]
    tiered = price(None, price_id="price_t", product="prod_team", billing_scheme="tiered",
                   tiers_mode="graduated")
    sub = subscription(item(tiered, 10), sub_id="sub_t", discounts=[discount("half_forever")])
    data = CustomerData(
        customer=customer(),
        subscriptions=[sub],
        coupons={"half_forever": coupon("half_forever", percent_off=50)},
        prices={"price_t": {**tiered, "tiers": tiers}},
        products={"prod_team": {"id": "prod_team", "name": "Team"}},
    )
    ctx = build(data)
    assert ctx.mrr == {"usd": 3250}  # (5 × 700 + 5 × 600) × 0.5
    assert ctx.plan == "Team" and ctx.status == "active"
    assert ctx.subscriptions[0].mrr == {"usd": 3250}
    assert ctx.payment_status == "none" and ctx.segments == ["paying"]


def test_trial_customer() -> None:
    trial = subscription(item(price(4900, nickname="Scale")), status="trialing", sub_id="sub_tr",
                         trial_end=NOW + 10 * DAY)
    first_invoice = invoice("sub_tr", status="paid", attempt_count=0, amount_due=0, amount_paid=0)
    ctx = build(CustomerData(customer=customer(), subscriptions=[trial], invoices=[first_invoice]))
    assert (ctx.status, ctx.plan, ctx.lifecycle_stage) == ("trialing", "Scale", "trial")
    assert ctx.trial_end == datetime.fromtimestamp(NOW + 10 * DAY, UTC)
    assert ctx.mrr == {} and ctx.mrr_detail.excluded_trialing == {"usd": 4900}
    assert ctx.renewal_date is None
    assert ctx.payment_status == "ok"
    assert ctx.segments == ["current_trial"]


def test_live_customer_urls_and_naive_now() -> None:
    sub = subscription(item(price(1000)), sub_id="sub_live")
    data = CustomerData(customer=customer(livemode=True), subscriptions=[sub])
    ctx = build_context(data, query="q", match=MATCH, now=AS_OF.replace(tzinfo=None) + timedelta(0))
    assert ctx.subscriptions[0].dashboard_url == "https://dashboard.stripe.com/subscriptions/sub_live"
    assert ctx.as_of == AS_OF


@pytest.mark.parametrize(
    ("kind", "livemode", "url"),
    [
        ("customers", False, "https://dashboard.stripe.com/test/customers/cus_1"),
        ("invoices", True, "https://dashboard.stripe.com/invoices/cus_1"),
    ],
)
def test_dashboard_url(kind: Any, livemode: bool, url: str) -> None:
    assert dashboard_url(kind, "cus_1", livemode) == url


@pytest.mark.skipif(not FIXTURES.exists(), reason="Stripe fixtures are beside the shared docs")
def test_stripe_sample_objects_build() -> None:
    resources = json.loads(FIXTURES.read_text())["resources"]
    sub = copy.deepcopy(resources["subscription"])
    # Stripe's sample carries a placeholder transform (divide_by 1592560163): use a real one.
    sub["items"]["data"][0]["price"]["transform_quantity"] = None
    sub["cancel_at"] = None
    sub["pause_collection"] = None
    sub["items"]["data"][0]["current_period_end"] = NOW + 5 * DAY
    charge_obj = {**resources["charge"], "amount_captured": 100, "captured": True}
    data = CustomerData(customer=resources["customer"], subscriptions=[sub], invoices=[resources["invoice"]],
                        charges=[charge_obj], disputes=[resources["dispute"]],
                        credit_notes=[resources["credit_note"]])
    ctx = build(data)
    assert ctx.mrr == {"usd": 2000}
    assert ctx.mrr_detail.scheduled_cancel is True  # the sample has cancel_at_period_end
    assert ctx.ltv == {"usd": 100}  # its dispute is not lost
    assert ctx.subscriptions[0].plan == "price_1PgafmB7WZ01zgkW6dKueIc5"
    assert ctx.renewal_date == datetime.fromtimestamp(NOW + 5 * DAY, UTC)
    assert ctx.recent_invoices[0].subscription_id == "subscription"


def test_customer_without_id_is_refused_with_one_sentence() -> None:
    with pytest.raises(ValueError, match="needs an 'id'"):
        build(CustomerData(customer={"email": "jane@acme.com"}))
