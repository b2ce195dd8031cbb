"""Webhooks next to their limits: accepting (HTTP), applying (the worker) and end-to-end lag.

Events are a renewal day's mix for cached customers (generated customers backfilled from the sandbox):
per customer and cycle ``invoice.created``, ``invoice.finalized``, ``charge.succeeded`` or
``charge.failed``, ``invoice.paid`` or ``invoice.payment_failed`` (one in ten fails), then
``customer.subscription.updated``; the objects are whole, as Stripe sends them.

1. accept: a load generator (this process, raw keep-alive HTTP/1.1 on C connections) POSTs signed
   events to ``bot.asgi`` under one uvicorn worker in another process (verify, queue), run as
   ``billing serve`` runs it (``bot.asgi.SERVER_OPTIONS``: httptools with its head bounded), and the
   same generator to a bare ASGI endpoint that reads the body and answers 200, under the same uvicorn
   (goal: ours >= 0.5x the bare endpoint); beside them the bare endpoint on plain httptools (what the
   head bound costs) and ours on h11 (how ``billing serve`` parsed HTTP before).
2. apply: events queued straight into the stream, drained by one ``EventWorker`` process, then by two
   (goal: two >= 1.6x one); beside them the Redis commands the same events need, pipelined without our
   code (read the batch, check the dedup markers, read and rewrite each customer's objects and
   context, mark, ack): goal ours >= 0.3x that.
3. lag: uvicorn with its in-process worker; events POSTed at a steady R/s; lag is the time from
   sending an event until its dedup marker says it was applied (its context is saved before that).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import time
import uuid
from dataclasses import dataclass
from typing import Any

from common import REDIS_URL, Figures, free_port, median, percentile, table, unlink_prefix
from world import customer_id_of

from billing.cache.connections import open_redis
from billing.cache.store import DEDUP_TTL_SECONDS, RedisStore
from billing.ports import Tenant, Transition
from billing.sync.worker import EventWorker

SECRET = "whsec_bench_secret"
API_VERSION = "2026-10-28.endive"
EVENTS_PER_CYCLE = 5


class _Notifier:
    """Takes every transition at once: the bench measures applying events, not Slack."""

    async def notify(self, transition: Transition) -> None:
        return None


# ---- events -----------------------------------------------------------------------------------


def _envelope(event_id: str, kind: str, created: int, obj: dict[str, Any],
              previous: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {"id": event_id, "object": "event", "type": kind, "created": created, "livemode": False,
            "api_version": API_VERSION, "pending_webhooks": 1, "request": {"id": None}, "data": data}


def renewal_events(customers: range, cycle: int, base: int, price: dict[str, Any]) -> list[bytes]:
    """One renewal cycle of every customer in ``customers``: ``EVENTS_PER_CYCLE`` events each, customer
    after customer; each object's events a second apart (no same-second ties to re-fetch)."""
    bodies: list[bytes] = []
    for n in customers:
        cid, sid = customer_id_of(n), f"sub_bench{n:06d}"
        iid, chid = f"in_rw{cycle:04d}x{n:06d}", f"ch_rw{cycle:04d}x{n:06d}"
        failed = (n + cycle) % 10 == 0
        at = base + cycle * 10
        period = (at - 5 * 86_400, at + 25 * 86_400)
        invoice = {
            "id": iid, "object": "invoice", "customer": cid, "number": f"RW{n:06d}-{cycle:04d}",
            "status": "draft", "amount_due": 2900, "amount_paid": 0, "amount_remaining": 2900,
            "currency": "usd", "created": at, "attempt_count": 0, "attempted": False,
            "billing_reason": "subscription_cycle", "livemode": False,
            "collection_method": "charge_automatically",
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_x/test_rw{cycle}x{n}",
            "period_start": period[0], "period_end": period[1], "next_payment_attempt": None,
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": sid}},
            "lines": {"object": "list", "data": [], "has_more": False},
        }
        charge = {
            "id": chid, "object": "charge", "customer": cid, "amount": 2900, "currency": "usd",
            "amount_captured": 0 if failed else 2900, "amount_refunded": 0, "livemode": False,
            "status": "failed" if failed else "succeeded", "created": at + 2, "captured": not failed,
            "refunded": False, "disputed": False, "paid": not failed,
            "failure_code": "card_declined" if failed else None,
            "failure_message": "Your card was declined." if failed else None,
            "outcome": {"type": "issuer_declined" if failed else "authorized"},
            "payment_method_details": {"type": "card", "card": {"brand": "visa", "last4": "4242"}},
        }
        subscription = {
            "id": sid, "object": "subscription", "customer": cid,
            "status": "past_due" if failed else "active",
            "created": base - 420 * 86_400 + n, "start_date": base - 420 * 86_400 + n, "currency": "usd",
            "cancel_at_period_end": False, "cancel_at": None, "canceled_at": None, "ended_at": None,
            "trial_start": None, "trial_end": None, "pause_collection": None, "discounts": [],
            "metadata": {}, "default_tax_rates": [], "latest_invoice": iid, "livemode": False,
            "items": {"object": "list", "data": [{
                "id": f"si_bench{n:06d}", "object": "subscription_item", "quantity": 1, "price": price,
                "current_period_start": period[0], "current_period_end": period[1], "discounts": [],
                "tax_rates": [], "metadata": {}, "subscription": sid,
            }], "has_more": False},
        }
        finalized = {**invoice, "status": "open"}
        attempted = {**finalized, "attempt_count": 1, "attempted": True}
        settled = ({**attempted, "next_payment_attempt": at + 3 * 86_400} if failed
                   else {**attempted, "status": "paid", "amount_paid": 2900, "amount_remaining": 0})
        prefix = f"evt_rw{cycle:04d}x{n:06d}"
        events = [
            _envelope(f"{prefix}a", "invoice.created", at, invoice),
            _envelope(f"{prefix}b", "invoice.finalized", at + 1, finalized, {"status": "draft"}),
            _envelope(f"{prefix}c", "charge.failed" if failed else "charge.succeeded", at + 2, charge),
            _envelope(f"{prefix}d", "invoice.payment_failed" if failed else "invoice.paid", at + 3, settled,
                      {"status": "open"} if not failed else {"attempt_count": 0}),
            _envelope(f"{prefix}e", "customer.subscription.updated", at + 4, subscription,
                      {"status": "active"} if failed else {"latest_invoice": None}),
        ]
        bodies += [json.dumps(e).encode() for e in events]
    return bodies


