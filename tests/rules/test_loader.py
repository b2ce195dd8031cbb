"""A bad rules file is refused with file, line and reason; ${VAR} substitution; the default file."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from billing.domain.models import BillingContext
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


def test_default_rules_file_ships_the_three_product_rules_and_the_alerts() -> None:
    rules = load_rules(default_rules_path(), env={"BILLING_ALERT_CHANNEL": "C0ALERTS"})
    assert [r.name for r in rules.rules] == [
        "senior-agent-for-high-mrr",
        "past-due-billing",
        "trial-onboarding",
    ]
    assert [(a.on, a.channel, a.lead_days) for a in rules.alerts] == [
        ("subscription.past_due", "C0ALERTS", None),
        ("subscription.renewal_upcoming", "C0ALERTS", 7),
        ("subscription.trial_ending", "C0ALERTS", 3),
    ]
    assert {a for a in TRANSITIONS} >= {a.on for a in rules.alerts}
    assert rules.lead_times() == {"subscription.renewal_upcoming": {7}, "subscription.trial_ending": {3}}


def test_default_rules_load_without_the_alert_channel_and_the_alert_is_off() -> None:
    rules = load_rules(default_rules_path(), env={})
    assert [(a.on, a.channel) for a in rules.alerts] == [
        ("subscription.past_due", ""), ("subscription.renewal_upcoming", ""),
        ("subscription.trial_ending", ""),
    ]
    assert rules.lead_times() == {}  # no alert is on: the scheduler reminds of nothing
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


# --- hostile files: alias bombs, huge files, deep nesting ------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
LOAD_IN_A_SMALL_PROCESS = """
import resource, sys
limit = 512 * 1024 * 1024  # a small rules file must load in far less; an alias bomb needs gigabytes
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from rules import RulesError, load_rules
try:
    load_rules(sys.argv[1], env={})
except RulesError as err:
    print(err)
    sys.exit(3)
"""


def refused_in_a_small_process(path: Path) -> str:
    """Load ``path`` in a child limited to 512 MiB of address space; return the refusal it printed."""
    proc = subprocess.run([sys.executable, "-c", LOAD_IN_A_SMALL_PROCESS, str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    return proc.stdout.strip()


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic: each level is a list of ``width`` aliases of the level before (width**levels leaves)."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    lines = ["version: 1", "a: &a [" + ",".join(["lol"] * width) + "]"]
    for before, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{before}"] * width) + "]")
    return "\n".join(lines) + "\n"


EXPANDS = "expands to more than 100000 values through aliases (each *alias repeats its &anchor's content)"


def test_the_billion_laughs_is_refused_without_exhausting_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yml"
    path.write_text(billion_laughs())
    assert path.stat().st_size < 400
    # a .. e expand to 66,430 values; the first alias in f (line 7) passes 100,000.
    assert refused_in_a_small_process(path) == f"{path}:7: the rules file {EXPANDS}"


def test_a_bomb_of_mappings_inside_a_rule_is_refused_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "mapping-bomb.yml"
    lines = ["version: 1", "rules:", "  - name: r", "    when: {status: active}", "    then: {assign: x}",
             "    extra:", "      m0: &m0 {" + ", ".join(f"k{i}: v" for i in range(10)) + "}"]
    for level in range(1, 7):
        keys = ", ".join(f"k{i}: *m{level - 1}" for i in range(10))
        lines.append(f"      m{level}: &m{level} {{{keys}}}")
    lines.append("      merged: {<<: *m6}")
    path.write_text("\n".join(lines) + "\n")
    # m1 .. m3 repeat 24,630 values; m4 (line 11) would repeat 222,210 more.
    assert refused_in_a_small_process(path) == f"{path}:11: the rules file {EXPANDS}"


def test_a_big_file_with_legitimate_aliases_still_loads(tmp_path: Path) -> None:
    tags = ", ".join(f"team-{n}" for n in range(30))
    header = ("version: 1\nrules:\n  - name: r0\n    when: &common\n      all:\n"
              "        - {status: past_due}\n        - {mrr: {gt: 1000, currency: usd}}\n"
              f"    then: &urgent {{priority: urgent, tags: [{tags}]}}\n")
    rule = "  - {{name: escalation-{n:04d}, when: *common, then: *urgent}}\n"
    path = tmp_path / "big.yml"
    path.write_text(header + "".join(rule.format(n=n) for n in range(1, 1500)))
    # 1,500 rules whose aliases repeat over 70,000 values: within bounds.
    rules = load_rules(path, env={})
    assert len(rules.rules) == 1500 and rules.rules[-1].name == "escalation-1499"
    assert rules.rules[-1].then == rules.rules[0].then and len(rules.rules[0].then.tags) == 30
    # A file of exactly the size limit is read.
    padded = "version: 1\nrules: []\n"
    path.write_text(padded + "#" * (256 * 1024 - len(padded)))
    assert load_rules(path, env={}).rules == []


def test_an_oversized_file_is_refused_with_its_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.yml"
    path.write_text("version: 1\n" + "#" * (256 * 1024))
    with pytest.raises(RulesError) as info:
        load_rules(path, env={})
    assert info.value.lines == [f"{path}:1: the rules file is 262,155 bytes; "
                                f"a rules file may have at most 262,144 bytes (256 KiB)"]
    assert errors("version: 1\n" + "#" * (256 * 1024)) == [
        "rules/bad.yml:1: the rules file is 262,155 bytes; "
        "a rules file may have at most 262,144 bytes (256 KiB)"
    ]


def test_lists_nested_thousands_deep_are_refused_with_a_line() -> None:
    assert errors("version: 1\nrules:\n  - " + "[" * 5000 + "]" * 5000 + "\n") == [
        "rules/bad.yml:3: the rules file nests lists and mappings more than 64 deep"
    ]
