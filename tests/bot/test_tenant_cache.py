"""Issue #9, items 1 and 2: which Stripe account the cache belongs to.

1. A cached ``billing lookup`` never waits on Stripe: the tenant comes from STRIPE_ACCOUNT_ID or from
   what Redis remembers for the key, so with Stripe hanging the cached card still answers at once.
2. Rolling the key keeps the cache (contexts, dedupe markers, sent alerts): the tenant is the
   account, not a hash of the key, whenever the account can be known.

Real parts: the Stripe sandbox, the shared Redis under this test's key prefix (unlinked afterwards),
and for item 1 the installed ``billing`` console script as a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import stripe
from stripe._account_service import AccountService

from billing.cache.connections import open_redis
from billing.domain.models import BillingContext
from billing.errors import ConfigurationError
from billing.ports import Tenant
from bot.runtime import load_settings, open_runtime
from sandbox.core import ACCOUNT_ID
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle

BILLING = Path(sys.executable).with_name("billing")
OUR_VARIABLES = ("STRIPE_", "BILLING_", "REDIS_", "SLACK_")
ROLLED_KEY = "rk_test_sandboxBillingLensRolled0002"
HIT_WITHIN_SECONDS = 5.0  # the done-when is 1 s for the whole process; generous for a loaded machine


@pytest.fixture
async def prefix(redis_url: str, key_prefix: str) -> AsyncIterator[str]:
    """This test's key prefix on the shared Redis; its keys (and only those) are unlinked afterwards."""
    yield key_prefix
    await unlink_prefix(redis_url, key_prefix)


# --- item 1 -----------------------------------------------------------------------------------------


