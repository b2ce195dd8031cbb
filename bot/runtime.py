"""Composition root: settings in, one ``Runtime`` out (gateway, store, service, rules, audit), closed on exit.

``serve``, ``worker``, the CLI commands, the Slack app and the LLM tools all open Stripe and Redis
through ``open_runtime``; nothing else builds a gateway or a store.

The tenant (which Stripe account a request reads) is an explicit value: ``Runtime.for_team`` maps a
Slack team to its ``TenantRuntime``. Today one process serves one Stripe account; the seam is where
an installation store (Slack OAuth) will map many teams to their accounts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from billing.cache.audit import AuditLog, Outcome, Surface
from billing.cache.connections import REDIS_ERRORS
from billing.cache.store import RedisStore, open_store, open_tenant_store
from billing.config import Settings
from billing.domain.matching import without_secrets
from billing.domain.models import BillingContext
from billing.errors import BadQueryError, ConfigurationError, StoreUnavailableError, StripeUnavailableError
from billing.ports import Tenant
from billing.service import BillingService
from billing.stripe.gateway import StripeGateway, check_key, key_account_id, key_livemode

if TYPE_CHECKING:  # loaded by the first rules() call: a CLI lookup never needs the rules (start-up time)
    from rules import RulesFile, RulesWatcher

log = logging.getLogger("billing.runtime")


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable a validation error is about (its alias, never the python name)."""
    name = str(loc[0]) if loc else ""
    field_info = Settings.model_fields.get(name)
    if field_info is not None and field_info.alias:
        return field_info.alias
    return name or "A setting"


def _sentence(error: ErrorDetails) -> str:
    """One sentence naming the variable; the offending value is never repeated (it may be a secret)."""
    variable = _variable(error["loc"])
    if error["type"] == "value_error":
        # Our own validators name the variable (and only echo what is safe to show).
        reason = str(error.get("ctx", {}).get("error", error["msg"]))
        if reason.startswith(variable):
            return reason.rstrip(".") + "."
    else:
        reason = str(error["msg"]).split(",")[0]  # "Input should be a valid number, unable to …"
        reason = reason[:1].lower() + reason[1:]
    return f"{variable} is invalid: {reason.rstrip('.')}."


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (``overrides`` by env name win), every value checked; a bad
    value is ConfigurationError: one sentence naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        sentence = _sentence(err.errors()[0])
        if err.error_count() > 1:
            sentence = f"{sentence[:-1]} (and {err.error_count() - 1} more)."
        raise ConfigurationError(sentence) from None


def _configured_tenant(settings: Settings, key: str) -> Tenant | None:
    account = settings.stripe_account_id  # its shape is checked with every other setting
    if not account:
        return None
    return Tenant(account_id=account, livemode=key_livemode(key))


async def _check_configured_account(gateway: StripeGateway, configured: Tenant | None) -> None:
    """STRIPE_ACCOUNT_ID against the account Stripe names for the key, for the commands that check the
    key at start (serve, worker, backfill): off the lookup path, which trusts the setting. A wrong id
    would file this account's events and cards under another account's cache."""
    if configured is None:
        return
    named = await gateway.named_account()
    if named is not None and named != configured.account_id:
        raise ConfigurationError(
            f"STRIPE_ACCOUNT_ID is {configured.account_id} but the Stripe key belongs to {named}; "
            "set STRIPE_ACCOUNT_ID to the key's account."
        )


@dataclass
class TenantRuntime:
    """Everything that reads one Stripe account's billing data: its service, store and audit trail."""

    tenant: Tenant
    service: BillingService
    store: RedisStore | None
    audit: AuditLog | None
    # (surface, source, outcome, seconds) of every lookup: ``serve`` hooks its Prometheus metrics here.
    on_lookup: Callable[[str, str, str, float], None] | None = None

    async def lookup(
        self, query: str, *, user: str, surface: Surface, refresh: bool = False, team: str | None = None,
    ) -> BillingContext:
        """``BillingService.lookup`` plus one audit entry, whatever the outcome.

        Raises what the service raises (BadQueryError, StripeUnavailableError); the attempt is audited
        first. An audit trail that cannot be written never fails a lookup: it is logged.
        """
        started = time.perf_counter()
        try:
            context = await self.service.lookup(query, refresh=refresh)
        except BadQueryError:
            self._observe(surface, "none", "bad_query", started)
            await self.record(user=user, surface=surface, query=query, outcome="bad_query", team=team)
            raise
        except (StripeUnavailableError, StoreUnavailableError):
            self._observe(surface, "none", "unavailable", started)
            await self.record(user=user, surface=surface, query=query, outcome="unavailable", team=team)
            raise
        customer_id = context.customer.id if context.customer is not None else None
        outcome: Outcome = "found" if context.found else "not_found"
        self._observe(surface, context.source if context.found else "stripe", outcome, started)
        await self.record(user=user, surface=surface, query=query, team=team, outcome=outcome,
                          customer_id=customer_id)
        return context

    def _observe(self, surface: str, source: str, outcome: str, started: float) -> None:
        if self.on_lookup is not None:
            self.on_lookup(surface, source, outcome, time.perf_counter() - started)

    async def record(
        self, *, user: str, surface: Surface, query: str, outcome: Outcome,
        customer_id: str | None = None, team: str | None = None,
    ) -> None:
        if self.audit is None:
            return
        query = without_secrets(query)  # a pasted client secret is read as its id, never kept
        try:
            await self.audit.record(user=user, surface=surface, query=query, outcome=outcome,
                                    customer_id=customer_id, team=team)
        except REDIS_ERRORS as err:
            log.warning("audit entry not written (%s): %s looked up %r", type(err).__name__, user, query[:80])


