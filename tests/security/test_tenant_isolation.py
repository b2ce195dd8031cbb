"""Two Stripe accounts on one Redis (same server, same key prefix) never see each other's data.

Two runtimes with different ``STRIPE_ACCOUNT_ID`` over the same sandbox: a customer one of them cached
is not in the other's cache (lookups and ``billing status``), a webhook queued by one is not in the
other's stream, and every key either writes carries its own tenant.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import stripe
from typer.testing import CliRunner

from billing.sync.webhook import WebhookIngest
from bot.cli import build_cli
from bot.runtime import Runtime, load_settings, open_runtime
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle

ACCOUNTS = ("acct_tenantAlpha", "acct_tenantBravo")
SECRET = f"whsec_{secrets.token_hex(12)}"


def env_for(sandbox: SandboxHandle, redis_url: str, prefix: str, account: str) -> dict[str, str]:
    return {"STRIPE_API_KEY": sandbox.api_key, "STRIPE_API_BASE": sandbox.url, "REDIS_URL": redis_url,
            "BILLING_KEY_PREFIX": prefix, "STRIPE_ACCOUNT_ID": account, "BILLING_STRIPE_RATE": "1000",
            "BILLING_STRIPE_RETRIES": "1"}


@pytest.fixture
async def tenants(sandbox: SandboxHandle, redis_url: str, key_prefix: str) -> AsyncIterator[list[Runtime]]:
    try:
        async with AsyncExitStack() as stack:
            yield [await stack.enter_async_context(open_runtime(load_settings(
                **env_for(sandbox, redis_url, key_prefix, account)))) for account in ACCOUNTS]
    finally:
        await unlink_prefix(redis_url, key_prefix)


def status_of(sandbox: SandboxHandle, redis_url: str, prefix: str, account: str) -> dict[str, Any]:
    """``billing status --json`` for one account."""
    result = CliRunner().invoke(build_cli(), ["status", "--json"],
                                env=env_for(sandbox, redis_url, prefix, account))
    assert result.exit_code == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def signed(event: dict[str, Any]) -> tuple[bytes, str]:
    body = json.dumps(event).encode()
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{body.decode()}", SECRET)
    return body, f"t={timestamp},v1={signature}"


async def test_two_accounts_on_one_redis_never_see_each_others_keys(
    tenants: list[Runtime], sandbox: SandboxHandle, redis_url: str, key_prefix: str,
) -> None:
    alpha, bravo = tenants
    assert alpha.store is not None and bravo.store is not None
    assert alpha.store.tenant.account_id == ACCOUNTS[0] and bravo.store.tenant.account_id == ACCOUNTS[1]

    # Alpha caches Jane; Bravo's cache does not have her, by id, by email or in its counts.
    first = await alpha.default.lookup("jane@acme.com", user="alpha", surface="cli")
    assert first.found and first.customer is not None
    jane = first.customer.id
    assert (await alpha.default.lookup("jane@acme.com", user="alpha", surface="cli")).source == "cache"
    assert await alpha.store.get_context(jane) is not None
    assert await bravo.store.get_context(jane) is None
    # One at a time: CliRunner swaps the process's stdout while it runs.
    alpha_status = await asyncio.to_thread(status_of, sandbox, redis_url, key_prefix, ACCOUNTS[0])
    bravo_status = await asyncio.to_thread(status_of, sandbox, redis_url, key_prefix, ACCOUNTS[1])
    assert alpha_status["account"] == ACCOUNTS[0] and alpha_status["customers_cached"] >= 1
    assert bravo_status["account"] == ACCOUNTS[1] and bravo_status["customers_cached"] == 0
    sandbox.control.clear_requests()
    answer = await bravo.default.lookup("jane@acme.com", user="bravo", surface="cli")
    assert answer.found and answer.source != "cache"
    assert sandbox.control.requests(), "Bravo answered from somewhere else than Stripe"

    # A webhook queued by Alpha's endpoint lands in Alpha's stream only.
    body, signature = signed({"id": "evt_alpha_only", "type": "customer.updated", "livemode": False,
                              "object": "event", "created": int(time.time()),
                              "data": {"object": {"id": jane, "object": "customer"}}})
    result = await WebhookIngest(alpha.store, SECRET).handle(body, signature)
    assert result.outcome == "queued", result
    assert alpha.store.stream_key != bravo.store.stream_key
    alpha_events = await alpha.store.client.xrange(alpha.store.stream_key)
    assert [fields[b"e"] for _id, fields in alpha_events] == [body]
    assert await bravo.store.client.xlen(bravo.store.stream_key) == 0

    # Every key under the shared prefix belongs to exactly one tenant, and each tenant wrote some.
    keys = [key.decode() async for key in alpha.store.client.scan_iter(match=f"{key_prefix}:*", count=1000)]
    owners = {account: [k for k in keys if k.startswith(f"{key_prefix}:{account}:test:")]
              for account in ACCOUNTS}
    assert sorted(owners[ACCOUNTS[0]] + owners[ACCOUNTS[1]]) == sorted(keys), (
        [k for k in keys if not any(k in owned for owned in owners.values())])
    assert owners[ACCOUNTS[0]] and owners[ACCOUNTS[1]]
    assert alpha.store.stream_key in owners[ACCOUNTS[0]]
    assert any(jane in key for key in owners[ACCOUNTS[1]])  # Bravo's own copy, under Bravo