def billing(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    return subprocess.run([str(BILLING), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def cached_by_a_first_lookup(
    sandbox: SandboxHandle, redis_url: str, prefix: str, account: str
) -> dict[str, str]:
    """The CLI's settings, with jane@acme.com cached by a first ``billing lookup`` (which asked Stripe);
    the account is ``configured`` (STRIPE_ACCOUNT_ID) or ``remembered`` from that first run."""
    env = {"STRIPE_API_KEY": sandbox.api_key, "STRIPE_API_BASE": sandbox.url, "REDIS_URL": redis_url,
           "BILLING_KEY_PREFIX": prefix}
    if account == "configured":
        env["STRIPE_ACCOUNT_ID"] = ACCOUNT_ID
    first = billing(["lookup", "jane@acme.com", "--json"], env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["source"] == "stripe"
    return env


@pytest.mark.parametrize("account", ["remembered", "configured"])
def test_a_cached_lookup_answers_at_once_while_stripe_hangs(
    sandbox: SandboxHandle, redis_url: str, prefix: str, account: str
) -> None:
    # The product's defaults for timeout and retries: a hung Stripe costs 4 attempts × 10 s.
    env = cached_by_a_first_lookup(sandbox, redis_url, prefix, account)

    sandbox.control.set_faults(latency_ms=60_000)  # Stripe accepts connections and never answers
    started = time.monotonic()
    second = billing(["lookup", "jane@acme.com", "--json"], env)
    elapsed = time.monotonic() - started
    print(f"\ncached lookup, Stripe hanging, tenant {account}: {elapsed:.2f} s (whole process)")
    assert second.returncode == 0, second.stderr
    body = json.loads(second.stdout)
    assert (body["source"], body["status"]) == ("cache", "past_due")
    assert elapsed < HIT_WITHIN_SECONDS


# --- item 2 -----------------------------------------------------------------------------------------

# What Stripe answers a restricted key on GET /v1/account: a 403 that names the account.
NAMED_403 = ("The provided key 'rk_test_****************************0002' does not have the required "
             f"permissions for this endpoint on account '{ACCOUNT_ID}'. Having the "
             "'rak_accounts_kyc_basic_read' permission would allow this request to continue.")
UNNAMED_403 = ("This is a restricted API key, but the required permissions are not available for use "
               "by restricted keys.")


def forbid_account_reads(monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    """Restricted keys: GET /v1/account answers 403 (everything else reaches the sandbox)."""

    async def forbidden(self: AccountService, *args: Any, **kwargs: Any) -> Any:
        raise stripe.PermissionError(message, http_status=403)

    monkeypatch.setattr(AccountService, "retrieve_current_async", forbidden)


async def look_up(sandbox: SandboxHandle, redis_url: str, prefix: str, key: str, **extra: str,
                  ) -> tuple[Tenant, BillingContext, list[bool]]:
    """A lookup of jane in a fresh runtime with ``key``: its tenant, the card, and whether the
    dedupe marker of ``evt_before_roll`` is visible to it."""
    settings = load_settings(STRIPE_API_KEY=key, STRIPE_API_BASE=sandbox.url, REDIS_URL=redis_url,
                             BILLING_KEY_PREFIX=prefix, BILLING_STRIPE_RETRIES="0", **extra)
    async with open_runtime(settings) as runtime:
        store = runtime.store
        assert store is not None
        context = await runtime.default.lookup("jane@acme.com", user="test", surface="cli")
        return store.tenant, context, await store.dedupe.done(["evt_before_roll"])


async def mark_event_done(redis_url: str, tenant: Tenant, prefix: str) -> None:
    client = await open_redis(redis_url)
    try:  # what the worker writes once it applied an event
        await client.set(f"{prefix}:{tenant.key}:evt:evt_before_roll", 1, ex=3600)
    finally:
        await client.aclose()


@pytest.mark.parametrize("account", ["configured", "readable", "named-in-403"])
async def test_a_key_roll_keeps_the_cache_and_the_dedupe_markers(
    sandbox: SandboxHandle, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, account: str
) -> None:
    extra = {"STRIPE_ACCOUNT_ID": ACCOUNT_ID} if account == "configured" else {}
    if account == "named-in-403":
        forbid_account_reads(monkeypatch, NAMED_403)
    tenant, context, _ = await look_up(sandbox, redis_url, prefix, sandbox.api_key, **extra)
    assert tenant == Tenant(ACCOUNT_ID, livemode=False)
    assert context.source == "stripe"
    await mark_event_done(redis_url, tenant, prefix)

    rolled, cached, done = await look_up(sandbox, redis_url, prefix, ROLLED_KEY, **extra)
    assert rolled == tenant
    assert cached.source == "cache" and cached.status == "past_due"
    assert done == [True]  # a replayed event stays a duplicate: no second alert


async def test_an_account_nobody_names_falls_back_to_the_key_and_says_so_once(
    sandbox: SandboxHandle, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    forbid_account_reads(monkeypatch, UNNAMED_403)
    caplog.set_level(logging.WARNING)
    tenant, _, _ = await look_up(sandbox, redis_url, prefix, sandbox.api_key)
    assert tenant.account_id.startswith("key_")
    warnings = [r.getMessage() for r in caplog.records if "STRIPE_ACCOUNT_ID" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "acct_" in warnings[0] and sandbox.api_key not in warnings[0]

    caplog.clear()
    again, context, _ = await look_up(sandbox, redis_url, prefix, sandbox.api_key)
    assert again == tenant and context.source == "cache"  # remembered: neither asked nor warned again
    assert not [r for r in caplog.records if "STRIPE_ACCOUNT_ID" in r.getMessage()]


# --- item 5: a stale card is said on stderr, once -------------------------------------------------------


def test_a_stale_card_says_so_on_stderr_and_in_its_header(
    sandbox: SandboxHandle, redis_url: str, prefix: str
) -> None:
    env = {"STRIPE_API_KEY": sandbox.api_key, "STRIPE_API_BASE": sandbox.url, "REDIS_URL": redis_url,
           "BILLING_KEY_PREFIX": prefix, "BILLING_STRIPE_RETRIES": "0"}
    first = billing(["lookup", "jane@acme.com", "--json"], env)
    assert first.returncode == 0, first.stderr
    sandbox.control.set_faults(error_probability=1.0, error_status=503)  # Stripe down
    stale = {**env, "BILLING_MAX_STALENESS": "0"}  # every cached card is past its freshness

    card = billing(["lookup", "jane@acme.com"], stale)
    assert card.returncode == 0, card.stderr
    notice = r"Stripe did not answer; showing the card cached \d+ s ago\.\n"
    assert re.fullmatch(notice, card.stderr), card.stderr
    assert "STALE" in card.stdout.splitlines()[0]

    as_json = billing(["lookup", "jane@acme.com", "--json"], stale)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["stale"] is True
    assert as_json.stderr.startswith("Stripe did not answer; showing the card cached ")

    sandbox.control.clear_faults()
    fresh = billing(["lookup", "jane@acme.com"], env)
    assert fresh.returncode == 0 and fresh.stderr == "" and "STALE" not in fresh.stdout


# --- item 2: a configured account is checked off the hit path (serve, worker, backfill) ----------------


async def test_a_configured_account_the_key_does_not_belong_to_is_refused_at_start(
    sandbox: SandboxHandle, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_account_reads(monkeypatch, NAMED_403)  # a restricted key: the 403 names the account
    wrong = load_settings(STRIPE_API_KEY=sandbox.api_key, STRIPE_API_BASE=sandbox.url, REDIS_URL=redis_url,
                          BILLING_KEY_PREFIX=prefix, STRIPE_ACCOUNT_ID="acct_1SomeoneElse")
    with pytest.raises(ConfigurationError) as caught:
        async with open_runtime(wrong, verify_permissions=True):
            pass
    assert "STRIPE_ACCOUNT_ID" in str(caught.value) and ACCOUNT_ID in str(caught.value)

    right = wrong.model_copy(update={"stripe_account_id": ACCOUNT_ID})
    async with open_runtime(right, verify_permissions=True) as runtime:
        assert runtime.default.tenant == Tenant(ACCOUNT_ID, livemode=False)
