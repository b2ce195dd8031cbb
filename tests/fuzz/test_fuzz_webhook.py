"""Fuzzing ``WebhookIngest.handle`` on a real Redis: arbitrary bodies, validly and badly signed.

Never a 500 (nor an exception); a badly signed body writes nothing to the stream; a validly signed
Stripe-shaped event of this mode is queued exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.sync.webhook import WebhookIngest
from tests.fixtures_redis import TEST_TENANT, unlink_prefix

SECRET = "whsec_fuzzwebhooksecret"

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                       max_size=4),
    max_leaves=30,
)
events = st.fixed_dictionaries(
    {"id": st.text(max_size=20), "type": st.text(max_size=30)},
    optional={"livemode": json_values, "object": st.just("event"), "created": json_values,
              "data": json_values},
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    events.map(lambda v: json.dumps(v).encode()),
    st.integers(60, 2000).map(lambda n: b"[" * n + b"]" * n),
)


def sign(body: bytes, secret: str = SECRET, at: int | None = None) -> str:
    timestamp = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"  # over the raw bytes, as Stripe signs


bad_signatures = st.one_of(
    st.none(), st.text(max_size=80),
    st.builds(lambda t, v: f"t={t},v1={v}", st.integers(), st.text(alphabet="0123456789abcdef", max_size=64)),
)


@pytest.fixture
async def ingest(redis_url: str, key_prefix: str) -> AsyncIterator[WebhookIngest]:
    client = await open_redis(redis_url)
    try:
        yield WebhookIngest(RedisStore(client, TEST_TENANT, prefix=key_prefix), SECRET)
    finally:
        await client.aclose()
        await unlink_prefix(redis_url, key_prefix)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=bodies, signature=bad_signatures, other_secret=st.booleans())
async def test_a_badly_signed_body_is_a_4xx_and_writes_nothing(
    ingest: WebhookIngest, body: bytes, signature: str | None, other_secret: bool
) -> None:
    if other_secret:
        signature = sign(body, "whsec_someoneelse")
    before = await ingest.store.client.xlen(ingest.store.stream_key)
    result = await ingest.handle(body, signature)
    assert 400 <= result.status < 500, result
    assert result.outcome == "rejected" and result.message.endswith(".")
    assert await ingest.store.client.xlen(ingest.store.stream_key) == before


@FUZZ
@given(body=bodies)
async def test_a_validly_signed_body_is_never_a_500(ingest: WebhookIngest, body: bytes) -> None:
    signature = sign(body)
    before = await ingest.store.client.xlen(ingest.store.stream_key)
    result = await ingest.handle(body, signature)
    assert result.status in (200, 400, 413), result
    after = await ingest.store.client.xlen(ingest.store.stream_key)
    assert after == before + (1 if result.outcome == "queued" else 0)
    if result.outcome == "queued":
        event = json.loads(body)
        assert isinstance(event, dict) and bool(event.get("livemode")) is TEST_TENANT.livemode
