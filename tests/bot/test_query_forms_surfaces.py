"""The new lookup forms (issue #10 item 6) through every surface: ``billing lookup`` (exit codes, the
terminal card), the Slack ``/billing`` command and card, and the LLM tools' content. Each surface goes
through the one service; none of its own checks may refuse a form the service accepts."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bot.cli import build_cli
from bot.runtime import Runtime, load_settings, open_runtime
from tests.bot.slack.conftest import SlackHarness, all_text, running_app
from tests.fakes.slack_api import USER_MEMBER, FakeSlackAPI
from tests.fakes.slack_requests import slash_command_body
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle
from tools.context_tools import BillingTools

JANE_NUMBER = "0HIAXQK6-0004"  # the number on Jane's newest invoice, which `billing demo` prints


def _jane_id(sandbox: SandboxHandle) -> str:
    response = httpx.get(f"{sandbox.url}/v1/customers", params={"email": "jane@acme.com"},
                         headers={"Authorization": f"Bearer {sandbox.api_key}"})
    [customer] = response.json()["data"]
    return str(customer["id"])


def _jane_intent(sandbox: SandboxHandle) -> str:
    response = httpx.get(f"{sandbox.url}/v1/payment_intents", params={"customer": _jane_id(sandbox)},
                         headers={"Authorization": f"Bearer {sandbox.api_key}"})
    return str(response.json()["data"][0]["id"])


def _set_jane_user_id(sandbox: SandboxHandle, value: str) -> str:
    jane = _jane_id(sandbox)
    sandbox.control.update(jane, {"metadata": {"user_id": value}})
    return jane


# ---- billing lookup ---------------------------------------------------------------------------------


def run(args: list[str], **env: str | None) -> Any:
    base: dict[str, str | None] = {
        "STRIPE_API_KEY": None, "STRIPE_API_BASE": None, "REDIS_URL": f"memory://qf-{uuid.uuid4().hex}",
        "BILLING_ALLOW_SECRET_KEY": None, "BILLING_STRIPE_RETRIES": "1", "BILLING_MATCH_METADATA_KEYS": None,
    }
    return CliRunner().invoke(build_cli(), args, env={**base, **env})


def sandbox_env(sandbox: SandboxHandle, **extra: str) -> dict[str, str | None]:
    return {"STRIPE_API_KEY": sandbox.api_key, "STRIPE_API_BASE": sandbox.url, **extra}


def one_sentence(result: Any) -> str:
    message: str = result.stderr.strip()
    assert message and "\n" not in message and "Traceback" not in message and message.endswith(".")
    return message


def test_billing_lookup_of_the_invoice_number_the_demo_prints_finds_jane(sandbox: SandboxHandle) -> None:
    result = run(["lookup", JANE_NUMBER, "--json"], **sandbox_env(sandbox))
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["customer"]["name"] == "Jane Doe" and body["query"] == JANE_NUMBER
    assert body["match"] == {"method": "invoice_number", "confidence": "exact"}
    card = run(["lookup", JANE_NUMBER.lower()], **sandbox_env(sandbox))
    assert card.exit_code == 0, card.stderr
    assert "Jane Doe" in card.stdout and f"matched by invoice {JANE_NUMBER}" in card.stdout


def test_billing_lookup_by_metadata_needs_the_key_configured(sandbox: SandboxHandle) -> None:
    _set_jane_user_id(sandbox, "1001")
    keys = {"BILLING_MATCH_METADATA_KEYS": "user_id"}
    by_value = run(["lookup", "1001", "--json"], **sandbox_env(sandbox, **keys))
    assert by_value.exit_code == 0, by_value.stderr
    assert json.loads(by_value.stdout)["match"]["method"] == "metadata"
    card = run(["lookup", "user_id:1001"], **sandbox_env(sandbox, **keys))
    assert card.exit_code == 0 and "matched by metadata user_id 1001" in card.stdout
    off = run(["lookup", "user_id:1001"], **sandbox_env(sandbox))
    assert off.exit_code == 2 and "BILLING_MATCH_METADATA_KEYS" in one_sentence(off)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("user_id:", "user_id: needs a value after the colon, e.g. user_id:1234;"),
        ("team:7", "'team' is not a metadata key lookups use (they use user_id, account_id);"),
        ("not an id", "is not an email address, a Stripe id or an invoice number;"),
    ],
)
def test_billing_lookup_of_a_bad_form_is_exit_2_with_one_sentence(query: str, expected: str) -> None:
    result = run(["lookup", query], BILLING_MATCH_METADATA_KEYS="user_id,account_id")
    assert result.exit_code == 2
    message = one_sentence(result)
    assert expected in message and "user_id:… or account_id:…" in message


def test_a_bad_metadata_keys_setting_stops_the_command_with_one_sentence() -> None:
    result = run(["lookup", "jane@acme.com"], BILLING_MATCH_METADATA_KEYS="user_id,,account_id")
    assert result.exit_code == 2
    assert one_sentence(result).startswith("BILLING_MATCH_METADATA_KEYS has an empty key")


# ---- Slack /billing ---------------------------------------------------------------------------------


@pytest.fixture
async def harness(sandbox: SandboxHandle, redis_url: str, key_prefix: str) -> AsyncIterator[SlackHarness]:
    with FakeSlackAPI() as fake_slack:
        async with running_app(sandbox, redis_url, key_prefix, fake_slack,
                               BILLING_MATCH_METADATA_KEYS="user_id") as h:
            yield h


async def _card(h: SlackHarness, text: str, name: str) -> str:
    body = slash_command_body(text=text, user_id=USER_MEMBER, response_url=h.slack.response_url(name))
    response = await h.post(body)
    assert response.status_code == 200, response.text
    payload = response.json()
    if "Looking up" in all_text(payload):
        payload = (await h.slack.wait_for_response_async(name))[-1].payload
    return all_text(payload)


async def test_slash_billing_takes_every_form_and_the_card_says_what_matched(harness: SlackHarness) -> None:
    _set_jane_user_id(harness.sandbox, "1001")
    by_number = await _card(harness, JANE_NUMBER, "number")
    assert "Jane Doe" in by_number and f"Matched by invoice {JANE_NUMBER}" in by_number
    by_metadata = await _card(harness, "user_id:1001", "metadata")
    assert "Jane Doe" in by_metadata and "Matched by metadata user_id 1001" in by_metadata
    by_bare_value = await _card(harness, "1001", "bare")
    assert "Jane Doe" in by_bare_value
    by_email = await _card(harness, "jane@acme.com", "email")
    assert "Matched by exact email" in by_email and "Matched by invoice" not in by_email


async def test_slash_billing_bad_form_and_not_found_are_sentences(harness: SlackHarness) -> None:
    bad = await _card(harness, "user_id:", "bad")
    assert "user_id: needs a value after the colon" in bad and "Jane" not in bad
    missing = await _card(harness, "ZZZZ-9999", "missing")
    assert "No Stripe customer found for ZZZZ-9999" in missing and "Stripe invoice search" in missing
    # With one metadata key, a bare value that looks like a number was also tried as a user_id.
    assert "Stripe customer search by metadata" in missing


async def test_slash_billing_finds_a_bare_user_id_shaped_like_a_number(harness: SlackHarness) -> None:
    _set_jane_user_id(harness.sandbox, "ACC-1001")
    card = await _card(harness, "ACC-1001", "lookalike")
    assert "Jane Doe" in card and "Matched by metadata user_id ACC-1001" in card


async def test_slash_billing_takes_a_dashboard_link_and_a_client_secret(harness: SlackHarness) -> None:
    jane = _jane_id(harness.sandbox)
    intent = _jane_intent(harness.sandbox)
    body = slash_command_body(text=f"{intent}_secret_XYZ789", user_id=USER_MEMBER,
                              response_url=harness.slack.response_url("secret"))
    harness.sandbox.control.set_faults(latency_ms=2000)  # past the ack: "Looking up …" is answered first
    try:
        looking = all_text((await harness.post(body)).json())
        card = all_text((await harness.slack.wait_for_response_async("secret", timeout=60))[-1].payload)
    finally:
        harness.sandbox.control.clear_faults()
    assert f"Looking up {intent}_secret_…" in looking
    assert "Jane Doe" in card and f"Matched by payment intent {intent}" in card
    assert "XYZ789" not in looking + card
    link = f"https://dashboard.stripe.com/test/customers/{jane}"
    for text in (f"<{link}>", f"<{link}|dashboard.stripe.com/test/customers/{jane}>", link):
        assert "Jane Doe" in await _card(harness, text, f"link-{len(text)}"), text
    other = await _card(harness, "https://example.com/customers/cus_1", "other-site")
    assert "is a link to another site than the Stripe dashboard" in other


# ---- the LLM tools ----------------------------------------------------------------------------------


@pytest.fixture
async def runtime(sandbox: SandboxHandle, redis_url: str, key_prefix: str) -> AsyncIterator[Runtime]:
    settings = load_settings(
        STRIPE_API_KEY=sandbox.api_key, STRIPE_API_BASE=sandbox.url, REDIS_URL=redis_url,
        BILLING_KEY_PREFIX=key_prefix, BILLING_STRIPE_RETRIES="1", BILLING_MATCH_METADATA_KEYS="user_id",
    )
    try:
        async with open_runtime(settings) as opened:
            yield opened
    finally:
        await unlink_prefix(redis_url, key_prefix)


async def test_the_tools_take_the_forms_and_say_how_the_customer_was_found(
    sandbox: SandboxHandle, runtime: Runtime
) -> None:
    _set_jane_user_id(sandbox, "secret-1001")
    tools = BillingTools(runtime, clock=lambda: datetime.now(UTC))
    content, artifact = await tools.stripe_context(JANE_NUMBER)
    doc = json.loads(content)
    assert doc["ok"] is True and doc["matched_by"] == f"invoice {JANE_NUMBER}"
    assert artifact is not None and artifact["match"]["method"] == "invoice_number"
    content, _ = await tools.stripe_context("user_id:secret-1001")
    doc = json.loads(content)
    assert doc["matched_by"] == "metadata user_id" and "secret-1001" not in content  # no metadata value
    routing, _ = await tools.routing(JANE_NUMBER)
    assert json.loads(routing)["ok"] is True
    by_email, _ = await tools.stripe_context("jane@acme.com")
    assert "matched_by" not in json.loads(by_email)
    bad, _ = await tools.stripe_context("user_id:")
    assert json.loads(bad)["error"] == "bad_email"


async def test_a_client_secret_is_never_kept_in_the_audit_trail(
    sandbox: SandboxHandle, runtime: Runtime
) -> None:
    intent = _jane_intent(sandbox)
    tools = BillingTools(runtime, clock=lambda: datetime.now(UTC))
    content, _ = await tools.stripe_context(f"{intent}_secret_XYZ789")
    assert json.loads(content)["matched_by"] == f"payment intent {intent}"
    await tools.stripe_context("seti_1Abc_secret_XYZ789")  # refused: no such form
    link, _ = await tools.stripe_context(f"https://dashboard.stripe.com/test/customers/{_jane_id(sandbox)}")
    assert json.loads(link)["ok"] is True
    assert runtime.default.audit is not None
    entries = await runtime.default.audit.read(limit=3)
    assert [e.outcome for e in entries] == ["found", "bad_query", "found"]
    assert entries[2].query == f"{intent}_secret_…" and entries[1].query == "seti_1Abc_secret_…"
    assert "XYZ789" not in content + json.dumps([e.query for e in entries])
