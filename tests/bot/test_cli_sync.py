"""`billing status`, `billing worker`, `billing serve`: against the Stripe sandbox and a real Redis.

Each test keeps its keys under its own ``BILLING_KEY_PREFIX`` and unlinks them (only them) afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from billing.cache.store import decode_context
from billing.stripe.gateway import PERMISSIONS
from bot.cli import build_cli
from tests.cluster import free_port
from tests.fakes.stripe_servers import HangingStripe
from tests.fixtures_sandbox import SandboxHandle
from tests.loopback import serve_until_healthy

BILLING = Path(sys.executable).with_name("billing")
SECRET_MARK = "SECRET42"


@pytest.fixture
def shared_redis(redis_url: str, key_prefix: str) -> Iterator[redis.Redis]:
    """A sync client on the shared server; this test's keys are unlinked afterwards."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        for key in list(client.scan_iter(match=f"{key_prefix}:*", count=1000)):
            client.unlink(key)
        client.close()


def env_for(sandbox: SandboxHandle | None, redis_url: str, prefix: str, **extra: str | None,
            ) -> dict[str, str | None]:
    env: dict[str, str | None] = {
        "STRIPE_API_KEY": sandbox.api_key if sandbox else None,
        "STRIPE_API_BASE": sandbox.url if sandbox else None,
        "STRIPE_WEBHOOK_SECRET": None, "REDIS_URL": redis_url, "BILLING_KEY_PREFIX": prefix,
        "BILLING_ALLOW_SECRET_KEY": None, "BILLING_STRIPE_RETRIES": "1",
    }
    return {**env, **extra}


def _base_env() -> dict[str, str]:
    """The outer environment without any of our settings (a developer's shell may export some)."""
    ours = ("STRIPE_", "BILLING_", "REDIS_", "SLACK_")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)}


def run(args: list[str], env: dict[str, str | None]) -> Any:
    return CliRunner().invoke(build_cli(), args, env=env)


def one_sentence(result: Any) -> str:
    message: str = result.stderr.strip()
    assert message and "\n" not in message and "Traceback" not in message
    assert message.endswith(".")
    return message


def status_json(env: dict[str, str | None]) -> dict[str, Any]:
    result = run(["status", "--json"], env)
    assert result.exit_code == 0, result.stderr
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def test_status_json_reports_mode_account_cache_and_stream(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str, shared_redis: redis.Redis
) -> None:
    env = env_for(sandbox, redis_url, key_prefix)
    empty = status_json(env)
    assert empty["mode"] == "test" and empty["account"].startswith("acct_")
    assert (empty["customers_cached"], empty["stream_length"], empty["pending"], empty["dead_letters"]) == (
        0, 0, 0, 0)
    assert (empty["previews_due"], empty["reminders_scheduled"], empty["reminders_due"]) == (0, 0, 0)
    assert empty["reminders_last_tick_at"] is None  # no scheduler has ticked

    for email in ("bigco@example.com", "jane@acme.com"):
        assert run(["lookup", email, "--json"], env).exit_code == 0
    # Stream state a running system would have: one entry read and not yet acknowledged (pending),
    # one never read (lag), one dead letter.
    tenant_prefix = f"{key_prefix}:{empty['account']}:{empty['mode']}"
    stream = f"{tenant_prefix}:events"
    shared_redis.xgroup_create(stream, "workers", id="0", mkstream=True)
    shared_redis.xadd(stream, {"e": "{}"})
    shared_redis.xadd(stream, {"e": "{}"})
    shared_redis.xreadgroup("workers", "busy", {stream: ">"}, count=1)
    shared_redis.xadd(f"{tenant_prefix}:events:dead", {"e": "{}", "error": "test"})

    body = status_json(env)
    assert body["customers_cached"] == 2
    assert (body["stream_length"], body["stream_lag"], body["pending"], body["dead_letters"]) == (2, 1, 1, 1)
    assert body["tenant"] == f"{empty['account']}:test"

    table = run(["status"], env)
    assert table.exit_code == 0 and "customers cached" in table.stdout and "dead letters" in table.stdout
    assert "previews due" in table.stdout and "reminders last tick at" in table.stdout


def test_status_with_unreachable_redis_is_exit_3(sandbox: SandboxHandle, key_prefix: str) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    result = run(["status", "--json"], env_for(sandbox, closed, key_prefix))
    assert result.exit_code == 3
    assert "Redis" in one_sentence(result)


@pytest.mark.parametrize(
    ("secret", "named"),
    [(None, "STRIPE_WEBHOOK_SECRET"), (f"wh_{SECRET_MARK}", "STRIPE_WEBHOOK_SECRET"),
     (f"sk_test_{SECRET_MARK}", "whsec_")],
)
def test_serve_refuses_a_missing_or_malformed_webhook_secret(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str, secret: str | None, named: str
) -> None:
    env = env_for(sandbox, redis_url, key_prefix, STRIPE_WEBHOOK_SECRET=secret)
    result = run(["serve", "--port", str(free_port())], env)
    assert result.exit_code == 2
    message = one_sentence(result)
    assert named in message and SECRET_MARK not in result.output


