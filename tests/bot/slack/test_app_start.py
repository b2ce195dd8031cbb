"""Starting the Slack app says nothing that would make an operator doubt their settings.

Real parts: the Stripe sandbox and the shared Redis under this test's key prefix (unlinked afterwards),
bolt's own AsyncApp."""

from __future__ import annotations

import logging

import pytest

from bot.runtime import load_settings, open_runtime
from bot.slack.app import build_slack_app, slack_web_client
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle

SECRET = "0123456789abcdef0123456789abcdef"


async def test_no_token_will_be_unused_warning_with_the_token_in_the_environment(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # `billing serve` with SLACK_BOT_TOKEN set logged bolt's "As you gave `client` as well, `token`
    # will be unused." at every start: bolt reads the variable itself, though our client carries it.
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1-2-start")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    settings = load_settings(
        STRIPE_API_KEY=sandbox.api_key, STRIPE_API_BASE=sandbox.url, REDIS_URL=redis_url,
        BILLING_KEY_PREFIX=key_prefix, STRIPE_ACCOUNT_ID="acct_appstart", SLACK_BOT_TOKEN="xoxb-1-2-start",
        SLACK_SIGNING_SECRET=SECRET,
    )
    try:
        with caplog.at_level(logging.WARNING):
            async with open_runtime(settings) as runtime:
                app = build_slack_app(runtime, client=slack_web_client(settings))
                assert app.client.token == "xoxb-1-2-start"
                # Other bolt warnings still get through: the filter drops that one sentence only.
                logging.getLogger("slack_bolt.AsyncApp").warning("another bolt warning")
        bolt = [r.getMessage() for r in caplog.records if r.name.startswith("slack_bolt")]
        assert bolt == ["another bolt warning"]
    finally:
        await unlink_prefix(redis_url, key_prefix)
