"""The Slack harness's fixtures (a running app with webhooks and Slack), shared with these tests."""

from tests.bot.slack.conftest import fake_slack, harness

__all__ = ["fake_slack", "harness"]
