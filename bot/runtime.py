"""Composition root for one process: settings in, a ready ``BillingService`` out, closed on exit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from billing.config import Settings
from billing.errors import ConfigurationError, StoreUnavailableError
from billing.service import BillingService
from billing.store import RedisStore, open_tenant_store
from billing.stripe_api import StripeGateway, check_key, key_account_id

log = logging.getLogger("billing.runtime")


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (``overrides`` by env name win); a bad value is one sentence."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "a setting"
        # The offending value is not repeated: it may be a key or a token.
        reason = str(first["msg"]).split(",")[0].rstrip(".")
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise ConfigurationError(f"{name} is invalid: {reason}{more}.") from None


def _check_api_base(settings: Settings) -> None:
    base = settings.stripe_api_base
    if base and not base.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"STRIPE_API_BASE must be an http(s) URL such as http://127.0.0.1:12111, not {base!r}."
        )


async def _open_store(settings: Settings, gateway: StripeGateway, key: str) -> RedisStore | None:
    """The Redis context store, or None when Redis does not answer: a lookup then asks Stripe, which
    is correct, only slower (the cache is an optimisation, never a dependency of an answer)."""
    try:
        return await open_tenant_store(
            settings.redis_url, gateway, key_account_id(key), prefix=settings.key_prefix
        )
    except StoreUnavailableError as err:
        log.warning("%s Looking customers up in Stripe directly.", err)
        return None


@asynccontextmanager
async def open_service(
    settings: Settings, *, verify_permissions: bool = False
) -> AsyncIterator[BillingService]:
    """A BillingService over a checked key; its Stripe HTTP client is closed when the block ends."""
    key = check_key(settings)
    _check_api_base(settings)
    gateway = StripeGateway.from_settings(settings)
    try:
        if verify_permissions:
            await gateway.verify_permissions()
        store = await _open_store(settings, gateway, key)
        try:
            yield BillingService(
                gateway,
                store,
                max_staleness=timedelta(seconds=settings.max_staleness_seconds),
            )
        finally:
            if store is not None:
                await store.aclose()
    finally:
        await gateway.aclose()
