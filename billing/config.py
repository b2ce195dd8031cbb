"""Settings from the environment (names are the public contract in ARCHITECTURE.md)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_STALENESS_SECONDS = 10 * 365 * 24 * 3600  # ten years: far past any use, far below timedelta's limit
_ACCOUNT_ID = re.compile(r"acct_[A-Za-z0-9]+")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.:-]+")
# Metadata keys a lookup may name (``user_id:1234``): no colon (it separates key and value), no
# brackets or quotes (Stripe's search syntax), at most 40 characters (Stripe's limit on a key).
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,40}")
MAX_METADATA_KEYS = 10


def parse_log_level(value: str | None) -> str | None:
    """``BILLING_LOG_LEVEL`` as a logging level name (None when unset); ValueError names the choices."""
    level = (value or "").strip().upper()
    if not level:
        return None
    if level not in LOG_LEVELS:
        raise ValueError(f"BILLING_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    return level


def _port_of(variable: str, url: str) -> int | None:
    """The URL's port; ValueError (a sentence naming ``variable``, never the URL) when out of range."""
    try:
        port = urlsplit(url).port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{variable} has a port that is not a number from 1 to 65535")
    return port


def check_redis_url(url: str) -> str:
    """``REDIS_URL`` when usable; ValueError otherwise. The URL may hold a password: never echoed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("REDIS_URL is not a valid URL (check its brackets and characters)") from None
    if parts.scheme == "memory":
        return url
    if parts.scheme not in {"redis", "rediss"}:
        raise ValueError(
            f"REDIS_URL has scheme {parts.scheme or '(none)'!r}; use redis://, rediss:// or memory://"
        )
    _port_of("REDIS_URL", url)
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError("REDIS_URL names a database that is not a number; use one such as /0")
    for value in parse_qs(parts.query).get("db", []):
        if not value.isdigit():
            raise ValueError("REDIS_URL has a db= that is not a number; use one such as db=0")
    return url


def check_http_url(variable: str, url: str, example: str) -> str:
    """An http(s) base URL with a host and a valid port; ValueError naming ``variable`` otherwise."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"{variable} is not a valid URL; use one such as {example}") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        # The value is not echoed: it may be a secret pasted into the wrong variable, or hold credentials.
        raise ValueError(f"{variable} must be an http(s) URL with a host, such as {example}")
    _port_of(variable, url)
    return url


def check_metadata_keys(value: str) -> str:
    """``BILLING_MATCH_METADATA_KEYS`` as a clean comma list (``user_id,account_id``); ValueError, one
    sentence naming the variable, for an empty item, a key Stripe's search cannot name, or a repeat."""
    text = value.strip()
    if not text:
        return ""
    keys = [k.strip() for k in text.split(",")]
    example = "such as user_id,account_id"
    if any(not k for k in keys):
        raise ValueError(f"BILLING_MATCH_METADATA_KEYS has an empty key (a stray comma); give keys {example}")
    for key in keys:
        if not _METADATA_KEY.fullmatch(key):
            shown = key if len(key) <= 40 else key[:37] + "..."
            raise ValueError(
                f"BILLING_MATCH_METADATA_KEYS key {shown!r} must be 1 to 40 letters, digits, '_', '-' or '.' "
                f"(no colon, space, quote or bracket); give keys {example}"
            )
        if key.lower() == "mailto":
            raise ValueError(
                "BILLING_MATCH_METADATA_KEYS cannot use mailto (a lookup reads mailto: as an email)"
            )
    lowered = [k.lower() for k in keys]
    repeated = next((k for i, k in enumerate(keys) if lowered.index(k.lower()) != i), None)
    if repeated is not None:
        raise ValueError(f"BILLING_MATCH_METADATA_KEYS names {repeated} twice; give each key once")
    if len(keys) > MAX_METADATA_KEYS:
        raise ValueError(
            f"BILLING_MATCH_METADATA_KEYS has {len(keys)} keys; give at most {MAX_METADATA_KEYS}"
        )
    return ",".join(keys)


