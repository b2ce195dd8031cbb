"""Every POST route bounds the body it reads: past the bound, a 413 without reading the rest.

Raw sockets against the app under uvicorn (the Slack harness: webhooks and Slack on one app), so the
test controls exactly how many bytes are sent and sees when the answer comes.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from billing.sync.webhook import MAX_BODY_BYTES
from bot.asgi import MAX_SLACK_BODY_BYTES
from tests.bot.slack.conftest import SlackHarness
from tests.loopback import read_response

ROUTES = [("/stripe/webhook", MAX_BODY_BYTES), ("/slack/events", MAX_SLACK_BODY_BYTES)]
CHUNK = 64 * 1024


def request_head(path: str, port: int, framing: str) -> bytes:
    """A POST's head that either route could take (both signature headers, ``framing`` for the body)."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{framing}\r\n"
            "Content-Type: application/json\r\nStripe-Signature: t=1,v1=00\r\n"
            "X-Slack-Request-Timestamp: 1\r\nX-Slack-Signature: v0=00\r\n\r\n").encode()


@pytest.mark.parametrize(("path", "bound"), ROUTES)
async def test_a_declared_length_over_the_bound_is_refused_before_the_body(
    harness: SlackHarness, path: str, bound: int
) -> None:
    port = harness.http.base_url.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # Declared one byte over the bound; only a few bytes follow: the answer must not wait for the rest.
        writer.write(request_head(path, port, f"Content-Length: {bound + 1}") + b"{")
        await writer.drain()
        async with asyncio.timeout(3):  # the body timeout (408) is 10 s: a 413 here was not waiting
            status, body = await read_response(reader)
    finally:
        writer.close()
    assert status == 413 and str(bound).encode() in body


@pytest.mark.parametrize(("path", "bound"), ROUTES)
async def test_a_chunked_body_is_cut_off_just_past_the_bound(
    harness: SlackHarness, path: str, bound: int
) -> None:
    port = harness.http.base_url.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        writer.write(request_head(path, port, "Transfer-Encoding: chunked"))
        answer = asyncio.create_task(read_response(reader))

        async def endless() -> None:  # 64 MiB if nobody stops it
            nonlocal sent
            with contextlib.suppress(ConnectionError):
                for _ in range(1024):
                    writer.write(f"{CHUNK:x}\r\n".encode() + b" " * CHUNK + b"\r\n")
                    await writer.drain()
                    sent += CHUNK

        sender = asyncio.create_task(endless())
        async with asyncio.timeout(10):
            status, body = await answer
        read_when_answered = sent
        sender.cancel()
    finally:
        writer.close()
    assert status == 413 and str(bound).encode() in body
    # Answered once the bound was passed, not after 64 MiB: what was sent beyond the bound sat in the
    # loopback socket buffers (a few MiB) when the answer came.
    assert read_when_answered < bound + 16 * 1024 * 1024
    assert await harness.runtime.store.client.exists(harness.runtime.store.stream_key) == 0  # type: ignore[union-attr]
