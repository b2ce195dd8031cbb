"""More ways to find a customer (issue #10 item 6): a subscription, an invoice (id or printed number),
a charge, a payment intent, or an id of the operator's system in the customer's metadata; each from
the cache when it can be, from Stripe (the sandbox, over real HTTP) otherwise, and the match says which."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from urllib.parse import unquote_plus

import pytest

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.config import Settings
from billing.domain.matching import Query, matched_by, parse_query
from billing.domain.models import Match
from billing.errors import BadQueryError, ConfigurationError
from billing.ports import Tenant, Transition
from billing.service import BillingService
from billing.stripe.gateway import PERMISSIONS, RetryPolicy, StripeGateway
from billing.sync.backfill import Backfill
from billing.sync.worker import EventWorker
from bot.runtime import load_settings
from tests.billing import stripe_factory as sf
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle

KEYS = ("user_id", "account_id")
JANE_NUMBER = "0HIAXQK6-0004"  # the demo's open invoice of Jane's (its prefix is seeded)
TENANT = Tenant(account_id="acct_queryforms", livemode=False)


# ---- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "keys", "expected"),
    [
        ("sub_1Demo9xY", (), Query("subscription", "sub_1Demo9xY")),
        (" 'in_1DemoAbC' ", (), Query("invoice", "in_1DemoAbC")),
        ("0HIAXQK6-0004", (), Query("invoice_number", "0HIAXQK6-0004")),
        ("0hiaxqk6-0004", (), Query("invoice_number", "0HIAXQK6-0004")),
        ("`ACME-000123`", (), Query("invoice_number", "ACME-000123")),
        ("ch_3Mx", (), Query("charge", "ch_3Mx")),
        ("pi_3Mx", (), Query("payment_intent", "pi_3Mx")),
        ("user_id:1234", KEYS, Query("metadata", "1234", "user_id")),
        ("account_id: acct-77 ", KEYS, Query("metadata", "acct-77", "account_id")),
        ("USER_ID:1234", KEYS, Query("metadata", "1234", "user_id")),
        ("user_id:John Smith", KEYS, Query("metadata", "John Smith", "user_id")),
        ("1234", ("user_id",), Query("metadata", "1234", "user_id")),
        ("user_id:o'neil", ("user_id",), Query("metadata", "o'neil", "user_id")),
        ("jane@acme.com", ("user_id",), Query("email", "jane@acme.com")),
        # A value of a configured key may hold an "@" (an id of the operator's system can be an address),
        # and quotes cannot break out of it: Stripe is asked for the value exactly as typed.
        ("user_id:jane@acme.com", KEYS, Query("metadata", "jane@acme.com", "user_id")),
        ("Account_ID:ops@acme.com", KEYS, Query("metadata", "ops@acme.com", "account_id")),
        ("user_id:' OR email:'x@y.com", KEYS, Query("metadata", "' OR email:'x@y.com", "user_id")),
        # Slack's formatting of an address, and quotes pasted around a value, are not part of it.
        ("user_id:<mailto:ops@acme.com|ops@acme.com>", KEYS, Query("metadata", "ops@acme.com", "user_id")),
        ('user_id: "1234"', KEYS, Query("metadata", "1234", "user_id")),
        ("user_id:`o'neil`", KEYS, Query("metadata", "o'neil", "user_id")),
    ],
)
def test_every_query_form_parses(raw: str, keys: tuple[str, ...], expected: Query) -> None:
    assert parse_query(raw, keys) == expected


def test_the_longest_metadata_key_and_value_stripe_allows_make_a_query() -> None:
    key, value = "k" * 40, "v" * 500  # Stripe's limits: 40-character keys, 500-character values
    assert parse_query(f"{key}: {value} ", (key,)) == Query("metadata", value, key)
    with pytest.raises(BadQueryError, match="at most 500 characters"):
        parse_query(f"{key}:{value}v", (key,))


def test_a_metadata_query_names_itself_as_key_and_value() -> None:
    assert parse_query("user_id:1234", KEYS).text == "user_id:1234"
    assert parse_query("1234", ("user_id",)).text == "user_id:1234"


@pytest.mark.parametrize(
    ("raw", "keys", "expected"),
    [
        ("user_id:", KEYS, "user_id: needs a value after the colon, e.g. user_id:1234;"),
        ("user_id:   ", ("user_id",), "user_id: needs a value after the colon"),
        ("team:7", KEYS, "'team' is not a metadata key lookups use (they use user_id, account_id);"),
        ("user_id:1234", (), "no metadata key is set for lookups (BILLING_MATCH_METADATA_KEYS)"),
        ("1234", KEYS, "'1234' is not an email address, a Stripe id or an invoice number;"),
        ("1234", (), "'1234' is not an email address, a Stripe id or an invoice number;"),
        ("jane@acme", ("user_id",), "'jane@acme' is not an email address"),
        ("team:a@b.com", KEYS, "'team:a@b.com' is not an email address, a Stripe id or an invoice number;"),
        ("sub_sched_1", (), "is not an email address, a Stripe id or an invoice number"),
        ("AB-1234", (), "is not an email address, a Stripe id or an invoice number"),
        ("0HIAXQK6-004", (), "is not an email address, a Stripe id or an invoice number"),
    ],
)
def test_a_bad_form_is_one_sentence_naming_what_is_accepted(
    raw: str, keys: tuple[str, ...], expected: str
) -> None:
    with pytest.raises(BadQueryError) as info:
        parse_query(raw, keys)
    message = str(info.value)
    assert expected in message
    assert message.endswith(".") and "\n" not in message
    assert "sub_…" in message and "0HIAXQK6-0004" in message  # what is accepted
    for key in keys:
        assert f"{key}:…" in message


def test_the_card_line_says_what_matched() -> None:
    from billing.domain.models import Match

    assert matched_by(JANE_NUMBER, Match(method="invoice_number", confidence="exact")) == (
        f"matched by invoice {JANE_NUMBER}"
    )
    assert matched_by("user_id:1234", Match(method="metadata", confidence="exact")) == (
        "matched by metadata user_id 1234"
    )
    paid = Match(method="payment_intent", confidence="exact")
    assert matched_by("pi_1", paid) == "matched by payment intent pi_1"
    assert matched_by("jane@acme.com", Match(method="email", confidence="exact")) is None


# ---- BILLING_MATCH_METADATA_KEYS ----------------------------------------------------------------


def test_metadata_keys_setting_is_read_as_a_clean_list() -> None:
    assert load_settings(BILLING_MATCH_METADATA_KEYS=" user_id , account_id ").metadata_keys == KEYS
    assert load_settings(BILLING_MATCH_METADATA_KEYS="").metadata_keys == ()
    assert Settings().metadata_keys == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("user_id,,account_id", "has an empty key (a stray comma)"),
        ("user_id,", "has an empty key"),
        ("user id", "key 'user id' must be 1 to 40 letters"),
        ("user_id:x", "must be 1 to 40 letters, digits"),
        ("metadata['x']", "no colon, space, quote or bracket"),
        ("k" * 41, "must be 1 to 40 letters"),
        ("user_id,USER_ID", "names USER_ID twice"),
        ("mailto", "cannot use mailto"),
        (",".join(f"k{i}" for i in range(11)), "has 11 keys; give at most 10"),
    ],
)
def test_a_bad_metadata_keys_setting_is_one_sentence_at_start_up(value: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(BILLING_MATCH_METADATA_KEYS=value)
    message = str(info.value)
    assert message.startswith("BILLING_MATCH_METADATA_KEYS") and expected in message
    assert message.endswith(".") and "\n" not in message


# ---- from Stripe ----------------------------------------------------------------------------------


FAST = RetryPolicy(attempts=2, base_seconds=0.001, cap_seconds=0.01)


@pytest.fixture
async def gateway(sandbox: SandboxHandle) -> AsyncIterator[StripeGateway]:
    async with StripeGateway(sandbox.api_key, api_base=sandbox.url, retry=FAST, rate_limit=1000) as gw:
        yield gw


async def _jane_ids(gateway: StripeGateway) -> dict[str, str]:
    [jane] = await gateway.list_customers_by_email("jane@acme.com")
    customer = str(jane["id"])
    subs = [s async for s in gateway.iter_objects("subscriptions", {"customer": customer})]
    invoices = [i async for i in gateway.iter_objects("invoices", {"customer": customer})]
    charges = [c async for c in gateway.iter_objects("charges", {"customer": customer})]
    open_invoice = next(i for i in invoices if i["status"] == "open")
    assert open_invoice["number"] == JANE_NUMBER
    return {  # the newest of each (the cache indexes the newest few), and the oldest charge
        "customer": customer, "subscription": subs[0]["id"], "invoice": invoices[0]["id"],
        "invoice_number": JANE_NUMBER, "charge": charges[0]["id"],
        "payment_intent": charges[0]["payment_intent"], "old_charge": charges[-1]["id"],
    }


def _requests(sandbox: SandboxHandle) -> list[tuple[str, str]]:
    return [(r["path"], unquote_plus(r["query"].get("query", ""))) for r in sandbox.control.requests()]


async def test_each_form_finds_jane_from_stripe(sandbox: SandboxHandle, gateway: StripeGateway) -> None:
    ids = await _jane_ids(gateway)
    sandbox.control.update(ids["customer"], {"metadata": {"user_id": "1001"}})
    service = BillingService(gateway, None, metadata_keys=KEYS)
    queries = {
        "subscription": ids["subscription"], "invoice": ids["invoice"], "invoice_number": JANE_NUMBER.lower(),
        "charge": ids["charge"], "payment_intent": ids["payment_intent"], "metadata": "user_id:1001",
    }
    for method, query in queries.items():
        context = await service.lookup(query)
        assert context.found and context.customer is not None, query
        assert context.customer.id == ids["customer"] and context.customer.name == "Jane Doe"
        assert context.match is not None and (context.match.method, context.match.confidence) == (
            method, "exact"
        )
        assert context.source == "stripe" and context.status == "past_due"
    assert (await service.lookup(JANE_NUMBER)).query == JANE_NUMBER
    assert (await service.lookup("user_id:1001")).query == "user_id:1001"


async def test_stripe_is_asked_with_its_own_query_syntax(
    sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    ids = await _jane_ids(gateway)
    sandbox.control.update(ids["customer"], {"metadata": {"user_id": "o'neil\\7"}})
    service = BillingService(gateway, None, metadata_keys=("user_id",))
    sandbox.control.clear_requests()
    found = await service.lookup("0hiaxqk6-0004")
    assert found.customer is not None and found.customer.id == ids["customer"]
    assert _requests(sandbox)[0] == ("/v1/invoices/search", 'number:"0HIAXQK6-0004"')
    sandbox.control.clear_requests()
    # A quote and a backslash in the value are escaped, and Stripe reads back exactly the value.
    quoted = await service.lookup("o'neil\\7")
    assert quoted.customer is not None and quoted.customer.id == ids["customer"]
    assert _requests(sandbox)[0] == ("/v1/customers/search", "metadata['user_id']:'o\\'neil\\\\7'")
    sandbox.control.clear_requests()
    await service.lookup(ids["subscription"])
    assert _requests(sandbox)[0] == (f"/v1/subscriptions/{ids['subscription']}", "")


async def test_a_metadata_value_cannot_change_which_customer_stripe_returns(
    sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    ids = await _jane_ids(gateway)
    sandbox.control.update(ids["customer"], {"metadata": {"user_id": "ops@acme.com"}})
    service = BillingService(gateway, None, metadata_keys=KEYS)
    found = await service.lookup("user_id:ops@acme.com")
    assert found.customer is not None and found.customer.id == ids["customer"]
    # Quotes closing the value and a clause of their own: still one value, which nobody has.
    for hostile in ("user_id:' OR email:'jane@acme.com", "user_id:ops@acme.com' OR email:'jane@acme.com",
                    'user_id:" OR metadata[\'user_id\']:"ops@acme.com', "user_id:OPS@ACME.COM"):
        context = await service.lookup(hostile)
        assert not context.found, hostile


async def test_a_bare_value_shaped_like_an_invoice_number_or_id_is_also_tried_as_the_one_key(
    sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    ids = await _jane_ids(gateway)
    one_key = BillingService(gateway, None, metadata_keys=("user_id",))
    for value in ("Acc-1234", "in_progress"):  # read first as an invoice number, an invoice id
        sandbox.control.update(ids["customer"], {"metadata": {"user_id": value}})
        context = await one_key.lookup(value)
        assert context.customer is not None and context.customer.id == ids["customer"], value
        assert context.match is not None and context.match.method == "metadata"
        assert context.query == f"user_id:{value}"
    # What it looks like still comes first; with two keys a bare value names no key.
    assert (await one_key.lookup(JANE_NUMBER)).match == Match(method="invoice_number", confidence="exact")
    assert not (await BillingService(gateway, None, metadata_keys=KEYS).lookup("in_progress")).found
    nobody = await one_key.lookup("ZZZZ-9999")
    assert nobody.to_json_dict() == {"found": False, "query": "ZZZZ-9999"}


async def test_a_dashboard_link_or_a_client_secret_finds_jane_and_the_secret_goes_nowhere(
    sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    ids = await _jane_ids(gateway)
    dash = "https://dashboard.stripe.com/test"
    one_key = BillingService(gateway, None, metadata_keys=("user_id",))  # a miss is retried as user_id
    sandbox.control.clear_requests()
    queries = {
        f"{dash}/customers/{ids['customer']}": ("customer_id", ids["customer"]),
        f"<{dash}/subscriptions/{ids['subscription']}|Subscription>": ("subscription", ids["subscription"]),
        f"<{dash}/invoices/{ids['invoice']}>": ("invoice", ids["invoice"]),
        f"{dash}/payments/{ids['payment_intent']}": ("payment_intent", ids["payment_intent"]),
        f"{ids['payment_intent']}_secret_XYZ789": ("payment_intent", ids["payment_intent"]),
    }
    for query, (method, read) in queries.items():
        context = await one_key.lookup(query)
        assert context.customer is not None and context.customer.id == ids["customer"], query
        assert context.match is not None and context.match.method == method
        assert context.query == read  # what the card and the tools repeat: the id, never the link's rest
    nobody = await one_key.lookup("pi_NoSuch_secret_XYZ789")
    assert nobody.to_json_dict() == {"found": False, "query": "pi_NoSuch"}
    assert "XYZ789" not in json.dumps(sandbox.control.requests())


async def test_unknown_ids_and_numbers_are_not_found(sandbox: SandboxHandle, gateway: StripeGateway) -> None:
    service = BillingService(gateway, None, metadata_keys=KEYS)
    for query in ("sub_NoSuch", "in_NoSuch", "ch_NoSuch", "pi_NoSuch", "ZZZZ-9999", "user_id:nobody"):
        context = await service.lookup(query)
        assert context.to_json_dict() == {"found": False, "query": query}
    statuses = {r["path"]: r["status"] for r in sandbox.control.requests()}
    assert statuses["/v1/subscriptions/sub_NoSuch"] == 404
    assert statuses["/v1/payment_intents/pi_NoSuch"] == 404


async def test_an_id_of_the_other_mode_is_one_sentence_saying_so(
    sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    # Stripe's 404 says when the id exists in the other mode; "not found" would send the agent
    # looking for a customer that is there, under the other key.
    live_customer = sf.customer(cid="cus_LiveOnly", email="live@acme.com", livemode=True)
    sandbox.control.load([
        live_customer, sf.subscription(sid="sub_LiveOnly", cid="cus_LiveOnly", livemode=True),
        sf.invoice(iid="in_LiveOnly", cid="cus_LiveOnly", livemode=True),
    ])
    service = BillingService(gateway, None, metadata_keys=KEYS)
    for query, what in (
        ("cus_LiveOnly", "customer"), ("sub_LiveOnly", "subscription"), ("in_LiveOnly", "invoice"),
    ):
        with pytest.raises(BadQueryError) as info:
            await service.lookup(query)
        message = str(info.value)
        assert message == (
            f"{query} is a live-mode {what} and STRIPE_API_KEY is a test-mode key; look it up with a "
            "live-mode key."
        )
    # The sentence rests on Stripe's own 404 for a customer of the other mode; the worker's read of
    # it stays "no such customer in this key's data" (None), not an error.
    import httpx

    async with httpx.AsyncClient(
        base_url=sandbox.url, headers={"Authorization": f"Bearer {sandbox.api_key}"}
    ) as http:
        answer = await http.get("/v1/customers/cus_LiveOnly")
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == (
        "No such customer: 'cus_LiveOnly'; a similar object exists in live mode, but a test mode key "
        "was used to make this request."
    )
    assert await gateway.retrieve_customer("cus_LiveOnly") is None


async def test_sandbox_answers_unknown_ids_as_stripe_does(sandbox: SandboxHandle) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    async with httpx.AsyncClient(base_url=sandbox.url, headers=headers) as http:
        for path, param, kind in (
            ("/v1/subscriptions/sub_X", "subscription_exposed_id", "subscription"),
            ("/v1/payment_intents/pi_X", "intent", "payment_intent"),
            ("/v1/invoices/in_X", "invoice", "invoice"),
        ):
            error = (await http.get(path)).json()["error"]
            assert error == {
                "type": "invalid_request_error", "code": "resource_missing", "param": param,
                "message": f"No such {kind}: '{path.rsplit('/', 1)[1]}'",
                "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
            }
        refused = await http.get("/v1/invoices/search", params={"query": "email:'x@y.z'"})
        assert refused.status_code == 400 and "unsupported search field for resource `invoices`" in (
            refused.json()["error"]["message"]
        )


async def test_a_key_that_may_not_read_payment_intents_finds_the_customer_through_its_charges(
    sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    ids = await _jane_ids(gateway)
    sandbox.control.set_key_permissions(sandbox.api_key, sorted(PERMISSIONS.values()))
    service = BillingService(gateway, None)
    context = await service.lookup(ids["payment_intent"])
    assert context.customer is not None and context.customer.id == ids["customer"]
    assert context.match is not None and context.match.method == "payment_intent"
    paths = [r["path"] for r in sandbox.control.requests()]
    assert f"/v1/payment_intents/{ids['payment_intent']}" in paths and "/v1/charges" in paths


async def test_a_key_without_invoice_read_is_told_which_permission(
    sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    granted = sorted(set(PERMISSIONS.values()) - {"rak_invoice_read"})
    sandbox.control.set_key_permissions(sandbox.api_key, granted)
    service = BillingService(gateway, None)
    for query in ("in_Anything", JANE_NUMBER):
        with pytest.raises(ConfigurationError, match="rak_invoice_read"):
            await service.lookup(query)


async def test_customers_sharing_a_metadata_value_are_ranked_with_the_others_shown(
    sandbox: SandboxHandle, gateway: StripeGateway
) -> None:
    ids = await _jane_ids(gateway)
    sandbox.control.update(ids["customer"], {"metadata": {"account_id": "acct-77"}})
    sandbox.control.load([
        sf.customer(cid="cus_Twin", email="twin@acme.com", metadata={"account_id": "acct-77"}),
        sf.customer(cid="cus_Case", email="case@acme.com", metadata={"account_id": "ACCT-77"}),
    ])
    context = await BillingService(gateway, None, metadata_keys=KEYS).lookup("account_id:acct-77")
    assert context.customer is not None and context.customer.id == ids["customer"]  # paying first
    # Stripe's search is case-insensitive; a metadata id is not: ACCT-77 is another customer's.
    assert [o.id for o in context.other_customers] == ["cus_Twin"]


# ---- from the cache --------------------------------------------------------------------------------


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    prefix = f"blqf{uuid.uuid4().hex[:10]}"
    client = await open_redis(redis_url)
    try:
        yield RedisStore(client, TENANT, prefix=prefix, metadata_keys=KEYS)
    finally:
        await client.aclose()
        await unlink_prefix(redis_url, prefix)


async def test_after_a_backfill_every_form_is_answered_from_the_cache_without_stripe(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    ids = await _jane_ids(gateway)
    sandbox.control.update(ids["customer"], {"metadata": {"user_id": "1001"}})
    await Backfill(gateway, store).run()
    service = BillingService(gateway, store, metadata_keys=KEYS)
    sandbox.control.clear_requests()
    queries = {
        "subscription": ids["subscription"], "invoice": ids["invoice"], "invoice_number": JANE_NUMBER.lower(),
        "charge": ids["charge"], "payment_intent": ids["payment_intent"], "metadata": "user_id:1001",
    }
    for method, query in queries.items():
        context = await service.lookup(query)
        assert context.found and context.customer is not None and context.customer.id == ids["customer"]
        assert context.source == "cache", query
        assert context.match is not None and context.match.method == method
        assert context.query == parse_query(query, KEYS).text
    assert sandbox.control.requests() == []


async def test_a_cold_lookup_indexes_what_it_saved(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    ids = await _jane_ids(gateway)
    service = BillingService(gateway, store, metadata_keys=KEYS)
    cold = await service.lookup(JANE_NUMBER)
    assert cold.source == "stripe"
    sandbox.control.clear_requests()
    for query in (JANE_NUMBER, ids["charge"], ids["subscription"]):
        assert (await service.lookup(query)).source == "cache"
    assert sandbox.control.requests() == []


class _Quiet:
    async def notify(self, transition: Transition) -> None:
        del transition


async def _apply_new_events(gateway: StripeGateway, store: RedisStore, seen: set[str]) -> None:
    """Queue the sandbox's events not yet queued and let a worker apply them."""
    events = sorted([e async for e in gateway.iter_objects("events")], key=lambda e: (e["created"], e["id"]))
    for event in events:
        if event["id"] not in seen:
            seen.add(event["id"])
            await store.client.xadd(store.stream_key, {"e": json.dumps(event)})
    worker = EventWorker(store, gateway, _Quiet(), block_ms=10)
    await worker.ensure_group()
    for _ in range(50):
        if not await worker.run_once(block_ms=10):
            return


