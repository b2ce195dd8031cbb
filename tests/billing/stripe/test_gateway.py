"""The Stripe gateway through the real SDK, over real HTTP, against the sandbox."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing.config import Settings
from billing.domain.snapshot import PREVIEW_FIELD
from billing.errors import ConfigurationError, StripeUnavailableError
from billing.stripe.gateway import (
    PERMISSIONS,
    RetryPolicy,
    StripeGateway,
    TokenBucket,
    TTLCache,
    check_api_key,
    check_key,
    key_account_id,
)

FAST = RetryPolicy(attempts=4, base_seconds=0.001, cap_seconds=0.01)


def gateway_for(sandbox: Any, key: str | None = None, **options: Any) -> StripeGateway:
    options.setdefault("retry", FAST)
    options.setdefault("rate_limit", 1000.0)
    return StripeGateway(key or sandbox.api_key, api_base=sandbox.url, **options)


@pytest.fixture
async def gateway(sandbox: Any) -> AsyncIterator[StripeGateway]:
    async with gateway_for(sandbox) as gw:
        yield gw


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- key checks ----------------------------------------------------------------------------------


def test_missing_key_is_one_sentence() -> None:
    with pytest.raises(ConfigurationError) as info:
        check_key(Settings(STRIPE_API_KEY=None))
    assert str(info.value) == "STRIPE_API_KEY is not set; give a restricted key (rk_test_… or rk_live_…)."


@pytest.mark.parametrize("key", ["sk_test_abc123SECRET", "sk_live_abc123SECRET"])
def test_secret_key_refused_unless_allowed(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        check_api_key(key)
    assert "BILLING_ALLOW_SECRET_KEY=1" in str(info.value)
    assert "abc123SECRET" not in str(info.value)
    assert check_api_key(key, allow_secret_key=True) == key


@pytest.mark.parametrize("key", ["pk_test_abc123SECRET", "abc123SECRET", "rk_abc123SECRET", "rk_test_", " "])
def test_anything_else_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        check_api_key(key)
    assert "abc123SECRET" not in str(info.value)
    assert "rk_test_" in str(info.value)


def test_gateway_refuses_a_secret_key_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="full secret key"):
        StripeGateway("sk_test_abc123SECRET")


def test_key_derived_tenant_id_is_stable_and_hides_the_key() -> None:
    first = key_account_id("rk_test_abc123SECRET")
    assert first == key_account_id("rk_test_abc123SECRET")
    assert first != key_account_id("rk_test_other")
    assert first.startswith("key_") and len(first) == 16 and "abc123" not in first


# --- small parts ---------------------------------------------------------------------------------


def test_ttl_cache_is_bounded_and_expires() -> None:
    cache: TTLCache[str, int] = TTLCache(maxsize=2, ttl=60)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.set("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)
    expired: TTLCache[str, int] = TTLCache(maxsize=2, ttl=-1)
    expired.set("a", 1)
    assert expired.get("a") is None


async def test_token_bucket_hands_out_its_burst_then_refills() -> None:
    bucket = TokenBucket(rate=10_000, burst=3)
    for _ in range(10):  # more than the burst: must wait for refills rather than fail
        await bucket.acquire()
    with pytest.raises(ConfigurationError, match="BILLING_STRIPE_RATE"):
        TokenBucket(rate=0)


# --- finding customers ----------------------------------------------------------------------------


async def test_list_by_email_is_exact_and_expands_subscriptions(gateway: StripeGateway) -> None:
    found = await gateway.list_customers_by_email("jane@acme.com")
    assert [c["email"] for c in found] == ["jane@acme.com"]
    assert [s["status"] for s in found[0]["subscriptions"]["data"]] == ["past_due"]
    assert await gateway.list_customers_by_email("Jane@Acme.com") == []


async def test_search_fallback_matches_case_insensitively(gateway: StripeGateway) -> None:
    found = await gateway.search_customers_by_email("mixed.case@example.com")
    assert [c["email"] for c in found] == ["Mixed.Case@Example.com"]
    assert await gateway.search_customers_by_email("nobody@example.com") == []


async def test_retrieve_customer_missing_or_deleted_is_none(gateway: StripeGateway) -> None:
    jane = (await gateway.list_customers_by_email("jane@acme.com"))[0]
    again = await gateway.retrieve_customer(jane["id"])
    assert again is not None and again["id"] == jane["id"]
    assert await gateway.retrieve_customer("cus_doesnotexist") is None
    assert await gateway.list_customers_by_email("deleted@example.com") == []


async def test_retrieve_any_resource_by_id(gateway: StripeGateway) -> None:
    jane = (await gateway.list_customers_by_email("jane@acme.com"))[0]
    sub_id = jane["subscriptions"]["data"][0]["id"]
    sub = await gateway.retrieve("subscriptions", sub_id)
    assert sub is not None and sub["id"] == sub_id and sub["customer"] == jane["id"]
    assert await gateway.retrieve("subscriptions", "sub_missing") is None


async def test_iter_objects_pages_through_everything_once(gateway: StripeGateway) -> None:
    paged = [c["id"] async for c in gateway.iter_objects("customers", {"limit": 3})]
    whole = [c["id"] async for c in gateway.iter_objects("customers", {"limit": 100})]
    assert len(paged) == len(set(paged)) > 20
    assert paged == whole


# --- one customer's data ----------------------------------------------------------------------


async def test_fetch_customer_data_for_jane(gateway: StripeGateway) -> None:
    jane = (await gateway.list_customers_by_email("jane@acme.com"))[0]
    data = await gateway.fetch_customer_data(jane)
    assert data.customer["id"] == jane["id"]
    assert [s["status"] for s in data.subscriptions] == ["past_due"]
    assert len(data.invoices) == 4 and {i["status"] for i in data.invoices} == {"paid", "open"}
    assert sorted(c["status"] for c in data.charges) == ["failed", "failed", "succeeded", "succeeded",
                                                         "succeeded"]
    created = [i["created"] for i in data.invoices]
    assert created == sorted(created, reverse=True)
    assert data.disputes == [] and data.credit_notes == []


async def test_products_are_fetched_only_to_name_a_price_without_nickname(
    sandbox: Any, gateway: StripeGateway
) -> None:
    jane = (await gateway.list_customers_by_email("jane@acme.com"))[0]
    assert (await gateway.fetch_customer_data(jane)).products == {}  # "Pro Monthly" names the plan
    price = jane["subscriptions"]["data"][0]["items"]["data"][0]["price"]
    sandbox.control.update(price["id"], {"nickname": None})
    data = await gateway.fetch_customer_data(jane)
    assert data.products[price["product"]]["name"]


async def test_references_tiers_coupons_disputes_and_credit_notes(gateway: StripeGateway) -> None:
    async def data_for(email: str) -> Any:
        return await gateway.fetch_customer_data((await gateway.list_customers_by_email(email))[0])

    tiered = await data_for("tiered@example.com")
    price_id = tiered.subscriptions[0]["items"]["data"][0]["price"]["id"]
    assert len(tiered.prices[price_id]["tiers"]) == 3
    coupon = await data_for("coupon@example.com")
    assert coupon.coupons["FOREVER20"]["percent_off"] == 20
    loyal = await data_for("custdiscount@example.com")
    assert "LOYAL10" in loyal.coupons
    disputed = await data_for("disputed@example.com")
    assert [d["status"] for d in disputed.disputes] == ["lost"]
    credited = await data_for("creditnote@example.com")
    assert len(credited.credit_notes) == 1


async def test_cold_lookup_by_email_uses_four_requests_and_one_preview_per_live_subscription(
    sandbox: Any, gateway: StripeGateway
) -> None:
    # a fresh gateway (as in every one-shot `billing lookup`): no price, product or coupon cached.
    # The default card comes expanded with the customer and subscriptions (no request); the next
    # invoice needs Stripe's preview, which nothing can expand: one POST per live subscription, sent
    # with the three lists (the customer came with its live subscriptions), so no longer to wait.
    sandbox.control.clear_requests()
    jane = (await gateway.list_customers_by_email("jane@acme.com"))[0]
    data = await gateway.fetch_customer_data(jane)

    paths = sorted(r["path"] for r in sandbox.control.requests())
    assert paths == [
        "/v1/charges", "/v1/customers", "/v1/invoices", "/v1/invoices/create_preview", "/v1/subscriptions"
    ]
    [sub] = data.subscriptions
    assert sub[PREVIEW_FIELD]["amount_due"] == 2900


# --- failures ----------------------------------------------------------------------------------


async def test_rate_limits_and_server_errors_are_retried(sandbox: Any, gateway: StripeGateway) -> None:
    sandbox.control.set_faults(rate_limit_every=2)
    assert len(await gateway.list_customers_by_email("jane@acme.com")) == 1
    assert (await gateway.list_customers_by_email("bigco@example.com"))[0]["name"] == "BigCo Inc"
    sandbox.control.set_faults(error_every=2, error_status=503)
    jane = (await gateway.list_customers_by_email("jane@acme.com"))[0]
    data = await gateway.fetch_customer_data(jane)
    assert len(data.invoices) == 4
    statuses = [r["status"] for r in sandbox.control.requests()]
    assert 429 in statuses and 503 in statuses


async def test_persistent_server_errors_become_stripe_unavailable(
    sandbox: Any, gateway: StripeGateway
) -> None:
    sandbox.control.set_faults(error_probability=1.0, error_status=502)
    sandbox.control.clear_requests()
    with pytest.raises(StripeUnavailableError) as info:
        await gateway.list_customers_by_email("jane@acme.com")
    assert str(info.value) == (
        "Stripe did not answer listing customers after 4 attempts (HTTP 502); try again shortly."
    )
    assert len(sandbox.control.requests()) == 4


async def test_a_slow_stripe_times_out_is_retried_then_unavailable(sandbox: Any) -> None:
    sandbox.control.set_faults(latency_ms=400)
    async with StripeGateway(sandbox.api_key, api_base=sandbox.url, timeout_seconds=0.1,
                             retry=RetryPolicy(attempts=2, base_seconds=0.001, cap_seconds=0.01)) as gw:
        with pytest.raises(StripeUnavailableError, match="timed out") as info:
            await gw.retrieve_customer("cus_123")
    assert "after 2 attempts" in str(info.value)
    sandbox.control.clear_faults()


async def test_unreachable_stripe_becomes_stripe_unavailable() -> None:
    async with StripeGateway(
        "rk_test_abc123SECRET", api_base=f"http://127.0.0.1:{closed_port()}", retry=FAST
    ) as gw:
        with pytest.raises(StripeUnavailableError, match="could not connect"):
            await gw.retrieve_customer("cus_123")


async def test_revoked_key_is_one_sentence_without_the_key(
    sandbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    key = "rk_test_revokedSECRET42"
    sandbox.control.revoke_key(key)
    caplog.set_level(logging.DEBUG)
    async with gateway_for(sandbox, key) as gw:
        with pytest.raises(ConfigurationError) as info:
            await gw.list_customers_by_email("jane@acme.com")
    assert str(info.value) == "Stripe refused the API key (401): check STRIPE_API_KEY."
    assert "SECRET42" not in caplog.text and "revoked" not in caplog.text


async def test_missing_permission_is_named(sandbox: Any, caplog: pytest.LogCaptureFixture) -> None:
    key = "rk_test_narrowSECRET42"
    granted = [p for p in PERMISSIONS.values() if p != "rak_subscription_read"]
    sandbox.control.set_key_permissions(key, granted)
    caplog.set_level(logging.DEBUG)
    async with gateway_for(sandbox, key) as gw:
        with pytest.raises(ConfigurationError) as info:
            await gw.verify_permissions()
        assert str(info.value) == (
            "The Stripe key is missing the rak_subscription_read permission (403); "
            "give the restricted key read access to subscriptions."
        )
        jane = (await gw.list_customers_by_email("jane@acme.com"))[0]
        with pytest.raises(ConfigurationError, match="rak_subscription_read"):
            await gw.fetch_customer_data(jane)
    assert "SECRET42" not in caplog.text and "narrow" not in caplog.text


async def requests_settled(sandbox: Any, within: float = 15.0) -> None:
    """Wait until no request is in flight and the request log stops growing (two equal reads 100 ms
    apart): a request an earlier test left held by a latency fault is logged only when answered."""
    import time

    deadline = time.monotonic() + within
    seen = len(sandbox.control.requests())
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = len(sandbox.control.requests())
        if now == seen and sandbox.control.in_flight() == 0:
            return
        seen = now


async def test_full_key_passes_the_permission_check(sandbox: Any, gateway: StripeGateway) -> None:
    # A key with every read permission passes, after really asking Stripe: one limit=1 read of
    # each needed resource, each answered 200, and nothing else (never a write).
    await requests_settled(sandbox)  # an earlier test's requests still in flight must not count
    sandbox.control.clear_requests()
    assert await gateway.verify_permissions() is None
    probes = sorted((r["method"], r["path"], r["query"].get("limit"), r["status"])
                    for r in sandbox.control.requests())
    assert probes == sorted(("GET", f"/v1/{resource}", "1", 200) for resource in PERMISSIONS)


async def test_tenant_from_account_or_key(sandbox: Any, gateway: StripeGateway) -> None:
    tenant = await gateway.tenant()
    assert tenant.account_id.startswith("acct_") and tenant.livemode is False
    async with gateway_for(sandbox, sandbox.live_api_key) as live:
        live_tenant = await live.tenant()
    assert live_tenant.livemode is True and live_tenant.account_id == tenant.account_id
