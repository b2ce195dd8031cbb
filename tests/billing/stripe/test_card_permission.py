"""A restricted key without PaymentMethods read: lookups still work, the card shows no payment method.

Stripe refuses to expand a default payment method for such a key (403 naming
``rak_payment_method_read``); the sandbox does the same.
"""

from __future__ import annotations

import logging

import pytest

from billing.service import BillingService
from billing.stripe.gateway import PERMISSIONS, StripeGateway
from tests.fixtures_sandbox import SandboxHandle


async def test_a_key_that_may_not_read_payment_methods_still_looks_customers_up(
    sandbox: SandboxHandle, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.control.set_key_permissions(sandbox.api_key, sorted(set(PERMISSIONS.values())))
    caplog.set_level(logging.WARNING, logger="billing.stripe")
    async with StripeGateway(sandbox.api_key, api_base=sandbox.url) as gateway:
        service = BillingService(gateway)
        by_email = await service.lookup("jane@acme.com")
        assert by_email.found and by_email.status == "past_due" and by_email.payment_method is None
        assert by_email.customer is not None
        # The email list and the search go out together: each may be refused once, no more.
        assert 1 <= len([r for r in sandbox.control.requests() if r["status"] == 403]) <= 2
        sandbox.control.clear_requests()
        by_id = await service.lookup(by_email.customer.id)
        assert by_id.found and by_id.mrr == {"usd": 2900}
        assert [r for r in sandbox.control.requests() if r["status"] == 403] == []  # never asked again
    assert caplog.text.count("rak_payment_method_read") == 1  # one warning


async def test_with_the_permission_the_card_shows_it(sandbox: SandboxHandle) -> None:
    sandbox.control.set_key_permissions(
        sandbox.api_key, [*sorted(set(PERMISSIONS.values())), "rak_payment_method_read"]
    )
    async with StripeGateway(sandbox.api_key, api_base=sandbox.url) as gateway:
        context = await BillingService(gateway).lookup("jane@acme.com")
    assert context.payment_method is not None and context.payment_method.last4 == "4242"
