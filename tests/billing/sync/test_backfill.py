"""Backfill against the Stripe sandbox over real HTTP and a real Redis (single server and cluster)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.cache.store import RedisStore
from billing.domain.builder import build_context
from billing.domain.models import Match
from billing.errors import StripeUnavailableError
from billing.stripe.gateway import RetryPolicy, StripeGateway
from billing.sync.backfill import (
    RESOURCES,
    UNWINDOWED,
    Backfill,
    Plan,
    SilentObserver,
    Window,
    owner_of,
    split_range,
    split_windows,
)
from sandbox.server import SandboxServer
from tests.fixtures_sandbox import TEST_KEY, SandboxHandle

DAY = 86_400


class FixedClock:
    """The sandbox builds its demo at the real time: backfill at one fixed instant just after it."""

    def __init__(self) -> None:
        self.now = int(time.time())

    def __call__(self) -> float:
        return float(self.now)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


# --- pure parts ----------------------------------------------------------------------------------


@given(start=st.integers(0, 2_000_000_000), span=st.integers(0, 10_000_000), parts=st.integers(1, 64))
def test_split_range_covers_the_range_exactly_once(start: int, span: int, parts: int) -> None:
    windows = split_range(start, start + span, parts)
    if span == 0:
        assert windows == []
        return
    assert windows[0][0] == start and windows[-1][1] == start + span
    assert all(lo < hi for lo, hi in windows)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    assert len(windows) == min(parts, span)


def test_split_range_refuses_zero_parts() -> None:
    with pytest.raises(ValueError):
        split_range(0, 10, 0)


def test_owner_of_objects() -> None:
    assert owner_of({"object": "customer", "id": "cus_1"}) == "cus_1"
    assert owner_of({"object": "invoice", "id": "in_1", "customer": "cus_2"}) == "cus_2"
    assert owner_of({"object": "charge", "id": "ch_1", "customer": {"id": "cus_3"}}) == "cus_3"
    assert owner_of({"object": "charge", "id": "ch_2", "customer": None}) is None


# --- against the sandbox ---------------------------------------------------------------------------


@pytest.fixture
async def gateway(sandbox_server: SandboxServer) -> AsyncIterator[StripeGateway]:
    gw = StripeGateway(
        TEST_KEY, api_base=sandbox_server.url, rate_limit=200,
        retry=RetryPolicy(attempts=2, base_seconds=0.01, cap_seconds=0.02),
    )
    try:
        yield gw
    finally:
        await gw.aclose()


async def listed(
    gateway: StripeGateway, resource: Any, extra: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    params = {"status": "all"} if resource == "subscriptions" else {}
    params |= extra or {}
    return [o async for o in gateway.iter_objects(resource, params)]


def comparable(context: Any) -> dict[str, Any]:
    data: dict[str, Any] = context.model_dump(mode="json")
    for volatile in ("as_of", "source", "query", "match", "other_customers"):
        data.pop(volatile, None)
    return data


async def test_backfill_builds_every_demo_customer_like_a_cold_lookup(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore, clock: FixedClock
) -> None:
    report = await Backfill(gateway, store, windows=3, clock=clock, previews=True).run()

    # as a lookup finds them: with the default card expanded
    card = {"expand": ["data.invoice_settings.default_payment_method"]}
    customers = await listed(gateway, "customers", card)
    assert report.contexts_built == len(customers) > 10
    assert report.fetched["customers"] == len(customers)
    assert report.fetched["subscriptions"] == len(await listed(gateway, "subscriptions"))
    assert (await store.health()).customers_cached == len(customers)
    now = datetime.fromtimestamp(clock.now, UTC)
    for customer in customers:
        cached = await store.get_context(customer["id"])
        assert cached is not None, customer["id"]
        cold = build_context(
            await gateway.fetch_customer_data(customer), query=customer["id"],
            match=Match(method="customer_id", confidence="exact"), now=now,
        )
        assert comparable(cached) == comparable(cold), customer["id"]
    assert len(await store.customer_ids_for_email("shared@example.com")) == 2
    jane = await store.customer_ids_for_email("JANE@acme.com")
    assert len(jane) == 1
    jane_context = await store.get_context(jane[0])
    assert jane_context is not None and jane_context.status == "past_due"
    health = await store.health()
    assert health.backfill_started_at == clock.now and health.backfill_finished_at == clock.now


async def test_a_default_backfill_asks_for_no_previews_and_labels_next_invoices_estimates(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore, clock: FixedClock
) -> None:
    # Issue #11: one preview per renewing subscription was most of a backfill's requests. By default
    # the card shows the next invoice estimated from the subscription, and says it is an estimate.
    sandbox.control.clear_requests()
    await Backfill(gateway, store, windows=3, clock=clock).run()
    paths = [r["path"] for r in sandbox.control.requests()]
    assert paths and not [p for p in paths if p.startswith("/v1/invoices/create_preview")]
    now = datetime.fromtimestamp(clock.now, UTC)
    estimated = 0
    for customer in await listed(gateway, "customers"):
        cached = await store.get_context(customer["id"])
        assert cached is not None, customer["id"]
        cold = build_context(
            await gateway.fetch_customer_data(customer), query=customer["id"],
            match=Match(method="customer_id", confidence="exact"), now=now,
        )
        assert [s.id for s in cached.subscriptions] == [s.id for s in cold.subscriptions]
        for ours, previewed in zip(cached.subscriptions, cold.subscriptions, strict=True):
            if ours.next_invoice is None:
                continue
            assert ours.next_invoice.estimate, ours.id
            estimated += 1
            if previewed.next_invoice is not None:  # the same renewal Stripe previews (its date
                # is when Stripe will attempt payment, about an hour after the period ends)
                assert abs(ours.next_invoice.date - previewed.next_invoice.date).total_seconds() <= 86_400
                assert ours.next_invoice.currency == previewed.next_invoice.currency
    assert estimated > 3


async def test_empty_account_backfills_nothing(
    empty_sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    report = await Backfill(gateway, store).run()
    assert report.windows_total == 0 and report.contexts_built == 0


def many_customers(count: int, price_id: str, now: int) -> list[dict[str, Any]]:
    """``count`` customers created over the last 400 days, each with a subscription, invoice, charge."""
    objects: list[dict[str, Any]] = []
    for n in range(count):
        created = now - DAY * 400 + n * (DAY * 399 // count)
        cid = f"cus_bulk{n:05d}"
        objects.append({
            "id": cid, "object": "customer", "email": f"bulk{n}@example.com", "name": f"Bulk {n}",
            "created": created, "livemode": False, "delinquent": False, "currency": "usd",
            "metadata": {}, "discount": None,
        })
        objects.append({
            "id": f"sub_bulk{n:05d}", "object": "subscription", "customer": cid, "status": "active",
            "created": created + 60, "start_date": created + 60, "currency": "usd", "livemode": False,
            "cancel_at_period_end": False, "cancel_at": None, "canceled_at": None, "ended_at": None,
            "trial_start": None, "trial_end": None, "pause_collection": None, "discounts": [],
            "metadata": {}, "default_tax_rates": [], "latest_invoice": None,
            "items": {"object": "list", "data": [{
                "id": f"si_bulk{n:05d}", "object": "subscription_item", "quantity": 1,
                "price": {"id": price_id}, "current_period_start": now - DAY * 5,
                "current_period_end": now + DAY * 25, "discounts": [], "tax_rates": [], "metadata": {},
            }]},
        })
        objects.append({
            "id": f"in_bulk{n:05d}", "object": "invoice", "customer": cid, "status": "paid",
            "amount_due": 2900, "amount_paid": 2900, "amount_remaining": 0, "currency": "usd",
            "created": created + 120, "attempt_count": 1, "attempted": True, "livemode": False,
            "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": f"sub_bulk{n:05d}"}},
        })
        objects.append({
            "id": f"ch_bulk{n:05d}", "object": "charge", "customer": cid, "amount": 2900,
            "amount_captured": 2900, "amount_refunded": 0, "currency": "usd", "status": "succeeded",
            "created": created + 130, "captured": True, "refunded": False, "disputed": False,
            "livemode": False,
        })
    return objects


class FailAfter(SilentObserver):
    """Makes the sandbox answer every request with a 500 once ``pages`` pages have been stored."""

    def __init__(self, sandbox: SandboxHandle, pages: int) -> None:
        self.sandbox = sandbox
        self.pages = pages

    def fetched(self, resource: str, count: int) -> None:
        self.pages -= 1
        if self.pages == 0:
            self.sandbox.control.set_faults(error_probability=1.0, error_status=500)


class FailAfterCharges(FailAfter):
    """Stripe answers 500 once ``pages`` pages of charges have been stored."""

    def fetched(self, resource: str, count: int) -> None:
        if resource == "charges":
            super().fetched(resource, count)


def window_requests(sandbox: SandboxHandle, plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    """Each backfill list request the sandbox saw, with the key of the window it belongs to."""
    out = []
    for request in sandbox.control.requests():
        resource = request["path"].removeprefix("/v1/")
        query = request["query"]
        if request["method"] != "GET" or resource not in RESOURCES:
            continue
        if "created[gte]" in query:
            out.append((Window(resource, int(query["created[gte]"]), int(query["created[lt]"])).key, query))
        elif resource in UNWINDOWED:
            out.append((Window(resource, plan.start, plan.end).key, query))
    return out


async def test_interrupted_backfill_resumes_and_stores_every_customer_exactly_once(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore, clock: FixedClock
) -> None:
    price = next(p for p in await listed(gateway, "prices")
                 if p.get("recurring") and p.get("billing_scheme") == "per_unit")
    sandbox.control.load(many_customers(450, price["id"], clock.now))
    customers = await listed(gateway, "customers")
    sandbox.control.clear_requests()

    first = Backfill(gateway, store, windows=4, concurrency=2, clock=clock,
                     observer=FailAfter(sandbox, pages=5))
    with pytest.raises(StripeUnavailableError):
        await first.run()
    sandbox.control.clear_faults()
    states = await first.window_states()
    plan = await first.stored_plan()
    assert plan is not None
    done = {key for key, state in states.items() if state.done}
    windows = {w.key for w in plan.windows()}
    assert done and done < windows  # interrupted part-way
    assert (await store.health()).customers_cached == 0  # nothing built yet
    stored_customers = sum(s.count for k, s in states.items() if k.startswith("customers:"))

    sandbox.control.clear_requests()
    second = await Backfill(gateway, store, windows=4, concurrency=2, clock=clock).run(resume=True)

    assert second.resumed and second.windows_skipped == len(done)
    requests = window_requests(sandbox, plan)
    fetched_windows = {key for key, _query in requests}
    assert fetched_windows == windows - done  # finished windows were not fetched again
    for key in fetched_windows:
        first_query = next(query for k, query in requests if k == key)
        # a half-done window goes on after its last stored object; an untouched one starts afresh
        assert first_query.get("starting_after") == (states[key].after if key in states else None)
    assert second.fetched["customers"] == len(customers) - stored_customers

    # every customer exactly once: one context each, one email index entry each
    assert second.contexts_built == len(customers)
    assert (await store.health()).customers_cached == len(customers)
    for customer in customers:
        assert await store.get_context(customer["id"]) is not None
    bulk = [c for c in customers if c["id"].startswith("cus_bulk")]
    assert len(bulk) == 450
    for customer in bulk:
        assert await store.customer_ids_for_email(customer["email"]) == [customer["id"]]


def recent_charges(customers: int, charges: int, now: int) -> list[dict[str, Any]]:
    """``customers`` created over three years, and ``charges`` among them all in the last ten days:
    activity is recent, the customers are not (windows cut over the customers' dates miss that)."""
    objects: list[dict[str, Any]] = []
    for n in range(customers):
        objects.append({
            "id": f"cus_old{n:04d}", "object": "customer", "email": f"old{n}@example.com",
            "created": now - 3 * 365 * DAY + n * (3 * 365 * DAY // customers), "livemode": False,
            "delinquent": False, "currency": "usd", "metadata": {}, "discount": None,
        })
    for c in range(charges):
        objects.append({
            "id": f"ch_recent{c:05d}", "object": "charge", "customer": f"cus_old{c % customers:04d}",
            "amount": 2900, "amount_captured": 2900, "amount_refunded": 0, "currency": "usd",
            "status": "succeeded", "created": now - 10 * DAY + c * (10 * DAY // charges), "captured": True,
            "refunded": False, "disputed": False, "livemode": False,
        })
    return objects


async def stored_charges(store: RedisStore, customers: int) -> list[str]:
    ids: list[str] = []
    for n in range(customers):
        objects = await store.get_objects(f"cus_old{n:04d}")
        ids += [k for k, o in objects.items() if o.get("object") == "charge"]
    return ids


async def test_a_window_dense_with_recent_objects_is_split_and_every_object_stored_once(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore, clock: FixedClock
) -> None:
    sandbox.control.load(recent_charges(30, 450, clock.now))
    charges = await listed(gateway, "charges")
    # more fetch slots than windows: a slot is free whenever a window has read a full page
    backfill = Backfill(gateway, store, windows=4, concurrency=32, clock=clock)
    report = await backfill.run()

    plan = await backfill.stored_plan()
    assert plan is not None
    states = await backfill.window_states()
    extra = split_windows(states, plan.windows())
    # the charges' one busy window gave its older part to windows of their own, fetched alongside
    assert [w for w in extra if w.resource == "charges"], sorted(states)
    assert all(states[w.key].done for w in extra)
    assert report.fetched["charges"] == len(charges)  # none listed twice, none missed
    stored = await stored_charges(store, 30)
    assert sorted(stored) == sorted(c["id"] for c in charges if c["id"].startswith("ch_recent"))


async def test_a_run_stopped_after_splitting_resumes_its_split_windows(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore, clock: FixedClock
) -> None:
    sandbox.control.load(recent_charges(30, 450, clock.now))
    charges = [c["id"] for c in await listed(gateway, "charges") if c["id"].startswith("ch_recent")]
    first = Backfill(gateway, store, windows=4, concurrency=32, clock=clock,
                     observer=FailAfterCharges(sandbox, pages=2))
    with pytest.raises(StripeUnavailableError):
        await first.run()
    sandbox.control.clear_faults()
    plan = await first.stored_plan()
    assert plan is not None
    states = await first.window_states()
    assert split_windows(states, plan.windows())  # it had split before it stopped

    second = await Backfill(gateway, store, windows=4, concurrency=32, clock=clock).run(resume=True)
    assert second.resumed
    assert sorted(await stored_charges(store, 30)) == sorted(charges)


async def test_resume_without_a_checkpoint_starts_a_new_run(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore, clock: FixedClock
) -> None:
    report = await Backfill(gateway, store, windows=2, clock=clock).run(resume=True)
    assert not report.resumed and report.windows_skipped == 0
    again = await Backfill(gateway, store, windows=2, clock=clock).run(resume=True)
    assert again.resumed and again.windows_skipped == again.windows_total
    assert sum(again.fetched.values()) == 0
    assert again.contexts_built == report.contexts_built


class TimePassesWhileListing:
    """The real gateway, with the backfill's clock moving on while a ``created`` window is listed
    (a real page download takes time; the sandbox's own clock stays where the test put it)."""

    def __init__(self, gateway: StripeGateway, clock: FixedClock, after_listing: int) -> None:
        self.gateway = gateway
        self.clock = clock
        self.after_listing = after_listing

    def __getattr__(self, name: str) -> Any:
        return getattr(self.gateway, name)

    async def iter_objects(self, resource: Any, params: Any = None) -> AsyncIterator[dict[str, Any]]:
        async for obj in self.gateway.iter_objects(resource, params):
            yield obj
        if "gte" in (params or {}).get("created", {}):
            self.clock.now = self.after_listing


class BuildLater(SilentObserver):
    def __init__(self, clock: FixedClock, at: int) -> None:
        self.clock = clock
        self.at = at

    def building(self, total: int) -> None:
        self.clock.now = self.at


async def test_a_change_after_a_page_was_listed_still_applies_when_its_event_comes_late(
    empty_sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    # A page listed at t+10 and stored at t+15, contexts built at t+20; in between (t+12) the
    # subscription goes past_due, and that webhook arrives after the backfill. The page's state is as
    # of t+10: the later event must win.
    from billing.sync.worker import EventWorker
    from tests.billing.sync.test_worker import drain, enqueue, recorded_events, sandbox_subscriber
    from tests.fakes.notifier import RecordingNotifier

    t = int(time.time()) - 3600
    empty_sandbox.control.set_clock(t, frozen=True)
    sandbox_subscriber(empty_sandbox.control, t)
    clock = FixedClock()
    clock.now = t + 10
    slow = TimePassesWhileListing(gateway, clock, after_listing=t + 15)
    report = await Backfill(slow, store, windows=1, clock=clock,  # type: ignore[arg-type]
                            observer=BuildLater(clock, t + 20)).run()
    assert report.contexts_built == 1
    built = await store.get_context("cus_A")
    assert built is not None and built.status == "active"

    empty_sandbox.control.set_clock(t + 12, frozen=True)
    empty_sandbox.control.set_subscription_status("sub_A", "past_due")
    late = [e for e in await recorded_events(gateway) if e["type"] == "customer.subscription.updated"]
    assert [e["created"] for e in late] == [t + 12]
    worker = EventWorker(store, gateway, RecordingNotifier(), block_ms=10)
    await worker.ensure_group()
    await enqueue(store, late)
    await drain(worker)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "past_due"
