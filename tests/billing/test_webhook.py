from __future__ import annotations

import json
import time

from freezegun import freeze_time

from billing.store import RedisStore
from billing.webhook import WebhookIngest
from tests.billing import stripe_factory as sf


def _ingest(store: RedisStore) -> WebhookIngest:
    return WebhookIngest(store, sf.SECRET)


async def test_a_signed_event_is_queued(store: RedisStore) -> None:
    body = sf.body_of(sf.event("customer.created", sf.customer(), sf.T0))
    result = await _ingest(store).handle(body, sf.sign(body))
    assert (result.status, result.outcome) == (200, "queued")
    entries = await store.client.xrange(store.stream_key)
    assert [e[1][b"e"] for e in entries] == [body]


async def test_bad_requests_are_rejected_and_nothing_is_written(store: RedisStore) -> None:
    ingest = _ingest(store)
    body = sf.body_of(sf.event("customer.created", sf.customer(), sf.T0))
    assert (await ingest.handle(body, None)).status == 400
    assert (await ingest.handle(body, sf.sign(body, secret="whsec_wrong"))).status == 400
    assert (await ingest.handle(body, sf.sign(body, timestamp=int(time.time()) - 301))).status == 400
    assert (await ingest.handle(body + b" ", sf.sign(body))).status == 400  # body changed after signing
    for bad in (b"{not json", b"[1, 2]", json.dumps({"id": 1}).encode(), b"\xff\xfe"):
        result = await ingest.handle(bad, sf.sign(bad))
        assert result.status == 400, bad
        assert "whsec" not in result.message
    big = b"{" + b" " * (1024 * 1024) + b"}"
    assert (await ingest.handle(big, sf.sign(big))).status == 413
    assert await store.client.exists(store.stream_key) == 0


async def test_the_signature_tolerance_is_300_seconds(store: RedisStore) -> None:
    body = sf.body_of(sf.event("customer.created", sf.customer(), sf.T0))
    header = sf.sign(body, timestamp=sf.T0)
    with freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sf.T0 + 299))):
        assert (await _ingest(store).handle(body, header)).status == 200
    with freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sf.T0 + 301))):
        assert (await _ingest(store).handle(body, header)).status == 400


async def test_events_of_the_other_mode_are_acknowledged_and_ignored(store: RedisStore) -> None:
    body = sf.body_of(sf.event("customer.created", sf.customer(), sf.T0, livemode=True))
    result = await _ingest(store).handle(body, sf.sign(body))
    assert (result.status, result.outcome) == (200, "ignored")
    assert await store.client.exists(store.stream_key) == 0
