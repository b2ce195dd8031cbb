"""A running Billing Lens Slack app: the real ASGI app under uvicorn, bolt verifying real signed requests,
the Stripe sandbox over HTTP, the shared Redis under a private prefix, and a fake Slack Web API that
records every call. Nothing of ours is replaced.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bot.asgi import build_asgi_app
from bot.runtime import Runtime, load_settings, open_runtime
from bot.slack.app import SlackDeps, build_deps, build_slack_app, slack_web_client
from tests.fakes.slack_api import FakeSlackAPI
from tests.fakes.slack_requests import signed_headers
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle
from tests.loopback import run_asgi

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-1111-2222-testtoken"
WEBHOOK_SECRET = "whsec_slacktests"


@dataclass
class SlackHarness:
    http: httpx.AsyncClient
    slack: FakeSlackAPI
    runtime: Runtime
    deps: SlackDeps
    sandbox: SandboxHandle

    async def post(self, body: bytes, *, timestamp: int | None = None, secret: str = SIGNING_SECRET,
                   content_type: str = "application/x-www-form-urlencoded") -> httpx.Response:
        headers = {**signed_headers(body, secret, timestamp), "Content-Type": content_type}
        return await self.http.post("/slack/events", content=body, headers=headers)

    async def timed_post(self, body: bytes) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        response = await self.post(body)
        return response, time.perf_counter() - started


@pytest.fixture
def fake_slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as fake:
        yield fake


@asynccontextmanager
async def running_app(sandbox: SandboxHandle, redis_url: str, key_prefix: str, slack: FakeSlackAPI,
                      **env: str) -> AsyncIterator[SlackHarness]:
    settings = load_settings(
        STRIPE_API_KEY=sandbox.api_key, STRIPE_API_BASE=sandbox.url, REDIS_URL=redis_url,
        BILLING_KEY_PREFIX=key_prefix, BILLING_STRIPE_RETRIES="0", BILLING_STRIPE_TIMEOUT="5",
        SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=slack.url,
        STRIPE_ACCOUNT_ID="acct_slacktests", **env,
    )
    try:
        async with open_runtime(settings) as runtime:
            assert runtime.store is not None
            client = slack_web_client(settings)
            deps = build_deps(runtime, client)
            app = build_asgi_app(settings=settings, store=runtime.store, webhook_secret=WEBHOOK_SECRET,
                                 tenant=runtime.store.tenant, slack_app=build_slack_app(runtime, deps=deps,
                                                                                        client=client))
            async with run_asgi(app) as url:
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    yield SlackHarness(http, slack, runtime, deps, sandbox)
                await deps.drain()
    finally:
        await unlink_prefix(redis_url, key_prefix)


@pytest.fixture
async def harness(sandbox: SandboxHandle, redis_url: str, key_prefix: str,
                  fake_slack: FakeSlackAPI) -> AsyncIterator[SlackHarness]:
    async with running_app(sandbox, redis_url, key_prefix, fake_slack) as h:
        yield h


def texts(payload: Any) -> list[str]:
    """Every text string in a Slack payload (fallback, blocks, fields, buttons), recursively."""
    found: list[str] = []
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key == "text" and isinstance(value, str):
                found.append(value)
            else:
                found += texts(value)
    elif isinstance(payload, list):
        for item in payload:
            found += texts(item)
    return found


def all_text(payload: Any) -> str:
    return "\n".join(texts(payload))