SIGNING = "0123456789abcdef0123456789abcdef"  # 32 characters, as Slack's are


@pytest.mark.parametrize(
    ("command", "slack", "named"),
    [
        (["serve"], {"SLACK_BOT_TOKEN": f"xoxp-{SECRET_MARK}", "SLACK_SIGNING_SECRET": SIGNING},
         "SLACK_BOT_TOKEN is a user token"),
        (["serve"], {"SLACK_BOT_TOKEN": f"xapp-{SECRET_MARK}", "SLACK_SIGNING_SECRET": SIGNING},
         "SLACK_BOT_TOKEN is an app-level token"),
        (["serve"], {"SLACK_BOT_TOKEN": f"xoxb-{SECRET_MARK}", "SLACK_SIGNING_SECRET": ""},
         "SLACK_SIGNING_SECRET is not set"),
        (["serve"], {"SLACK_BOT_TOKEN": f"xoxb-{SECRET_MARK}", "SLACK_SIGNING_SECRET": f"{SECRET_MARK}0"},
         "SLACK_SIGNING_SECRET is 9 characters"),
        (["serve", "--socket-mode"], {"SLACK_BOT_TOKEN": f"xoxb-{SECRET_MARK}"}, "SLACK_APP_TOKEN"),
        (["serve", "--socket-mode"], {"SLACK_BOT_TOKEN": f"xoxb-{SECRET_MARK}",
                                      "SLACK_APP_TOKEN": f"xoxb-{SECRET_MARK}"}, "SLACK_APP_TOKEN must be"),
        (["serve", "--socket-mode"], {"SLACK_APP_TOKEN": f"xapp-{SECRET_MARK}"}, "needs SLACK_BOT_TOKEN"),
        (["worker"], {"SLACK_BOT_TOKEN": f"xoxp-{SECRET_MARK}"}, "SLACK_BOT_TOKEN is a user token"),
        # A value copied with its line's end (a mounted secret file) or a stray space: every Slack
        # request would fail its signature check, every post its Authorization header.
        (["serve"], {"SLACK_BOT_TOKEN": f"xoxb-{SECRET_MARK}", "SLACK_SIGNING_SECRET": SIGNING + "\n"},
         "SLACK_SIGNING_SECRET has a space, line break or other character"),
        (["serve"], {"SLACK_BOT_TOKEN": f"xoxb-{SECRET_MARK}\n", "SLACK_SIGNING_SECRET": SIGNING},
         "SLACK_BOT_TOKEN has a space, line break or other character"),
        (["worker"], {"SLACK_BOT_TOKEN": f"xoxb-{SECRET_MARK} x"}, "SLACK_BOT_TOKEN has a space"),
        (["serve", "--socket-mode"], {"SLACK_BOT_TOKEN": f"xoxb-{SECRET_MARK}",
                                      "SLACK_APP_TOKEN": f"xapp-{SECRET_MARK}\u00e9"}, "SLACK_APP_TOKEN has"),
    ],
    ids=["user-token", "app-token-as-bot", "no-signing-secret", "short-signing-secret", "socket-no-app-token",
         "socket-bot-token-as-app", "socket-no-bot-token", "worker-user-token", "signing-secret-newline",
         "bot-token-newline", "worker-bot-token-space", "socket-app-token-non-ascii"],
)
def test_a_wrong_slack_setting_is_one_sentence_before_stripe_is_asked(
    redis_url: str, key_prefix: str, hanging_stripe: HangingStripe, command: list[str],
    slack: dict[str, str], named: str,
) -> None:
    # Stripe hangs: were its permission probes first, the command would wait on them (one short attempt
    # here, so a regression fails fast) and the hanging server would see a connection.
    unset = dict.fromkeys(("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"))
    env = env_for(None, redis_url, key_prefix, STRIPE_API_KEY="rk_test_hanging",
                  STRIPE_API_BASE=hanging_stripe.url, STRIPE_WEBHOOK_SECRET="whsec_test",
                  BILLING_STRIPE_RETRIES="0", BILLING_STRIPE_TIMEOUT="2", **{**unset, **slack})
    if command[0] == "serve":
        command = [*command, "--port", str(free_port())]
    result = run(command, env)
    assert result.exit_code == 2, result.output
    assert named in one_sentence(result)
    assert SECRET_MARK not in result.output
    assert (hanging_stripe.connections, bytes(hanging_stripe.received)) == (0, b"")


