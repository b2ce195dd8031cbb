"""Settings from the environment (names are the public contract in ARCHITECTURE.md)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_staleness_seconds: float = Field(default=24 * 3600, alias="BILLING_MAX_STALENESS")
    stripe_rate_limit: float | None = Field(
        # client-side requests/s; default 20 with a test key, 90 with a live key
        default=None, alias="BILLING_STRIPE_RATE"
    )
    stripe_timeout_seconds: float = Field(default=10.0, alias="BILLING_STRIPE_TIMEOUT")
    stripe_max_retries: int = Field(default=3, alias="BILLING_STRIPE_RETRIES")
    key_prefix: str = Field(default="bl", alias="BILLING_KEY_PREFIX")
