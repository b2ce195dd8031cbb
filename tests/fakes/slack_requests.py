"""Signed requests, shaped like Slack's, for a bolt app under test.

Bodies are ``bytes`` exactly as Slack posts them to ``/slack/events``: slash commands form-encoded,
interactivity as a form field ``payload=<JSON>``, events as JSON. Sign them with ``signed_headers``::

    body = slash_command_body(text="jane@acme.com", user_id=USER_MEMBER, response_url=fake.response_url("c1"))
    await http.post("/slack/events", content=body, headers=signed_headers(body, SIGNING_SECRET))

Pass a loopback ``response_url`` (``FakeSlackAPI.response_url(name)``) so ``respond()`` stays local. The
default one points at a closed loopback port: a test that forgets it fails fast, never reaching Slack.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from tests.fakes.slack_api import APP_ID, BOT_USER_ID, CHANNEL_GENERAL, TEAM_DOMAIN, TEAM_ID, USER_MEMBER

VERIFICATION_TOKEN = "fake-verification-token"
"""The legacy ``token`` field Slack still sends in payloads (bolt ignores it)."""

UNREACHABLE_RESPONSE_URL = "http://127.0.0.1:9/response/unset"
"""Default ``response_url``: loopback, nothing listens there (connection refused)."""

_sequence = itertools.count(1)


def signed_headers(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """``X-Slack-Request-Timestamp`` and ``X-Slack-Signature`` for ``body``, plus its ``Content-Type``.

    ``timestamp`` defaults to now; pass an old one to test the 5-minute replay window. The content type
    is JSON for a body starting with ``{``, form-encoded otherwise, as Slack sends them.
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
    if signature is None:  # only when timestamp or body is None
        raise ValueError("cannot sign a request without body and timestamp")
    is_json = body.lstrip().startswith(b"{")
    return {
        "Content-Type": "application/json" if is_json else "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": signature,
    }


def slack_mailto(email: str) -> str:
    """An email as Slack may deliver it in a command's text: ``<mailto:a@b.com|a@b.com>``."""
    return f"<mailto:{email}|{email}>"


def slash_command_body(
    command: str = "/billing",
    text: str = "",
    user_id: str = USER_MEMBER,
    team_id: str = TEAM_ID,
    channel_id: str = CHANNEL_GENERAL,
    response_url: str = UNREACHABLE_RESPONSE_URL,
    trigger_id: str | None = None,
    *,
    user_name: str | None = None,
    channel_name: str = "general",
    team_domain: str = TEAM_DOMAIN,
) -> bytes:
    """A slash command, form-encoded with the fields and order Slack uses."""
    fields = [
        ("token", VERIFICATION_TOKEN),
        ("team_id", team_id),
        ("team_domain", team_domain),
        ("channel_id", channel_id),
        ("channel_name", channel_name),
        ("user_id", user_id),
        ("user_name", user_name or user_id.lower()),
        ("command", command),
        ("text", text),
        ("api_app_id", APP_ID),
        ("is_enterprise_install", "false"),
        ("response_url", response_url),
        ("trigger_id", trigger_id or _trigger_id()),
    ]
    return urlencode(fields).encode()


def message_shortcut_body(
    callback_id: str = "billing_context",
    user_id: str = USER_MEMBER,
    message_user: str | None = USER_MEMBER,
    channel_id: str = CHANNEL_GENERAL,
    response_url: str = UNREACHABLE_RESPONSE_URL,
    team_id: str = TEAM_ID,
    user_team_id: str | None = None,
    *,
    message_text: str = "Hi, my card was charged twice",
    message_ts: str | None = None,
    message_team: str | None = None,
    message_bot_id: str | None = None,
    trigger_id: str | None = None,
) -> bytes:
    """A message shortcut (``type: "message_action"``) as Slack posts it: form field ``payload=<JSON>``.

    ``user_id`` clicked; ``message_user`` wrote the message (None with ``message_bot_id`` for a bot's
    message). ``user_team_id`` is the clicker's team (default ``team_id``); ``message_team`` the
    author's (default ``team_id``), e.g. ``OTHER_TEAM_ID`` in a Slack Connect channel.
    """
    ts = message_ts or _ts()
    message: dict[str, Any] = {
        "type": "message",
        "text": message_text,
        "ts": ts,
        "team": message_team or team_id,
    }
    if message_user is not None:
        message["user"] = message_user
    if message_bot_id is not None:
        message["bot_id"] = message_bot_id
        message["subtype"] = "bot_message"
    payload = {
        "type": "message_action",
        "token": VERIFICATION_TOKEN,
        "action_ts": _ts(),
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "user": {
            "id": user_id,
            "username": user_id.lower(),
            "team_id": user_team_id or team_id,
            "name": user_id.lower(),
        },
        "channel": {"id": channel_id, "name": _channel_name(channel_id)},
        "is_enterprise_install": False,
        "enterprise": None,
        "callback_id": callback_id,
        "trigger_id": trigger_id or _trigger_id(),
        "response_url": response_url,
        "message_ts": ts,
        "message": message,
    }
    return _payload_form(payload)


def block_action_body(
    action_id: str,
    value: str | None = None,
    user_id: str = USER_MEMBER,
    response_url: str | None = UNREACHABLE_RESPONSE_URL,
    channel_id: str | None = CHANNEL_GENERAL,
    team_id: str = TEAM_ID,
    selected_option_value: str | None = None,
    *,
    block_id: str = "billing_card_actions",
    message_ts: str | None = None,
    is_ephemeral: bool = True,
    message: dict[str, Any] | None = None,
    view_id: str | None = None,
    trigger_id: str | None = None,
) -> bytes:
    """A click on a Block Kit element (``type: "block_actions"``), form field ``payload=<JSON>``.

    A button (``value``) by default, or a static select (``selected_option_value``). The container is
    an ephemeral message by default (Slack then sends no ``message``); pass ``is_ephemeral=False`` and
    optionally ``message`` for a message in channel, or ``view_id`` for the App Home (no channel, no
    ``response_url``).
    """
    action: dict[str, Any] = {"action_id": action_id, "block_id": block_id, "action_ts": _ts()}
    if selected_option_value is not None:
        action["type"] = "static_select"
        action["selected_option"] = {
            "text": {"type": "plain_text", "text": selected_option_value, "emoji": True},
            "value": selected_option_value,
        }
    else:
        action["type"] = "button"
        action["text"] = {"type": "plain_text", "text": action_id, "emoji": True}
        if value is not None:
            action["value"] = value
    payload: dict[str, Any] = {
        "type": "block_actions",
        "token": VERIFICATION_TOKEN,
        "api_app_id": APP_ID,
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "user": {"id": user_id, "username": user_id.lower(), "team_id": team_id, "name": user_id.lower()},
        "is_enterprise_install": False,
        "enterprise": None,
        "trigger_id": trigger_id or _trigger_id(),
        "actions": [action],
    }
    if view_id is not None:
        payload["container"] = {"type": "view", "view_id": view_id}
        payload["view"] = {"id": view_id, "type": "home", "team_id": team_id, "app_id": APP_ID, "blocks": []}
    else:
        ts = message_ts or _ts()
        payload["container"] = {
            "type": "message",
            "message_ts": ts,
            "channel_id": channel_id,
            "is_ephemeral": is_ephemeral,
        }
        if channel_id is not None:
            payload["channel"] = {"id": channel_id, "name": _channel_name(channel_id)}
        if not is_ephemeral:
            payload["message"] = message or {"type": "message", "user": BOT_USER_ID, "ts": ts, "text": ""}
        if response_url is not None:
            payload["response_url"] = response_url
    return _payload_form(payload)


def event_body(
    event: dict[str, Any],
    team_id: str = TEAM_ID,
    *,
    event_id: str | None = None,
    event_time: int | None = None,
) -> bytes:
    """An Events API ``event_callback`` wrapping ``event`` (JSON), with a unique ``event_id``."""
    body = {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_sequence):010d}",
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }
    return json.dumps(body).encode()


