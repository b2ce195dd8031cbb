"""The next invoice through Stripe's invoice preview, against the sandbox over HTTP (issue #10 item 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from billing.domain.builder import build_context
from billing.domain.models import Match
from billing.domain.snapshot import PREVIEW_FIELD, with_previews
from billing.stripe.gateway import PERMISSIONS, StripeGateway
from tests.billing.stripe.test_gateway import gateway_for

RESTRICTED_KEY = "rk_test_previewNoInvoiceRead01"
BY_EMAIL = Match(method="email", confidence="exact")


@pytest.fixture
async def gateway(sandbox: Any) -> AsyncIterator[StripeGateway]:
    async with gateway_for(sandbox) as gw:
        yield gw


async def _context(gateway: StripeGateway, email: str) -> Any:
    [customer] = await gateway.list_customers_by_email(email)
    data = await gateway.fetch_customer_data(customer)
    return data, build_context(data, query=email, match=BY_EMAIL, now=datetime.now(UTC))


async def test_create_preview_is_a_read_only_post_shaped_like_stripe(sandbox: Any) -> None:
    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    async with httpx.AsyncClient(base_url=sandbox.url, headers=headers) as http:
        [bigco] = (await http.get("/v1/customers", params={"email": "bigco@example.com"})).json()["data"]
        [sub] = (await http.get("/v1/subscriptions", params={"customer": bigco["id"]})).json()["data"]
        before = (await http.get("/v1/invoices", params={"customer": bigco["id"]})).json()["data"]
        answer = await http.post("/v1/invoices/create_preview", data={"subscription": sub["id"]})
        assert answer.status_code == 200
        preview = answer.json()
        assert preview["object"] == "invoice" and preview["status"] == "draft"
        assert (preview["amount_due"], preview["currency"]) == (125000, "usd")  # 10 seats × 12500
        assert preview["parent"]["subscription_details"]["subscription"] == sub["id"]
        after = (await http.get("/v1/invoices", params={"customer": bigco["id"]})).json()["data"]
        assert after == before  # nothing created
        missing = await http.post("/v1/invoices/create_preview", data={"subscription": "sub_nope"})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "subscription"
        other_post = await http.post("/v1/invoices", data={"customer": bigco["id"]})
        assert other_post.status_code == 403  # every other write is still refused


async def test_a_key_without_invoice_read_gets_stripes_permission_error(sandbox: Any) -> None:
    granted = [p for p in PERMISSIONS.values() if p != "rak_invoice_read"]
    sandbox.control.set_key_permissions(RESTRICTED_KEY, granted)
    headers = {"Authorization": f"Bearer {RESTRICTED_KEY}"}
    async with httpx.AsyncClient(base_url=sandbox.url, headers=headers) as http:
        answer = await http.post("/v1/invoices/create_preview", data={"subscription": "sub_any"})
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and "'rak_invoice_read'" in error["message"]


async def test_cold_lookup_previews_the_next_invoice_with_discounts(gateway: StripeGateway) -> None:
    data, ctx = await _context(gateway, "coupon@example.com")
    [sub] = ctx.subscriptions
    assert sub.next_invoice is not None and sub.next_invoice.estimate is False
    assert (sub.next_invoice.amount_due, sub.next_invoice.currency) == (4000, "usd")  # 5000 − 20 %
    assert data.subscriptions[0][PREVIEW_FIELD]["amount_due"] == 4000


async def test_without_the_permission_the_next_invoice_is_an_estimate(
    sandbox: Any, gateway: StripeGateway
) -> None:
    data, _ = await _context(gateway, "coupon@example.com")
    [sub] = data.subscriptions
    sandbox.control.set_key_permissions(
        RESTRICTED_KEY, [p for p in PERMISSIONS.values() if p != "rak_invoice_read"]
    )
    async with gateway_for(sandbox, RESTRICTED_KEY) as restricted:
        previews = await restricted.preview_next_invoices([sub])
    assert previews == {sub["id"]: None}  # the 403 is not an error: the card shows an estimate
    unpreviewed = replace(data, subscriptions=with_previews(data.subscriptions, previews))
    assert PREVIEW_FIELD not in unpreviewed.subscriptions[0]
    ctx = build_context(unpreviewed, query="coupon@example.com", match=BY_EMAIL, now=datetime.now(UTC))
    [info] = ctx.subscriptions
    assert info.next_invoice is not None and info.next_invoice.estimate is True
    assert info.next_invoice.amount_due == 4000  # 5000 with 20 % forever


async def test_jane_done_when(gateway: StripeGateway) -> None:
    _, ctx = await _context(gateway, "jane@acme.com")
    failed = [e.text for e in ctx.timeline if e.kind == "payment_failed"]
    assert failed[0].startswith("Payment of 29.00 USD failed (attempt 2, card declined); next retry ")
    assert failed[1] == "Payment of 29.00 USD failed (attempt 1, card declined)"
    [sub] = ctx.subscriptions
    assert sub.next_invoice is not None and sub.next_invoice.amount_due == 2900
    assert sub.next_invoice.estimate is False
    assert ctx.payment_method is not None and ctx.payment_method.last4 == "4242"


async def test_demo_cards_cancellation_and_card_expiring(gateway: StripeGateway) -> None:
    _, annual = await _context(gateway, "annual@example.com")
    assert "card_expiring" in annual.segments
    _, leaving = await _context(gateway, "leaving@example.com")
    [sub] = leaving.subscriptions
    assert sub.cancellation is not None and sub.cancellation.feedback == "switched_service"
    assert sub.cancellation.effective_at == sub.cancel_at and sub.next_invoice is None
    assert leaving.timeline[0].kind == "cancellation_scheduled"
    _, coupon = await _context(gateway, "coupon@example.com")
    assert coupon.payment_method is not None and coupon.payment_method.last4 == "0005"  # the sub's own


async def test_a_key_refused_previews_asks_again_only_after_a_while(
    sandbox: Any, gateway: StripeGateway
) -> None:
    # A key without rak_invoice_read would otherwise send a 403 to Stripe for every subscription event
    # (the refresher marks the customer on each): the refusal is remembered, then asked again.
    data, _ = await _context(gateway, "coupon@example.com")
    subs = data.subscriptions
    sandbox.control.set_key_permissions(
        RESTRICTED_KEY, [p for p in PERMISSIONS.values() if p != "rak_invoice_read"]
    )
    async with gateway_for(sandbox, RESTRICTED_KEY) as restricted:
        sandbox.control.clear_requests()
        for _ in range(5):
            assert await restricted.preview_next_invoices(subs) == {subs[0]["id"]: None}
        asked = [r for r in sandbox.control.requests() if r["path"] == "/v1/invoices/create_preview"]
        assert len(asked) == 1
        restricted.preview_denied_recheck = 0.0  # the operator granted it meanwhile: asked again
        sandbox.control.set_key_permissions(RESTRICTED_KEY, list(PERMISSIONS.values()))
        [preview] = (await restricted.preview_next_invoices(subs)).values()
        assert preview is not None and preview["amount_due"] == 4000
