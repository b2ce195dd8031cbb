"""Webhook throughput and lag, with a real uvicorn serving ``bot.asgi`` in its own process.

1. accepted/s: signed events POSTed by a load generator (this process, raw keep-alive HTTP/1.1 on
   C connections) to one uvicorn worker whose app only verifies and queues (target >= 2,500/s).
2. applied/s: one ``EventWorker`` (this process) draining those queued events (target >= 2,000/s).
3. end-to-end lag at a steady R events/s: uvicorn with its in-process worker; each event renames a
   customer, and lag is the time from sending until that name is in the cached context (p50/p99,
   target p99 <= 50 ms at 300/s).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import socket
import time
from typing import Any

from common import REDIS_URL, median, percentile, table, unlink_prefix

from billing.notify import RecordingNotifier
from billing.ports import Tenant
from billing.redis_conn import open_redis
from billing.store import RedisStore, decode_context
from billing.worker import EventWorker

SECRET = "whsec_bench_secret"
TENANT = Tenant("acct_bench", livemode=False)
CUSTOMERS = 500


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(port: int, prefix: str, with_worker: bool) -> None:
    """The server process: ``bot.asgi`` on one uvicorn worker."""
    import uvicorn

    from billing.config import Settings
    from bot.asgi import build_asgi_app

    async def main() -> None:
        client = await open_redis(REDIS_URL)
        store = RedisStore(client, TENANT, prefix=prefix)
        worker = EventWorker(store, _NoStripe(), RecordingNotifier(), block_ms=5) if with_worker else None
        app = build_asgi_app(settings=Settings(), store=store, webhook_secret=SECRET, tenant=TENANT,
                             worker=worker)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        await uvicorn.Server(config).serve()

    asyncio.run(main())


class _NoStripe:
    """Customer events of known versions never need Stripe; a call would mean a broken benchmark."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the benchmark made a Stripe call ({name})")


def event(n: int, created: int, name: str) -> bytes:
    cid = f"cus_wh{n % CUSTOMERS:05d}"
    return json.dumps({
        "id": f"evt_bench{n:08d}_{created}", "object": "event", "type": "customer.updated",
        "created": created, "livemode": False, "api_version": "2026-10-28.endive",
        "data": {"object": {"id": cid, "object": "customer", "email": f"{cid}@bench.example",
                            "name": name, "livemode": False, "created": created - 86_400,
                            "delinquent": False, "currency": "usd", "metadata": {}, "discount": None}},
    }).encode()


def request_bytes(port: int, body: bytes) -> bytes:
    ts = int(time.time())
    sig = hmac.new(SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    head = (f"POST /stripe/webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: t={ts},v1={sig}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def wait_until_up(port: int) -> None:
    for _ in range(200):
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("uvicorn did not start")


def start_server(prefix: str, with_worker: bool) -> tuple[multiprocessing.Process, int]:
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, prefix, with_worker), daemon=True
    )
    process.start()
    return process, port


async def accepted_per_second(port: int, n: int, connections: int, created: int) -> float:
    bodies = [request_bytes(port, event(i, created + i // CUSTOMERS, f"n{i}")) for i in range(n)]
    statuses: list[int] = []

    async def connection(part: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for raw in part:
            statuses.append(await post(reader, writer, raw))
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection(bodies[c::connections]) for c in range(connections)))
    elapsed = time.perf_counter() - start
    assert statuses.count(200) == n, f"{n - statuses.count(200)} requests were not accepted"
    return n / elapsed


async def applied_per_second(prefix: str, n: int) -> float:
    client = await open_redis(REDIS_URL)
    try:
        store = RedisStore(client, TENANT, prefix=prefix)
        worker = EventWorker(store, _NoStripe(), RecordingNotifier())  # type: ignore[arg-type]
        await worker.ensure_group()
        start = time.perf_counter()
        deadline = start + 120
        stats = worker.stats
        while stats.applied + stats.duplicates + stats.dead_lettered < n and time.perf_counter() < deadline:
            await worker.run_once(block_ms=100)
        if stats.failed:
            raise RuntimeError(f"{stats.failed} events failed in the worker; the figure would be wrong")
        return n / (time.perf_counter() - start)
    finally:
        await client.aclose()


async def lag(port: int, prefix: str, rate: int, seconds: float) -> list[float]:
    client = await open_redis(REDIS_URL)
    store = RedisStore(client, TENANT, prefix=prefix)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pending: dict[str, tuple[str, float]] = {}  # customer -> (name, sent at)
    lags: list[float] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set() or pending:
            items = list(pending.items())
            if items:
                pipe = client.pipeline(transaction=False)
                for cid, _ in items:
                    pipe.get(store.customer_key(cid, "ctx"))
                for (cid, (name, sent)), raw in zip(items, await pipe.execute(), strict=True):
                    customer = decode_context(raw).customer if raw else None
                    if customer is not None and customer.name == name:
                        lags.append(time.perf_counter() - sent)
                        pending.pop(cid, None)
            await asyncio.sleep(0.0005)

    watcher = asyncio.create_task(watch())
    total = int(rate * seconds)
    base = int(time.time()) + 10_000  # newer than any earlier phase's events
    start = time.perf_counter()
    for i in range(total):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        cid = f"cus_wh{i % CUSTOMERS:05d}"
        name = f"lag{i}"
        # one event in flight per customer, so each lag is unambiguous (the watcher polls Redis anyway)
        while cid in pending:  # noqa: ASYNC110
            await asyncio.sleep(0.0005)
        pending[cid] = (name, time.perf_counter())
        status = await post(reader, writer, request_bytes(port, event(i, base + i // CUSTOMERS, name)))
        assert status == 200
    done.set()
    await asyncio.wait_for(watcher, timeout=30)
    writer.close()
    await client.aclose()
    return lags


async def run(n: int, connections: int, rate: int, seconds: float) -> list[tuple[str, str, str]]:
    prefix = f"blbenchwh{int(time.time())}"
    rows: list[tuple[str, str, str]] = []
    process, port = start_server(prefix, with_worker=False)
    try:
        await wait_until_up(port)
        created = int(time.time())
        accepted = await accepted_per_second(port, n, connections, created)
        rows.append(("accepted events/s (1 uvicorn worker)", f"{accepted:,.0f}", "target >= 2,500/s"))
    finally:
        process.terminate()
        process.join()
    try:
        applied = await applied_per_second(prefix, n)
        rows.append(("applied events/s (1 EventWorker)", f"{applied:,.0f}", "target >= 2,000/s"))
        process, port = start_server(prefix, with_worker=True)
        try:
            await wait_until_up(port)
            lags = await lag(port, prefix, rate, seconds)
        finally:
            process.terminate()
            process.join()
        rows.append((f"lag p50 at {rate}/s", f"{median(lags) * 1000:.1f} ms", ""))
        rows.append((f"lag p99 at {rate}/s", f"{percentile(lags, 99) * 1000:.1f} ms", "target <= 50 ms"))
    finally:
        await unlink_prefix(prefix)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="events for the throughput figures")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=300, help="events/s for the lag figure")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lag run")
    args = parser.parse_args()
    rows = asyncio.run(run(args.n, args.connections, args.rate, args.seconds))
    table("Webhooks", rows)


if __name__ == "__main__":
    main()
