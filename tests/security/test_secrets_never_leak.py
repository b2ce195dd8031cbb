"""No secret ever leaves the process: every flow at DEBUG, with failures injected, every line scanned.

One test drives the whole product against a password-protected private Redis, the Stripe sandbox and
the fake Slack Web API, all configured with fresh random secrets (a Stripe restricted key, a webhook
secret, a bot token, an app token, a signing secret, a Redis password):

- the ASGI app as ``billing serve`` builds it (webhooks, Slack over HTTP, the in-process worker and its
  Slack alert poster, ``/healthz`` with the Stripe probe, ``/metrics``) under uvicorn;
- Stripe webhooks delivered by the sandbox (validly signed), and posted badly signed;
- ``/billing``, the message shortcut and the Refresh button through signed Slack requests;
- ``get_stripe_context`` through the LangChain tool;
- ``billing lookup`` and ``billing status`` as subprocesses at ``BILLING_LOG_LEVEL=DEBUG``;

with the sandbox answering 500s and 429s, the Stripe key revoked, Redis at a closed port or asked with
a wrong password, Slack failing calls. Every captured line (log records with their tracebacks, stdout,
stderr, HTTP bodies, what the fake Slack recorded, tool content) is scanned for every secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import ToolCall

from billing.sync.worker import EventWorker
from bot.alerts import build_notifier
from bot.asgi import SERVER_OPTIONS, build_asgi_app
from bot.runtime import Runtime, load_settings, open_runtime
from bot.slack.app import SlackDeps, build_deps, build_slack_app, slack_web_client
from tests.cluster import RedisServer, free_port
from tests.e2e.test_slack_done_when import open_invoice_for, sandbox_list
from tests.fakes.slack_api import CHANNEL_ALERTS, RESPONSE_URL_METHOD, USER_MEMBER, FakeSlackAPI
from tests.fakes.slack_requests import (
    block_action_body,
    message_shortcut_body,
    signed_headers,
    slash_command_body,
)
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle
from tests.loopback import run_asgi
from tools.context_tools import BillingToolkit

BILLING = Path(sys.executable).with_name("billing")
OUR_VARIABLES = ("STRIPE_", "BILLING_", "REDIS_", "SLACK_")
JANE_SLACK = "U0JANE"


@dataclass
class Secrets:
    stripe_key: str = field(default_factory=lambda: f"rk_test_{secrets.token_hex(20)}")
    webhook_secret: str = field(default_factory=lambda: f"whsec_{secrets.token_hex(20)}")
    bot_token: str = field(default_factory=lambda: f"xoxb-{secrets.token_hex(6)}-{secrets.token_hex(12)}")
    app_token: str = field(default_factory=lambda: f"xapp-1-A0001-{secrets.token_hex(16)}")
    signing_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    redis_password: str = field(default_factory=lambda: f"pw{secrets.token_hex(16)}")

    def named(self) -> dict[str, str]:
        return {"Stripe key": self.stripe_key, "webhook secret": self.webhook_secret,
                "bot token": self.bot_token, "app token": self.app_token,
                "signing secret": self.signing_secret, "Redis password": self.redis_password}


@dataclass
class Captured:
    """Every piece of text that left the product during the test, with where it came from."""

    pieces: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: Any) -> None:
        self.pieces.append((where, text if isinstance(text, str) else json.dumps(text, default=str)))

    def response(self, where: str, response: httpx.Response) -> httpx.Response:
        self.add(f"{where} (HTTP {response.status_code})", response.text)
        self.add(f"{where} headers", dict(response.headers))
        return response


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A private redis-server that requires a password (set once it answers: the start-up probe pings
    without one)."""
    password = f"pw{secrets.token_hex(16)}"
    server = RedisServer(tmp_path / "password-redis")
    server.start()
    try:
        subprocess.run(["redis-cli", "-p", str(server.port), "config", "set", "requirepass", password],
                       check=True, capture_output=True, timeout=10)
        yield server, password
    finally:
        server.stop()


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


