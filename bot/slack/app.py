"""The Slack app: ``build_slack_app(runtime)`` returns a bolt ``AsyncApp``; nothing happens at import.

Each listener kind registers itself (``commands``, ``interactions``, ``home``); the handlers are plain
async functions of ``SlackDeps`` and bolt's arguments, so tests call them through real signed
requests or directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from billing.config import Settings
from billing.errors import ConfigurationError
from bot.runtime import Runtime, TenantRuntime
from bot.slack.access import AccessPolicy, parse_ids
from bot.slack.credentials import bot_token, signing_secret

log = logging.getLogger("billing.slack")


class _OurClientCarriesTheToken(logging.Filter):
    """Drops bolt's "As you gave `client` as well, `token` will be unused.": bolt reads SLACK_BOT_TOKEN
    from the environment and warns whenever a client is passed too, but our client is built from that
    very token, so the line only made operators wonder at each start whether their token was used."""

    def filter(self, record: logging.LogRecord) -> bool:
        from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped

        return record.getMessage() != warning_client_prioritized_and_token_skipped()

# A cached card answers in milliseconds; past this budget the ack says "looking" and the card
# follows through response_url, well inside Slack's 3 s.
ACK_BUDGET_SECONDS = 1.5


def slack_configured(settings: Settings) -> bool:
    return settings.slack_bot_token is not None


def slack_web_client(settings: Settings) -> AsyncWebClient:
    """The Web API client: ``SLACK_API_URL`` when given; a 429 is waited out and retried.

    Only 429s: Slack did not take the call. After a 5xx or a dropped connection Slack may have posted
    the message already, and a blind retry would post an alert twice; the alert poster settles those
    from Slack's history instead (its lease and sweeper), and a read simply fails to one sentence.
    """
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    options: dict[str, Any] = {
        "token": token, "timeout": 10,
        # Replaces the SDK's defaults, which retry a dropped connection once.
        "retry_handlers": [AsyncRateLimitErrorRetryHandler(max_retry_count=3)],
    }
    if settings.slack_api_url:
        if not settings.slack_api_url.startswith(("http://", "https://")):
            raise ConfigurationError("SLACK_API_URL must be an http(s) URL ending in /api/.")
        options["base_url"] = settings.slack_api_url.rstrip("/") + "/"
    return AsyncWebClient(**options)


@dataclass
class SlackDeps:
    """What every handler needs, injected by closure (bolt deep-copies context values)."""

    runtime: Runtime
    client: AsyncWebClient
    policy: AccessPolicy
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    ack_budget: float = ACK_BUDGET_SECONDS
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def tenant(self, team_id: str | None) -> TenantRuntime:
        return self.runtime.for_team(team_id)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run work after the ack; the task is kept referenced until it ends, and failures are logged."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def drain(self) -> None:
        """Wait for work started after acks (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


def build_deps(runtime: Runtime, client: AsyncWebClient) -> SlackDeps:
    settings = runtime.settings
    store = runtime.store
    policy = AccessPolicy(
        client, store.namespace("slack") if store is not None else None,
        allowed=parse_ids(settings.allowed), admins=parse_ids(settings.admins),
    )
    return SlackDeps(runtime=runtime, client=client, policy=policy)


def build_slack_app(
    runtime: Runtime, *, client: AsyncWebClient | None = None, deps: SlackDeps | None = None,
    socket_mode: bool = False,
) -> AsyncApp:
    """The bolt app for ``runtime``; needs ``SLACK_BOT_TOKEN``, and ``SLACK_SIGNING_SECRET`` in HTTP mode
    (over Socket Mode Slack authenticates the connection instead of signing each request)."""
    from bot.slack import commands, home, interactions

    settings = runtime.settings
    bot_token(settings)
    secret = None if socket_mode else signing_secret(settings)
    client = client or slack_web_client(settings)
    deps = deps or build_deps(runtime, client)
    bolt_log = logging.getLogger("slack_bolt.AsyncApp")
    if not any(isinstance(f, _OurClientCarriesTheToken) for f in bolt_log.filters):
        bolt_log.addFilter(_OurClientCarriesTheToken())
    app = AsyncApp(
        client=client,
        signing_secret=secret,
        request_verification_enabled=not socket_mode,
        process_before_response=False,
    )
    for module in (commands, interactions, home):
        module.register(app, deps)
    app.error(_log_error)
    return app


async def _log_error(error: Exception, body: dict[str, Any]) -> None:
    # The body may carry user text; only its kind is logged.
    log.error("Slack listener failed on a %s request", body.get("type") or body.get("command") or "?",
              exc_info=error)