def _event_id(body: bytes) -> str:
    return str(json.loads(body)["id"])


# ---- HTTP ---------------------------------------------------------------------------------------


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


async def _bare_endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an HTTP endpoint can do for a webhook: read the body, answer 200."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = bool(message.get("more_body"))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


@dataclass(frozen=True)
class Target:
    """Where the server process keeps its events."""

    prefix: str
    account: str

    @property
    def tenant(self) -> Tenant:
        return Tenant(self.account, livemode=False)


def serve(port: int, target: Target | None, with_worker: bool, options: dict[str, Any] | None = None) -> None:
    """The server process: ``bot.asgi`` (or, without a target, the bare endpoint) on one uvicorn worker,
    with ``options`` (default: as ``billing serve`` runs it)."""
    import uvicorn

    from billing.config import Settings
    from bot.asgi import SERVER_OPTIONS, build_asgi_app

    async def main() -> None:
        app: Any = _bare_endpoint
        if target is not None:
            client = await open_redis(REDIS_URL)
            store = RedisStore(client, target.tenant, prefix=target.prefix)
            worker = (EventWorker(store, _NoStripe(), _Notifier(), block_ms=5,  # type: ignore[arg-type]
                                  refresh_previews=False) if with_worker else None)
            app = build_asgi_app(settings=Settings(), store=store, webhook_secret=SECRET,
                                 tenant=target.tenant, worker=worker)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                **(SERVER_OPTIONS if options is None else options))
        await uvicorn.Server(config).serve()

    asyncio.run(main())


class _NoStripe:
    """The benchmark's events never need Stripe; a call would mean a broken benchmark. (The worker's
    invoice previews after subscription and invoice events are Stripe requests, one per customer and
    batch, bounded by Stripe's rate limit rather than by our code: the workers here make none.)"""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the benchmark made a Stripe call ({name})")


async def wait_until_up(port: int) -> None:
    for _ in range(400):
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("uvicorn did not start")


def start_server(target: Target | None, with_worker: bool = False, options: dict[str, Any] | None = None
                 ) -> tuple[multiprocessing.Process, int]:
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, target, with_worker, options), daemon=True
    )
    process.start()
    return process, port


