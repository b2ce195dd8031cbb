"""Every operator, combinator and field, merge semantics and reason texts (table-driven)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time

from billing.domain.models import BillingContext, InvoiceInfo
from rules import RuleEvaluation, RulesFile, alerts_for, evaluate_rules, load_rules_text
from tests.rules.factory import NOW, context, subscription


def rules_with(when: Any, *, top: str = "", then: str = "{assign: team}") -> RulesFile:
    return load_rules_text(
        f"version: 1\n{top}\nrules:\n  - name: r\n    when: {json.dumps(when)}\n    then: {then}\n"
    )


def run(when: Any, ctx: BillingContext, *, top: str = "") -> list[str] | None:
    """The reasons when the one rule matches, None when it does not."""
    result = evaluate_rules(ctx, rules_with(when, top=top), NOW)
    return result.matched[0].reasons if result.matched else None


PAST_DUE = context(status="past_due", mrr={"usd": 125000})
TRIAL = context(status="trialing", trial_end=NOW + timedelta(days=2, hours=5))

# (when, context, expected reasons or None for no match)
CASES: list[tuple[str, Any, BillingContext, list[str] | None]] = [
    # text / choice fields
    ("scalar eq", {"status": "past_due"}, PAST_DUE, ["status is past_due"]),
    ("scalar eq misses", {"status": "active"}, PAST_DUE, None),
    ("eq", {"status": {"eq": "past_due"}}, PAST_DUE, ["status is past_due"]),
    ("ne", {"status": {"ne": "canceled"}}, PAST_DUE, ["status is past_due, not canceled"]),
    ("ne misses", {"status": {"ne": "past_due"}}, PAST_DUE, None),
    (
        "list is in",
        {"status": ["past_due", "unpaid"]},
        PAST_DUE,
        ["status is past_due (one of past_due, unpaid)"],
    ),
    ("in", {"status": {"in": ["active"]}}, PAST_DUE, None),
    (
        "not_in",
        {"status": {"not_in": ["canceled", "unpaid"]}},
        PAST_DUE,
        ["status is past_due, not one of canceled, unpaid"],
    ),
    ("not_in misses", {"status": {"not_in": ["past_due"]}}, PAST_DUE, None),
    ("exists", {"plan": {"exists": True}}, PAST_DUE, ["plan is set (Pro Monthly)"]),
    ("exists false", {"plan": {"exists": False}}, context(status=None), ["plan is not set"]),
    ("exists false misses", {"plan": {"exists": False}}, PAST_DUE, None),
    ("contains text", {"plan": {"contains": "Pro"}}, PAST_DUE, ["plan 'Pro Monthly' contains 'Pro'"]),
    ("contains misses", {"plan": {"contains": "Team"}}, PAST_DUE, None),
    ("missing value fails", {"status": {"ne": "active"}}, context(status=None), None),
    (
        "payment_status",
        {"payment_status": "failed"},
        context(payment_status="failed"),
        ["payment_status is failed"],
    ),
    (
        "lifecycle_stage",
        {"lifecycle_stage": "trial"},
        context(lifecycle_stage="trial"),
        ["lifecycle_stage is trial"],
    ),
    ("metadata", {"metadata.tier": "gold"}, context(metadata={"tier": "gold"}), ["metadata.tier is gold"]),
    (
        "metadata number is text",
        {"metadata.seats": 3},
        context(metadata={"seats": "3"}),
        ["metadata.seats is 3"],
    ),
    ("metadata missing", {"metadata.tier": {"exists": False}}, context(), ["metadata.tier is not set"]),
    # booleans
    ("delinquent", {"delinquent": True}, context(delinquent=True), ["delinquent is true"]),
    ("delinquent false", {"delinquent": True}, context(), None),
    ("livemode ne", {"livemode": {"ne": True}}, context(), ["livemode is false, not true"]),
    (
        "cancel_at_period_end",
        {"cancel_at_period_end": True},
        context(
            subscriptions=[subscription(), subscription("active", cancel_at_period_end=True, sub_id="sub_2")]
        ),
        ["cancel_at_period_end is true"],
    ),
    (
        "cancel flag of a canceled sub does not count",
        {"cancel_at_period_end": True},
        context(subscriptions=[subscription("canceled", cancel_at_period_end=True)]),
        None,
    ),
    # words: segments and currency
    (
        "segments contains",
        {"segments": {"contains": "paying"}},
        context(segments=["past_due", "paying"]),
        ["segments contains paying"],
    ),
    ("segments scalar", {"segments": "at_risk"}, context(segments=["paying"]), None),
    (
        "segments ne",
        {"segments": {"ne": "churned"}},
        context(segments=["paying"]),
        ["segments (paying) does not contain churned"],
    ),
    (
        "segments in",
        {"segments": ["at_risk", "paying"]},
        context(segments=["paying"]),
        ["segments contains paying (one of at_risk, paying)"],
    ),
    (
        "segments not_in",
        {"segments": {"not_in": ["churned"]}},
        context(segments=[]),
        ["segments (none) contains none of churned"],
    ),
    ("segments exists", {"segments": {"exists": False}}, context(segments=[]), ["segments is empty"]),
    ("currency", {"currency": "USD"}, context(), ["currency is usd"]),
    ("currency ne", {"currency": {"ne": "usd"}}, context(currency="eur"), ["currency is eur, not usd"]),
    ("currency from mrr", {"currency": "eur"}, context(currency=None, mrr={"eur": 100}), ["currency is eur"]),
    # money
    ("mrr gt", {"mrr": {"gt": 1000, "currency": "usd"}}, PAST_DUE, ["mrr 1,250.00 USD > 1,000.00 USD"]),
    ("mrr gt misses", {"mrr": {"gt": 1250, "currency": "usd"}}, PAST_DUE, None),
    ("mrr gte", {"mrr": {"gte": 1250, "currency": "usd"}}, PAST_DUE, ["mrr 1,250.00 USD >= 1,250.00 USD"]),
    ("mrr lt", {"mrr": {"lt": 1250.01, "currency": "usd"}}, PAST_DUE, ["mrr 1,250.00 USD < 1,250.01 USD"]),
    ("mrr lte", {"mrr": {"lte": 1250, "currency": "usd"}}, PAST_DUE, ["mrr 1,250.00 USD <= 1,250.00 USD"]),
    ("mrr eq", {"mrr": {"eq": 1250, "currency": "usd"}}, PAST_DUE, ["mrr 1,250.00 USD = 1,250.00 USD"]),
    ("mrr ne", {"mrr": {"ne": 0, "currency": "usd"}}, PAST_DUE, ["mrr 1,250.00 USD != 0.00 USD"]),
    (
        "mrr range",
        {"mrr": {"gt": 1000, "lt": 2000, "currency": "usd"}},
        PAST_DUE,
        ["mrr 1,250.00 USD > 1,000.00 USD", "mrr 1,250.00 USD < 2,000.00 USD"],
    ),
    ("no mrr is zero", {"mrr": {"lt": 1, "currency": "usd"}}, context(), ["mrr 0.00 USD < 1.00 USD"]),
    (
        "jpy has no minor digits",
        {"mrr": {"gte": 3000, "currency": "jpy"}},
        context(currency="jpy", mrr={"jpy": 3000}),
        ["mrr 3,000 JPY >= 3,000 JPY"],
    ),
    (
        "other currency never matches",
        {"mrr": {"gt": 0, "currency": "usd"}},
        context(currency="eur", mrr={"eur": 90000}),
        None,
    ),
    (
        "other currency: not even lt",
        {"mrr": {"lt": 1000000, "currency": "usd"}},
        context(currency="eur", mrr={"eur": 90000}),
        None,
    ),
    (
        "ltv",
        {"ltv": {"gte": 58, "currency": "usd"}},
        context(ltv={"usd": 5800}),
        ["ltv 58.00 USD >= 58.00 USD"],
    ),
    ("mrr exists", {"mrr": {"exists": True}}, PAST_DUE, ["mrr is set (1,250.00 USD)"]),
    # combinators
    (
        "all of tests",
        {"status": "past_due", "mrr": {"gt": 1000, "currency": "usd"}},
        PAST_DUE,
        ["status is past_due", "mrr 1,250.00 USD > 1,000.00 USD"],
    ),
    ("all fails if one fails", {"status": "past_due", "delinquent": True}, PAST_DUE, None),
    (
        "all: list",
        {"all": [{"status": "past_due"}, {"plan": "Pro Monthly"}]},
        PAST_DUE,
        ["status is past_due", "plan is Pro Monthly"],
    ),
    (
        "any: list explains the branches that held",
        {"any": [{"status": "trialing"}, {"status": "past_due"}]},
        PAST_DUE,
        ["status is past_due"],
    ),
    ("any: mapping", {"any": {"delinquent": True, "plan": "Pro Monthly"}}, PAST_DUE, ["plan is Pro Monthly"]),
    (
        "any: mapping keeps a field's operators together",
        {"any": {"mrr": {"gte": 100, "lte": 200, "currency": "usd"}, "delinquent": True}},
        PAST_DUE,
        None,
    ),
    (
        "any: mapping range holds",
        {"any": {"mrr": {"gte": 1000, "lte": 2000, "currency": "usd"}, "delinquent": True}},
        PAST_DUE,
        ["mrr 1,250.00 USD >= 1,000.00 USD", "mrr 1,250.00 USD <= 2,000.00 USD"],
    ),
    ("any misses", {"any": [{"status": "trialing"}, {"delinquent": True}]}, PAST_DUE, None),
    (
        "not explains with the failed test",
        {"not": {"status": "canceled"}},
        PAST_DUE,
        ["status is past_due, not canceled"],
    ),
    ("not misses", {"not": {"status": "past_due"}}, PAST_DUE, None),
    (
        "not of all",
        {"not": [{"status": "past_due"}, {"delinquent": True}]},
        PAST_DUE,
        ["delinquent is false, not true"],
    ),
    (
        "not of a money test",
        {"not": {"mrr": {"gt": 5000, "currency": "usd"}}},
        PAST_DUE,
        ["mrr 1,250.00 USD <= 5,000.00 USD"],
    ),
    (
        "nested",
        {"any": [{"all": [{"status": "past_due"}, {"not": {"livemode": True}}]}, {"delinquent": True}]},
        PAST_DUE,
        ["status is past_due", "livemode is false, not true"],
    ),
    ("empty when always holds", {}, PAST_DUE, ["always (no conditions)"]),
]


@pytest.mark.parametrize(("when", "ctx", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_condition(when: Any, ctx: BillingContext, expected: list[str] | None) -> None:
    assert run(when, ctx) == expected


DAY_CASES: list[tuple[str, Any, dict[str, Any], list[str] | None]] = [
    (
        "trial_days_left lte",
        {"trial_days_left": {"lte": 3}},
        {"status": "trialing", "trial_end": NOW + timedelta(days=2, hours=5)},
        ["trial_days_left 2 <= 3"],
    ),
    (
        "trial_days_left gt",
        {"trial_days_left": {"gt": 3}},
        {"status": "trialing", "trial_end": NOW + timedelta(days=2, hours=5)},
        None,
    ),
    (
        "trial ended minutes ago is 0",
        {"trial_days_left": 0},
        {"status": "trialing", "trial_end": NOW - timedelta(minutes=5)},
        ["trial_days_left 0 = 0"],
    ),
    ("no trial", {"trial_days_left": {"exists": False}}, {}, ["trial_days_left is not set"]),
    ("no trial fails comparisons", {"trial_days_left": {"lt": 100}}, {}, None),
    (
        "renewal in 36 hours is 1 day",
        {"days_until_renewal": {"eq": 1}},
        {"renewal_date": NOW + timedelta(hours=36)},
        ["days_until_renewal 1 = 1"],
    ),
    (
        "renewal in",
        {"days_until_renewal": [1, 7]},
        {"renewal_date": NOW + timedelta(days=7)},
        ["days_until_renewal is 7 (one of 1, 7)"],
    ),
    (
        "renewal not_in",
        {"days_until_renewal": {"not_in": [1, 7]}},
        {"renewal_date": NOW + timedelta(days=3)},
        ["days_until_renewal is 3, not one of 1, 7"],
    ),
    ("renewal ne", {"days_until_renewal": {"ne": 3}}, {"renewal_date": NOW + timedelta(days=3)}, None),
    (
        "days_past_due gte",
        {"days_past_due": {"gte": 5}},
        {"status": "past_due", "past_due_since": NOW - timedelta(days=6, hours=1)},
        ["days_past_due 6 >= 5"],
    ),
    (
        "days_past_due lt",
        {"days_past_due": {"lt": 5}},
        {"status": "past_due", "past_due_since": NOW - timedelta(days=6)},
        None,
    ),
    (
        "days_past_due from the oldest failed invoice",
        {"days_past_due": {"gte": 10}},
        {
            "status": "past_due",
            "recent_invoices": [
                InvoiceInfo(
                    id="in_2",
                    number=None,
                    status="open",
                    amount_due=100,
                    amount_paid=0,
                    currency="usd",
                    created=NOW - timedelta(days=3),
                    attempt_count=1,
                    next_payment_attempt=None,
                    hosted_invoice_url=None,
                ),
                InvoiceInfo(
                    id="in_1",
                    number=None,
                    status="open",
                    amount_due=100,
                    amount_paid=0,
                    currency="usd",
                    created=NOW - timedelta(days=12),
                    attempt_count=2,
                    next_payment_attempt=None,
                    hosted_invoice_url=None,
                ),
            ],
        },
        ["days_past_due 12 >= 10"],
    ),
]


@pytest.mark.parametrize(
    ("when", "fields", "expected"), [c[1:] for c in DAY_CASES], ids=[c[0] for c in DAY_CASES]
)
def test_day_fields_at_now(when: Any, fields: dict[str, Any], expected: list[str] | None) -> None:
    status = fields.pop("status", "active")
    assert run(when, context(status=status, **fields)) == expected


def test_day_fields_move_with_the_clock() -> None:
    rules = rules_with({"trial_days_left": {"lte": 3}})
    trial = context(status="trialing", trial_end=datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    with freeze_time("2026-11-25 12:00:00"):
        assert not evaluate_rules(trial, rules, datetime.now(UTC)).matched  # 6 days left
    with freeze_time("2026-11-28 13:00:00"):
        result = evaluate_rules(trial, rules, datetime.now(UTC))
        assert result.matched[0].reasons == ["trial_days_left 2 <= 3"]


def test_naive_now_is_taken_as_utc() -> None:
    rules = rules_with({"days_until_renewal": 2})
    ctx = context(renewal_date=NOW + timedelta(days=2))
    assert evaluate_rules(ctx, rules, NOW.replace(tzinfo=None)).matched


RATES = "exchange_rates: {base: usd, rates: {eur: 1.08, gbp: 1.25}}"


@pytest.mark.parametrize(
    ("when", "ctx", "expected"),
    [
        (
            {"mrr": {"gt": 900, "currency": "usd"}},
            context(currency="eur", mrr={"eur": 90000}),
            ["mrr 972.00 USD (converted from 900.00 EUR at 1.08) > 900.00 USD"],
        ),
        ({"mrr": {"gt": 1000, "currency": "usd"}}, context(currency="eur", mrr={"eur": 90000}), None),
        (
            {"mrr": {"gte": 100, "currency": "eur"}},
            context(currency="usd", mrr={"usd": 10800}),
            ["mrr 100.00 EUR (converted from 108.00 USD at 0.925926) >= 100.00 EUR"],
        ),
        (
            {"mrr": {"gte": 1080, "currency": "gbp"}},
            context(currency="eur", mrr={"eur": 125000}),
            ["mrr 1,080.00 GBP (converted from 1,250.00 EUR at 0.864) >= 1,080.00 GBP"],
        ),
        (
            {"mrr": {"gt": 100, "currency": "usd"}},
            context(currency=None, mrr={"usd": 5000, "eur": 5000}),
            ["mrr 104.00 USD (includes 50.00 EUR at 1.08 converted) > 100.00 USD"],
        ),
        (
            {"mrr": {"gt": 40, "currency": "usd"}},
            context(currency=None, mrr={"usd": 5000, "chf": 5000}),
            ["mrr 50.00 USD (not counted, no exchange rate: 50.00 CHF) > 40.00 USD"],
        ),
        ({"mrr": {"gt": 1, "currency": "usd"}}, context(currency="chf", mrr={"chf": 5000}), None),
    ],
    ids=[
        "eur customer, usd rule",
        "converted but below",
        "usd customer, eur rule",
        "cross rate via base",
        "mixed currencies summed",
        "currency without a rate is left out",
        "no rate: no match",
    ],
)
def test_exchange_rates(when: Any, ctx: BillingContext, expected: list[str] | None) -> None:
    assert run(when, ctx, top=RATES) == expected


def test_default_currency_applies_to_money_tests_without_one() -> None:
    assert run({"mrr": {"gt": 1000}}, PAST_DUE, top="default_currency: usd") == [
        "mrr 1,250.00 USD > 1,000.00 USD"
    ]


def test_not_found_context_matches_nothing() -> None:
    rules = rules_with({})
    assert evaluate_rules(BillingContext.not_found("x@y.z"), rules, NOW) == RuleEvaluation()
    alert_rules = load_rules_text("version: 1\nalerts: [{on: subscription.past_due, channel: C1}]")
    assert alerts_for("subscription.past_due", BillingContext.not_found("x"), alert_rules, NOW) == []


MERGE_FILE = """
version: 1
rules:
  - {name: a, when: {status: past_due}, then: {priority: high, tags: [billing, vip], notify: C1}}
  - {name: b, when: {status: past_due}, then: {assign: first, priority: urgent, tags: [billing]}}
  - {name: c, when: {status: active}, then: {assign: never}}
  - name: d
    when: {status: past_due}
    then: {assign: second, priority: low, tags: [late, vip], notify: [C2, C1]}
