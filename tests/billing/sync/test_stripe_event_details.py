"""Stripe event details (#9 item 15): old API versions, thin events, deleted drafts, product renames,
malformed searches."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import stripe

from billing.cache.store import RedisStore
from billing.errors import BadQueryError
from billing.stripe.gateway import StripeGateway
from billing.sync.webhook import WebhookIngest
from billing.sync.worker import EventWorker
from tests.billing import stripe_factory as sf
from tests.billing.sync.test_worker import NoStripeNeeded, drain, enqueue, worker
from tests.fakes.notifier import RecordingNotifier


# ---- (b) v2 thin events ------------------------------------------------------------------------
@pytest.mark.parametrize("thin", [
    {"id": "evt_thin1", "object": "v2.core.event", "type": "v1.billing.meter.error_report_triggered",
     "created": "2026-11-01T00:00:00.000Z", "livemode": False,
     "related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/billing/meters/mtr_1"}},
    {"id": "evt_thin2", "object": "event", "type": "customer.updated", "created": sf.T0, "livemode": False,
     "related_object": {"id": "cus_A", "type": "customer", "url": "/v1/customers/cus_A"}, "data": {}},
])
async def test_a_thin_event_is_refused_loudly_and_not_queued(
    store: RedisStore, thin: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(thin).encode()
    with caplog.at_level(logging.WARNING, logger="billing.sync.webhook"):
        result = await WebhookIngest(store, sf.SECRET).handle(body, sf.sign(body))
    assert result.status == 400 and result.outcome == "rejected"
    assert "thin" in result.message and result.message.endswith(".")
    assert any(r.levelno == logging.WARNING and thin["id"] in r.getMessage() for r in caplog.records)
    assert await store.client.xlen(store.stream_key) == 0


# ---- (c) invoice.deleted -----------------------------------------------------------------------
async def test_a_deleted_draft_invoice_leaves_the_card(store: RedisStore) -> None:
    w = worker(store, RecordingNotifier())
    await w.ensure_group()
    t = sf.T0
    draft = sf.invoice(iid="in_draft", status="draft", attempts=0, attempted=False, created=t)
    await enqueue(store, [sf.event("customer.created", sf.customer(), t),
                          sf.event("invoice.created", draft, t + 1)])
    await drain(w)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and [i.id for i in ctx.recent_invoices] == ["in_draft"]
    await enqueue(store, [sf.event("invoice.deleted", draft, t + 2)])
    await drain(w)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.recent_invoices == []
    # Stripe's earlier delivery arriving late does not bring it back.
    await enqueue(store, [sf.event("invoice.updated", draft, t + 1, eid="evt_late")])
    await drain(w)
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.recent_invoices == []


# ---- (d) product rename ------------------------------------------------------------------------
async def test_a_product_rename_reaches_the_plan_of_every_customer_on_its_prices(store: RedisStore) -> None:
    w = worker(store, RecordingNotifier())
    await w.ensure_group()
    t = sf.T0
    unnamed = sf.price(nickname=None)
    product = {"id": "prod_pro", "object": "product", "name": "Pro", "active": True, "created": t}
    events = [sf.event("product.created", product, t)]
    for n in range(3):
        cid = f"cus_{n}"
        sub = sf.subscription(sid=f"sub_{n}", cid=cid)
        sub["items"]["data"][0]["price"] = unnamed
        events += [sf.event("customer.created", sf.customer(cid=cid, email=f"{n}@x.io"), t),
                   sf.event("customer.subscription.created", sub, t + 1)]
    await enqueue(store, events)
    await drain(w)
    for n in range(3):
        ctx = await store.get_context(f"cus_{n}")
        assert ctx is not None and ctx.plan == "Pro"
    await enqueue(store, [sf.event("product.updated", {**product, "name": "Pro Plus"}, t + 10)])
    await drain(w)
    assert w.stats.failed == 0
    plans = [(await store.get_context(f"cus_{n}")) for n in range(3)]
    assert [c.plan if c else None for c in plans] == ["Pro Plus"] * 3


# ---- (e) malformed search ----------------------------------------------------------------------
async def test_a_malformed_search_is_a_bad_query_not_no_match(
    gateway: StripeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise stripe.InvalidRequestError(
            "We were unable to parse your search query. Try using the format `field:'value'`.",
            param="query", http_status=400,
        )

    monkeypatch.setattr(gateway._client.v1.customers, "search_async", refuse)
    with pytest.raises(BadQueryError, match="search"):
        await gateway.search_customers_by_email("odd@x.io")


# ---- (a) events rendered at an older API version -----------------------------------------------
class CurrentShape(NoStripeNeeded):
    """Stripe's current (pinned-version) state of the subscription."""

    def __init__(self) -> None:
        self.retrieved: list[str] = []

    async def retrieve(self, resource: str, object_id: str) -> dict[str, Any] | None:
        self.retrieved.append(object_id)
        return sf.subscription(status="past_due")


async def test_an_event_rendered_at_an_older_api_version_is_refetched(store: RedisStore) -> None:
    gateway = CurrentShape()
    w = EventWorker(store, gateway, RecordingNotifier(), block_ms=10)  # type: ignore[arg-type]
    await w.ensure_group()
    t = sf.T0
    current = [sf.event("customer.created", sf.customer(), t),
               sf.event("customer.subscription.created", sf.subscription(), t + 1)]
    await enqueue(store, current)
    await drain(w)
    assert gateway.retrieved == []  # the pinned version's events are trusted as they are
    # An endpoint created on an old default version: the period sits on the subscription, not its
    # items, and the status field is not what this version's is.
    old = sf.event("customer.subscription.updated", {"id": "sub_A", "object": "subscription",
                                                     "customer": "cus_A", "status": "active"}, t + 2)
    old["api_version"] = "2020-08-27"
    await enqueue(store, [old])
    await drain(w)
    assert gateway.retrieved == ["sub_A"]
    ctx = await store.get_context("cus_A")
    assert ctx is not None and ctx.status == "past_due" and ctx.subscriptions[0].current_period_end
    assert (await store.get_objects("cus_A"))["sub_A"]["_v"] == [t + 2, old["id"]]
    assert stripe.api_version > old["api_version"]