async def test_the_worker_keeps_the_index_to_what_the_cache_holds(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    ids = await _jane_ids(gateway)
    customer = ids["customer"]
    seen = {e["id"] async for e in gateway.iter_objects("events")}
    service = BillingService(gateway, store, metadata_keys=KEYS)
    await service.lookup("jane@acme.com")  # cached, with her invoices, charges and subscription
    assert await store.customer_ids_for_lookup("invoice_number", JANE_NUMBER) == [customer]
    assert await store.customer_ids_for_lookup("metadata", "user_id:1001") == []
    sandbox.control.update(customer, {"metadata": {"user_id": "1001"}})
    await _apply_new_events(gateway, store, seen)
    assert await store.customer_ids_for_lookup("metadata", "user_id:1001") == [customer]
    # A new charge, then a new metadata value: the old value leaves the index, the new one is there.
    [created] = sandbox.control.create_charge(customer, 2900)["events"]
    charge = created["data"]["object"]
    sandbox.control.update(customer, {"metadata": {"user_id": "2002"}})
    await _apply_new_events(gateway, store, seen)
    assert await store.customer_ids_for_lookup("charge", charge["id"]) == [customer]
    assert await store.customer_ids_for_lookup("metadata", "user_id:1001") == []
    found = await service.lookup("user_id:2002")
    assert found.source == "cache" and found.customer is not None and found.customer.id == customer
    assert not (await service.lookup("user_id:1001")).found  # asked Stripe: nobody has it any more
    # The customer deleted: nothing of it is left in the index.
    sandbox.control.delete(customer)
    await _apply_new_events(gateway, store, seen)
    for kind, text in (("invoice_number", JANE_NUMBER), ("charge", charge["id"]),
                       ("subscription", ids["subscription"]), ("metadata", "user_id:2002")):
        assert await store.customer_ids_for_lookup(kind, text) == [], kind
    assert [k async for k in store.client.scan_iter(match=store.tenant_key("find:*"))] == []


async def test_an_index_entry_older_than_the_metadata_is_not_believed(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    ids = await _jane_ids(gateway)
    sandbox.control.update(ids["customer"], {"metadata": {"user_id": "1001"}})
    service = BillingService(gateway, store, metadata_keys=KEYS)
    await service.lookup("user_id:1001")
    # An entry naming Jane under a value she does not have (a write that lost a race, say).
    await store.client.sadd(store.lookup.key("metadata:user_id:9999"), ids["customer"])
    sandbox.control.clear_requests()
    context = await service.lookup("user_id:9999")
    assert not context.found and sandbox.control.requests() != []  # Stripe was asked, and is right


async def test_a_cached_metadata_answer_still_names_the_customers_sharing_the_value(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    ids = await _jane_ids(gateway)
    sandbox.control.update(ids["customer"], {"metadata": {"user_id": "shared-7"}})
    twin = sf.customer(cid="cus_Twin", email="twin@acme.com", metadata={"user_id": "shared-7"})
    sandbox.control.load([twin])
    service = BillingService(gateway, store, metadata_keys=KEYS)
    cold = await service.lookup("user_id:shared-7")  # Jane is built and cached, her twin only named
    assert cold.source == "stripe" and [o.id for o in cold.other_customers] == ["cus_Twin"]
    sandbox.control.clear_requests()
    cached = await service.lookup("user_id:shared-7")
    assert cached.source == "cache" and sandbox.control.requests() == []
    assert cached.customer is not None and cached.customer.id == ids["customer"]
    assert [o.id for o in cached.other_customers] == ["cus_Twin"]  # "others share this user_id"
    # Once the twin is cached with another value, it no longer shares this one.
    sandbox.control.update("cus_Twin", {"metadata": {"user_id": "other"}})
    await service.lookup("cus_Twin")
    again = await service.lookup("user_id:shared-7")
    assert again.source == "cache" and again.other_customers == []


async def test_forgetting_leaves_no_metadata_value_naming_the_customer(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    ids = await _jane_ids(gateway)
    sandbox.control.update(ids["customer"], {"metadata": {"user_id": "1001", "account_id": "acct-9"}})
    await BillingService(gateway, store, metadata_keys=KEYS).lookup("user_id:1001")
    # An entry her stored objects no longer show (a value changed while no worker ran, say).
    await store.client.sadd(store.lookup.key("metadata:user_id:0999"), ids["customer"])
    # The operator has since dropped account_id from BILLING_MATCH_METADATA_KEYS, then forgets her.
    narrower = RedisStore(store.client, TENANT, prefix=store.prefix.split(":")[0], metadata_keys=("user_id",))
    assert narrower.lookup.key("metadata:user_id:1001") == store.lookup.key("metadata:user_id:1001")
    await narrower.forget_customer(ids["customer"])
    left = [k async for k in store.client.scan_iter(match=store.tenant_key("find:metadata:*"))]
    assert left == []


async def test_forgetting_a_customer_takes_it_out_of_the_index(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    ids = await _jane_ids(gateway)
    await BillingService(gateway, store, metadata_keys=KEYS).lookup(JANE_NUMBER)
    assert await store.customer_ids_for_lookup("invoice_number", JANE_NUMBER) == [ids["customer"]]
    await store.forget_customer(ids["customer"])
    assert await store.customer_ids_for_lookup("invoice_number", JANE_NUMBER) == []
    assert [k async for k in store.client.scan_iter(match=store.tenant_key("find:*"))] == []



async def test_the_index_holds_the_newest_few_and_an_older_id_costs_one_request(
    empty_sandbox: SandboxHandle, store: RedisStore
) -> None:
    from billing.cache.lookup_index import CHARGES, INVOICES
    from billing.cache.store import MAX_STORED_INVOICES

    count = MAX_STORED_INVOICES + 2
    empty_sandbox.control.load([
        sf.customer(cid="cus_Many", email="many@x.io"),
        *(sf.invoice(iid=f"in_M{n:02d}", cid="cus_Many", number=f"MANY01-{n + 1:04d}",
                     created=sf.T0 - (count - n) * 86400) for n in range(count)),
        *(sf.charge(chid=f"ch_M{n:02d}", cid="cus_Many", payment_intent=f"pi_M{n:02d}",
                    created=sf.T0 - (count - n) * 86400) for n in range(count)),
    ])
    async with StripeGateway(empty_sandbox.api_key, api_base=empty_sandbox.url, retry=FAST,
                             rate_limit=1000) as gateway:
        service = BillingService(gateway, store)
        await service.lookup("many@x.io")
        for n in range(count):
            newest = ["cus_Many"] if n >= count - INVOICES else []
            assert await store.customer_ids_for_lookup("invoice", f"in_M{n:02d}") == newest, n
            newest = ["cus_Many"] if n >= count - CHARGES else []
            assert await store.customer_ids_for_lookup("charge", f"ch_M{n:02d}") == newest, n
            assert await store.customer_ids_for_lookup("payment_intent", f"pi_M{n:02d}") == newest, n
            # every number of a stored invoice (one entry: the prefix), not those trimmed away
            kept = ["cus_Many"] if n >= count - MAX_STORED_INVOICES else []
            assert await store.customer_ids_for_lookup("invoice_number", f"MANY01-{n + 1:04d}") == kept, n
        empty_sandbox.control.clear_requests()
        for query in ("MANY01-0003", "in_M13", "ch_M13", "pi_M13"):
            assert (await service.lookup(query)).source == "cache"
        assert empty_sandbox.control.requests() == []
        # Older ones: Stripe says whose they are in one request; the card is the cached one.
        for query, path in (("ch_M00", "/v1/charges/ch_M00"), ("in_M00", "/v1/invoices/in_M00"),
                            ("many01-0001", "/v1/invoices/search")):
            empty_sandbox.control.clear_requests()
            older = await service.lookup(query)
            assert older.customer is not None and older.customer.id == "cus_Many" and older.source == "cache"
            assert [r["path"] for r in empty_sandbox.control.requests()] == [path], query
        fresh = await service.lookup("ch_M00", refresh=True)
        assert fresh.source == "stripe" and fresh.match is not None and fresh.match.method == "charge"


async def test_invoice_number_and_metadata_lookups_spend_the_search_budget(
    sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore
) -> None:
    from billing.stripe.gateway import SharedRateLimit

    ids = await _jane_ids(gateway)
    sandbox.control.update(ids["customer"], {"metadata": {"user_id": "1001"}})
    gateway.share_limits(store.client, store.tenant_key("ratelimit"))
    search, general = gateway.search_limiter, gateway.limiter
    assert isinstance(search, SharedRateLimit) and isinstance(general, SharedRateLimit)
    service = BillingService(gateway, None, metadata_keys=KEYS)

    def spent() -> tuple[int, int]:
        return sum(search.granted.values()), sum(general.granted.values())

    before = spent()
    await service.lookup(ids["subscription"])  # a retrieve: the account's budget only
    after_retrieve = spent()
    assert after_retrieve[0] == before[0] and after_retrieve[1] > before[1]
    await service.lookup(JANE_NUMBER)  # Search API: search's 20/s as well as the account's
    assert spent()[0] == after_retrieve[0] + 1
    await service.lookup("user_id:1001")
    assert spent()[0] == after_retrieve[0] + 2