async def accepted_per_second(port: int, bodies: list[bytes], connections: int) -> float:
    raws = [request_bytes(port, body) for body in bodies]
    statuses: list[int] = []

    async def connection(part: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for raw in part:
            statuses.append(await post(reader, writer, raw))
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection(raws[c::connections]) for c in range(connections)))
    elapsed = time.perf_counter() - start
    if statuses.count(200) != len(raws):
        raise RuntimeError(f"{len(raws) - statuses.count(200)} requests were not accepted")
    return len(raws) / elapsed


async def measure_accept(bodies: list[bytes], connections: int, account: str) -> Figures:
    """Ours and the bare endpoint, each in its own uvicorn process, the same generator and bodies; both
    as ``billing serve`` runs uvicorn, the bare endpoint also on plain httptools (``bare_httptools``)
    and ours also on h11 (``ours_h11``)."""
    figures: Figures = {}
    prefix = f"blbenchwh{uuid.uuid4().hex[:8]}"
    runs: tuple[tuple[str, Target | None, dict[str, Any] | None], ...] = (
        ("ours", Target(prefix, account), None), ("bare", None, None),
        ("bare_httptools", None, {"http": "httptools"}),
        ("ours_h11", Target(prefix, account),
         {"http": "h11", "h11_max_incomplete_event_size": 16 * 1024, "timeout_keep_alive": 5}),
    )
    try:
        for name, target, options in runs:
            process, port = start_server(target, options=options)
            try:
                await wait_until_up(port)
                await accepted_per_second(port, bodies[:200], connections)  # warm up
                figures[name] = await accepted_per_second(port, bodies, connections)
            finally:
                process.terminate()
                process.join()
    finally:
        await unlink_prefix(prefix)
    return figures


# ---- applying -----------------------------------------------------------------------------------


async def enqueue(store: RedisStore, bodies: list[bytes], stream: str | None = None) -> None:
    for start in range(0, len(bodies), 1000):
        pipe = store.client.pipeline(transaction=False)
        for body in bodies[start:start + 1000]:
            pipe.xadd(stream or store.stream_key, {"e": body})
        await pipe.execute()


def _drain(target: Target, consumer: str, ready: Any, go: Any, results: Any) -> None:
    """A worker process: one EventWorker draining the stream once ``go`` is set."""

    async def main() -> None:
        client = await open_redis(REDIS_URL)
        store = RedisStore(client, target.tenant, prefix=target.prefix)
        worker = EventWorker(store, _NoStripe(), _Notifier(), consumer=consumer,  # type: ignore[arg-type]
                             refresh_previews=False)
        await worker.ensure_group()
        ready.put(consumer)
        while not go.is_set():  # noqa: ASYNC110 - a multiprocessing event
            await asyncio.sleep(0.001)
        idle = 0
        finished = time.time()
        while idle < 3:
            handled = await worker.run_once(block_ms=20)
            if handled:
                idle, finished = 0, time.time()
            else:
                idle += 1
        stats = worker.stats
        results.put((consumer, stats.applied + stats.duplicates, stats.failed, finished))
        await client.aclose()

    asyncio.run(main())


async def workers_per_second(store: RedisStore, bodies: list[bytes], workers: int) -> float:
    """``bodies`` queued, then drained by ``workers`` worker processes started together."""
    await enqueue(store, bodies)
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    target = Target(store.prefix.split(":", 1)[0], store.tenant.account_id)
    processes = [context.Process(target=_drain, args=(target, f"bench-{i}", ready, go, results), daemon=True)
                 for i in range(workers)]
    for process in processes:
        process.start()
    for _ in processes:
        await asyncio.to_thread(ready.get, True, 60)
    start = time.time()
    go.set()
    outcomes = [await asyncio.to_thread(results.get, True, 300) for _ in processes]
    for process in processes:
        process.join(10)
    handled = sum(o[1] for o in outcomes)
    failed = sum(o[2] for o in outcomes)
    if failed or handled != len(bodies):
        raise RuntimeError(f"{failed} events failed, {handled} of {len(bodies)} handled: a wrong figure")
    return len(bodies) / (max(o[3] for o in outcomes) - start)