def url_verification_body(challenge: str) -> bytes:
    """The ``url_verification`` request Slack sends when the events URL is set."""
    return json.dumps(
        {"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}
    ).encode()


def app_home_opened_event(user_id: str = USER_MEMBER, tab: str = "home") -> dict[str, Any]:
    """An ``app_home_opened`` event, for ``event_body``."""
    return {
        "type": "app_home_opened",
        "user": user_id,
        "channel": "D" + user_id[1:],
        "tab": tab,
        "event_ts": _ts(),
    }


def tokens_revoked_event(bot_user_ids: list[str] | None = None) -> dict[str, Any]:
    """A ``tokens_revoked`` event (the bot's token by default), for ``event_body``."""
    return {
        "type": "tokens_revoked",
        "tokens": {"oauth": [], "bot": bot_user_ids if bot_user_ids is not None else [BOT_USER_ID]},
        "event_ts": _ts(),
    }


def app_uninstalled_event() -> dict[str, Any]:
    """An ``app_uninstalled`` event, for ``event_body``."""
    return {"type": "app_uninstalled", "event_ts": _ts()}


def _payload_form(payload: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def _channel_name(channel_id: str) -> str:
    return "general" if channel_id == CHANNEL_GENERAL else channel_id.lower()


def _ts() -> str:
    return f"{time.time():.6f}"


def _trigger_id() -> str:
    return f"{next(_sequence)}.{int(time.time())}.fake0trigger"


__all__ = [
    "UNREACHABLE_RESPONSE_URL",
    "VERIFICATION_TOKEN",
    "app_home_opened_event",
    "app_uninstalled_event",
    "block_action_body",
    "event_body",
    "message_shortcut_body",
    "signed_headers",
    "slack_mailto",
    "slash_command_body",
    "tokens_revoked_event",
    "url_verification_body",
]
