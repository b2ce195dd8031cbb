from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from billing.cache.store import RedisStore, decide, encode_objects, open_store, trim_invoices
from billing.domain.builder import build_context
from billing.domain.models import BillingContext, Match
from billing.domain.snapshot import CustomerData
from billing.ports import Tenant
from tests.billing import stripe_factory as sf


def _data() -> CustomerData:
    return CustomerData(
        customer=sf.customer(), subscriptions=[sf.subscription()], invoices=[sf.invoice()],
        charges=[sf.charge()], products={"prod_pro": {"id": "prod_pro", "object": "product", "name": "Pro"}},
    )


def _context(data: CustomerData) -> object:
    return build_context(
        data, query="jane@acme.com", match=Match(method="email", confidence="exact"),
        now=datetime.fromtimestamp(sf.T0, UTC),
    )


async def test_saved_customer_is_served_from_cache_with_its_email_index(store: RedisStore) -> None:
    data = _data()
    context = _context(data)
    await store.save_customer(data, context)  # type: ignore[arg-type]

    cached = await store.get_context("cus_A")
    assert cached is not None
    assert cached.source == "cache"
    assert cached.status == "active"
    assert cached.mrr == {"usd": 2900}
    assert await store.customer_ids_for_email("JANE@acme.COM") == ["cus_A"]
    assert await store.customer_ids_for_email("other@acme.com") == []
    assert (await store.health()).customers_cached == 1


async def test_stored_objects_are_slim_and_rebuild_the_same_context(store: RedisStore) -> None:
    data = _data()
    context = _context(data)
    await store.save_customer(data, context)  # type: ignore[arg-type]

    objs = await store.get_objects("cus_A")
    assert "address" not in objs["cus_A"] and "lines" not in objs["in_A"]
    assert "billing_details" not in objs["ch_A"]
    assert objs["sub_A"]["items"]["data"][0]["price"] == "price_pro"  # price stored once per tenant
    assert objs["sub_A"]["_v"] == [sf.T0, "snapshot"]
    loaded = await store.load_customer_data("cus_A")
    assert loaded is not None
    rebuilt = build_context(
        loaded, query="jane@acme.com", match=Match(method="email", confidence="exact"),
        now=datetime.fromtimestamp(sf.T0, UTC),
    )
    assert rebuilt == context


async def test_a_cached_customer_with_a_year_of_history_fits_in_4_kib(store: RedisStore) -> None:
    year = [(sf.T0 - month * 30 * 86400, f"{month:02d}") for month in range(12)]
    data = CustomerData(
        customer=sf.customer(), subscriptions=[sf.subscription()],
        invoices=[sf.invoice(iid=f"in_{n}", created=t, status="paid") for t, n in year],
        charges=[sf.charge(chid=f"ch_{n}", created=t) for t, n in year],
        products={"prod_pro": {"id": "prod_pro", "object": "product", "name": "Pro"}},
    )
    await store.save_customer(data, _context(data))  # type: ignore[arg-type]
    own = [store.customer_key("cus_A", part) for part in ("ctx", "objs")]
    total = 0
    for key in [*own, store.email_key("jane@acme.com")]:
        total += await store.client.memory_usage(key) or 0
    assert total <= 4096
    assert len(await store.get_objects("cus_A")) == 1 + 1 + 12 + 12  # nothing dropped to fit


async def test_a_backfill_page_staged_for_a_customer_is_read_where_newer_and_cleared_when_saved(
    store: RedisStore,
) -> None:
    data = _data()
    await store.save_customer(data, _context(data))  # type: ignore[arg-type]
    stored = await store.get_objects("cus_A")
    newer = {**stored["in_A"], "status": "void", "_v": [sf.T0 + 60, "snapshot"]}
    older = {**stored["sub_A"], "status": "canceled", "_v": [sf.T0 - 60, "snapshot"]}
    pipe = store.client.pipeline(transaction=False)
    store.stage_objects(pipe, "cus_A", [newer, older])
    await pipe.execute()
    seen = await store.get_objects("cus_A")
    assert seen["in_A"]["status"] == "void"  # the staged page is newer
    assert seen["sub_A"]["status"] == stored["sub_A"]["status"]  # the stored state is newer
    loaded = await store.load_customer_data("cus_A")
    assert loaded is not None
    await store.save_customer(loaded, _context(loaded))  # type: ignore[arg-type]
    assert await store.client.exists(store.customer_key("cus_A", "stage")) == 0
    assert (await store.get_objects("cus_A"))["in_A"]["status"] == "void"


