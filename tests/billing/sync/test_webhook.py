from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st

from billing.cache.store import RedisStore
from billing.sync.webhook import WebhookIngest, nested_deeper_than
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


async def test_json_that_only_the_standard_parser_reads_is_still_queued_as_sent(store: RedisStore) -> None:
    # The fast parser refuses a lone surrogate escape, NaN and a number past a double; json.loads (as
    # the worker parses) reads them: refusing them would have Stripe retry the event until it gives up.
    ingest = _ingest(store)
    event = sf.event("customer.created", sf.customer(), sf.T0)
    base = sf.body_of(event)
    bodies = [base[:-1] + extra + b"}" for extra in (b', "note": "\\ud800"', b', "ratio": NaN',
                                                     b', "big": 1e400')]
    for body in bodies:
        result = await ingest.handle(body, sf.sign(body))
        assert (result.status, result.outcome, result.event_id) == (200, "queued", event["id"]), body
    entries = await store.client.xrange(store.stream_key)
    assert [e[1][b"e"] for e in entries] == bodies


async def test_an_event_id_that_is_not_plain_text_is_refused_and_nothing_is_queued(store: RedisStore) -> None:
    # json.loads reads "evt_\ud800" as an id with a lone surrogate; redis-py cannot encode it, so the
    # worker's dedup lookup raised for the whole batch it sat in, every retry (a poisoned stream).
    ingest = _ingest(store)
    for eid in ("evt_\\ud800", "evt_\\u0000", "evt 1", ""):
        event = sf.event("customer.created", sf.customer(), sf.T0)
        body = sf.body_of(event).replace(json.dumps(event["id"]).encode(), b'"' + eid.encode() + b'"')
        result = await ingest.handle(body, sf.sign(body))
        assert (result.status, result.outcome) == (400, "rejected"), eid
        assert result.message == "The body is not a Stripe event: its id is not a Stripe id.", eid
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


async def test_a_signature_from_the_future_is_refused_beyond_the_tolerance(store: RedisStore) -> None:
    body = sf.body_of(sf.event("customer.created", sf.customer(), sf.T0))
    ingest = _ingest(store)
    ahead = await ingest.handle(body, sf.sign(body, timestamp=int(time.time()) + 3600))
    assert (ahead.status, ahead.outcome) == (400, "rejected")
    assert ahead.message == ("The Stripe-Signature timestamp is more than 300 s in the future; "
                             "check the clock of this server.")
    header = sf.sign(body, timestamp=sf.T0)
    with freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sf.T0 - 301))):
        assert (await ingest.handle(body, header)).status == 400
    assert await store.client.exists(store.stream_key) == 0
    with freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sf.T0 - 299))):
        assert (await ingest.handle(body, header)).status == 200  # clocks a little apart are fine


async def test_a_signed_body_nested_too_deeply_is_a_400_and_nothing_is_queued(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = _ingest(store)
    deep = b"[" * 200_000 + b"]" * 200_000
    result = await ingest.handle(deep, sf.sign(deep))
    assert (result.status, result.outcome, result.message) == (
        400, "rejected", "The body is not a Stripe event: nested too deeply.")
    # Deep inside an object, and brackets inside strings do not count.
    nested = b'{"id": "evt_1", "type": "x", "data": ' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"}"
    assert (await ingest.handle(nested, sf.sign(nested))).message.endswith("nested too deeply.")
    evt = sf.event("customer.created", sf.customer(name="[[[[{{{{" * 50 + '\\"[' * 50), sf.T0)
    body = sf.body_of(evt)
    assert (await ingest.handle(body, sf.sign(body))).status == 200
    assert len(await store.client.xrange(store.stream_key)) == 1
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_tricky_text = st.text(alphabet='[]{}"\\ab', max_size=6)
_json_values = st.recursive(
    st.none() | st.integers() | _tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_tricky_text, inner, max_size=3),
    max_leaves=40,
)


@given(_json_values, st.integers(0, 12), st.booleans())
def test_the_depth_scan_agrees_with_the_parsed_depth(value: Any, limit: int, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nested_deeper_than(body, limit) == (_depth(value) > limit)


async def test_concurrent_webhooks_are_each_answered_once_their_own_event_is_queued(
    store: RedisStore,
) -> None:
    # Webhooks arriving while a write is in flight go out together in the next one (issue #11): each
    # is still answered only once its own event is in the stream, and a request given up (the sender
    # hung up) neither loses nor blocks the others'.
    ingest = _ingest(store)
    bodies = [sf.body_of(sf.event("customer.created", sf.customer(f"cus_C{n:03d}"), sf.T0 + n))
              for n in range(120)]

    reading = asyncio.Lock()  # one read of the stream at a time: the check, not the load, is the point

    async def post(body: bytes) -> tuple[int, bool]:
        result = await ingest.handle(body, sf.sign(body))
        async with reading:
            queued = {e[1][b"e"] for e in await store.client.xrange(store.stream_key)}
        return result.status, body in queued

    tasks = [asyncio.create_task(post(body)) for body in bodies]
    given_up = tasks[10:20]
    for task in given_up:
        task.cancel()
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    kept = [a for t, a in zip(tasks, answers, strict=True) if t not in given_up]
    assert kept == [(200, True)] * 110
    queued = [e[1][b"e"] for e in await store.client.xrange(store.stream_key)]
    assert len(queued) == len(set(queued))  # each at most once
    assert set(bodies) - set(queued) <= set(bodies[10:20])  # only a given-up request may be missing
