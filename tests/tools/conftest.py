"""Fixtures for the LLM tools: the shared runtime over the sandbox (real HTTP) and the real Redis server.

Each test gets its own key prefix (unlinked afterwards, nothing else touched) and the sandbox reset to
the demo dataset with no faults.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.runtime import Runtime, load_settings, open_runtime
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle
from tools.context_tools import BillingToolkit

BILLING = Path(sys.executable).with_name("billing")  # the console script of the project's venv
OUR_VARIABLES = ("STRIPE_", "BILLING_", "REDIS_", "SLACK_")


def settings_overrides(sandbox: SandboxHandle, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    # The client-side rate limit (20/s for a test key) is lifted: the sandbox is local and some tests
    # look up every demo customer.
    return {"STRIPE_API_KEY": sandbox.api_key, "STRIPE_API_BASE": sandbox.url, "REDIS_URL": redis_url,
            "BILLING_KEY_PREFIX": prefix, "BILLING_STRIPE_RETRIES": "1", "BILLING_STRIPE_RATE": "1000",
            **extra}


def product_env(sandbox: SandboxHandle, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """A subprocess environment without our settings from the outer shell, plus these."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    return {**base, **settings_overrides(sandbox, redis_url, prefix, **extra)}


@pytest.fixture
async def runtime(sandbox: SandboxHandle, redis_url: str, key_prefix: str) -> AsyncIterator[Runtime]:
    settings = load_settings(**settings_overrides(sandbox, redis_url, key_prefix))
    try:
        async with open_runtime(settings) as opened:
            yield opened
    finally:
        await unlink_prefix(redis_url, key_prefix)


@pytest.fixture
async def toolkit(runtime: Runtime) -> BillingToolkit:
    # Built on the test's event loop, which owns the runtime (the sync path submits to it).
    return BillingToolkit(runtime)


def request_log(sandbox: SandboxHandle) -> list[dict[str, Any]]:
    """The sandbox's ``/v1`` request log.

    Read once more on a transport error: after a subprocess ran for a few seconds, the sandbox's server
    (uvicorn, 5 s keep-alive) may close the control client's idle connection just as this read reuses it.
    The read is idempotent.
    """
    try:
        return sandbox.control.requests()
    except httpx.TransportError:
        return sandbox.control.requests()