async def bare_pipeline_per_second(store: RedisStore, bodies: list[bytes], owners: list[str]) -> float:
    """What the same events need from Redis, pipelined, without our code: per batch of 200, read the
    batch, check the dedup markers, read each customer's objects and context, write them back, set the
    markers, ack and delete. Same key sizes, no decoding, merging or building."""
    client = store.client
    stream, group = store.tenant_key("benchbare"), "bare"
    await enqueue(store, bodies, stream)
    await client.xgroup_create(stream, group, id="0", mkstream=True)
    index = 0
    start = time.perf_counter()
    try:
        while index < len(bodies):
            reply: Any = await client.xreadgroup(group, "bare", {stream: ">"}, count=200)
            entries = reply[0][1]
            batch = owners[index:index + len(entries)]
            markers = [store.tenant_key(f"benchbare:evt:{index + i}") for i in range(len(entries))]
            pipe = client.pipeline(transaction=False)
            for key in markers:
                pipe.exists(key)
            await pipe.execute()
            customers = list(dict.fromkeys(batch))
            pipe = client.pipeline(transaction=False)
            for cid in customers:
                pipe.execute_command("MGET", store.customer_key(cid, "objs"), store.customer_key(cid, "ctx"))
            stored = await pipe.execute()
            pipe = client.pipeline(transaction=False)
            for cid, (objs, ctx) in zip(customers, stored, strict=True):
                pipe.set(store.customer_key(cid, "objs"), objs)
                pipe.set(store.customer_key(cid, "ctx"), ctx)
            await pipe.execute()
            pipe = client.pipeline(transaction=False)
            for key in markers:
                pipe.set(key, 1, ex=DEDUP_TTL_SECONDS)
            ids = [entry_id for entry_id, _ in entries]
            pipe.xack(stream, group, *ids)
            pipe.xdel(stream, *ids)
            pipe.hset(store.tenant_key("benchbare:health"), mapping={"last_event_at": time.time()})
            await pipe.execute()
            index += len(entries)
        return len(bodies) / (time.perf_counter() - start)
    finally:
        keys = [k async for k in client.scan_iter(match=store.tenant_key("benchbare*"), count=1000)]
        for key in keys:
            await client.unlink(key)


# ---- lag ----------------------------------------------------------------------------------------


async def lag(port: int, store: RedisStore, bodies: list[bytes], rate: float) -> list[float]:
    """Events POSTed at ``rate``/s; each one's time from sending until its dedup marker exists."""
    client = store.client
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pending: dict[str, float] = {}
    lags: list[float] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set() or pending:
            items = list(pending.items())
            if items:
                pipe = client.pipeline(transaction=False)
                for event_id, _ in items:
                    pipe.exists(store.dedupe.key(event_id))
                for (event_id, sent), applied in zip(items, await pipe.execute(), strict=True):
                    if applied:
                        lags.append(time.perf_counter() - sent)
                        pending.pop(event_id, None)
            await asyncio.sleep(0.0005)

    watcher = asyncio.create_task(watch())
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        pending[_event_id(body)] = time.perf_counter()
        status = await post(reader, writer, request_bytes(port, body))
        if status != 200:
            raise RuntimeError(f"the webhook answered {status}")
    done.set()
    await asyncio.wait_for(watcher, timeout=60)
    writer.close()
    return lags


async def measure_lag(store: RedisStore, bodies: list[bytes], rate: float) -> Figures:
    process, port = start_server(Target(store.prefix.split(":", 1)[0], store.tenant.account_id), True)
    try:
        await wait_until_up(port)
        lags = await lag(port, store, bodies, rate)
    finally:
        process.terminate()
        process.join()
    return {"lag_p50": median(lags), "lag_p99": percentile(lags, 99)}


