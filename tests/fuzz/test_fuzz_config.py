"""Fuzzing the two files/environments an operator writes: rules files and settings.

- Any text as a rules file: a loaded ``RulesFile`` or a clean ``RulesError`` (lines naming the place),
  in bounded time and memory, alias bombs and deep nesting included.
- Any values for the numeric and URL settings: a ``Settings`` or a ``ConfigurationError`` that is one
  sentence naming the variable, never another exception, never a secret's value.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.config import Settings
from billing.errors import ConfigurationError
from bot.runtime import load_settings
from rules import RulesError, RulesFile, load_rules_text

DEFAULT_RULES = (Path(__file__).parents[2] / "rules" / "default_rules.yml").read_text()
FIELDS = ["status", "mrr", "plan", "payment_status", "days_past_due", "livemode", "metadata.tier"]
OPS = ["eq", "gt", "lt", "in", "contains", "gte", "not", "any", "all"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True), st.text(max_size=30))
yamlish = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(["rules", "alerts", "when", "then", "name", "on",
                                                   "channel", "assign", "priority", "tags", "rates",
                                                   *FIELDS, *OPS]), st.text(max_size=10)),
                        children, max_size=5),
    ),
    max_leaves=40,
)


def bomb(width: int, depth: int) -> str:
    """Billion laughs: each level repeats the previous ``width`` times through aliases."""
    lines = ["a0: &a0 [x]"]
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\nrules: []\n"


def mutate(text: str, at: int, insert: str) -> str:
    at = at % (len(text) + 1)
    return text[:at] + insert + text[at:]


rules_texts = st.one_of(
    st.text(max_size=400),
    yamlish.map(lambda value: yaml.safe_dump(value, default_flow_style=False, allow_unicode=True)),
    st.fixed_dictionaries({"rules": st.lists(st.fixed_dictionaries(
        {"name": st.text(max_size=10), "when": yamlish, "then": yamlish}), max_size=3),
        "alerts": st.lists(yamlish, max_size=2)}).map(lambda value: yaml.safe_dump(value)),
    st.builds(mutate, st.just(DEFAULT_RULES), st.integers(0, 10**6),
              st.sampled_from(["\n  - ", ": ", "&x ", "*x", "{", "[[[[", "\t", "!!python/object:os.system ",
                               "\x00", "%YAML 9.9\n", "<<: *x\n", "'", "\"\\u"])),
    st.builds(bomb, st.integers(2, 12), st.integers(1, 12)),
    st.integers(10, 100_000).map(lambda n: "rules: " + "[" * n + "]" * n),
)


def load_or_refuse(text: str) -> None:
    try:
        loaded = load_rules_text(text, source="fuzz.yml", env={"BILLING_ALERT_CHANNEL": "#alerts"})
    except RulesError as err:
        message = str(err)
        assert message.strip() and "Traceback" not in message
        assert "fuzz.yml" in message, message
    else:
        assert isinstance(loaded, RulesFile)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=rules_texts)
@example(text=bomb(10, 9))
@example(text="a: &a [*a]")
@example(text=DEFAULT_RULES)
def test_any_rules_text_loads_or_is_a_clean_rules_error_in_bounded_time(text: str) -> None:
    started = time.perf_counter()
    load_or_refuse(text)
    assert time.perf_counter() - started < 2.0


HOSTILE = [bomb(10, 9), bomb(100, 4), bomb(2, 40), "rules: " + "[" * 100_000 + "]" * 100_000,
           "a: &a [*a]", "x: " + "a" * 300_000, "- " * 50_000]


def test_hostile_rules_texts_stay_within_bounded_memory() -> None:
    for text in HOSTILE:  # measured here (tracemalloc slows the loader ten times): a few files
        tracemalloc.start()
        try:
            load_or_refuse(text)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024 * 1024, f"{peak / 2**20:.0f} MiB for {text[:40]!r}…"


SECRET_VALUES = {
    "STRIPE_API_KEY": "rk_test_fuzzSecretKey0123456789",
    "STRIPE_WEBHOOK_SECRET": "whsec_fuzzSecret0123456789",
    "SLACK_BOT_TOKEN": "xoxb-fuzz-secret-token",
    "SLACK_APP_TOKEN": "xapp-1-fuzz-secret-token",
    "SLACK_SIGNING_SECRET": "fuzzsigningsecret0123456789abcd",
}
REDIS_PASSWORD = "fuzzRedisPassw0rd"
NUMERIC = ["BILLING_MAX_STALENESS", "BILLING_STRIPE_RATE", "BILLING_STRIPE_TIMEOUT", "BILLING_STRIPE_RETRIES"]
URLS = ["REDIS_URL", "STRIPE_API_BASE", "SLACK_API_URL"]
OTHERS = ["STRIPE_ACCOUNT_ID", "BILLING_KEY_PREFIX", "BILLING_LOG_LEVEL", "BILLING_ALLOW_SECRET_KEY",
          "BILLING_DEMO"]

numbers = st.one_of(
    st.integers().map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "1e309", "-0", "0x10", "1_000", "nan", "inf", "١٢", "3 s", "10.5.1"]),
    st.text(max_size=20),
)
urls = st.one_of(
    st.text(max_size=60),
    st.builds(lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
              st.sampled_from(["redis", "rediss", "http", "https", "memory", "ftp", "", "unix"]),
              st.sampled_from(["127.0.0.1", f":{REDIS_PASSWORD}@127.0.0.1", f"user:{REDIS_PASSWORD}@h",
                               "[::1", "[::1]", "", "exa mple.com", "h\n"]),
              st.sampled_from(["", ":0", ":6379", ":65536", ":-1", ":abc", ":99999999999"]),
              st.sampled_from(["", "/0", "/x", "/0?db=a", "?db=1", "/api/", f"/{REDIS_PASSWORD}"])),
)
environments = st.fixed_dictionaries(
    {},
    optional={**{name: numbers for name in NUMERIC}, **{name: urls for name in URLS},
              **{name: st.text(max_size=30) for name in OTHERS}},
)


@settings(max_examples=300, deadline=None)
@given(env=environments)
def test_any_settings_values_are_settings_or_one_sentence_naming_the_variable(env: dict[str, str]) -> None:
    values = {**SECRET_VALUES, **env}
    try:
        loaded = load_settings(**values)
    except ConfigurationError as err:
        message = str(err)
        assert "\n" not in message and message.endswith("."), message
        assert any(name in message for name in values), message
        for secret in (*SECRET_VALUES.values(), REDIS_PASSWORD):
            assert secret not in message, message
    else:
        assert isinstance(loaded, Settings)
