"""`billing rules validate` and `billing rules check`, end to end through the real CLI and sandbox."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from bot.cli import build_cli
from bot.cli_rules import check_json, render_check
from rules import evaluate_rules, load_rules_text
from tests.fixtures_sandbox import SandboxHandle
from tests.rules.factory import NOW, context

runner = CliRunner()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_ALERT_CHANNEL", "C0ALERTS")
    monkeypatch.delenv("BILLING_RULES_FILE", raising=False)


def test_validate_the_packaged_default(env: None) -> None:
    result = runner.invoke(build_cli(), ["rules", "validate"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok: 3 rules, 3 alerts\n"  # past_due, yearly renewal, trial ending


def test_validate_follows_billing_rules_file(
    env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mine.yml"
    path.write_text("version: 1\nrules:\n  - {name: a, when: {status: active}, then: {assign: x}}\n")
    monkeypatch.setenv("BILLING_RULES_FILE", str(path))
    result = runner.invoke(build_cli(), ["rules", "validate"])
    assert (result.exit_code, result.stdout) == (0, "ok: 1 rules, 0 alerts\n")


def test_validate_a_broken_file_names_the_line(env: None, tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(
        "version: 1\nrules:\n  - name: senior\n    when: {mrrr: {gt: 1000, currency: usd}}\n"
        "    then: {assign: senior-agents, priority: asap}\n"
    )
    result = runner.invoke(build_cli(), ["rules", "validate", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{path}:4: unknown field 'mrrr' in rule 'senior' (fields: status, plan,")
    assert (
        lines[1]
        == f"{path}:5: priority in rule 'senior': bad priority 'asap' (priorities: low, normal, high, urgent)"
    )
    assert "Traceback" not in result.output


def test_validate_a_missing_file(env: None, tmp_path: Path) -> None:
    result = runner.invoke(build_cli(), ["rules", "validate", str(tmp_path / "nope.yml")])
    assert (result.exit_code, result.stderr) == (2, f"{tmp_path / 'nope.yml'}: no such rules file\n")


@pytest.fixture
def sandbox_env(env: None, sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_API_BASE", sandbox.url)
    monkeypatch.setenv("STRIPE_API_KEY", sandbox.api_key)
    monkeypatch.setenv("REDIS_URL", f"memory://rules-{uuid.uuid4().hex}")


@pytest.mark.parametrize(
    ("email", "rule", "reason", "action"),
    [
        ("jane@acme.com", "past-due-billing", "status is past_due", ("priority", "urgent")),
        (
            "bigco@example.com",
            "senior-agent-for-high-mrr",
            "mrr 1,250.00 USD > 1,000.00 USD",
            ("assign", "senior-agents"),
        ),
        ("trial@startup.io", "trial-onboarding", "status is trialing", ("assign", "onboarding")),
    ],
)
def test_check_demo_customers_fire_the_default_rules(
    sandbox_env: None, email: str, rule: str, reason: str, action: tuple[str, str]
) -> None:
    result = runner.invoke(build_cli(), ["rules", "check", email, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["found"] is True and doc["customer"]["email"] == email
    assert doc["matched"] == [{"rule": rule, "reasons": [reason]}]
    assert doc["actions"][action[0]] == action[1]

    table = runner.invoke(build_cli(), ["rules", "check", email])
    assert table.exit_code == 0
    assert rule in table.stdout and reason in table.stdout


def test_check_unknown_customer_exits_1(sandbox_env: None) -> None:
    result = runner.invoke(build_cli(), ["rules", "check", "nobody@nowhere.example"])
    assert (result.exit_code, result.stderr) == (1, "No Stripe customer matches 'nobody@nowhere.example'.\n")


def test_check_with_a_bad_rules_file_exits_2_before_any_lookup(env: None, tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("version: 1\nrules: [{name: a, when: {status: nope}, then: {assign: x}}]\n")
    result = runner.invoke(build_cli(), ["rules", "check", "jane@acme.com", "--rules", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}:2: wrong value for 'status' in rule 'a'")


def test_check_bad_query_exits_2(env: None) -> None:
    result = runner.invoke(build_cli(), ["rules", "check", "not an email"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1


RULES = load_rules_text(
    "version: 1\nrules:\n"
    "  - {name: big, when: {mrr: {gt: 1000, currency: usd}}, then: {assign: senior, tags: [vip]}}\n"
    "  - {name: late, when: {status: past_due}, then: {priority: urgent, tags: [billing]}}\n"
)


def rendered(ctx_status: str, mrr: int) -> str:
    ctx = context(status=ctx_status, mrr={"usd": mrr}, plan="Pro Monthly")
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(render_check(ctx, evaluate_rules(ctx, RULES, NOW)))
    return console.export_text()


def test_render_check_lists_rules_reasons_and_actions() -> None:
    text = rendered("past_due", 125000)
    for expected in (
        "jane@acme.com (cus_1)",
        "big",
        "mrr 1,250.00 USD > 1,000.00 USD",
        "late",
        "status is past_due",
        "senior",
        "urgent",
        "vip, billing",
    ):
        assert expected in text


def test_render_check_says_when_nothing_matches() -> None:
    assert "No rule matches this customer." in rendered("active", 100)


def test_check_json_shape() -> None:
    ctx = context(status="past_due", mrr={"usd": 2900})
    doc = check_json(ctx, evaluate_rules(ctx, RULES, NOW))
    assert doc == {
        "found": True,
        "query": "jane@acme.com",
        "customer": {"id": "cus_1", "email": "jane@acme.com"},
        "actions": {"assign": None, "priority": "urgent", "tags": ["billing"], "notify": []},
        "matched": [{"rule": "late", "reasons": ["status is past_due"]}],
    }


def test_render_check_shows_stripe_text_verbatim_not_as_markup() -> None:
    rules = load_rules_text(
        "version: 1\nrules:\n"
        "  - {name: 'beta [x]', when: {plan: {contains: Pro}}, then: {assign: '[team]'}}\n"
    )
    ctx = context(status="active", plan="Pro [beta] [/b]")
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(render_check(ctx, evaluate_rules(ctx, rules, NOW)))
    text = console.export_text()
    assert "plan 'Pro [beta] [/b]' contains 'Pro'" in text
    assert "beta [x]" in text
    assert "[team]" in text