class Settings(BaseSettings):
    """Every setting the product reads; built once at start-up and handed down."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    stripe_api_key: SecretStr | None = Field(default=None, alias="STRIPE_API_KEY")
    stripe_api_base: str | None = Field(default=None, alias="STRIPE_API_BASE")
    stripe_account_id: str | None = Field(default=None, alias="STRIPE_ACCOUNT_ID")
    stripe_webhook_secret: SecretStr | None = Field(default=None, alias="STRIPE_WEBHOOK_SECRET")
    redis_url: str = Field(default="memory://", alias="REDIS_URL")
    slack_bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(default=None, alias="SLACK_APP_TOKEN")
    slack_api_url: str | None = Field(default=None, alias="SLACK_API_URL")
    alert_channel: str | None = Field(default=None, alias="BILLING_ALERT_CHANNEL")
    rules_file: str | None = Field(default=None, alias="BILLING_RULES_FILE")
    allowed: str = Field(default="", alias="BILLING_ALLOWED")
    # Slack user ids or user-group ids who may run admin subcommands besides workspace admins/owners.
    admins: str = Field(default="", alias="BILLING_ADMINS")
    allow_secret_key: bool = Field(default=False, alias="BILLING_ALLOW_SECRET_KEY")
    max_staleness_seconds: float = Field(
        default=24 * 3600, ge=0, le=MAX_STALENESS_SECONDS, allow_inf_nan=False, alias="BILLING_MAX_STALENESS"
    )
    stripe_rate_limit: float | None = Field(
        # client-side requests/s; default 20 with a test key, 90 with a live key
        default=None, gt=0, allow_inf_nan=False, alias="BILLING_STRIPE_RATE"
    )
    stripe_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, allow_inf_nan=False, alias="BILLING_STRIPE_TIMEOUT"
    )
    stripe_max_retries: int = Field(default=3, ge=0, le=20, alias="BILLING_STRIPE_RETRIES")
    key_prefix: str = Field(default="bl", alias="BILLING_KEY_PREFIX")
    log_level: str | None = Field(default=None, alias="BILLING_LOG_LEVEL")
    # ``serve`` and ``worker`` on ``memory://`` lose every queued event when they stop: only for a demo.
    demo: bool = Field(default=False, alias="BILLING_DEMO")
    # Stripe customer metadata keys holding the operator's own ids: ``user_id:1234`` finds a customer.
    match_metadata_keys: str = Field(default="", alias="BILLING_MATCH_METADATA_KEYS")

    @property
    def metadata_keys(self) -> tuple[str, ...]:
        """``BILLING_MATCH_METADATA_KEYS`` as a tuple (empty when unset)."""
        return tuple(k for k in self.match_metadata_keys.split(",") if k)

    @field_validator("match_metadata_keys")
    @classmethod
    def _match_metadata_keys(cls, value: str) -> str:
        return check_metadata_keys(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return check_redis_url(value.strip())

    @field_validator("stripe_api_base")
    @classmethod
    def _stripe_api_base(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return check_http_url("STRIPE_API_BASE", value.strip(), "http://127.0.0.1:12111")

    @field_validator("slack_api_url")
    @classmethod
    def _slack_api_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return check_http_url("SLACK_API_URL", value.strip(), "https://slack.com/api/")

    @field_validator("slack_bot_token", "slack_signing_secret", "slack_app_token", mode="before")
    @classmethod
    def _slack_secret(cls, value: object) -> object:
        # Empty is unset, as for every other setting: docker-compose passes a variable unset in the
        # operator's shell through as empty, and that means Slack off, not a wrong token. A value with
        # a space inside is still refused by bot.slack.credentials.
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and not text.strip():
            return None
        return value

    @field_validator("stripe_account_id")
    @classmethod
    def _stripe_account_id(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not _ACCOUNT_ID.fullmatch(value.strip()):
            raise ValueError("STRIPE_ACCOUNT_ID must look like acct_1A2b3C (the Stripe account id)")
        return value.strip()

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not _KEY_PREFIX.fullmatch(value):
            raise ValueError(
                "BILLING_KEY_PREFIX must be a non-empty run of letters, digits, underscores, dots, "
                "colons or hyphens (no braces or spaces), such as bl"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str | None) -> str | None:
        return parse_log_level(value)