@pytest.mark.parametrize("command", [["worker"], ["serve", "--port", "3000"], ["backfill"]])
def test_long_running_commands_check_every_read_permission_at_start(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str, command: list[str]
) -> None:
    key = f"rk_test_narrow{SECRET_MARK}"
    granted = [p for p in PERMISSIONS.values() if p != "rak_invoice_read"]
    sandbox.control.set_key_permissions(key, granted)
    env = env_for(sandbox, redis_url, key_prefix, STRIPE_API_KEY=key, STRIPE_WEBHOOK_SECRET="whsec_test")
    result = run(command, env)
    assert result.exit_code == 2
    assert "rak_invoice_read" in one_sentence(result)
    assert SECRET_MARK not in result.output


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_applies_a_queued_event_then_stops_cleanly(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str, shared_redis: redis.Redis,
    stop_signal: signal.Signals, tmp_path: Path,
) -> None:
    env = env_for(sandbox, redis_url, key_prefix)
    warm = run(["lookup", "bigco@example.com", "--json"], env)
    assert warm.exit_code == 0, warm.stderr
    card = json.loads(warm.stdout)
    customer_id, sub_id = card["customer"]["id"], card["subscriptions"][0]["id"]
    account = status_json(env)["account"]
    tenant_prefix = f"{key_prefix}:{account}:test"
    # Stripe changes the subscription; its event is queued as the webhook endpoint would queue it.
    events = sandbox.control.set_subscription_status(sub_id, "past_due")["events"]
    for event in events:
        shared_redis.xadd(f"{tenant_prefix}:events", {"e": json.dumps(event)})

    process_env = {k: v for k, v in env.items() if v is not None}
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([str(BILLING), "worker"], env={**_base_env(), **process_env},
                                   stdout=log_file, stderr=subprocess.STDOUT)
        try:
            context_key = f"{tenant_prefix}:{{{customer_id}}}:ctx"
            deadline = time.monotonic() + 15
            status = None
            while time.monotonic() < deadline and status != "past_due":
                raw = shared_redis.get(context_key)
                status = decode_context(raw).status if raw else None
                time.sleep(0.05)
            assert status == "past_due", log_path.read_text()
            process.send_signal(stop_signal)
            code = process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    output = log_path.read_text()
    assert code == 0, output
    assert "Traceback" not in output
    assert shared_redis.xlen(f"{tenant_prefix}:events") == 0  # applied and acknowledged
    # It says it started, for which account, and that without SLACK_BOT_TOKEN its alerts go to this
    # log, as serve does (it said nothing at all before).
    assert f"Worker applying queued Stripe events of {account}:test" in output, output
    assert output.count("Slack is off") == 1, output


@pytest.mark.parametrize("blank", ["", "  "], ids=["empty", "spaces"])
def test_an_empty_slack_setting_is_unset(blank: str) -> None:
    # docker-compose passes a variable unset in the operator's shell through as empty.
    from bot.runtime import load_settings
    from bot.slack.credentials import check_slack_settings

    settings = load_settings(SLACK_BOT_TOKEN=blank, SLACK_SIGNING_SECRET=blank, SLACK_APP_TOKEN=blank)
    assert (settings.slack_bot_token, settings.slack_signing_secret, settings.slack_app_token) == (
        None, None, None)
    assert check_slack_settings(settings, socket_mode=False) is False


def test_serve_with_empty_slack_settings_runs_with_slack_off_said_once(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str, shared_redis: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(sandbox, redis_url, key_prefix, STRIPE_WEBHOOK_SECRET="whsec_test",
                  SLACK_BOT_TOKEN="", SLACK_SIGNING_SECRET="", SLACK_APP_TOKEN="")
    process_env = {k: v for k, v in env.items() if v is not None}
    output = serve_until_healthy([str(BILLING), "serve", "--port", str(port)], port,
                                 {**_base_env(), **process_env}, tmp_path / "serve.log")
    assert "Traceback" not in output
    assert output.count("Slack is off") == 1, output


def test_socket_mode_with_an_empty_bot_token_says_it_needs_one(
    redis_url: str, key_prefix: str, hanging_stripe: HangingStripe
) -> None:
    env = env_for(None, redis_url, key_prefix, STRIPE_API_KEY="rk_test_hanging",
                  STRIPE_API_BASE=hanging_stripe.url, STRIPE_WEBHOOK_SECRET="whsec_test",
                  BILLING_STRIPE_RETRIES="0", BILLING_STRIPE_TIMEOUT="2",
                  SLACK_BOT_TOKEN="", SLACK_APP_TOKEN=f"xapp-{SECRET_MARK}")
    result = run(["serve", "--socket-mode", "--port", str(free_port())], env)
    assert result.exit_code == 2, result.output
    assert "needs SLACK_BOT_TOKEN" in one_sentence(result)
    assert SECRET_MARK not in result.output
