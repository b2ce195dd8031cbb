"""BillingService.lookup over the real gateway and sandbox, with a dict-backed ContextStore double."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing.domain.models import BillingContext
from billing.domain.snapshot import CustomerData
from billing.errors import BadQueryError, StoreUnavailableError, StripeUnavailableError
from billing.service import BillingService
from billing.stripe.gateway import RetryPolicy, StripeGateway

FAST = RetryPolicy(attempts=3, base_seconds=0.001, cap_seconds=0.01)


class DictStore:
    """The ContextStore port over plain dicts (a test double of the port, not of our logic)."""

    def __init__(self) -> None:
        self.contexts: dict[str, BillingContext] = {}
        self.emails: dict[str, set[str]] = {}
        self.links: dict[str, str] = {}
        self.saved: list[str] = []
        self.fail_reads = False
        self.fail_writes = False

    async def get_context(self, customer_id: str) -> BillingContext | None:
        if self.fail_reads:
            raise StoreUnavailableError("Redis is unavailable.")
        return self.contexts.get(customer_id)

    async def customer_ids_for_email(self, email: str) -> list[str]:
        if self.fail_reads:
            raise StoreUnavailableError("Redis is unavailable.")
        return sorted(self.emails.get(email.lower(), set()))

    async def linked_customer(self, key: str) -> str | None:
        if self.fail_reads:
            raise StoreUnavailableError("Redis is unavailable.")
        return self.links.get(key)

    async def save_customer(
        self, data: CustomerData, context: BillingContext, *, fetched_at: float | None = None
    ) -> None:
        if self.fail_writes:
            raise StoreUnavailableError("Redis is unavailable.")
        assert context.customer is not None
        self.contexts[context.customer.id] = context
        email = data.customer.get("email")
        if email:
            self.emails.setdefault(email.lower(), set()).add(context.customer.id)
        self.saved.append(context.customer.id)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def gateway(sandbox: Any) -> AsyncIterator[StripeGateway]:
    async with StripeGateway(sandbox.api_key, api_base=sandbox.url, retry=FAST, rate_limit=1000) as gw:
        yield gw


@pytest.fixture
def store() -> DictStore:
    return DictStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(gateway: StripeGateway, store: DictStore, clock: Clock) -> BillingService:
    return BillingService(gateway, store, clock=clock, max_staleness=timedelta(hours=1))


async def test_email_lookup_builds_jane_from_stripe(service: BillingService, store: DictStore) -> None:
    context = await service.lookup("<mailto:jane@acme.com|jane@acme.com>")
    assert context.found and context.source == "stripe"
    assert context.query == "jane@acme.com"
    assert context.match is not None
    assert (context.match.method, context.match.confidence) == ("email", "exact")
    assert context.customer is not None and context.customer.name == "Jane Doe"
    assert (context.status, context.plan, context.mrr, context.payment_status) == (
        "past_due", "Pro Monthly", {"usd": 2900}, "failed"
    )
    assert store.saved == [context.customer.id]


async def test_lowercased_email_then_search_fallback(service: BillingService) -> None:
    lowered = await service.lookup("Jane@ACME.com")
    assert lowered.match is not None and lowered.match.method == "email_lowercase"
    assert lowered.match.confidence == "case_insensitive"
    assert lowered.customer is not None and lowered.customer.email == "jane@acme.com"
    searched = await service.lookup("MIXED.CASE@example.com")
    assert searched.match is not None and (searched.match.method, searched.match.confidence) == (
        "search", "case_insensitive"
    )
    assert searched.customer is not None and searched.customer.email == "Mixed.Case@Example.com"
    assert searched.mrr == {"usd": 900}


async def test_customer_id_lookup(service: BillingService) -> None:
    jane = await service.lookup("jane@acme.com")
    assert jane.customer is not None
    by_id = await service.lookup(f" '{jane.customer.id}' ", refresh=True)
    assert by_id.match is not None
    assert (by_id.match.method, by_id.match.confidence) == ("customer_id", "exact")
    assert by_id.customer is not None and by_id.customer.id == jane.customer.id


async def test_unknown_deleted_and_missing_id_are_not_found(service: BillingService) -> None:
    for query in ("nobody@example.com", "deleted@example.com", "cus_doesnotexist"):
        context = await service.lookup(query)
        assert context.to_json_dict() == {"found": False, "query": query}


async def test_bad_query_raises_before_any_request(sandbox: Any, service: BillingService) -> None:
    sandbox.control.clear_requests()
    with pytest.raises(BadQueryError):
        await service.lookup("not an email")
    assert sandbox.control.requests() == []


async def test_two_customers_on_one_email_rank_and_show_the_other(service: BillingService) -> None:
    context = await service.lookup("shared@example.com")
    assert context.customer is not None and context.customer.name == "Shared Older"  # paying beats newer
    assert [(o.name, o.status) for o in context.other_customers] == [("Shared Newer", None)]


async def test_live_key_sees_the_live_customer(sandbox: Any) -> None:
    async with StripeGateway(sandbox.live_api_key, api_base=sandbox.url, retry=FAST) as live:
        context = await BillingService(live).lookup("both@example.com")
    assert context.customer is not None and context.customer.livemode is True
    assert "/test/" not in context.customer.dashboard_url


async def test_second_lookup_is_served_from_the_store_without_stripe(
    sandbox: Any, service: BillingService
) -> None:
    first = await service.lookup("jane@acme.com")
    sandbox.control.clear_requests()
    second = await service.lookup("Jane@Acme.com")
    assert sandbox.control.requests() == []
    assert second.source == "cache" and second.as_of == first.as_of
    assert second.match is not None and second.match.method == "email_lowercase"
    exact = await service.lookup("jane@acme.com")
    assert exact.match is not None and (exact.match.method, exact.match.confidence) == ("email", "exact")
    assert exact.mrr == first.mrr


async def test_cached_email_with_two_customers_keeps_the_ranking(
    sandbox: Any, service: BillingService
) -> None:
    context = await service.lookup("shared@example.com")
    assert context.customer is not None and len(context.other_customers) == 1
    other = context.other_customers[0]
    sandbox.control.clear_requests()
    only_primary_cached = await service.lookup("shared@example.com")
    assert sandbox.control.requests() == []
    assert only_primary_cached.source == "cache" and only_primary_cached.customer is not None
    assert only_primary_cached.customer.id == context.customer.id
    assert [o.id for o in only_primary_cached.other_customers] == [other.id]

    await service.lookup(other.id)  # now both customers are cached under the email
    both_cached = await service.lookup("shared@example.com")
    assert both_cached.source == "cache" and both_cached.customer is not None
    assert both_cached.customer.id == context.customer.id
    assert [o.id for o in both_cached.other_customers] == [other.id]


async def test_refresh_skips_the_store(sandbox: Any, service: BillingService) -> None:
    await service.lookup("jane@acme.com")
    sandbox.control.clear_requests()
    refreshed = await service.lookup("jane@acme.com", refresh=True)
    assert refreshed.source == "stripe" and sandbox.control.requests() != []


async def test_stale_context_is_refreshed_or_served_stale_when_stripe_is_down(
    sandbox: Any, service: BillingService, clock: Clock
) -> None:
    first = await service.lookup("jane@acme.com")
    clock.now += timedelta(hours=2)
    refreshed = await service.lookup("jane@acme.com")
    assert refreshed.source == "stripe" and refreshed.as_of == clock.now and not refreshed.stale
    clock.now += timedelta(hours=2)
    sandbox.control.set_faults(error_probability=1.0, error_status=500)
    stale = await service.lookup("jane@acme.com")
    assert stale.source == "cache" and stale.stale and stale.as_of == refreshed.as_of != first.as_of


async def test_stripe_down_without_cache_raises(sandbox: Any, service: BillingService) -> None:
    sandbox.control.set_faults(error_probability=1.0, error_status=500)
    with pytest.raises(StripeUnavailableError):
        await service.lookup("jane@acme.com")


async def test_store_failures_fall_back_to_stripe(service: BillingService, store: DictStore) -> None:
    store.fail_reads = True
    store.fail_writes = True
    context = await service.lookup("jane@acme.com")
    assert context.found and context.source == "stripe" and store.saved == []


async def test_manual_link_wins(service: BillingService, store: DictStore) -> None:
    bigco = await service.lookup("bigco@example.com")
    assert bigco.customer is not None
    store.links["jane@acme.com"] = bigco.customer.id
    linked = await service.lookup("jane@acme.com")
    assert linked.customer is not None and linked.customer.id == bigco.customer.id
    assert linked.match is not None and (linked.match.method, linked.match.confidence) == (
        "manual_link", "manual"
    )
    fresh = await service.lookup("jane@acme.com", refresh=True)
    assert fresh.source == "stripe" and fresh.customer is not None and fresh.customer.id == bigco.customer.id


async def test_works_without_a_store_and_context_for_customer(gateway: StripeGateway) -> None:
    service = BillingService(gateway)
    context = await service.lookup("bigco@example.com")
    assert context.customer is not None and context.mrr == {"usd": 125000}
    fresh = await service.context_for_customer(context.customer.id)
    assert fresh is not None and fresh.mrr == {"usd": 125000} and fresh.source == "stripe"
    assert await service.context_for_customer("cus_doesnotexist") is None
