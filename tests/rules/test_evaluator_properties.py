"""Evaluation never raises for any valid context and any valid rules file, and always explains itself."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.domain.models import SEGMENTS, BillingContext, LifecycleStage, PaymentStatus, SubscriptionStatus
from rules import RulesFile, alerts_for, evaluate_rules
from rules.fields import FIELDS, OPERATORS, Kind
from rules.schema import TRANSITIONS
from tests.rules.factory import NOW, context, subscription

CURRENCIES = ["usd", "eur", "jpy", "kwd", "gbp"]
STATUSES = list(get_args(SubscriptionStatus))

moments = st.none() | st.integers(-400 * 24, 400 * 24).map(lambda h: NOW + timedelta(hours=h))
money = st.dictionaries(st.sampled_from(CURRENCIES), st.integers(0, 10**9), max_size=3)


@st.composite
def contexts(draw: st.DrawFn) -> BillingContext:
    status = draw(st.none() | st.sampled_from(STATUSES))
    subs = [
        subscription(s, cancel_at_period_end=draw(st.booleans()), sub_id=f"sub_{i}")
        for i, s in enumerate(draw(st.lists(st.sampled_from(STATUSES), max_size=3)))
    ]
    return context(
        status=status,
        currency=draw(st.none() | st.sampled_from(CURRENCIES)),
        delinquent=draw(st.booleans()),
        livemode=draw(st.booleans()),
        metadata=draw(st.dictionaries(st.sampled_from(["tier", "region"]), st.text(max_size=5), max_size=2)),
        subscriptions=subs,
        mrr=draw(money),
        ltv=draw(money),
        plan=draw(st.none() | st.text(max_size=10)),
        renewal_date=draw(moments),
        trial_end=draw(moments),
        past_due_since=draw(moments),
        payment_status=draw(st.sampled_from(get_args(PaymentStatus))),
        lifecycle_stage=draw(st.sampled_from(get_args(LifecycleStage))),
        segments=draw(st.lists(st.sampled_from(SEGMENTS), max_size=3, unique=True)),
    )


def _values(field: str, kind: Kind) -> st.SearchStrategy[Any]:
    if kind is Kind.BOOL:
        return st.booleans()
    if kind is Kind.DAYS:
        return st.integers(-500, 500)
    if kind is Kind.MONEY:
        return st.integers(0, 10**7) | st.decimals(0, 10**5, places=2).map(float)
    if kind is Kind.TEXT:
        return st.text(max_size=8)
    if field == "currency":
        return st.sampled_from(CURRENCIES)
    return st.sampled_from(FIELDS[field].choices)


@st.composite
def field_tests(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from([*FIELDS, "metadata.tier"]))
    kind = FIELDS[name].kind if name in FIELDS else Kind.TEXT
    values = _values(name, kind)
    op = draw(st.sampled_from(OPERATORS[kind]))
    if op == "exists":
        test: Any = {op: draw(st.booleans())}
    elif op in ("in", "not_in"):
        test = {op: draw(st.lists(values, min_size=1, max_size=3))}
    elif op == "contains" and kind is Kind.TEXT:
        test = {op: draw(st.text(min_size=1, max_size=4))}
    else:
        test = draw(st.sampled_from([{op: draw(values)}, draw(values)])) if op == "eq" else {op: draw(values)}
    if kind is Kind.MONEY and isinstance(test, dict):
        test["currency"] = draw(st.sampled_from(["usd", "eur", "gbp"]))  # all allow 2 decimals
    elif kind is Kind.MONEY:
        test = {"eq": test, "currency": "usd"}
    return {name: test}


conditions = st.recursive(
    field_tests(),
    lambda inner: st.one_of(
        st.builds(lambda items: {"any": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda items: {"all": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda item: {"not": item}, inner),
    ),
    max_leaves=6,
)


@st.composite
def rules_files(draw: st.DrawFn) -> RulesFile:
    rules = [
        {
            "name": f"r{i}",
            "when": draw(conditions),
            "then": draw(
                st.sampled_from(
                    [{"assign": f"team{i}"}, {"priority": "high", "tags": ["t", f"t{i}"]}, {"notify": "C1"}]
                )
            ),
        }
        for i in range(draw(st.integers(0, 4)))
    ]
    alerts = [
        {"on": draw(st.sampled_from(TRANSITIONS)), "channel": "C", "when": draw(conditions)}
        for _ in range(draw(st.integers(0, 2)))
    ]
    data: dict[str, Any] = {"version": 1, "rules": rules, "alerts": alerts}
    if draw(st.booleans()):
        data["exchange_rates"] = {"base": "usd", "rates": {"eur": 1.08, "gbp": 1.25, "jpy": 0.0067}}
    return RulesFile.model_validate(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rules_files(), ctx=contexts(), offset=st.integers(-(10**6), 10**6))
def test_evaluation_never_raises_and_explains_every_match(
    rules: RulesFile, ctx: BillingContext, offset: int
) -> None:
    now = datetime(2026, 11, 22, tzinfo=UTC) + timedelta(seconds=offset)
    result = evaluate_rules(ctx, rules, now)
    json.dumps(result.model_dump(mode="json"))
    assert all(match.reasons and all(match.reasons) for match in result.matched)
    by_name = {rule.name: rule for rule in rules.rules}
    assigns = [by_name[m.rule].then.assign for m in result.matched if by_name[m.rule].then.assign]
    assert result.actions.assign == (assigns[0] if assigns else None)
    for transition in TRANSITIONS:
        for alert in alerts_for(transition, ctx, rules, now):
            assert alert.on == transition and alert.reasons
