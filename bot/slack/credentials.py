"""The Slack settings, checked before anything is opened: a wrong one is one sentence naming the variable.

``billing serve`` checks them before it asks Stripe anything (a start-up that waits on Stripe's
permission probes only to refuse a pasted user token wastes the operator's time, and with Stripe
hanging it would never say). Messages name the variable and the kind of token, never its value.
"""

from __future__ import annotations

from pydantic import SecretStr

from billing.config import Settings
from billing.errors import ConfigurationError

SIGNING_SECRET_LENGTH = 32
"""Slack's signing secrets are 32 characters; a shorter one was cut when it was copied."""

_OAUTH_PAGE = "the Slack app's OAuth & Permissions page"
_BASIC_PAGE = "the Slack app's Basic Information page"
_BOT_PREFIXES = ("xoxb-", "xoxe.xoxb-")  # the second: a bot token of an app with token rotation on
_OTHER_TOKENS = {
    "xoxp-": "a user token (xoxp-…)",
    "xoxe.xoxp-": "a user token (xoxe.xoxp-…)",
    "xoxe-": "a refresh token (xoxe-…)",
    "xapp-": "an app-level token (xapp-…), which belongs in SLACK_APP_TOKEN",
}


def _value(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else ""


def _clean(variable: str, value: str) -> str:
    """``value`` when it is all printable ASCII without spaces, as Slack's tokens and secrets are: one
    copied with its line's end (a mounted secret file) would fail every request's signature check or
    every call's Authorization header, long after start-up."""
    if all("!" <= ch <= "~" for ch in value):
        return value
    raise ConfigurationError(
        f"{variable} has a space, line break or other character Slack's tokens and secrets never have; "
        "set it to the value alone."
    )


def bot_token(settings: Settings) -> str:
    """``SLACK_BOT_TOKEN``, which must be a bot token (``xoxb-…``)."""
    token = _value(settings.slack_bot_token)
    if token.startswith(_BOT_PREFIXES):
        return _clean("SLACK_BOT_TOKEN", token)
    kind = next((kind for prefix, kind in _OTHER_TOKENS.items() if token.startswith(prefix)), None)
    said = "is empty" if not token else f"is {kind}" if kind else "is no bot token"
    raise ConfigurationError(f"SLACK_BOT_TOKEN {said}; use the app's bot token (xoxb-…) from {_OAUTH_PAGE}.")


def signing_secret(settings: Settings) -> str:
    """``SLACK_SIGNING_SECRET``, whole (it verifies every request Slack sends over HTTP)."""
    secret = _value(settings.slack_signing_secret)
    if not secret:
        raise ConfigurationError(f"SLACK_SIGNING_SECRET is not set; copy it from {_BASIC_PAGE}.")
    if len(secret) < SIGNING_SECRET_LENGTH:
        raise ConfigurationError(
            f"SLACK_SIGNING_SECRET is {len(secret)} characters, shorter than Slack's "
            f"{SIGNING_SECRET_LENGTH}; copy it whole from {_BASIC_PAGE}."
        )
    return _clean("SLACK_SIGNING_SECRET", secret)


def app_token(settings: Settings) -> str:
    """``SLACK_APP_TOKEN``, the app-level token (``xapp-…``) Socket Mode connects with."""
    token = _value(settings.slack_app_token)
    if not token:
        raise ConfigurationError("--socket-mode needs SLACK_APP_TOKEN, the app-level xapp-… token "
                                 "with the connections:write scope.")
    if not token.startswith("xapp-"):
        raise ConfigurationError(f"SLACK_APP_TOKEN must be an app-level token (xapp-…), from {_BASIC_PAGE}.")
    return _clean("SLACK_APP_TOKEN", token)


def check_slack_settings(settings: Settings, *, socket_mode: bool) -> bool:
    """Whether Slack is on (``SLACK_BOT_TOKEN`` given); raises ``ConfigurationError`` for a wrong setting.

    Over HTTP every request is verified with the signing secret; over Socket Mode Slack authenticates
    the connection made with the app token instead.
    """
    if settings.slack_bot_token is None:
        if socket_mode:
            raise ConfigurationError(
                "--socket-mode needs SLACK_BOT_TOKEN (xoxb-…) and SLACK_APP_TOKEN (xapp-…)."
            )
        return False
    bot_token(settings)
    if socket_mode:
        app_token(settings)
    else:
        signing_secret(settings)
    return True


__all__ = ["SIGNING_SECRET_LENGTH", "app_token", "bot_token", "check_slack_settings", "signing_secret"]
