"""A bad rules file is refused with file, line and reason; ${VAR} substitution; the default file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from billing.models import BillingContext
from rules import RulesError, alerts_for, default_rules_path, load_rules, load_rules_text, rules_path
from rules.schema import TRANSITIONS

HEADER = "version: 1\nrules:\n  - name: senior\n    then: {assign: x}\n"


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(RulesError) as caught:
        load_rules_text(text, "rules/bad.yml", env or {})
    assert str(caught.value) == "\n".join(caught.value.lines)
    return caught.value.lines


def when(condition: str) -> str:
    """A one-rule file whose `when` (line 5) is ``condition``."""
    return HEADER + f"    when:\n      {condition}\n"


BAD_FILES = [
    (
        "unknown field",
        when("mrrr: {gt: 1000, currency: usd}"),
        6,
        "unknown field 'mrrr' in rule 'senior' (fields: status, plan, mrr,",
    ),
    (
        "unknown operator",
        when("mrr: {gtt: 1000, currency: usd}"),
        6,
        "unknown operator 'gtt' for 'mrr' in rule 'senior' "
        "(operators for mrr: eq, ne, gt, gte, lt, lte, exists)",
    ),
    (
        "operator of another kind",
        when("status: {gt: active}"),
        6,
        "operator not valid 'gt' for 'status' in rule 'senior'",
    ),
    (
        "wrong value type: number for bool",
        when("delinquent: 1"),
        6,
        "wrong value for 'delinquent' in rule 'senior': 1 is not true or false",
    ),
    (
        "wrong value type: yes is not a boolean",
        when("delinquent: yes"),
        6,
        "wrong value for 'delinquent' in rule 'senior': 'yes' is not true or false",
    ),
    (
        "wrong value type: text for days",
        when("trial_days_left: {lte: soon}"),
        6,
        "wrong value for 'trial_days_left' in rule 'senior': 'soon' is not a whole number of days",
    ),
    (
        "wrong value type: text for money",
        when("mrr: {gt: lots, currency: usd}"),
        6,
        "wrong value for 'mrr' in rule 'senior': 'lots' is not an amount in major units",
    ),
    (
        "unknown status",
        when("status: pastdue"),
        6,
        "wrong value for 'status' in rule 'senior': 'pastdue' is not one of incomplete,",
    ),
    (
        "unknown segment",
        when("segments: {contains: rich}"),
        6,
        "wrong value for 'segments' in rule 'senior': 'rich' is not one of current_trial,",
    ),
    (
        "bad currency code",
        when("mrr: {gt: 1, currency: dollars}"),
        6,
        "currency of 'mrr' in rule 'senior' must be a three-letter code such as usd, not 'dollars'",
    ),
    (
        "money without currency",
        when("mrr: {gt: 1000}"),
        6,
        "'mrr' in rule 'senior' needs a currency: write {gt: 1000, currency: usd} or set default_currency",
    ),
    (
        "money finer than the currency",
        when("mrr: {gt: 10.5, currency: jpy}"),
        6,
        "10.5 JPY in rule 'senior' is finer than JPY allows (0 decimal places)",
    ),
    ("money in a list", when("mrr: [1, 2]"), 6, "'mrr' in rule 'senior' cannot be tested against a list"),
    ("empty in", when("status: {in: []}"), 6, "'in' of 'status' in rule 'senior' takes a non-empty list"),
    (
        "exists not a bool",
        when("plan: {exists: maybe}"),
        6,
        "'exists' of 'plan' in rule 'senior' takes true or false",
    ),
    ("no operator", when("mrr: {currency: usd}"), 6, "'mrr' in rule 'senior' has no operator"),
    (
        "currency on a non-money field",
        when("status: {eq: active, currency: usd}"),
        6,
        "'currency' only applies to mrr and ltv, not to 'status' in rule 'senior'",
    ),
    ("bad combinator", when("any: active"), 6, "'any' in rule 'senior' takes a mapping of field tests"),
    (
        "bad priority",
        "version: 1\nrules:\n  - name: r\n    when: {status: active}\n    then:\n      priority: asap\n",
        6,
        "priority in rule 'r': bad priority 'asap' (priorities: low, normal, high, urgent)",
    ),
    (
        "unknown action",
        "version: 1\nrules:\n  - name: r\n    when: {status: active}\n    then: {asign: x}\n",
        5,
        "unknown key 'asign' in rule 'r' (keys: assign, priority, tags, notify)",
    ),
    (
        "no action",
        "version: 1\nrules:\n  - name: r\n    when: {status: active}\n    then: {}\n",
        5,
        "then in rule 'r': no action (actions: assign, priority, tags, notify)",
    ),
    (
        "unknown rule key",
        "version: 1\nrules:\n  - name: r\n    wen: {status: active}\n    then: {assign: x}\n",
        4,
        "unknown key 'wen' in rule 'r' (keys: name, description, when, then)",
    ),
    (
        "missing when",
        "version: 1\nrules:\n  - name: r\n    then: {assign: x}\n",
        3,
        "missing 'when' in rule 'r'",
    ),
    (
        "duplicate rule name",
        "version: 1\nrules:\n  - {name: r, when: {}, then: {assign: x}}\n"
        "  - {name: r, when: {}, then: {assign: y}}\n",
        4,
        "duplicate rule name 'r'",
    ),
    (
        "duplicate key",
        "version: 1\nrules:\n  - name: r\n    when: {status: active}\n    when: {plan: x}\n"
        "    then: {assign: x}\n",
        5,
        "duplicate key 'when'",
    ),
    (
        "unknown transition",
        "version: 1\nalerts:\n  - on: subscription.gone\n    channel: C1\n",
        3,
        "on in alert 'subscription.gone': unknown transition 'subscription.gone' "
        "(transitions: subscription.past_due,",
    ),
    (
        "alert without channel",
        "version: 1\nalerts:\n  - on: subscription.past_due\n",
        3,
        "missing 'channel' in alert 'subscription.past_due'",
    ),
    (
        "bad alert condition",
        "version: 1\nalerts:\n  - on: invoice.payment_failed\n    channel: C\n    when: {sttus: past_due}\n",
        5,
        "unknown field 'sttus' in alert 'invoice.payment_failed'",
    ),
    (
        "undefined variable",
        "version: 1\nalerts:\n  - on: subscription.past_due\n    channel: ${NOT_SET}\n",
        4,
        "undefined variable NOT_SET: set it in the environment or write ${NOT_SET:-default}",
    ),
    (
        "a secret as a variable",
        "version: 1\nalerts:\n  - on: subscription.past_due\n    channel: ${STRIPE_API_KEY}\n",
        4,
        "variable STRIPE_API_KEY looks like a secret and is not substituted",
    ),
    (
        "malformed variable",
        "version: 1\nalerts:\n  - on: subscription.past_due\n    channel: ${NOT SET}\n",
        4,
        "malformed variable reference in '${NOT SET}'",
    ),
    (
        "malformed YAML",
        "version: 1\nrules:\n  - name: r\n    when: {status: active\n    then: {assign: x}\n",
        5,
        "malformed YAML:",
    ),
    ("bad indentation", "version: 1\nrules:\n  - name: r\n   when: {}\n", 4, "malformed YAML:"),
    ("bad version", "version: 2\nrules: []\n", 1, "unsupported version (this program reads 'version: 1')"),
    (
        "unknown top-level key",
        "version: 1\nrule: []\n",
        2,
        "unknown key 'rule' (keys: version, default_currency, exchange_rates, rules, alerts)",
    ),
    ("not a mapping", "- version: 1\n", 1, "the rules file must be a mapping with 'version: 1' and 'rules:'"),
    ("empty file", "# nothing\n", 1, "the rules file is empty"),
    (
        "recursive alias",
        "version: 1\nrules:\n  - &r\n    name: r\n    when: {all: [*r]}\n",
        5,
        "an alias refers to a mapping or list that contains it",
    ),
    ("bad exchange rate", "version: 1\nexchange_rates:\n  base: usd\n  rates: {eur: -1}\n", 4,
     "exchange_rates.rates.eur: Input should be greater than 0"),
    (
        "a number where an operator goes",
        when("mrr: {1000: 2, currency: usd}"),
        6,
        "unknown operator '1000' for 'mrr' in rule 'senior'",
    ),
    (
        "an amount too large to be money",
        when("mrr: {gt: 100000000000000000000000000000000, currency: usd}"),
        6,
        "wrong value for 'mrr' in rule 'senior': 100000000000000000000000000000000 is not an amount",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "reason"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_file_names_the_line_and_reason(text: str, line: int, reason: str) -> None:
    lines = errors(text)
    assert any(err.startswith(f"rules/bad.yml:{line}: {reason}") for err in lines), lines


def test_every_problem_is_reported_once_in_file_order() -> None:
    text = (
        "version: 1\n"
        "rules:\n"
        "  - name: a\n"
        "    when: {mrrr: 1}\n"
        "    then: {priority: asap}\n"
        "  - name: b\n"
        "    when:\n"
        "      any:\n"
        "        - {status: active}\n"
        "        - {days_past_due: {gtt: 3}}\n"
        "    then: {assign: x}\n"
        "alerts:\n"
        "  - {on: subscription.past_due, channel: '${MISSING}'}\n"
    )
    lines = errors(text)
    assert [err.split(": ")[0] for err in lines] == [
        "rules/bad.yml:4",
        "rules/bad.yml:5",
        "rules/bad.yml:10",
        "rules/bad.yml:13",
    ]


def test_variables_are_substituted_from_the_environment() -> None:
    text = (
        "version: 1\n"
        "rules:\n"
        "  - {name: r, when: {plan: '${PLAN}'}, then: {assign: '${TEAM:-support}', notify: 'x-${CH}'}}\n"
        "alerts:\n"
        "  - on: subscription.past_due\n"
        "    channel: ${CH}\n"
    )
    rules = load_rules_text(text, env={"PLAN": "Pro", "CH": "C123"})
    assert rules.rules[0].then.assign == "support"
    assert rules.rules[0].then.notify == ["x-C123"]
    assert rules.alerts[0].channel == "C123"
    assert rules.rules[0].when.value == "Pro"  # type: ignore[union-attr]


def test_on_key_and_yes_no_are_not_yaml_11_booleans() -> None:
    rules = load_rules_text("version: 1\nalerts:\n  - on: subscription.canceled\n    channel: no\n", env={})
    assert rules.alerts[0].on == "subscription.canceled"
    assert rules.alerts[0].channel == "no"


def test_load_rules_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text("version: 1\nrules:\n  - {name: r, when: {status: nope}, then: {assign: x}}\n")
    with pytest.raises(RulesError, match=rf"^{path}:3: wrong value for 'status'"):
        load_rules(path, env={})
    with pytest.raises(RulesError, match="no such rules file"):
        load_rules(tmp_path / "missing.yml")


def test_default_rules_file_ships_the_three_product_rules_and_the_alert() -> None:
    rules = load_rules(default_rules_path(), env={"BILLING_ALERT_CHANNEL": "C0ALERTS"})
    assert [r.name for r in rules.rules] == [
        "senior-agent-for-high-mrr",
        "past-due-billing",
        "trial-onboarding",
    ]
    assert [(a.on, a.channel) for a in rules.alerts] == [("subscription.past_due", "C0ALERTS")]
    assert {a for a in TRANSITIONS} >= {a.on for a in rules.alerts}


def test_default_rules_load_without_the_alert_channel_and_the_alert_is_off() -> None:
    rules = load_rules(default_rules_path(), env={})
    assert [(a.on, a.channel) for a in rules.alerts] == [("subscription.past_due", "")]
    past_due = BillingContext(found=True, query="q", status="past_due")
    assert alerts_for("subscription.past_due", past_due, rules, datetime.now(UTC)) == []


def test_an_undefined_variable_without_default_is_refused_with_its_line() -> None:
    text = "version: 1\nalerts:\n  - on: subscription.past_due\n    channel: ${NO_SUCH_CHANNEL_VAR}\n"
    with pytest.raises(RulesError, match=r"<string>:4: undefined variable NO_SUCH_CHANNEL_VAR"):
        load_rules_text(text, env={})


def test_rules_path_prefers_the_configured_file() -> None:
    assert rules_path(None) == default_rules_path()
    assert rules_path("/etc/billing/rules.yml") == Path("/etc/billing/rules.yml")


def test_exchange_rates_table() -> None:
    rules = load_rules_text("version: 1\nexchange_rates: {base: USD, rates: {EUR: 1.08, gbp: 1.25}}\n")
    table = rules.exchange_rates
    assert table is not None
    assert str(table.rate("eur", "usd")) == "1.08"
    assert table.rate("usd", "usd") == 1
    assert table.rate("chf", "usd") is None


def test_a_secret_variable_never_reaches_the_rules_or_the_error() -> None:
    secret = "rk_test_SECRETVALUE123"
    text = "version: 1\nalerts:\n  - on: subscription.past_due\n    channel: x${SLACK_BOT_TOKEN}\n"
    with pytest.raises(RulesError) as info:
        load_rules_text(text, env={"SLACK_BOT_TOKEN": secret})
    assert secret not in str(info.value)
