"""Evaluate rules against a BillingContext: pure, data in and data out, and always explained.

Every field test yields a true sentence about the customer whether it held or not
(``status is active, not past_due``), so ``not:`` can explain itself with its inner test's sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel, ConfigDict, Field

from billing.domain.models import BillingContext, Money
from billing.domain.money import exponent, format_money, to_minor
from billing.domain.reminders import stand_in
from rules.conditions import AllOf, AnyOf, Condition, FieldTest, Not, Scalar
from rules.fields import FieldValue, Kind, customer_currencies, field_spec, focus
from rules.schema import PRIORITIES, Alert, ExchangeRates, Priority, RulesFile


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class RuleActions(_Out):
    """The merged actions: first ``assign`` in file order, highest ``priority``, union of ``tags``
    (first-seen order), every ``notify`` channel."""

    assign: str | None = None
    priority: Priority | None = None
    tags: list[str] = Field(default_factory=list)
    notify: list[str] = Field(default_factory=list)


class MatchedRule(_Out):
    rule: str
    reasons: list[str]


class RuleEvaluation(_Out):
    actions: RuleActions = Field(default_factory=RuleActions)
    matched: list[MatchedRule] = Field(default_factory=list)


class AlertMatch(_Out):
    alert: str
    on: str
    channel: str
    reasons: list[str]


@dataclass(frozen=True)
class _Outcome:
    held: bool
    reasons: tuple[str, ...]


_SYMBOL = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_NEGATED = {"eq": "ne", "ne": "eq", "gt": "lte", "gte": "lt", "lt": "gte", "lte": "gt"}


def _compare(op: str, left: Decimal | int, right: Decimal | int) -> bool:
    return {
        "eq": left == right, "ne": left != right, "gt": left > right,
        "gte": left >= right, "lt": left < right, "lte": left <= right,
    }[op]


def _show(value: Scalar | FieldValue | tuple[Scalar, ...]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(_show(v) for v in value) if value else "none"
    return str(value)


def _show_list(values: tuple[Scalar, ...]) -> str:
    return ", ".join(_show(v) for v in values)


def _rate_text(rate: Decimal) -> str:
    return format(rate.quantize(Decimal("0.000001")).normalize(), "f")


@dataclass(frozen=True)
class _Amount:
    minor: int | None  # None: no amount in the target currency can be stated
    note: str  # how it was obtained (conversions) or why it is missing


def _amount_in(money: Money, fallback_currencies: list[str], target: str,
               rates: ExchangeRates | None) -> _Amount:
    """The customer's amount in ``target`` minor units, converting only with the file's table."""
    amounts = {code.lower(): value for code, value in money.items()}
    if not amounts:
        # No money at all is zero in the customer's own currency (or in any, when unknown).
        amounts = {fallback_currencies[0] if fallback_currencies else target: 0}
    total = Decimal(0)
    converted: list[str] = []
    missing: list[str] = []
    for code, minor in sorted(amounts.items()):
        if code == target:
            total += minor
            continue
        rate = rates.rate(code, target) if rates is not None else None
        if rate is None:
            missing.append(format_money(minor, code))
            continue
        total += to_minor(Decimal(minor).scaleb(-exponent(code)) * rate, target)
        converted.append(f"{format_money(minor, code)} at {_rate_text(rate)}")
    if not converted and target not in amounts:
        why = "the file has no exchange rate for it" if rates else "the file has no exchange_rates"
        return _Amount(None, f"has no {target.upper()} amount: billed in {', '.join(missing)}; {why}")
    notes = []
    if converted and target in amounts:
        notes.append(f"includes {' + '.join(converted)} converted")
    elif converted:
        notes.append(f"converted from {' + '.join(converted)}")
    if missing:
        notes.append(f"not counted, no exchange rate: {', '.join(missing)}")
    minor = int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return _Amount(minor, f" ({'; '.join(notes)})" if notes else "")


def _money_outcome(test: FieldTest, value: FieldValue, ctx: BillingContext, rules: RulesFile) -> _Outcome:
    assert isinstance(value, dict)
    if test.op == "exists":
        shown = ", ".join(format_money(v, c) for c, v in sorted(value.items())) or "none"
        held = bool(value) == test.value
        text = f"{test.field} is set ({shown})" if value else f"{test.field} is not set"
        return _Outcome(held, (text,))
    currency = rules.money_currency(test)
    amount = _amount_in(value, customer_currencies(ctx), currency, rules.exchange_rates)
    if amount.minor is None:
        return _Outcome(False, (f"{test.field} {amount.note}",))
    assert isinstance(test.value, Decimal)
    threshold = to_minor(test.value, currency)
    held = _compare(test.op, amount.minor, threshold)
    symbol = _SYMBOL[test.op if held else _NEGATED[test.op]]
    text = (f"{test.field} {format_money(amount.minor, currency)}{amount.note} {symbol} "
            f"{format_money(int(threshold), currency)}")
    return _Outcome(held, (text,))


def _words_outcome(test: FieldTest, value: list[str]) -> _Outcome:
    name, shown = test.field, _show(value)
    if test.op == "exists":
        held = bool(value) == test.value
        return _Outcome(held, (f"{name} is {shown}" if value else f"{name} is empty",))
    wanted = test.value if isinstance(test.value, tuple) else (test.value,)
    present = [w for w in wanted if w in value]
    if name in ("currency", "interval") and test.op in ("eq", "contains", "ne"):
        text = f"{name} is {shown}" + ("" if present else f", not {_show_list(wanted)}")
    elif test.op in ("eq", "contains", "ne"):
        text = f"{name} contains {_show_list(wanted)}" if present else \
            f"{name} ({shown}) does not contain {_show_list(wanted)}"
    else:
        text = f"{name} contains {_show_list(tuple(present))} (one of {_show_list(wanted)})" if present else \
            f"{name} ({shown}) contains none of {_show_list(wanted)}"
    held = bool(present) != (test.op in ("ne", "not_in"))
    return _Outcome(held, (text,))


def _scalar_outcome(test: FieldTest, kind: Kind, value: str | bool | int) -> _Outcome:
    name, op, shown = test.field, test.op, _show(value)
    if op == "exists":
        return _Outcome(bool(test.value), (f"{name} is set ({shown})",))
    if op in ("in", "not_in"):
        assert isinstance(test.value, tuple)
        listed = _show_list(test.value)
        inside = value in test.value
        text = f"{name} is {shown} (one of {listed})" if inside else f"{name} is {shown}, not one of {listed}"
        return _Outcome(inside == (op == "in"), (text,))
    if op == "contains":
        contains = str(test.value) in str(value)
        verb = "contains" if contains else "does not contain"
        return _Outcome(contains, (f"{name} {shown!r} {verb} {_show(test.value)!r}",))
    wanted = _show(test.value)
    if kind is Kind.DAYS:
        assert isinstance(value, int) and isinstance(test.value, int)
        held = _compare(op, value, test.value)
        return _Outcome(held, (f"{name} {value} {_SYMBOL[op if held else _NEGATED[op]]} {wanted}",))
    equal = value == test.value
    text = f"{name} is {shown}" if equal else f"{name} is {shown}, not {wanted}"
    return _Outcome(equal == (op == "eq"), (text,))


def _test_outcome(test: FieldTest, ctx: BillingContext, rules: RulesFile, now: datetime) -> _Outcome:
    spec = field_spec(test.field)
    assert spec is not None, "validated at load"
    value = spec.read(ctx, now)
    if spec.kind is Kind.MONEY:
        return _money_outcome(test, value, ctx, rules)
    if spec.kind is Kind.WORDS:
        assert isinstance(value, list)
        return _words_outcome(test, value)
    if value is None:
        return _Outcome(test.op == "exists" and test.value is False, (f"{test.field} is not set",))
    assert isinstance(value, str | bool | int)
    return _scalar_outcome(test, spec.kind, value)


def _outcome(condition: Condition, ctx: BillingContext, rules: RulesFile, now: datetime) -> _Outcome:
    if isinstance(condition, FieldTest):
        return _test_outcome(condition, ctx, rules, now)
    if isinstance(condition, Not):
        inner = _outcome(condition.item, ctx, rules, now)
        return _Outcome(not inner.held, inner.reasons)
    parts = [_outcome(item, ctx, rules, now) for item in condition.items]
    if isinstance(condition, AnyOf):
        held = any(p.held for p in parts)
    else:
        held = all(p.held for p in parts)
        if not parts:
            return _Outcome(True, ("always (no conditions)",))
    # Explain with the parts that agree with the result: what held, or what failed.
    reasons = tuple(r for p in parts if p.held == held for r in p.reasons)
    return _Outcome(held, reasons)


def _merge(actions: RuleActions, then: RuleActions) -> RuleActions:
    priority = actions.priority
    if then.priority is not None and (
        priority is None or PRIORITIES.index(then.priority) > PRIORITIES.index(priority)
    ):
        priority = then.priority
    return RuleActions(
        assign=actions.assign if actions.assign is not None else then.assign,
        priority=priority,
        tags=[*actions.tags, *(t for t in dict.fromkeys(then.tags) if t not in actions.tags)],
        notify=[*actions.notify, *(n for n in dict.fromkeys(then.notify) if n not in actions.notify)],
    )


def evaluate_rules(context: BillingContext, rules: RulesFile, now: datetime) -> RuleEvaluation:
    """The merged actions of every rule that matches ``context`` at ``now``, with each rule's reasons.

    A not-found context matches no rule.
    """
    if not context.found:
        return RuleEvaluation()
    actions = RuleActions()
    matched: list[MatchedRule] = []
    for rule in rules.rules:
        outcome = _outcome(rule.when, context, rules, now)
        if outcome.held:
            matched.append(MatchedRule(rule=rule.name, reasons=list(outcome.reasons)))
            actions = _merge(actions, RuleActions.model_validate(rule.then.model_dump()))
    return RuleEvaluation(actions=actions, matched=matched)


def alerts_for(
    transition_name: str, context: BillingContext, rules: RulesFile, now: datetime, *,
    subscription_id: str | None = None, days_before: int | None = None,
) -> list[AlertMatch]:
    """The alerts that fire when ``transition_name`` happens to ``context`` (file order).

    A reminder names its subscription (``subscription_id``: the conditions see that subscription, e.g.
    its ``interval``) and how many days ahead it is sent (``days_before``: only the alerts sent that
    many days ahead fire; when none is any more, those at the nearest lead time).
    """
    if not context.found:
        return []
    if subscription_id is not None:
        context = focus(context, subscription_id)
    lead = days_before
    if days_before is not None:
        # Queued before a reload changed its alert's days_before: the alert nearest to it sends it
        # (the scheduler counts it as that alert's reminder: ``billing.domain.reminders``).
        leads = {alert.lead_days for alert in rules.alerts
                 if alert.on == transition_name and alert.channel and alert.lead_days is not None}
        lead = days_before if days_before in leads else stand_in(days_before, leads)
    fired: list[AlertMatch] = []
    for alert in rules.alerts:
        if alert.on != transition_name or not alert.channel:
            continue
        if days_before is not None and alert.lead_days != lead:
            continue
        outcome = _alert_outcome(alert, context, rules, now)
        if outcome.held:
            ahead = f" ({days_before} {'day' if days_before == 1 else 'days'} ahead)" if days_before else ""
            fired.append(AlertMatch(alert=alert.label, on=alert.on, channel=alert.channel,
                                    reasons=[f"transition {transition_name}{ahead}", *outcome.reasons]))
    return fired


def _alert_outcome(alert: Alert, context: BillingContext, rules: RulesFile, now: datetime) -> _Outcome:
    if isinstance(alert.when, AllOf) and not alert.when.items:
        return _Outcome(True, ())
    return _outcome(alert.when, context, rules, now)
