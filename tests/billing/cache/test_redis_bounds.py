"""Redis stays bounded (issue #9 item 13): streams trimmed below what every group acknowledged, the
dead-letter stream capped, ``refs:*`` sets shrink, staged pages cleaned, price/coupon fan-out chunked
and only when a field the contexts read changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing.cache.store import RedisStore
from billing.domain.builder import build_context
from billing.domain.snapshot import CustomerData
from billing.stripe.gateway import StripeGateway
from billing.sync import worker as worker_module
from billing.sync.backfill import Backfill
from billing.sync.worker import EventWorker
from tests.billing import stripe_factory as sf
from tests.billing.sync.test_worker import NoStripeNeeded, drain, enqueue
from tests.fakes.notifier import RecordingNotifier
from tests.fixtures_sandbox import SandboxHandle


def _worker(store: RedisStore, **kw: Any) -> EventWorker:
    return EventWorker(store, NoStripeNeeded(), RecordingNotifier(), block_ms=10, **kw)  # type: ignore[arg-type]


async def test_the_stream_keeps_what_another_group_has_not_acknowledged(store: RedisStore) -> None:
    w = _worker(store)
    await w.ensure_group()
    await store.client.xgroup_create(store.stream_key, "audit", id="0")
    events = [sf.event("customer.created", sf.customer(cid=f"cus_{n}", email=f"c{n}@x.com"), sf.T0 + n)
              for n in range(4)]
    await enqueue(store, events)
    await drain(w)
    assert w.stats.applied == 4
    # The worker's group is done, the audit group has read nothing: every entry stays.
    assert await store.client.xlen(store.stream_key) == 4

    read: Any = await store.client.xreadgroup("audit", "a1", {store.stream_key: ">"}, count=3)
    ids = [entry_id for entry_id, _ in read[0][1]]
    await store.client.xack(store.stream_key, "audit", ids[0])
    await w.trim()
    # Below the audit group's oldest pending entry only.
    remaining = [entry_id for entry_id, _ in await store.client.xrange(store.stream_key)]
    assert remaining[:2] == ids[1:] and len(remaining) == 3

    await store.client.xack(store.stream_key, "audit", *ids[1:])
    await w.trim()
    assert len(await store.client.xrange(store.stream_key)) == 1  # the one audit never read
    await store.client.xreadgroup("audit", "a1", {store.stream_key: ">"}, count=3)
    await store.client.xack(store.stream_key, "audit", remaining[-1])
    await w.trim()
    assert await store.client.xlen(store.stream_key) == 0


async def test_the_dead_letter_stream_is_capped(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "DEAD_LETTER_MAX", 50)
    w = _worker(store, batch_size=500)
    await w.ensure_group()
    pipe = store.client.pipeline(transaction=False)
    for n in range(400):
        pipe.xadd(store.stream_key, {"e": f"not json {n}"})
    await pipe.execute()
    await drain(w)
    assert w.stats.dead_lettered == 400
    # MAXLEN ~ trims whole nodes (100 entries each): about the cap, far below what failed.
    assert await store.client.xlen(store.dead_letter_key) <= 50 + 100
    assert await store.client.xlen(store.stream_key) == 0


async def test_a_ref_set_shrinks_after_a_plan_change_a_cancellation_and_a_deletion(store: RedisStore) -> None:
    w = _worker(store)
    await w.ensure_group()
    t = sf.T0
    sub = sf.subscription()
    await enqueue(store, [sf.event("customer.created", sf.customer(), t),
                          sf.event("customer.subscription.created", sub, t + 1)])
    await drain(w)
    assert await store.customers_referring_to("price_pro") == ["cus_A"]

    moved = sf.subscription()
    moved["items"]["data"][0]["price"] = sf.price("price_team", 9900)
    await enqueue(store, [sf.event("customer.subscription.updated", moved, t + 2)])
    await drain(w)
    assert await store.customers_referring_to("price_pro") == []
    assert await store.customers_referring_to("price_team") == ["cus_A"]

    canceled = {**moved, "status": "canceled", "canceled_at": t + 3, "ended_at": t + 3}
    await enqueue(store, [sf.event("customer.subscription.deleted", canceled, t + 3)])
    await drain(w)
    assert await store.customers_referring_to("price_team") == []

    again = sf.subscription(sid="sub_B")
    await enqueue(store, [sf.event("customer.subscription.created", again, t + 4)])
    await drain(w)
    assert await store.customers_referring_to("price_pro") == ["cus_A"]
    await enqueue(store, [sf.event("customer.deleted", {**sf.customer(), "deleted": True}, t + 5)])
    await drain(w)
    assert await store.customers_referring_to("price_pro") == []


@pytest.fixture
async def gateway(sandbox: SandboxHandle) -> AsyncIterator[StripeGateway]:
    async with StripeGateway(sandbox.api_key, api_base=sandbox.url, rate_limit=500) as gw:
        yield gw


async def test_staged_pages_of_customers_never_built_do_not_stay(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    # A charge of a customer outside every listed window (created after the plan): staged, never built.
    backfill = Backfill(gateway, store, windows=2)
    await backfill.run()
    page_owner = "cus_never_listed"
    pipe = store.client.pipeline(transaction=False)
    store.stage_objects(pipe, page_owner, [sf.charge(chid="ch_orphan", cid=page_owner)])
    pipe.sadd(backfill.staged_key, page_owner)
    await pipe.execute()
    stage_key = store.customer_key(page_owner, "stage")
    assert await store.client.ttl(stage_key) > 0  # an abandoned run's pages expire by themselves

    report = await backfill.run(resume=True)  # the run that staged it ends
    assert report.contexts_built > 0
    assert not await store.client.exists(stage_key)
    leftovers = [k async for k in store.client.scan_iter(match=f"{store.prefix}:*:stage", count=1000)]
    assert leftovers == []


def _counting_builder(calls: list[str]) -> Any:
    def build(data: CustomerData, **kw: Any) -> Any:
        calls.append(str(data.customer["id"]))
        return build_context(data, **kw)

    return build


async def test_price_fan_out_rebuilds_only_for_context_fields_and_in_steps(store: RedisStore) -> None:
    calls: list[str] = []
    w = _worker(store, build=_counting_builder(calls), customer_step=5, batch_size=500)
    await w.ensure_group()
    t = sf.T0
    customers = [f"cus_F{n:02d}" for n in range(12)]
    events = []
    for n, cid in enumerate(customers):
        sub = sf.subscription(sid=f"sub_F{n}", cid=cid)
        events += [sf.event("customer.created", sf.customer(cid=cid, email=f"f{n}@x.com"), t),
                   sf.event("customer.subscription.created", sub, t + 1)]
    await enqueue(store, events)
    await drain(w)
    await enqueue(store, [sf.event("price.created", sf.price(), t + 1)])
    await drain(w)
    assert sorted(await store.customers_referring_to("price_pro")) == customers

    calls.clear()
    steps = w.stats.customer_steps
    metadata_only = sf.event("price.updated", sf.price(metadata={"crm": "x"}), t + 10)
    metadata_only["data"]["previous_attributes"] = {"metadata": {}}
    await enqueue(store, [metadata_only])
    await drain(w)
    assert calls == []
    assert w.stats.customer_steps == steps

    repriced = sf.event("price.updated", sf.price(amount=3900), t + 20)
    repriced["data"]["previous_attributes"] = {"unit_amount": 2900, "unit_amount_decimal": "2900"}
    await enqueue(store, [repriced])
    await drain(w)
    assert sorted(calls) == customers
    assert w.stats.customer_steps == steps + 3  # 12 customers, 5 a step
    ctx = await store.get_context("cus_F07")
    assert ctx is not None and ctx.mrr == {"usd": 3900}
