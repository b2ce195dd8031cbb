"""The message shortcut "Billing context" and the card's buttons (Refresh, Share, switch customer)."""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.slack.access import slack_error
from bot.slack.answers import Ack, Respond, card_message, lookup_message, tell
from bot.slack.app import SlackDeps
from bot.slack.commands import installed_team

log = logging.getLogger("billing.slack")

SHORTCUT_CALLBACK = "billing_context"
_CUSTOMER_ID = re.compile(r"cus_[A-Za-z0-9]{1,64}")
_SLACK_ERRORS = (SlackApiError, SlackClientError, OSError, TimeoutError)


def _clicker(body: dict[str, Any]) -> str:
    user = body.get("user") or {}
    return str(user.get("id") or "") if isinstance(user, dict) else ""


def _channel(body: dict[str, Any]) -> str | None:
    channel = body.get("channel") or {}
    return str(channel.get("id")) if isinstance(channel, dict) and channel.get("id") else None


async def _allowed(deps: SlackDeps, ack: Ack, respond: Respond, body: dict[str, Any],
                   context: AsyncBoltContext) -> bool:
    """Refuse (acknowledged, then one ephemeral sentence) anyone who may not see billing data."""
    team = installed_team(context)
    decision = await deps.policy.check(_clicker(body), team_id=team, channel_id=_channel(body))
    if decision.allowed:
        return True
    await ack()
    await tell(respond, decision.reason)
    await deps.tenant(team).record(user=_clicker(body), surface="slack_button", query="(button)",
                                   outcome="refused", team=team)
    return False


# -- the message shortcut ---------------------------------------------------------------------


async def handle_shortcut(deps: SlackDeps, ack: Ack, respond: Respond, body: dict[str, Any],
                          context: AsyncBoltContext) -> None:
    """The card of the message's author, by the email on their Slack profile, shown to the clicker."""
    # Slack shows nothing of a shortcut's ack body: ack at once; every answer goes through response_url.
    await ack()
    team = installed_team(context)
    user = _clicker(body)
    decision = await deps.policy.check(user, team_id=team, channel_id=_channel(body))
    if not decision.allowed:
        await tell(respond, decision.reason)
        await deps.tenant(team).record(user=user, surface="slack_shortcut", query="(shortcut)",
                                       outcome="refused", team=team)
        return
    message = body.get("message") or {}
    author = message.get("user") if isinstance(message, dict) else None
    if not author or message.get("bot_id") or message.get("subtype") == "bot_message":
        await tell(respond, "That message was posted by an app or a bot, not a person, "
                            "so there is no customer to look up.")
        return
    email, why = await _author_email(deps, str(author))
    if email is None:
        await tell(respond, why)
        return
    found, _ = await lookup_message(deps, deps.tenant(team), email, user=user, surface="slack_shortcut",
                                    team=team)
    await respond(response_type="ephemeral", **found.to_payload())


async def _author_email(deps: SlackDeps, author: str) -> tuple[str | None, str]:
    try:
        response = await deps.client.users_info(user=author)
    except _SLACK_ERRORS as err:
        log.warning("users.info for a message author failed: %s", type(err).__name__)
        return None, "Slack did not say who wrote that message; try again in a minute."
    person = response.get("user") or {}
    if person.get("is_bot") or author == "USLACKBOT":
        return None, "That message was posted by a bot, not a person, so there is no customer to look up."
    if person.get("deleted"):
        return None, "The author's Slack account is deactivated, so their email cannot be read."
    email = (person.get("profile") or {}).get("email")
    if not email:
        return None, ("The author's Slack profile shows no email (their organisation may hide it), "
                      "so they cannot be matched; try `/billing their@email`.")
    return str(email), ""


# -- buttons and the customer switcher ----------------------------------------------------------


def _action_value(body: dict[str, Any]) -> str | None:
    actions = body.get("actions") or []
    if not actions or not isinstance(actions[0], dict):
        return None
    action = actions[0]
    value = action.get("value") or (action.get("selected_option") or {}).get("value")
    return str(value) if isinstance(value, str) and _CUSTOMER_ID.fullmatch(value) else None


async def handle_refresh(deps: SlackDeps, ack: Ack, respond: Respond, body: dict[str, Any],
                         context: AsyncBoltContext, *, refresh: bool = True) -> None:
    """Refresh (re-read Stripe) or switch to another customer: the card is replaced in place."""
    if not await _allowed(deps, ack, respond, body, context):
        return
    await ack()
    customer_id = _action_value(body)
    if customer_id is None:
        await tell(respond, "That button no longer names a customer; run /billing again.")
        return
    team = installed_team(context)
    message, _ = await lookup_message(deps, deps.tenant(team), customer_id, user=_clicker(body),
                                      surface="slack_button", team=team, refresh=refresh)
    await respond(response_type="ephemeral", replace_original=True, **message.to_payload())


async def handle_share(deps: SlackDeps, ack: Ack, respond: Respond, body: dict[str, Any],
                       context: AsyncBoltContext) -> None:
    """Post a non-ephemeral summary in the channel, saying who shared it."""
    if not await _allowed(deps, ack, respond, body, context):
        return
    await ack()
    customer_id = _action_value(body)
    channel = _channel(body)
    if customer_id is None or channel is None:
        await tell(respond, "There is nothing to share here; run /billing again.")
        return
    team = installed_team(context)
    user = _clicker(body)
    tenant = deps.tenant(team)
    try:
        context_ = await tenant.lookup(customer_id, user=user, surface="slack_button", team=team)
    except Exception:
        log.exception("share lookup failed")
        await tell(respond, "The card could not be read just now; try again in a minute.")
        return
    if not context_.found:
        await tell(respond, "That customer no longer exists in Stripe.")
        return
    summary = card_message(deps, context_, shared_by=user)
    try:
        await deps.client.chat_postMessage(channel=channel, **summary.to_payload())
    except SlackApiError as err:
        error = slack_error(err)
        text = ("Invite @Billing Lens to this channel to share cards here."
                if error in {"not_in_channel", "channel_not_found"}
                else "Slack refused to post the card; try again in a minute.")
        await tell(respond, text)
    except _SLACK_ERRORS:
        await tell(respond, "Slack did not answer; the card was not shared.")


async def _just_ack(ack: Ack) -> None:
    await ack()  # the "Open in Stripe" link button still sends an action; Slack wants it acknowledged


def register(app: AsyncApp, deps: SlackDeps) -> None:
    async def shortcut(ack: Ack, respond: Respond, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await handle_shortcut(deps, ack, respond, body, context)

    async def refresh(ack: Ack, respond: Respond, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await handle_refresh(deps, ack, respond, body, context, refresh=True)

    async def switch(ack: Ack, respond: Respond, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await handle_refresh(deps, ack, respond, body, context, refresh=False)

    async def share(ack: Ack, respond: Respond, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await handle_share(deps, ack, respond, body, context)

    app.shortcut(SHORTCUT_CALLBACK)(shortcut)
    app.action("billing_refresh")(refresh)
    app.action("billing_switch")(switch)
    app.action("billing_share")(share)
    app.action("billing_open_stripe")(_just_ack)
