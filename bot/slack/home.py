"""The App Home tab (what the app does, sync health, recent alerts) and installation lifecycle events."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError, SlackClientError

from billing.cache.connections import REDIS_ERRORS
from bot.slack import cards
from bot.slack.app import SlackDeps
from bot.slack.commands import installed_team
from bot.slack.incidents import recent_alerts

log = logging.getLogger("billing.slack")


async def handle_home_opened(deps: SlackDeps, event: dict[str, Any], context: AsyncBoltContext) -> None:
    """Publish the Home tab for the user who opened it; billing data only for those allowed."""
    if event.get("tab") not in (None, "home"):
        return
    user = str(event.get("user") or "")
    team = installed_team(context)
    decision = await deps.policy.check(user, team_id=team)
    health: dict[str, Any] | None = None
    alerts: list[dict[str, Any]] = []
    tenant = deps.tenant(team)
    if decision.allowed and tenant.store is not None:
        try:
            health = (await tenant.store.health()).to_dict()
            alerts = await recent_alerts(tenant.store.namespace("slack"), limit=10)
        except REDIS_ERRORS as err:
            log.warning("App Home without sync health: %s", type(err).__name__)
    view = cards.home_view(allowed=decision.allowed, health=health, recent_alerts=alerts, now=deps.clock())
    try:
        await deps.client.views_publish(user_id=user, view=view)
    except (SlackApiError, SlackClientError, OSError, TimeoutError) as err:
        log.warning("views.publish failed: %s", type(err).__name__)


def register(app: AsyncApp, deps: SlackDeps) -> None:
    async def home_opened(event: dict[str, Any], context: AsyncBoltContext) -> None:
        await handle_home_opened(deps, event, context)

    async def uninstalled(event: dict[str, Any], context: AsyncBoltContext) -> None:
        # One workspace per process today: the operator must know; later an installation store forgets it.
        log.warning("Slack %s for team %s: the app can no longer post there.", event.get("type"),
                    installed_team(context))

    app.event("app_home_opened")(home_opened)
    app.event("app_uninstalled")(uninstalled)
    app.event("tokens_revoked")(uninstalled)
