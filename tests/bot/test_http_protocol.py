"""``billing serve``'s HTTP parser (bot.http_protocol): httptools with the request line and headers
bounded at 16 KiB. The endless header is refused in tests/bot/test_asgi.py; here, what the bound must
not refuse (a large head under the bound, a body arriving with its head, pipelined requests) and the
limit itself, on the real app under real uvicorn with a real Redis."""

from __future__ import annotations

import asyncio
import contextlib

from billing.cache.store import RedisStore
from bot.http_protocol import MAX_HEAD_BYTES
from tests.billing import stripe_factory as sf
from tests.bot.test_asgi import serve
from tests.loopback import read_response


def raw_webhook(port: int, body: bytes, padding: int = 0) -> bytes:
    head = (f"POST /stripe/webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: {sf.sign(body)}\r\nContent-Length: {len(body)}\r\n")
    if padding:
        head += f"X-Padding: {'a' * (padding - len(head) - 15)}\r\n"
    return (head + "\r\n").encode() + body


def event_body(n: int, size: int = 0) -> bytes:
    customer = sf.customer(f"cus_P{n:03d}")
    customer["description"] = "d" * size  # a large object, as Stripe sends some
    return sf.body_of(sf.event("customer.created", customer, sf.T0 + n))


async def test_a_head_under_the_bound_arriving_with_a_large_body_is_served(store: RedisStore) -> None:
    async with serve(store) as client:
        port = client.base_url.port
        assert port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = event_body(1, size=60_000)
        writer.write(raw_webhook(port, body, padding=MAX_HEAD_BYTES - 500))  # one write: head and body
        await writer.drain()
        async with asyncio.timeout(30):
            status, _ = await read_response(reader)
        writer.close()
    assert status == 200
    assert [e[1][b"e"] for e in await store.client.xrange(store.stream_key)] == [body]


async def test_pipelined_requests_are_each_served(store: RedisStore) -> None:
    async with serve(store) as client:
        port = client.base_url.port
        assert port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        bodies = [event_body(n, size=3_000) for n in range(6)]
        writer.write(b"".join(raw_webhook(port, body, padding=8_000) for body in bodies))
        await writer.drain()
        async with asyncio.timeout(30):
            statuses = [(await read_response(reader))[0] for _ in bodies]
        writer.close()
    assert statuses == [200] * len(bodies)
    assert [e[1][b"e"] for e in await store.client.xrange(store.stream_key)] == bodies


async def test_a_head_over_the_bound_is_a_400_and_the_connection_closed(store: RedisStore) -> None:
    async with serve(store) as client:
        port = client.base_url.port
        assert port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # More than the bound plus one slice (64 KiB), however the reads fall; this head never ends.
        raw = raw_webhook(port, event_body(2), padding=MAX_HEAD_BYTES + 80 * 1024)
        head, _, _ = raw.partition(b"\r\n\r\n")

        async def stream_head() -> None:  # as a sender streaming its headers
            with contextlib.suppress(ConnectionError):
                for start in range(0, len(head), 4096):
                    writer.write(head[start:start + 4096])
                    await writer.drain()

        sender = asyncio.create_task(stream_head())
        try:
            async with asyncio.timeout(30):
                status, _ = await read_response(reader)
                assert await reader.read() == b""  # closed
        finally:
            sender.cancel()
            writer.close()
    assert status == 400
    assert await store.client.xrange(store.stream_key) == []


async def test_a_complete_head_one_byte_over_the_bound_is_refused_and_one_at_the_bound_served(
    store: RedisStore,
) -> None:
    # Sent whole in one write: the slices only bound what is buffered (up to a slice and more past the
    # bound); the complete head is measured exactly. Before, heads up to 24 KiB were served.
    body = event_body(3)
    answers: dict[int, tuple[int, bytes]] = {}
    async with serve(store) as client:
        port = client.base_url.port
        assert port is not None
        for size in (MAX_HEAD_BYTES, MAX_HEAD_BYTES + 1, MAX_HEAD_BYTES + 6000):
            raw = raw_webhook(port, body, padding=size)
            assert raw.index(b"\r\n\r\n") + 4 == size
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(raw)
                await writer.drain()
                async with asyncio.timeout(30):
                    answers[size] = await read_response(reader)
            finally:
                writer.close()
    assert answers[MAX_HEAD_BYTES][0] == 200
    for size in (MAX_HEAD_BYTES + 1, MAX_HEAD_BYTES + 6000):
        assert answers[size] == (400, f"The request line and headers pass {MAX_HEAD_BYTES} bytes.".encode())
    assert len(await store.client.xrange(store.stream_key)) == 1