@dataclass
class Runtime:
    """One process's shared parts. Build with ``open_runtime``; never at import time."""

    settings: Settings
    gateway: StripeGateway
    default: TenantRuntime
    _watcher: RulesWatcher | None = field(default=None, repr=False)

    def for_team(self, team_id: str | None) -> TenantRuntime:
        """The tenant a Slack team reads (one account per process today)."""
        del team_id
        return self.default

    @property
    def store(self) -> RedisStore | None:
        return self.default.store

    @property
    def service(self) -> BillingService:
        return self.default.service

    def rules(self) -> RulesFile:
        """The rules in force: loaded on first use, reloaded when the file changes (a bad edit keeps
        the previous rules; a bad file at first load raises ``RulesError``)."""
        if self._watcher is None:
            from rules import RulesWatcher, rules_path

            # ${VARS} in the rules come from the environment, and the settings given to this runtime
            # win (BILLING_ALERT_CHANNEL passed to load_settings reaches the default rules' alerts).
            env = dict(os.environ)
            if self.settings.alert_channel:
                env["BILLING_ALERT_CHANNEL"] = self.settings.alert_channel
            self._watcher = RulesWatcher(rules_path(self.settings.rules_file), env=env)
        return self._watcher.current()


async def _open_store(
    settings: Settings, gateway: StripeGateway, key: str, tenant: Tenant | None, *, required: bool,
) -> RedisStore | None:
    """The Redis context store. Not ``required``: None when Redis does not answer, and a lookup then
    asks Stripe, which is correct, only slower (the cache is an optimisation, never a dependency)."""
    try:
        if tenant is not None:
            return await open_store(
                settings.redis_url, tenant, prefix=settings.key_prefix, metadata_keys=settings.metadata_keys
            )
        return await open_tenant_store(
            settings.redis_url, gateway, key_account_id(key), prefix=settings.key_prefix,
            metadata_keys=settings.metadata_keys,
        )
    except StoreUnavailableError as err:
        if required:
            raise
        # One line, also on a one-shot command's stderr (see bot.cli_support.NOTICE_LOGGERS).
        log.warning("%s; looking customers up in Stripe directly, without the cache (check REDIS_URL).",
                    str(err).rstrip("."))
        return None


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, verify_permissions: bool = False, require_store: bool = False,
) -> AsyncIterator[Runtime]:
    """The shared runtime over a checked key; Stripe's HTTP client and Redis are closed at the end.

    ``require_store`` (serve, worker, backfill): Redis must answer. ``verify_permissions``: every
    read permission is probed once, so a missing one is one sentence at start-up, not mid-run.
    """
    key = check_key(settings)
    configured = _configured_tenant(settings, key)
    gateway = StripeGateway.from_settings(settings)
    try:
        if verify_permissions:
            await gateway.verify_permissions()
            await _check_configured_account(gateway, configured)
        store = await _open_store(settings, gateway, key, configured, required=require_store)
        if store is not None:
            # From here on the account's Stripe budget is shared with every other process of this
            # tenant (serve, worker, backfill); before (and without) Redis it is this process's own.
            store.share_rate_limits(gateway)
        try:
            tenant = store.tenant if store is not None else configured or await gateway.tenant()
            service = BillingService(
                gateway, store, max_staleness=timedelta(seconds=settings.max_staleness_seconds),
                metadata_keys=settings.metadata_keys,
            )
            audit = store.audit_log() if store is not None else None
            yield Runtime(settings, gateway, TenantRuntime(tenant, service, store, audit))
        finally:
            if store is not None:
                await store.aclose()
    finally:
        await gateway.aclose()


@asynccontextmanager
async def open_service(
    settings: Settings, *, verify_permissions: bool = False
) -> AsyncIterator[BillingService]:
    """The runtime's BillingService, for commands that need nothing else."""
    async with open_runtime(settings, verify_permissions=verify_permissions) as runtime:
        yield runtime.service
