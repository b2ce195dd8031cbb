"""Fixtures shared by the billing tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from billing.stripe.gateway import RetryPolicy, StripeGateway
from tests.fixtures_sandbox import SandboxHandle


@pytest.fixture
def gateway_attempts() -> int:
    """How many times ``gateway`` tries a request (a module overrides this to try fewer)."""
    return 3


@pytest.fixture
async def gateway(empty_sandbox: SandboxHandle, gateway_attempts: int) -> AsyncIterator[StripeGateway]:
    """A gateway to the empty sandbox whose retries follow at once: the tests wait out no backoff.
    Modules needing another sandbox or settings define their own ``gateway``."""
    retry = RetryPolicy(attempts=gateway_attempts, base_seconds=0.001, cap_seconds=0.01)
    async with StripeGateway(empty_sandbox.api_key, api_base=empty_sandbox.url, retry=retry,
                             rate_limit=1000) as gw:
        yield gw