"""


def test_merge_semantics() -> None:
    result = evaluate_rules(PAST_DUE, load_rules_text(MERGE_FILE), NOW)
    assert [m.rule for m in result.matched] == ["a", "b", "d"]
    assert result.actions.assign == "first"  # first matching rule in file order
    assert result.actions.priority == "urgent"  # highest wins, wherever it comes
    assert result.actions.tags == ["billing", "vip", "late"]  # union, first-seen order
    assert result.actions.notify == ["C1", "C2"]
    assert result.model_dump(mode="json")["matched"][0] == {"rule": "a", "reasons": ["status is past_due"]}


def test_no_match_has_empty_actions() -> None:
    result = evaluate_rules(context(status="canceled"), load_rules_text(MERGE_FILE), NOW)
    assert result.matched == []
    assert result.actions.model_dump() == {"assign": None, "priority": None, "tags": [], "notify": []}


ALERTS = """
version: 1
alerts:
  - on: subscription.past_due
    channel: C-all
  - name: big-past-due
    on: subscription.past_due
    when: {mrr: {gte: 1000, currency: usd}}
    channel: C-big
  - on: subscription.canceled
    channel: C-churn
"""


def test_alerts_for_a_transition() -> None:
    rules = load_rules_text(ALERTS)
    fired = alerts_for("subscription.past_due", PAST_DUE, rules, NOW)
    assert [(a.alert, a.channel) for a in fired] == [
        ("subscription.past_due", "C-all"),
        ("big-past-due", "C-big"),
    ]
    assert fired[1].reasons == ["transition subscription.past_due", "mrr 1,250.00 USD >= 1,000.00 USD"]
    small = context(status="past_due", mrr={"usd": 2900})
    assert [a.channel for a in alerts_for("subscription.past_due", small, rules, NOW)] == ["C-all"]
    assert [a.channel for a in alerts_for("subscription.canceled", small, rules, NOW)] == ["C-churn"]
    assert alerts_for("invoice.payment_failed", small, rules, NOW) == []
