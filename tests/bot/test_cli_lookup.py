"""`billing lookup`, `billing demo`: exit codes, one-sentence errors and the contract JSON, end to end."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from billing.stripe.gateway import PERMISSIONS
from bot.cli import build_cli

CONTRACT_KEYS = {
    "found", "query", "match", "customer", "plan", "status", "subscriptions", "mrr", "mrr_detail", "ltv",
    "renewal_date", "trial_end", "payment_status", "recent_invoices", "lifecycle_stage", "segments",
    "other_customers", "as_of", "source",
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(args: list[str], **env: str | None) -> Any:
    base: dict[str, str | None] = {
        # A private in-process store per command: one test's cached card must not answer another's.
        "STRIPE_API_KEY": None, "STRIPE_API_BASE": None, "REDIS_URL": f"memory://cli-{uuid.uuid4().hex}",
        "BILLING_ALLOW_SECRET_KEY": None, "BILLING_STRIPE_RETRIES": "1",
    }
    return CliRunner().invoke(build_cli(), args, env={**base, **env})


def sandbox_env(sandbox: Any, key: str | None = None) -> dict[str, str | None]:
    return {"STRIPE_API_KEY": key or sandbox.api_key, "STRIPE_API_BASE": sandbox.url}


def one_sentence(result: Any) -> str:
    message: str = result.stderr.strip()
    assert message and "\n" not in message and "Traceback" not in message
    assert message.endswith(".")
    return message


def test_lookup_json_matches_the_contract_for_jane(sandbox: Any) -> None:
    result = run(["lookup", "jane@acme.com", "--json"], **sandbox_env(sandbox))
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert body.keys() >= CONTRACT_KEYS
    assert body["found"] is True and body["query"] == "jane@acme.com"
    assert body["match"] == {"method": "email", "confidence": "exact"}
    assert body["mrr"] == {"usd": 2900} and body["status"] == "past_due"
    assert body["payment_status"] == "failed" and body["plan"] == "Pro Monthly"
    assert body["customer"]["email"] == "jane@acme.com" and body["customer"]["name"] == "Jane Doe"
    assert body["customer"]["dashboard_url"].startswith("https://dashboard.stripe.com/test/customers/cus_")
    assert body["customer"]["created"].endswith("Z")
    sub = body["subscriptions"][0]
    assert {"id", "status", "plan", "product_id", "price_id", "interval", "interval_count", "quantity",
            "currency", "current_period_end", "trial_end", "cancel_at_period_end", "cancel_at",
            "dashboard_url"} <= sub.keys()
    assert (sub["status"], sub["interval"], sub["currency"]) == ("past_due", "month", "usd")
    invoice = body["recent_invoices"][0]
    assert (invoice["status"], invoice["amount_due"], invoice["amount_paid"]) == ("open", 2900, 0)
    assert set(body["mrr_detail"]) >= {"with_temporary_discounts", "scheduled_cancel", "has_metered_items",
                                       "excluded_trialing", "excluded_paused"}
    assert body["source"] == "stripe" and body["other_customers"] == []


def test_lookup_card_shows_the_essentials(sandbox: Any) -> None:
    result = run(["lookup", "<mailto:jane@acme.com|jane@acme.com>"], **sandbox_env(sandbox))
    assert result.exit_code == 0, result.stderr
    for text in ("Jane Doe", "Pro Monthly", "past_due", "29.00 USD", "failed"):
        assert text in result.stdout


def test_not_found_is_exit_1(sandbox: Any) -> None:
    result = run(["lookup", "nobody@example.com", "--json"], **sandbox_env(sandbox))
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"found": False, "query": "nobody@example.com"}
    card = run(["lookup", "nobody@example.com"], **sandbox_env(sandbox))
    assert card.exit_code == 1 and "No Stripe customer matches nobody@example.com." in card.stdout


def test_bad_query_is_exit_2_without_any_setting() -> None:
    result = run(["lookup", "not an email"])
    assert result.exit_code == 2
    assert one_sentence(result).startswith(
        "'not an email' is not an email address, a Stripe id or an invoice number"
    )


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (None, "STRIPE_API_KEY is not set; give a restricted key (rk_test_… or rk_live_…)."),
        ("sk_test_fullSECRET42", "full secret key"),
        ("whatever_SECRET42", "does not look like a Stripe API key"),
    ],
)
def test_key_problems_are_exit_2(key: str | None, expected: str) -> None:
    result = run(["lookup", "jane@acme.com"], STRIPE_API_KEY=key, STRIPE_API_BASE="http://127.0.0.1:9")
    assert result.exit_code == 2
    message = one_sentence(result)
    assert expected in message and "SECRET42" not in message


def test_revoked_key_is_exit_2_without_the_key(sandbox: Any) -> None:
    key = "rk_test_revokedSECRET42"
    sandbox.control.revoke_key(key)
    result = run(["lookup", "jane@acme.com"], **sandbox_env(sandbox, key))
    assert result.exit_code == 2
    assert one_sentence(result) == "Stripe refused the API key (401): check STRIPE_API_KEY."
    assert "SECRET42" not in result.output


def test_missing_permission_is_exit_2_naming_it(sandbox: Any) -> None:
    key = "rk_test_narrowSECRET42"
    granted = [p for p in PERMISSIONS.values() if p != "rak_subscription_read"]
    sandbox.control.set_key_permissions(key, granted)
    result = run(["lookup", "jane@acme.com"], **sandbox_env(sandbox, key))
    assert result.exit_code == 2
    assert "rak_subscription_read" in one_sentence(result)
    assert "SECRET42" not in result.output


def test_unreachable_stripe_is_exit_3() -> None:
    result = run(
        ["lookup", "jane@acme.com"],
        STRIPE_API_KEY="rk_test_abc", STRIPE_API_BASE=f"http://127.0.0.1:{closed_port()}",
    )
    assert result.exit_code == 3
    assert "could not connect" in one_sentence(result)


def test_persistent_5xx_is_exit_3(sandbox: Any) -> None:
    sandbox.control.set_faults(error_probability=1.0, error_status=503)
    result = run(["lookup", "jane@acme.com"], **sandbox_env(sandbox))
    assert result.exit_code == 3
    assert "HTTP 503" in one_sentence(result)


def test_bad_setting_is_exit_2() -> None:
    result = run(["lookup", "jane@acme.com"], STRIPE_API_KEY="rk_test_abc", BILLING_STRIPE_RATE="fast")
    assert result.exit_code == 2
    assert one_sentence(result).startswith("BILLING_STRIPE_RATE is invalid")
    bad_base = run(["lookup", "jane@acme.com"], STRIPE_API_KEY="rk_test_abc", STRIPE_API_BASE="localhost:1")
    assert bad_base.exit_code == 2 and "STRIPE_API_BASE" in one_sentence(bad_base)


def test_demo_tells_the_whole_story_without_any_setup() -> None:
    result = run(["demo"])
    assert result.exit_code == 0, result.stderr
    story = result.stdout
    # backfill, /billing through the real Slack handler, the alert and its thread, the AI tool
    assert "customers cached" in story
    assert "Slack · only visible to you" in story and "attempt 2" in story
    alert = story[story.index("goes past_due"):story.index("BigCo pays")]
    assert "Priority: urgent" in alert and "Tags: billing" in alert and "BIGCO INC" in alert, alert
    assert "recovered" in story[story.index("BigCo pays"):]
    assert '"amount_due":"29.00 USD"' in story and "untrusted_customer_data" in story
    assert "Connect your own Stripe and Slack" in story
    # The number on Jane's newest invoice finds her (issue #10 item 6: billing lookup 0HIAXQK6-0004).
    assert "billing lookup 0HIAXQK6-0004" in story
    assert "0HIAXQK6-0004 → Jane Doe (cus_" in story and "matched by invoice 0HIAXQK6-0004" in story
    for text in ("Jane Doe", "past_due", "BigCo Inc", "1,250.00 USD", "trialing"):
        assert text in result.stdout
    # Issue #10's done-when: Jane's card has Stripe's own next invoice (previewed, not estimated)
    # beside the failed attempts, and the yearly customer renewing in 5 days is reminded once.
    jane_slack = story[story.index("Slack · only visible to you"):story.index("goes past_due")]
    assert "Next invoice 29.00 USD" in jane_slack and "(estimate)" not in jane_slack, jane_slack
    assert "card declined" in jane_slack
    assert story.count("RENEWAL COMING UP — RENEWAL YEARLY LTD") == 1
    # Each card says where the default routing rules send the conversation, and why.
    routing = [line for line in result.stdout.splitlines() if line.startswith("Routing:")]
    assert len(routing) == 3
    assert "priority urgent" in routing[0] and "tags billing" in routing[0]
    assert "assign senior-agents" in routing[1]
    assert "assign onboarding" in routing[2]


def test_redis_down_still_answers_from_stripe(sandbox: Any) -> None:
    closed = f"redis://127.0.0.1:{closed_port()}/0"
    result = run(["lookup", "jane@acme.com", "--json"], **sandbox_env(sandbox), REDIS_URL=closed)
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["source"] == "stripe" and body["status"] == "past_due"


def test_stripe_down_still_serves_the_cached_card_to_a_new_process(sandbox: Any) -> None:
    cache = f"memory://shared-{uuid.uuid4().hex}"  # survives between the two commands, like Redis
    first = run(["lookup", "jane@acme.com", "--json"], **sandbox_env(sandbox), REDIS_URL=cache)
    assert first.exit_code == 0 and json.loads(first.stdout)["source"] == "stripe"
    down = {"STRIPE_API_KEY": sandbox.api_key, "STRIPE_API_BASE": f"http://127.0.0.1:{closed_port()}"}
    result = run(["lookup", "jane@acme.com", "--json"], **down, REDIS_URL=cache)
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert (body["source"], body["status"]) == ("cache", "past_due")