async def test_saving_a_customer_again_drops_what_only_its_old_objects_were_indexed_under(
    store: RedisStore,
) -> None:
    # ``save_customers`` (a lookup without ``fetched_at``, a backfill batch) replaces the objects whole:
    # what only the replaced ones answered to must stop answering, as after the worker's saves.
    first = _data()
    await store.save_customers([(first, _context(first))])  # type: ignore[list-item]
    assert await store.customer_ids_for_lookup("invoice", "in_A") == ["cus_A"]
    assert await store.customer_ids_for_lookup("charge", "ch_A") == ["cus_A"]
    assert await store.customer_ids_for_email("jane@acme.com") == ["cus_A"]

    second = replace(first, customer=sf.customer(email="jane@new.example"), invoices=[sf.invoice("in_B")],
                     charges=[])
    await store.save_customer(second, _context(second))  # type: ignore[arg-type]
    assert await store.customer_ids_for_lookup("invoice", "in_A") == []
    assert await store.customer_ids_for_lookup("charge", "ch_A") == []
    assert await store.customer_ids_for_lookup("invoice", "in_B") == ["cus_A"]
    assert await store.customer_ids_for_email("jane@acme.com") == []
    assert await store.customer_ids_for_email("jane@new.example") == ["cus_A"]


async def test_links_are_set_and_removed(store: RedisStore) -> None:
    assert await store.linked_customer("U123") is None
    await store.link("U123", "cus_A")
    assert await store.linked_customer("U123") == "cus_A"
    assert await store.unlink("U123") is True
    assert await store.linked_customer("U123") is None


async def test_keys_carry_the_tenant_and_one_hash_tag_per_customer(store: RedisStore) -> None:
    key = store.customer_key("cus_123", "ctx")
    assert key == f"{store.prefix}:{{cus_123}}:ctx"
    assert ":acct_test123:test:" in key
    with pytest.raises(ValueError, match="braces"):
        RedisStore(store.client, store.tenant, prefix="a{b}")


def test_versions_decide_newer_older_duplicate_and_tie() -> None:
    assert decide(None, (5, "evt_b")) == "apply"
    assert decide((5, "evt_a"), (6, "evt_b")) == "apply"
    assert decide((6, "evt_a"), (5, "evt_b")) == "skip"
    assert decide((5, "evt_a"), (5, "evt_a")) == "skip"
    assert decide((5, "evt_a"), (5, "evt_b")) == "refetch"
    assert decide((5, "evt_a"), (5, "evt_b"), seen=["evt_b"]) == "skip"


async def test_memory_url_uses_an_in_process_server_shared_by_clients() -> None:
    tenant = Tenant("acct_mem", livemode=False)
    first = await open_store("memory://store-test", tenant)
    second = await open_store("memory://store-test", tenant)
    await first.link("k", "cus_mem")
    assert await second.linked_customer("k") == "cus_mem"


async def test_a_lookup_snapshot_never_overwrites_newer_state_and_replaces_older(store: RedisStore) -> None:
    data = _data()  # the subscription is active in this snapshot
    await store.save_customer(data, _context(data))  # type: ignore[arg-type]
    objs = await store.get_objects("cus_A")
    # Meanwhile the worker applied a newer state: past due as of T0 + 10.
    newer = {**objs["sub_A"], "status": "past_due", "_v": [sf.T0 + 10, "evt_9"]}
    await store.client.set(store.customer_key("cus_A", "objs"), encode_objects({**objs, "sub_A": newer}))

    # A lookup whose fetch began before that change saves what it saw: the newer state stays.
    await store.save_customer(data, _context(data), fetched_at=sf.T0 + 5)  # type: ignore[arg-type]
    assert (await store.get_objects("cus_A"))["sub_A"]["status"] == "past_due"
    cached = await store.get_context("cus_A")
    assert cached is not None and cached.status == "past_due"

    # A lookup that began after it is the newer truth.
    await store.save_customer(data, _context(data), fetched_at=sf.T0 + 20)  # type: ignore[arg-type]
    assert (await store.get_objects("cus_A"))["sub_A"]["status"] == "active"
    cached = await store.get_context("cus_A")
    assert cached is not None and cached.status == "active"


