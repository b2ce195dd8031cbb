"""The read API through the real stripe SDK (sync and async) against a running sandbox."""

from __future__ import annotations

import contextlib

import pytest
import stripe

from tests.fixtures_sandbox import SandboxHandle


def client(sandbox: SandboxHandle, key: str | None = None) -> stripe.StripeClient:
    return stripe.StripeClient(key or sandbox.api_key, base_addresses={"api": sandbox.url})


def test_email_list_is_exact_and_case_sensitive(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    assert [x.email for x in c.v1.customers.list(params={"email": "Mixed.Case@Example.com"}).data] == [
        "Mixed.Case@Example.com"
    ]
    assert c.v1.customers.list(params={"email": "mixed.case@example.com"}).data == []


def test_search_is_case_insensitive_and_pages(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    found = c.v1.customers.search(params={"query": "email:'mixed.case@example.com'"})
    assert found.object == "search_result"
    assert [x.email for x in found.data] == ["Mixed.Case@Example.com"]
    first = c.v1.customers.search(params={"query": "email:'SHARED@example.com'", "limit": 1})
    assert first.has_more and first.next_page
    second = c.v1.customers.search(
        params={"query": "email:'shared@example.com'", "limit": 1, "page": first.next_page}
    )
    assert not second.has_more and second.next_page is None
    assert {first.data[0].name, second.data[0].name} == {"Shared Older", "Shared Newer"}
    with pytest.raises(stripe.InvalidRequestError, match="unable to parse"):
        c.v1.customers.search(params={"query": "email=jane"})


def test_search_reads_backslash_escaped_quotes(sandbox: SandboxHandle) -> None:
    sandbox.control.load([{"id": "cus_obrien", "object": "customer", "email": "O'Brien@Example.com",
                           "name": "Pat O'Brien", "metadata": {}}])
    c = client(sandbox)
    found = c.v1.customers.search(params={"query": "email:'o\\'brien@example.com'"})
    assert [x.id for x in found.data] == ["cus_obrien"]
    by_name = c.v1.customers.search(params={"query": 'name:"pat o\'brien"'})
    assert [x.id for x in by_name.data] == ["cus_obrien"]


def test_shared_email_lists_newest_first(sandbox: SandboxHandle) -> None:
    names = [x.name for x in client(sandbox).v1.customers.list(params={"email": "shared@example.com"}).data]
    assert names == ["Shared Newer", "Shared Older"]


def test_retrieve_and_unknown_id(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    jane = c.v1.customers.list(params={"email": "jane@acme.com"}).data[0]
    assert c.v1.customers.retrieve(jane.id).name == "Jane Doe"
    with pytest.raises(stripe.InvalidRequestError) as info:
        c.v1.customers.retrieve("cus_missing")
    assert info.value.http_status == 404
    assert info.value.code == "resource_missing"
    assert info.value.param == "id"
    assert "No such customer: 'cus_missing'" in str(info.value.user_message)


def test_pagination_walks_every_customer_once(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    ids = [x.id for x in c.v1.customers.list(params={"limit": 7}).auto_paging_iter()]
    assert len(ids) == len(set(ids)) >= 50
    page1 = c.v1.customers.list(params={"limit": 3})
    page2 = c.v1.customers.list(params={"limit": 3, "starting_after": page1.data[-1].id})
    assert page1.has_more and page2.has_more
    assert [x.id for x in page2.data] == ids[3:6]
    back = c.v1.customers.list(params={"limit": 3, "ending_before": page2.data[0].id})
    assert [x.id for x in back.data] == ids[0:3]
    assert back.has_more is False
    created = [x.created for x in page1.data + page2.data]
    assert created == sorted(created, reverse=True)


def test_limit_bounds(sandbox: SandboxHandle) -> None:
    with pytest.raises(stripe.InvalidRequestError, match="less than or equal to 100") as info:
        client(sandbox).v1.customers.list(params={"limit": 101})
    assert info.value.http_status == 400 and info.value.param == "limit"


def test_unknown_parameter_is_refused(sandbox: SandboxHandle) -> None:
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: colour"):
        client(sandbox).v1.customers.list(params={"colour": "red"})  # type: ignore[typeddict-unknown-key]


def test_created_filters(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    everything = list(c.v1.charges.list(params={"limit": 100}).auto_paging_iter())
    pivot = sorted(x.created for x in everything)[len(everything) // 2]
    newer = list(c.v1.charges.list(params={"created": {"gte": pivot}, "limit": 100}).auto_paging_iter())
    older = list(c.v1.charges.list(params={"created": {"lt": pivot}, "limit": 100}).auto_paging_iter())
    assert newer and older
    assert all(x.created >= pivot for x in newer) and all(x.created < pivot for x in older)
    assert len(newer) + len(older) == len(everything)
    exact = c.v1.charges.list(params={"created": pivot, "limit": 100}).data  # type: ignore[typeddict-item]
    assert exact and all(x.created == pivot for x in exact)


def test_subscription_status_filter(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    churned = c.v1.customers.list(params={"email": "churned@example.com"}).data[0]
    assert c.v1.subscriptions.list(params={"customer": churned.id}).data == []
    every = c.v1.subscriptions.list(params={"customer": churned.id, "status": "all"}).data
    assert [s.status for s in every] == ["canceled"]
    past_due = c.v1.subscriptions.list(params={"status": "past_due", "limit": 100}).data
    assert past_due and all(s.status == "past_due" for s in past_due)
    default = list(c.v1.subscriptions.list(params={"limit": 100}).auto_paging_iter())
    assert all(s.status != "canceled" for s in default)


def test_invoice_filters_and_subscription_link(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    jane = c.v1.customers.list(params={"email": "jane@acme.com"}).data[0]
    sub = c.v1.subscriptions.list(params={"customer": jane.id}).data[0]
    open_invoices = c.v1.invoices.list(params={"customer": jane.id, "status": "open"}).data
    assert [(i.attempt_count, i.amount_due) for i in open_invoices] == [(2, 2900)]
    by_sub = c.v1.invoices.list(params={"subscription": sub.id}).data
    assert len(by_sub) == 4
    assert all(i.parent.subscription_details.subscription == sub.id for i in by_sub)


def test_expand_customer_subscriptions_and_discounts(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    plain = c.v1.customers.list(params={"email": "coupon@example.com"}).data[0]
    assert "subscriptions" not in plain
    customer = c.v1.customers.list(
        params={"email": "coupon@example.com", "expand": ["data.subscriptions"]}
    ).data[0]
    sub = customer.subscriptions.data[0]
    assert isinstance(sub.discounts[0], str)
    expanded = c.v1.subscriptions.list(params={"customer": customer.id, "expand": ["data.discounts"]}).data[0]
    assert expanded.discounts[0].object == "discount"
    assert expanded.discounts[0].source.coupon == "FOREVER20"
    one = c.v1.subscriptions.retrieve(sub.id, params={"expand": ["discounts"]})
    assert one.discounts[0].source.coupon == "FOREVER20"


def test_tiers_only_when_expanded(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    customer = c.v1.customers.list(params={"email": "tiered@example.com"}).data[0]
    sub = c.v1.subscriptions.list(params={"customer": customer.id}).data[0]
    price = sub["items"].data[0].price
    assert price.billing_scheme == "tiered" and "tiers" not in price
    assert "tiers" not in c.v1.prices.retrieve(price.id)
    tiers = c.v1.prices.retrieve(price.id, params={"expand": ["tiers"]}).tiers
    assert [(t.up_to, t.unit_amount) for t in tiers] == [(5, 700), (10, 650), (None, 600)]
    # Like ``…price.product``, ``tiers`` is a fifth level below a list: Stripe refuses it, so tiered
    # prices must be fetched by id with ``expand=["tiers"]``.
    with pytest.raises(stripe.InvalidRequestError, match="more than 4 levels"):
        c.v1.subscriptions.list(params={"customer": customer.id, "expand": ["data.items.data.price.tiers"]})
    one = c.v1.subscriptions.retrieve(sub.id, params={"expand": ["items.data.price.tiers"]})
    assert len(one["items"].data[0].price.tiers) == 3


def test_expand_deeper_than_four_levels_is_refused(sandbox: SandboxHandle) -> None:
    with pytest.raises(stripe.InvalidRequestError, match="more than 4 levels"):
        client(sandbox).v1.subscriptions.list(params={"expand": ["data.items.data.price.product"]})
    with pytest.raises(stripe.InvalidRequestError, match="cannot be expanded"):
        client(sandbox).v1.customers.list(params={"expand": ["data.nothing_here"]})


def test_deleted_customer_retrieve(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    listed = {x.id for x in c.v1.customers.list(params={"limit": 100}).auto_paging_iter()}
    result = sandbox.control.delete(c.v1.customers.list(params={"email": "nosubs@example.com"}).data[0].id)
    gone_id = result["events"][-1]["data"]["object"]["id"]
    tomb = c.v1.customers.retrieve(gone_id)
    assert tomb.to_dict() == {"id": gone_id, "object": "customer", "deleted": True}
    assert gone_id in listed
    assert gone_id not in {x.id for x in c.v1.customers.list(params={"limit": 100}).auto_paging_iter()}


def test_test_and_live_modes_are_separate(sandbox: SandboxHandle) -> None:
    test_side = client(sandbox).v1.customers.list(params={"email": "both@example.com"}).data
    live_side = (
        client(sandbox, sandbox.live_api_key).v1.customers.list(params={"email": "both@example.com"}).data
    )
    assert [x.livemode for x in test_side] == [False]
    assert [x.livemode for x in live_side] == [True]
    with pytest.raises(stripe.InvalidRequestError, match="similar object exists in live mode"):
        client(sandbox).v1.customers.retrieve(live_side[0].id)


def test_bad_and_revoked_keys_are_401_with_masked_key(sandbox: SandboxHandle) -> None:
    with pytest.raises(stripe.AuthenticationError) as info:
        client(sandbox, "not_a_key_abcd").v1.customers.list()
    assert "abcd" in str(info.value) and "not_a_key" not in str(info.value)
    sandbox.control.revoke_key(sandbox.api_key)
    with pytest.raises(stripe.AuthenticationError) as info:
        client(sandbox).v1.customers.list()
    assert sandbox.api_key not in str(info.value)


def test_restricted_key_without_permission_is_403(sandbox: SandboxHandle) -> None:
    sandbox.control.set_key_permissions(sandbox.api_key, ["rak_customer_read"])
    c = client(sandbox)
    assert c.v1.customers.list(params={"limit": 1}).data
    with pytest.raises(stripe.PermissionError, match="rak_subscription_read") as info:
        c.v1.subscriptions.list(params={"limit": 1})
    assert sandbox.api_key not in str(info.value)
    sandbox.control.set_key_permissions(sandbox.api_key, None)
    assert c.v1.subscriptions.list(params={"limit": 1}).data


def test_writes_are_refused(sandbox: SandboxHandle) -> None:
    with pytest.raises(stripe.PermissionError, match="read-only"):
        client(sandbox).v1.customers.create(params={"email": "new@example.com"})


def test_rate_limit_fault_with_should_retry(sandbox: SandboxHandle) -> None:
    sandbox.control.set_faults(rate_limit_every=2, should_retry=True)
    c = client(sandbox)
    c.v1.customers.list(params={"limit": 1})
    with pytest.raises(stripe.RateLimitError) as info:
        c.v1.customers.list(params={"limit": 1})
    assert info.value.http_status == 429
    assert info.value.headers["Stripe-Should-Retry"] == "true"
    retrying = stripe.StripeClient(
        sandbox.api_key, base_addresses={"api": sandbox.url}, max_network_retries=2
    )
    sandbox.control.set_faults(rate_limit_every=2, should_retry=True)
    retrying.v1.customers.list(params={"limit": 1})
    assert retrying.v1.customers.list(params={"limit": 1}).data  # the SDK retried the 429 once
    assert [r["status"] for r in sandbox.control.requests()][-3:] == [200, 429, 200]


def test_server_error_fault_is_seeded_and_path_scoped(sandbox: SandboxHandle) -> None:
    def run() -> list[int]:
        sandbox.control.set_faults(error_probability=0.5, seed=7, path_prefix="/v1/charges")
        sandbox.control.clear_requests()
        for _ in range(12):
            with contextlib.suppress(stripe.APIError):
                client(sandbox).v1.charges.list(params={"limit": 1})
            client(sandbox).v1.customers.list(params={"limit": 1})
        return [r["status"] for r in sandbox.control.requests() if r["path"] == "/v1/charges"]

    first = run()
    assert 500 in first and 200 in first
    assert first == run()
    others = [r["status"] for r in sandbox.control.requests() if r["path"] == "/v1/customers"]
    assert set(others) == {200}


def test_request_log_records_requests_without_the_key(sandbox: SandboxHandle) -> None:
    sandbox.control.clear_requests()
    c = client(sandbox)
    c.v1.customers.list(params={"email": "jane@acme.com"})
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.invoices.retrieve("in_missing")
    log = sandbox.control.requests()
    assert [(r["method"], r["path"], r["status"], r["mode"]) for r in log] == [
        ("GET", "/v1/customers", 200, "test"),
        ("GET", "/v1/invoices/in_missing", 404, "test"),
    ]
    assert log[0]["query"] == {"email": "jane@acme.com"}
    assert sandbox.api_key not in repr(log)
    sandbox.control.clear_requests()
    assert sandbox.control.requests() == []


def test_account(sandbox: SandboxHandle) -> None:
    account = client(sandbox).v1.accounts.retrieve_current()
    assert account.id.startswith("acct_")


async def test_async_client(sandbox: SandboxHandle) -> None:
    c = client(sandbox)
    found = await c.v1.customers.list_async(params={"email": "jane@acme.com"})
    jane = found.data[0]
    subs = await c.v1.subscriptions.list_async(params={"customer": jane.id})
    assert [s.status for s in subs.data] == ["past_due"]
    seen = [
        x.id
        async for x in (
            await c.v1.invoices.list_async(params={"customer": jane.id, "limit": 2})
        ).auto_paging_iter()
    ]
    assert len(seen) == 4
    with pytest.raises(stripe.InvalidRequestError):
        await c.v1.subscriptions.retrieve_async("sub_missing")
