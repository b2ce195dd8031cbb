"""Issue #7 ("Slack app"), done when — tried as a new user would, with real processes:

``billing serve`` runs as a subprocess with Slack configured (a fake Slack Web API on loopback), the
Stripe sandbox delivers signed webhooks to it, and the requests Slack would send are signed and posted
to ``/slack/events``. ``billing audit`` runs as a subprocess at the end.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bot.slack.conftest import all_text
from tests.e2e.conftest import Served, running_serve
from tests.fakes.slack_api import CHANNEL_ALERTS, USER_MEMBER, FakeSlackAPI
from tests.fakes.slack_requests import message_shortcut_body, signed_headers, slash_command_body
from tests.fixtures_sandbox import SandboxHandle

SIGNING_SECRET = "e2e-signing-secret-0123456789abcdef"
JANE_SLACK = "U0JANE"


@dataclass(frozen=True)
class SlackServed(Served):
    """``billing serve`` with Slack configured, and the fake Slack Web API it talks to."""

    slack: FakeSlackAPI

    def post_slack(self, body: bytes) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        response = httpx.post(f"{self.url}/slack/events", content=body,
                              headers=signed_headers(body, SIGNING_SECRET), timeout=30)
        return response, time.perf_counter() - started

    def wait_for(self, match: Any) -> list[Any]:
        """Calls to the fake Slack matching ``match``; on a timeout the server's log is shown."""
        try:
            found: list[Any] = self.slack.wait_for(match, timeout=30)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- billing serve log ---\n{self.log()[-4000:]}") from None
        return found


@pytest.fixture
def served(sandbox: SandboxHandle, redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[SlackServed]:
    """Overrides the e2e ``served``: a single Redis, and Slack settings pointing at a fake Slack."""
    with FakeSlackAPI() as slack:
        slack.add_user(JANE_SLACK, email="jane@acme.com", real_name="Jane Doe")
        with running_serve(sandbox, redis_url, key_prefix, tmp_path / "serve.log",
                           SLACK_BOT_TOKEN="xoxb-e2e-token", SLACK_SIGNING_SECRET=SIGNING_SECRET,
                           SLACK_API_URL=slack.url, BILLING_ALERT_CHANNEL=CHANNEL_ALERTS) as running:
            yield SlackServed(running.url, running.env, running.log_path, slack)


def card_of(served: SlackServed, response: httpx.Response, name: str) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json() if response.content else {}
    if body and "Looking up" not in all_text(body):
        return body
    return served.slack.wait_for_response(name, timeout=30)[-1].payload


def open_invoice_for(sandbox: SandboxHandle, customer_id: str, subscription_id: str) -> str:
    """An open invoice for an active customer (the demo has none), shaped like Jane's open one."""
    template = next(i for i in sandbox_list(sandbox, "invoices", status="open") if i["attempt_count"] == 2)
    invoice = {**template, "id": f"in_e2e{secrets.token_hex(6)}", "customer": customer_id,
               "attempt_count": 0, "number": "E2E-0001", "amount_due": 125000, "amount_remaining": 125000,
               "subtotal": 125000, "total": 125000, "next_payment_attempt": None}
    parent = dict(invoice.get("parent") or {})
    parent["subscription_details"] = {**(parent.get("subscription_details") or {}),
                                      "subscription": subscription_id}
    invoice["parent"] = parent
    sandbox.control.load([invoice])
    return str(invoice["id"])


def sandbox_list(sandbox: SandboxHandle, resource: str, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(f"{sandbox.url}/v1/{resource}", params={**params, "limit": 100},
                         headers={"Authorization": f"Bearer {sandbox.api_key}"}, timeout=10)
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_slack_app_done_when(served: SlackServed, sandbox: SandboxHandle) -> None:
    slack = served.slack
    # 1. /billing for the past_due demo customer: answered within 3 s with a correct card.
    response, elapsed = served.post_slack(slash_command_body(
        text="jane@acme.com", user_id=USER_MEMBER, response_url=slack.response_url("cmd")))
    assert elapsed < 3.0, f"/billing took {elapsed:.2f} s to acknowledge"
    card = all_text(card_of(served, response, "cmd"))
    for expected in ("Jane Doe", "Pro Monthly", "29.00 USD", "attempt"):
        assert expected in card, f"{expected!r} missing from the card:\n{card}"
    print(f"\n/billing acknowledged in {elapsed * 1000:.0f} ms")

    # 2. The message shortcut on a message by that customer's Slack user shows the same card.
    served.post_slack(message_shortcut_body(user_id=USER_MEMBER, message_user=JANE_SLACK,
                                            response_url=slack.response_url("shortcut")))
    shortcut = all_text(slack.wait_for_response("shortcut", timeout=30)[-1].payload)
    assert "Jane Doe" in shortcut and "29.00 USD" in shortcut

    # 3. Another customer goes past_due in Stripe: one message in the alert channel, urgent + billing.
    bigco = sandbox_list(sandbox, "customers", email="bigco@example.com")[0]
    sub = sandbox_list(sandbox, "subscriptions", customer=bigco["id"])[0]
    invoice_id = open_invoice_for(sandbox, bigco["id"], sub["id"])
    sandbox.control.fail_invoice(invoice_id)
    alerts = served.wait_for(lambda c: c.method == "chat.postMessage" and not c.params.get("thread_ts")
                             and c.params.get("channel") == CHANNEL_ALERTS)
    alert_text = all_text(alerts[0].params)
    assert "BigCo" in alert_text and "urgent" in alert_text and "billing" in alert_text
    parent_ts = slack.messages(CHANNEL_ALERTS)[0]["ts"]

    # 4. Paying the invoice replies "recovered" in that thread.
    sandbox.control.pay_invoice(invoice_id)
    replies = served.wait_for(lambda c: c.method == "chat.postMessage"
                              and c.params.get("thread_ts") == parent_ts
                              and "recovered" in all_text(c.params).lower())
    assert replies
    top_level = [m for m in slack.messages(CHANNEL_ALERTS) if m.get("thread_ts") in (None, m["ts"])]
    assert len(top_level) == 1, "exactly one alert message for the incident"

    # 5. billing audit lists the lookups, with who, from where and which customer.
    audit = served.billing("audit", "--user", USER_MEMBER)
    assert audit.returncode == 0, audit.stderr
    assert "slack_command" in audit.stdout and "slack_shortcut" in audit.stdout
    assert "jane@acme.com" in audit.stdout

    # 6. /metrics tells what happened, by surface, source, type and outcome, and leaks no secret.
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    for line in (
        'billing_lookups_total{outcome="found",source=',
        'surface="slack_command"',
        'billing_lookup_seconds_bucket{le="0.005",surface="slack_shortcut"}',
        'billing_webhook_events_total{outcome="queued",type="customer.subscription.updated"}',
        'billing_slack_requests_total{kind="command"} 1.0',
        'billing_slack_requests_total{kind="interactive"} 1.0',
        'billing_stripe_requests_total{kind="ok"}',
        'billing_stream{what="dead_letters"} 0.0',
        "billing_customers_cached ",
    ):
        assert line in metrics, f"{line!r} missing from /metrics"
    notified = next(float(row.split()[-1]) for row in metrics.splitlines()
                    if row.startswith("billing_worker_notified_total"))
    assert notified >= 2  # the alert and the recovery
    for secret in (served.env["STRIPE_WEBHOOK_SECRET"], served.env["SLACK_BOT_TOKEN"], SIGNING_SECRET,
                   served.env["STRIPE_API_KEY"]):
        assert secret not in metrics