def product_env(**values: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    return {**base, **values}


@asynccontextmanager
async def serving(
    runtime: Runtime, webhook_secret: str,
) -> AsyncIterator[tuple[httpx.AsyncClient, SlackDeps]]:
    """The app exactly as ``billing serve`` builds it in HTTP mode, on a loopback port."""
    settings = runtime.settings
    store = runtime.store
    assert store is not None
    client = slack_web_client(settings)
    deps = build_deps(runtime, client)
    worker = EventWorker(store, runtime.gateway, build_notifier(runtime, slack_client=client), block_ms=50)
    app = build_asgi_app(settings=settings, store=store, webhook_secret=webhook_secret, tenant=store.tenant,
                         worker=worker, stripe_check=runtime.gateway.ping,
                         slack_app=build_slack_app(runtime, client=client, deps=deps),
                         slack_status=lambda: {"mode": "http"})
    async with run_asgi(app, log_level="debug", log_config=None, lifespan="on", **SERVER_OPTIONS) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http, deps
        await deps.drain()


async def test_no_secret_appears_anywhere_at_debug_with_failures_injected(
    sandbox: SandboxHandle, password_redis: tuple[RedisServer, str], key_prefix: str,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BILLING_ALERT_CHANNEL", CHANNEL_ALERTS)  # the rules file reads it from the env
    server, password = password_redis
    keys = Secrets(redis_password=password)
    redis_url = f"redis://:{password}@127.0.0.1:{server.port}/0"
    caplog.set_level(logging.DEBUG)  # the root logger: every library's DEBUG lines too
    seen = Captured()
    env = {
        "STRIPE_API_KEY": keys.stripe_key, "STRIPE_API_BASE": sandbox.url, "REDIS_URL": redis_url,
        "BILLING_KEY_PREFIX": key_prefix, "STRIPE_WEBHOOK_SECRET": keys.webhook_secret,
        "SLACK_BOT_TOKEN": keys.bot_token, "SLACK_APP_TOKEN": keys.app_token,
        "SLACK_SIGNING_SECRET": keys.signing_secret, "BILLING_STRIPE_RETRIES": "0",
        "BILLING_STRIPE_TIMEOUT": "5", "BILLING_STRIPE_RATE": "1000", "BILLING_LOG_LEVEL": "DEBUG",
        "BILLING_ALERT_CHANNEL": CHANNEL_ALERTS,
    }
    bigco = sandbox_list(sandbox, "customers", email="bigco@example.com")[0]
    bigco_sub = sandbox_list(sandbox, "subscriptions", customer=bigco["id"])[0]

    with FakeSlackAPI() as slack:
        slack.add_user(JANE_SLACK, email="jane@acme.com", real_name="Jane Doe")
        settings = load_settings(**{**env, "SLACK_API_URL": slack.url})
        try:
            async with open_runtime(settings, verify_permissions=True, require_store=True) as runtime, \
                    serving(runtime, keys.webhook_secret) as (http, deps):

                async def slack_post(where: str, body: bytes, secret: str = keys.signing_secret) -> None:
                    response = await http.post("/slack/events", content=body,
                                               headers=signed_headers(body, secret))
                    seen.response(where, response)

                async def probe(where: str, stripe_state: str) -> None:
                    """/healthz once it reports ``stripe_state`` (it asks Stripe every 5 s), /metrics."""
                    deadline = time.monotonic() + 20
                    while (health := await http.get("/healthz")).json()["stripe"] != stripe_state:
                        assert time.monotonic() < deadline, health.text
                        await asyncio.sleep(0.2)
                    seen.response(f"{where} /healthz", health)
                    seen.response(f"{where} /metrics", await http.get("/metrics"))

                # Stripe webhooks, validly signed by the sandbox: the worker applies them and alerts.
                sandbox.control.register_webhook(f"{http.base_url}/stripe/webhook", keys.webhook_secret)
                slack.fail_next("chat.postMessage", "rate_limited")  # waited out and retried
                invoice = open_invoice_for(sandbox, bigco["id"], bigco_sub["id"])
                # In a thread: the sandbox delivers the webhook to this event loop before answering.
                await asyncio.to_thread(sandbox.control.fail_invoice, invoice)
                await slack.wait_for_async(lambda c: c.method == "chat.postMessage" and c.fault is None
                                           and c.params.get("channel") == CHANNEL_ALERTS, timeout=30)
                # ... and badly signed: another secret, a garbled header, none.
                event = json.dumps({"id": "evt_forged", "type": "customer.updated", "livemode": False,
                                    "object": "event", "data": {"object": {"id": bigco["id"]}}}).encode()
                forged = f"t={int(time.time())},v1={secrets.token_hex(32)}"
                for where, headers in (("forged webhook", {"Stripe-Signature": forged}),
                                       ("garbled webhook", {"Stripe-Signature": keys.webhook_secret}),
                                       ("unsigned webhook", {})):
                    response = await http.post("/stripe/webhook", content=event, headers=headers)
                    assert response.status_code == 400
                    seen.response(where, response)

                # Slack: a card, a refresh, a shortcut; then a bad signature, a failing response_url,
                # a failing users.info.
                await slack_post("command", slash_command_body(
                    text="jane@acme.com", user_id=USER_MEMBER, response_url=slack.response_url("card")))
                jane = await runtime.default.lookup("jane@acme.com", user="test", surface="cli")
                assert jane.customer is not None
                await slack_post("refresh", block_action_body(
                    "billing_refresh", value=jane.customer.id, response_url=slack.response_url("refresh")))
                await slack.wait_for_response_async("refresh", timeout=30)
                await slack_post("shortcut", message_shortcut_body(
                    message_user=JANE_SLACK, response_url=slack.response_url("shortcut")))
                await slack.wait_for_response_async("shortcut", timeout=30)
                await slack_post("badly signed command", slash_command_body(text="jane@acme.com"),
                                 secret="not-the-signing-secret")
                slack.fail_next("users.info", "server_error")
                await slack_post("shortcut, users.info failing", message_shortcut_body(
                    message_user=JANE_SLACK, response_url=slack.response_url("shortcut-failing")))
                await slack.wait_for_response_async("shortcut-failing", timeout=30)

                tool = {t.name: t for t in BillingToolkit(runtime).get_tools()}["get_stripe_context"]

                async def tool_call(where: str, email: str) -> None:
                    call = ToolCall(name="get_stripe_context", args={"email": email},
                                    id=f"call_{secrets.token_hex(4)}", type="tool_call")
                    message = await tool.ainvoke(call)
                    seen.add(where, message.content)
                    seen.add(f"{where} artifact", getattr(message, "artifact", None))

                await tool_call("tool", "jane@acme.com")
                await probe("healthy", "ok")

                # Stripe failing: 500s, then 429s, on customers nothing has cached.
                for where, faults in (("Stripe 500", {"error_probability": 1.0, "error_status": 500}),
                                      ("Stripe 429", {"rate_limit_every": 1})):
                    sandbox.control.set_faults(**faults)  # type: ignore[arg-type]
                    name = where.replace(" ", "-")
                    await slack_post(f"command, {where}", slash_command_body(
                        text="nosubs@example.com", response_url=slack.response_url(name)))
                    await tool_call(f"tool, {where}", "trialing@example.com")
                    await probe(where, "unavailable")
                    sandbox.control.clear_faults()
                # Slack failing the answer of a command that had to ask Stripe (2 s of latency).
                sandbox.control.set_faults(latency_ms=2000)
                slack.fail_next(RESPONSE_URL_METHOD, "server_error")
                await slack_post("command, response_url failing", slash_command_body(
                    text="incomplete@example.com", response_url=slack.response_url("lost")))
                await deps.drain()  # the card followed by response_url, which failed
                assert [r.fault for r in slack.responses("lost")] in ([], ["server_error"])
                sandbox.control.clear_faults()
                # The key revoked: every surface says so in a sentence, none quotes the key.
                sandbox.control.revoke_key(keys.stripe_key)
                await slack_post("command, key revoked", slash_command_body(
                    text="canceled@example.com", response_url=slack.response_url("revoked")))
                await tool_call("tool, key revoked", "canceled@example.com")
                await probe("key revoked", "key refused")
        finally:
            await unlink_prefix(redis_url, key_prefix)
        for call in slack.calls():  # the token is sent to Slack, as it must be: not part of the scan
            seen.add(f"Slack {call.method}", {k: v for k, v in call.params.items() if k != "token"})
        for response in slack.responses():
            seen.add(f"Slack response_url {response.name}", response.payload)
        seen.add("Slack messages", slack.messages())
        seen.add("Slack ephemerals", slack.ephemerals())
        assert slack.messages(CHANNEL_ALERTS), "the alert was not posted"

    # The CLI, one process per run, at DEBUG.
    cli = product_env(**env)
    dead_redis = f"redis://:{password}@127.0.0.1:{closed_port()}/0"
    wrong_password = f"redis://:{password}x@127.0.0.1:{server.port}/0"
    runs: list[tuple[str, list[str], dict[str, str]]] = [
        ("lookup, key revoked", ["lookup", "jane@acme.com"], cli),
        ("lookup", ["lookup", "jane@acme.com", "--json"], {**cli, "STRIPE_API_KEY": sandbox.api_key}),
        ("lookup, Redis closed", ["lookup", "jane@acme.com"],
         {**cli, "STRIPE_API_KEY": sandbox.api_key, "REDIS_URL": dead_redis}),
        ("lookup, wrong Redis password", ["lookup", "jane@acme.com"],
         {**cli, "STRIPE_API_KEY": sandbox.api_key, "REDIS_URL": wrong_password}),
        ("status, Redis closed", ["status"], {**cli, "REDIS_URL": dead_redis}),
        ("status", ["status"], {**cli, "STRIPE_API_KEY": sandbox.api_key}),
        ("lookup, bad timeout", ["lookup", "jane@acme.com"], {**cli, "BILLING_STRIPE_TIMEOUT": "soon"}),
    ]
    sandbox.control.set_faults(error_every=2, error_status=500)
    for where, args, run_env in runs:
        done = await asyncio.to_thread(subprocess.run, [str(BILLING), *args], env=run_env,
                                       capture_output=True, text=True, timeout=60, check=False)
        seen.add(f"billing {where} stdout", done.stdout)
        seen.add(f"billing {where} stderr", done.stderr)
        if where == "lookup, Redis closed":  # the scan really reads DEBUG output and the failures
            assert " DEBUG " in done.stderr and "REDIS_URL" in done.stderr, done.stderr

    out, err = capfd.readouterr()
    seen.add("stdout", out)
    seen.add("stderr", err)
    seen.add("log records", caplog.text)
    for record in caplog.records:  # what any handler may format: the message and its arguments
        seen.add(f"log record {record.name}", f"{record.getMessage()} {record.args!r} {record.exc_text}")
    assert any(record.levelno == logging.DEBUG for record in caplog.records)

    leaks = [f"{name} in {where}: …{text[max(0, text.find(secret) - 80):text.find(secret) + 40]}…"
             for where, text in seen.pieces for name, secret in keys.named().items() if secret in text]
    assert not leaks, "\n".join(leaks[:20])