def test_trimming_keeps_the_newest_invoices_and_every_open_one() -> None:
    invoices = {f"in_{n:02d}": {"id": f"in_{n:02d}", "object": "invoice", "status": "paid", "created": n}
                for n in range(20)}
    invoices["in_00"]["status"] = "open"  # the oldest is still owed
    kept = trim_invoices({**invoices, "cus_A": {"id": "cus_A", "object": "customer"}})
    assert sorted(k for k in kept if k.startswith("in_")) == ["in_00", *[f"in_{n:02d}" for n in range(8, 20)]]
    assert "cus_A" in kept


class _RecordingStripe:
    """Stripe that has nobody: records what a lookup asks for (a cache hit asks nothing)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def retrieve_customer(self, customer_id: str) -> None:
        self.calls.append(("retrieve_customer", customer_id))

    async def list_customers_by_email(self, email: str) -> list[object]:
        self.calls.append(("list_customers_by_email", email))
        return []

    async def search_customers_by_email(self, email: str) -> list[object]:
        self.calls.append(("search_customers_by_email", email))
        return []


async def _save_two_on_one_email(store: RedisStore) -> None:
    paying = _data()
    lapsed = CustomerData(customer=sf.customer("cus_B", name="Jane Old", created=sf.T0 - 86400 * 90))
    for data in (paying, lapsed):
        await store.save_customer(data, _context(data))  # type: ignore[arg-type]


@pytest.mark.parametrize("reads", ["auto", "pipelined"])
async def test_a_cache_hit_reads_links_index_and_contexts_at_once_with_the_same_answers(
    store: RedisStore, reads: str
) -> None:
    from billing.service import BillingService

    if reads == "pipelined":
        store._scripted = False  # what a cluster (or a server refusing scripts) gets
    await _save_two_on_one_email(store)
    stripe = _RecordingStripe()
    service = BillingService(stripe, store, max_staleness=timedelta(days=36500))  # type: ignore[arg-type]

    lowered = await service.lookup("jane@acme.com")
    assert lowered.source == "cache" and lowered.customer is not None and lowered.customer.id == "cus_A"
    # As Stripe would answer it: only the case-insensitive search finds Jane@Acme.com for jane@acme.com.
    assert lowered.match is not None and lowered.match.method == "search"
    assert lowered.match.confidence == "case_insensitive"
    assert [o.id for o in lowered.other_customers] == ["cus_B"]
    exact = await service.lookup("Jane@Acme.com")
    assert exact.match is not None and exact.match.method == "email" and exact.query == "Jane@Acme.com"

    await store.link("jane@acme.com", "cus_B")  # a link under the lower-cased email wins for both
    for query in ("Jane@Acme.com", "jane@acme.com"):
        linked = await service.lookup(query)
        assert linked.customer is not None and linked.customer.id == "cus_B"
        assert linked.match is not None and linked.match.method == "manual_link"
    assert await service.lookup("nobody@acme.com") == BillingContext.not_found("nobody@acme.com")
    assert sorted(stripe.calls) == [  # asked at once
        ("list_customers_by_email", "nobody@acme.com"), ("search_customers_by_email", "nobody@acme.com"),
    ]
    stripe.calls.clear()
    await store.link("Someone@Acme.com", "cus_Z")  # linked to a customer the cache does not hold
    await service.lookup("Someone@Acme.com")
    assert stripe.calls[0] == ("retrieve_customer", "cus_Z")


async def test_a_cache_hit_is_one_command_on_a_single_server_and_pipelines_when_scripts_are_refused(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.asyncio import Redis
    from redis.exceptions import NoPermissionError

    from billing.service import BillingService

    if not isinstance(store.client, Redis):
        pytest.skip("a cluster reads in two pipelined round trips (keys of different slots)")
    await _save_two_on_one_email(store)
    service = BillingService(_RecordingStripe(), store, max_staleness=timedelta(days=36500))  # type: ignore[arg-type]
    await service.lookup("jane@acme.com")  # loads the script
    sent: list[object] = []
    real_execute, real_pipeline = store.client.execute_command, store.client.pipeline

    async def execute(*args: object, **options: object) -> object:
        sent.append(args[0])
        return await real_execute(*args, **options)

    def pipeline(*args: object, **options: object) -> object:
        sent.append("pipeline")
        return real_pipeline(*args, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(store.client, "execute_command", execute)
    monkeypatch.setattr(store.client, "pipeline", pipeline)
    hit = await service.lookup("jane@acme.com")
    assert hit.source == "cache" and [o.id for o in hit.other_customers] == ["cus_B"]
    assert sent == ["EVALSHA"]

    async def refused(**kwargs: object) -> object:
        raise NoPermissionError("NOPERM this user has no permissions to run the 'evalsha' command")

    monkeypatch.setattr(store, "_read_email_script", refused)
    sent.clear()
    fallback = await service.lookup("jane@acme.com")
    assert fallback == hit and sent == ["pipeline", "pipeline"] and store._scripted is False


async def test_a_lookup_never_overwrites_newer_catalogue_objects(store: RedisStore) -> None:
    coupon = {"id": "HALF", "object": "coupon", "percent_off": 50.0, "duration": "forever", "valid": True,
              "name": "Half"}
    # The worker stored a newer price, product and coupon (events of T0 + 10) ...
    await store.put_tenant_object(sf.price(amount=3900), (sf.T0 + 10, "evt_price"))
    await store.put_tenant_object({"id": "prod_pro", "object": "product", "name": "Pro Plus"},
                                  (sf.T0 + 10, "evt_product"))
    await store.put_tenant_object({**coupon, "name": "Half (renamed)"}, (sf.T0 + 10, "evt_coupon"))

    # ... and a lookup whose fetch began earlier (T0 + 5) saves the old amount, name and coupon,
    # both embedded in the subscription and fetched on their own.
    data = CustomerData(
        customer=sf.customer(), subscriptions=[sf.subscription()], invoices=[sf.invoice()],
        products={"prod_pro": {"id": "prod_pro", "object": "product", "name": "Pro"}},
        coupons={"HALF": coupon},
    )
    await store.save_customer(data, _context(data), fetched_at=sf.T0 + 5)  # type: ignore[arg-type]
    prices = await store.get_tenant_objects("prices", ["price_pro"])
    products = await store.get_tenant_objects("products", ["prod_pro"])
    coupons = await store.get_tenant_objects("coupons", ["HALF"])
    assert prices["price_pro"]["unit_amount"] == 3900
    assert prices["price_pro"]["_v"] == [sf.T0 + 10, "evt_price"]
    assert products["prod_pro"]["name"] == "Pro Plus"
    assert coupons["HALF"]["name"] == "Half (renamed)"
    cached = await store.get_context("cus_A")
    assert cached is not None and cached.mrr == {"usd": 3900}  # rebuilt from the newer price

    # The same with the prices fetched on their own (a tiered price comes complete).
    data_with_prices = replace(data, prices={"price_pro": sf.price()})
    await store.save_customer(data_with_prices, _context(data), fetched_at=sf.T0 + 5)  # type: ignore[arg-type]
    assert (await store.get_tenant_objects("prices", ["price_pro"]))["price_pro"]["unit_amount"] == 3900

    # A lookup that began after the worker's events is the newer truth.
    await store.save_customer(data, _context(data), fetched_at=sf.T0 + 20)  # type: ignore[arg-type]
    prices = await store.get_tenant_objects("prices", ["price_pro"])
    products = await store.get_tenant_objects("products", ["prod_pro"])
    assert (prices["price_pro"]["unit_amount"], prices["price_pro"]["_v"]) == (2900, [sf.T0 + 20, "snapshot"])
    assert products["prod_pro"]["name"] == "Pro"
    cached = await store.get_context("cus_A")
    assert cached is not None and cached.mrr == {"usd": 2900}


async def test_every_save_of_a_context_has_the_reminder_scheduler_look_at_the_customer(
    store: RedisStore,
) -> None:
    # A lookup or backfill (``save_customers``), a lookup's snapshot (``fold_stage``): the scheduler's
    # next tick computes the customer's reminders without waiting for its walk.
    reminders = store.reminder_state()
    data = _data()
    await store.save_customers([(data, _context(data))])  # type: ignore[list-item]
    assert await reminders.take_dirty(10) == ["cus_A"]
    await reminders.computed(["cus_A"])
    await store.save_customer(data, _context(data), fetched_at=sf.T0 + 5)  # type: ignore[arg-type]
    assert await reminders.take_dirty(10) == ["cus_A"]
    await reminders.computed(["cus_A"])
    assert await reminders.take_dirty(10) == []