class Cycles:
    """Renewal cycles handed out in order, so no two measurements send the same events."""

    def __init__(self, customers: int, price: dict[str, Any]) -> None:
        self.customers = customers
        self.price = price
        self.base = int(time.time()) + 60
        self.cycle = 0

    def take(self, events: int) -> tuple[list[bytes], list[str]]:
        bodies: list[bytes] = []
        owners: list[str] = []
        while len(bodies) < events:
            count = min(self.customers, -(-(events - len(bodies)) // EVENTS_PER_CYCLE))
            bodies += renewal_events(range(count), self.cycle, self.base, self.price)
            owners += [customer_id_of(n) for n in range(count) for _ in range(EVENTS_PER_CYCLE)]
            self.cycle += 1
        return bodies[:events], owners[:events]


async def measure_apply(store: RedisStore, cycles: Cycles, events: int) -> Figures:
    one = await workers_per_second(store, cycles.take(events)[0], 1)
    two = await workers_per_second(store, cycles.take(events)[0], 2)
    bodies, owners = cycles.take(events)
    bare = await bare_pipeline_per_second(store, bodies, owners)
    return {"one": one, "two": two, "bare": bare}


async def bench(url: str, customers: int, n: int, connections: int, rate: float, seconds: float,
                parts: str = "all", runs: int = 1) -> list[tuple[str, str, str]]:
    from lookup import cached_world

    async with cached_world(url, customers, months=3) as world:
        price = await world.gateway.retrieve("prices", world.price_id)
        assert price is not None
        cycles = Cycles(customers, price)
        accepts = [await measure_accept(cycles.take(n)[0], connections, world.store.tenant.account_id)
                   for _ in range(runs)]
        accept = {name: median([a[name] for a in accepts]) for name in accepts[0]}
        if parts == "accept":
            return _accept_rows(accept, accepts)
        apply = await measure_apply(world.store, cycles, n)
        lags = await measure_lag(world.store, cycles.take(int(rate * seconds))[0], rate)
    return [
        ("accepted events/s, ours (1 uvicorn worker)", f"{accept['ours']:,.0f}", ""),
        ("accepted events/s, bare endpoint", f"{accept['bare']:,.0f}", "the same uvicorn and generator"),
        ("accepted events/s, bare on plain httptools", f"{accept['bare_httptools']:,.0f}", "no head bound"),
        ("accepted events/s, ours on h11", f"{accept['ours_h11']:,.0f}", "how serve parsed HTTP before"),
        ("accept ratio", f"{accept['ours'] / accept['bare']:.2f}x", "goal >= 0.5x"),
        ("applied events/s (1 EventWorker)", f"{apply['one']:,.0f}", ""),
        ("applied events/s (2 EventWorkers)", f"{apply['two']:,.0f}",
         f"{apply['two'] / apply['one']:.2f}x one; goal >= 1.6x"),
        ("bare Redis pipeline events/s", f"{apply['bare']:,.0f}",
         f"ours {apply['one'] / apply['bare']:.2f}x; goal >= 0.3x"),
        (f"lag p50 at {rate:g}/s", f"{lags['lag_p50'] * 1000:.1f} ms", ""),
        (f"lag p99 at {rate:g}/s", f"{lags['lag_p99'] * 1000:.1f} ms", ""),
    ]


def _accept_rows(accept: Figures, runs: list[Figures]) -> list[tuple[str, str, str]]:
    spread = [f"{r['ours'] / r['bare']:.2f}x" for r in runs]
    return [
        ("accepted events/s, ours (1 uvicorn worker)", f"{accept['ours']:,.0f}",
         f"median of {len(runs)} runs: " + ", ".join(f"{r['ours']:,.0f}" for r in runs)),
        ("accepted events/s, bare endpoint", f"{accept['bare']:,.0f}",
         ", ".join(f"{r['bare']:,.0f}" for r in runs)),
        ("accepted events/s, bare on plain httptools", f"{accept['bare_httptools']:,.0f}", "no head bound"),
        ("accepted events/s, ours on h11", f"{accept['ours_h11']:,.0f}", "how serve parsed HTTP before"),
        ("accept ratio", f"{accept['ours'] / accept['bare']:.2f}x",
         "goal >= 0.5x; runs: " + ", ".join(spread)),
    ]


def main() -> None:
    from sandbox.server import SandboxServer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="events for the throughput figures")
    parser.add_argument("--customers", type=int, default=500, help="cached customers the events are for")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=300, help="events/s for the lag figure")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lag run")
    parser.add_argument("--parts", choices=("all", "accept"), default="all",
                        help="accept: only the accept figures (no apply, no lag)")
    parser.add_argument("--runs", type=int, default=1, help="accept runs (medians of them)")
    args = parser.parse_args()
    with SandboxServer() as sandbox:
        rows = asyncio.run(bench(sandbox.url, args.customers, args.n, args.connections, args.rate,
                                 args.seconds, args.parts, args.runs))
    table("Webhooks (renewal-day mix)", rows)


if __name__ == "__main__":
    main()
