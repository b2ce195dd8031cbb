"""The one ASGI app: ``POST /stripe/webhook``, ``POST /slack/events``, ``GET /healthz``, ``GET /metrics``.

Built by a factory (nothing happens at import); ``billing serve`` runs it with uvicorn, tests run it
on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from slack_bolt.adapter.starlette.async_handler import to_async_bolt_request, to_starlette_response
from slack_bolt.async_app import AsyncApp
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from billing.cache.connections import REDIS_ERRORS
from billing.cache.store import RedisStore
from billing.config import Settings
from billing.errors import BillingError, ConfigurationError
from billing.ports import Tenant
from billing.sync.webhook import MAX_BODY_BYTES, WebhookIngest
from billing.sync.worker import EventWorker
from bot.http_protocol import BoundedHttpToolsProtocol
from bot.metrics import Metrics, slack_kind, stats_families

WORKER_STALL_SECONDS = 30.0
REDIS_PROBE_SECONDS = 2.0
STRIPE_PROBE_TTL_SECONDS = 5.0  # a health check asks Stripe at most this often
STRIPE_PROBE_TIMEOUT_SECONDS = 2.0
STRIPE_PROBE_WAIT_SECONDS = 0.5  # what a health check waits for a new answer before using the last
BODY_READ_SECONDS = 10.0  # Stripe and Slack send a few KiB at once; a body taking longer is an attack
# How `billing serve` runs this app with uvicorn: httptools (about three times h11's requests/s)
# with the request line and headers bounded at 16 KiB (bot.http_protocol: httptools alone buffers a
# header of any length); idle keep-alive connections close after 5 s; past 1,000 open connections or
# requests, new requests get a 503 at once; no WebSocket upgrades (the app has no WebSocket route).
# uvicorn has no timeout for the headers of a connection's first request: run behind a proxy that
# has one to stop a slow sender there.
SERVER_OPTIONS: dict[str, Any] = {
    "http": BoundedHttpToolsProtocol, "ws": "none", "timeout_keep_alive": 5, "limit_concurrency": 1000,
}
MAX_SLACK_BODY_BYTES = 256 * 1024  # Slack's payloads are a few KiB; a view submission stays far below


class _WorkerCollector(Collector):
    """Worker counters and stream depth, read when Prometheus scrapes."""

    def __init__(self, worker: EventWorker | None) -> None:
        self.worker = worker

    def collect(self) -> Any:
        if self.worker is None:
            return
        stats = self.worker.stats
        for name, value in (
            ("applied", stats.applied), ("failed", stats.failed), ("dead_lettered", stats.dead_lettered),
            ("duplicates", stats.duplicates), ("refetched", stats.refetched), ("notified", stats.notified),
        ):
            yield CounterMetricFamily(f"billing_worker_{name}", f"Events {name} by the worker.", value=value)
        # The refresher's and the scheduler's outcomes in this process (their queues' sizes come from
        # Redis: ``Metrics.update_health``).
        previews, scheduler = self.worker.previews, self.worker.scheduler
        yield from stats_families("billing_previews", "Next-invoice preview refreshes",
                                  previews.stats if previews is not None else None)
        yield from stats_families("billing_reminders", "Reminder scheduler",
                                  scheduler.stats if scheduler is not None else None)
        last = self.worker.last_batch_at
        yield GaugeMetricFamily(
            "billing_worker_last_poll_age_seconds", "Seconds since the worker last polled the stream.",
            value=time.time() - last if last else float("nan"),
        )


class _TooSlow(Exception):
    """The sender did not finish its body within the time allowed."""


async def _read_at_most(request: Request, limit: int, seconds: float) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` (a chunked body has no Content-Length).

    Raises ``_TooSlow`` when the whole body has not arrived within ``seconds``: a sender trickling a
    byte a second would otherwise hold its connection and its task for as long as it likes.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    except TimeoutError:
        raise _TooSlow from None
    return b"".join(chunks)


def _json_bytes(content: Any) -> bytes:
    """What ``JSONResponse(content).body`` is, without building a Response."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode("utf-8")


_JSON_TYPE = (b"content-type", b"application/json")
# The answers to Stripe's webhooks, encoded once (the same few bytes on every request).
_RECEIVED = {outcome: _json_bytes({"received": True, "outcome": outcome})
             for outcome in ("queued", "ignored")}


class _Deadlines:
    """Body reads that must end by a deadline, watched together by one timer that cancels the late
    ones. ``asyncio.timeout`` around each read (a timer handle, a reschedule and an uncancel per
    request) was about a tenth of a webhook's CPU under load; here a read costs two dict operations.
    A read is cut off between ``seconds`` and ``seconds`` + one tick (a quarter of it, at most 1 s)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._tick = min(1.0, seconds / 4)
        self._reads: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self) -> asyncio.Task[Any]:
        """Start the current task's deadline; call ``done`` with the task once its read ends."""
        # The loop of the last read first: asking asyncio for the running loop costs a getpid() system
        # call on Python 3.11. Another loop's current task is only set while that loop runs a step, so
        # this finds the calling task or nothing (then the running loop is asked).
        task = asyncio.current_task(self._loop) if self._loop is not None else None
        if task is None:
            task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a body read outside a task")
        loop = task.get_loop()
        self._reads[task] = loop.time() + self.seconds
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_later(self._tick, self._check)
        return task

    def done(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching ``task``; True when it was cut off (its CancelledError came from here and is
        withdrawn: the caller answers 408)."""
        self._reads.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    def _check(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        now = loop.time()
        for task, deadline in list(self._reads.items()):
            if deadline <= now:
                del self._reads[task]
                self._expired.add(task)
                task.cancel()  # delivered at the read's await: the only one before ``done``
        if self._reads:
            self._timer = loop.call_later(self._tick, self._check)


class _ClientGone(Exception):
    """The sender disconnected before its whole body arrived."""


async def _receive_at_most(receive: Receive, limit: int, deadlines: _Deadlines) -> bytes | None:
    """The body straight from ASGI messages (what ``_read_at_most`` reads through Starlette), or None
    as soon as it passes ``limit``; ``_TooSlow`` past the deadline, ``_ClientGone`` on a disconnect."""
    task = deadlines.watch()
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        if deadlines.done(task) and not task.cancelling():
            raise _TooSlow from None
        raise
    finally:
        deadlines.done(task)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_slow(seconds: float) -> Response:
    # Closing the connection: the rest of the body is never read, so the connection cannot be reused.
    return JSONResponse({"error": f"The body did not arrive in time ({seconds:g} s)."}, 408,
                        headers={"Connection": "close"})


class _StripeWebhook:
    """``POST /stripe/webhook`` as a plain ASGI app: Stripe's events are the hot path (thousands a
    second on a renewal day), and Starlette's middleware, routing, Request and Response cost as much
    as the rest of the request (profile: about a quarter of its CPU). ``_App`` sends the route's POSTs
    here before Starlette; other methods still get Starlette's 405. Same answers as a Starlette
    handler would give: 413 past the bound (a declared length at once), 408 past the read time,
    400 on a disconnect mid-body, else what ``WebhookIngest`` says."""

    def __init__(self, ingest: WebhookIngest, received: Callable[..., None], body_timeout: float) -> None:
        self.ingest, self.received, self.body_timeout = ingest, received, body_timeout
        self.deadlines = _Deadlines(body_timeout)
        self._too_large = _json_bytes({"error": f"The body is larger than {MAX_BODY_BYTES} bytes."})
        self._too_slow = _json_bytes({"error": f"The body did not arrive in time ({body_timeout:g} s)."})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length: bytes | None = None
        signature: bytes | None = None
        for name, value in scope["headers"]:  # the first of each, as Starlette's Headers.get
            if name == b"content-length":
                if length is None:
                    length = value
            elif name == b"stripe-signature" and signature is None:
                signature = value
        try:
            if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
                body = None
            else:
                body = await _receive_at_most(receive, MAX_BODY_BYTES, self.deadlines)
        except _ClientGone:  # nothing to queue, nobody to answer
            self.received("rejected")
            await _send(send, 400, b"", ())
            return
        except _TooSlow:
            self.received("rejected")
            # Closing the connection: the rest of the body is never read.
            await _send(send, 408, self._too_slow, ((b"connection", b"close"), _JSON_TYPE))
            return
        if body is None:
            self.received("rejected")
            await _send(send, 413, self._too_large, (_JSON_TYPE,))
            return
        header = signature.decode("latin-1") if signature is not None else None
        result = await self.ingest.handle(body, header)
        self.received(result.outcome, result.event_type)
        if result.status == 200:
            answer = _RECEIVED.get(result.outcome) or _json_bytes({"received": True,
                                                                   "outcome": result.outcome})
        else:
            answer = _json_bytes({"error": result.message})
        await _send(send, result.status, answer, (_JSON_TYPE,))


async def _send(send: Send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _App(Starlette):
    """The Starlette app, with the webhook's POSTs served by ``_StripeWebhook`` before it."""

    def __init__(self, webhook: _StripeWebhook, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/stripe/webhook" and scope["method"] == "POST" \
                and not scope.get("root_path"):
            await self._webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


@dataclass(frozen=True)
class _Probed:
    state: str
    latency_ms: float
    at: float  # time.monotonic() when the answer came
    reason: str | None


class StripeProbe:
    """Stripe's state for ``/healthz``: one real request (``check``) at most every ``ttl`` seconds,
    given up after ``timeout``. Concurrent health checks share the request, and none waits more than
    ``wait`` for it: meanwhile they report the previous answer with its age (a deploy probe with a
    1 s timeout must not fail because Stripe hangs)."""

    FAILED = frozenset({"unavailable", "key refused"})

    def __init__(
        self, check: Callable[[], Awaitable[Any]], *, ttl: float = STRIPE_PROBE_TTL_SECONDS,
        timeout: float = STRIPE_PROBE_TIMEOUT_SECONDS, wait: float = STRIPE_PROBE_WAIT_SECONDS,
    ) -> None:
        self._check, self._ttl, self._timeout, self._wait = check, ttl, timeout, wait
        self._last: _Probed | None = None
        self._task: asyncio.Task[None] | None = None

    async def report(self) -> dict[str, Any]:
        """``{"state", "latency_ms", "checked_seconds_ago"[, "reason"]}``; state ``checking`` until the
        first answer."""
        last = self._last
        if last is None or time.monotonic() - last.at >= self._ttl:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._probe())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), self._wait)
            last = self._last
        if last is None:
            return {"state": "checking", "latency_ms": None}
        report: dict[str, Any] = {"state": last.state, "latency_ms": round(last.latency_ms, 1),
                                  "checked_seconds_ago": round(time.monotonic() - last.at, 1)}
        if last.reason:
            report["reason"] = last.reason
        return report

    async def _probe(self) -> None:
        started = time.monotonic()
        state, reason = "ok", None
        try:
            async with asyncio.timeout(self._timeout):
                await self._check()
        except TimeoutError:
            state, reason = "unavailable", f"no answer within {self._timeout:g} s"
        except ConfigurationError as err:  # a revoked key: Stripe answers, but not to us
            state, reason = "key refused", str(err)
        except BillingError as err:
            state, reason = "unavailable", str(err)
        except Exception as err:  # whatever the transport raised; its text may quote a URL, not shown
            state, reason = "unavailable", type(err).__name__
        now = time.monotonic()
        self._last = _Probed(state, (now - started) * 1000, now, reason)


def build_asgi_app(
    *,
    settings: Settings,
    store: RedisStore,
    webhook_secret: str,
    tenant: Tenant,
    worker: EventWorker | None = None,
    stripe_check: Callable[[], Any] | None = None,
    slack_app: AsyncApp | None = None,
    slack_status: Callable[[], dict[str, Any]] | None = None,
    extra_routes: list[BaseRoute] | None = None,
    body_timeout: float = BODY_READ_SECONDS,
    metrics: Metrics | None = None,
) -> Starlette:
    """The app. ``worker`` (if given) runs in-process for the app's lifetime; ``slack_app`` answers
    ``POST /slack/events`` (HTTP mode); ``slack_status`` reports Slack's state (e.g. Socket Mode
    reconnects) in ``/healthz``; ``stripe_check`` is one cheap real Stripe request
    (``StripeGateway.ping``) that ``/healthz`` makes at most every few seconds;
    ``body_timeout`` bounds the time to receive a request body (408 past it)."""
    del settings, tenant  # the store carries the tenant; settings kept in the signature for later mounts
    ingest = WebhookIngest(store, webhook_secret)
    started_at = time.time()
    metrics = metrics or Metrics()
    registry = metrics.registry
    if worker is not None:
        registry.register(_WorkerCollector(worker))

    counters: dict[tuple[str, str], Any] = {}  # labels() locks and looks up on every call

    def received(outcome: str, event_type: str | None = None) -> None:
        key = (event_type or "unknown", outcome)
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = metrics.webhook_events.labels(*key)
        counter.inc()

    stripe_webhook = _StripeWebhook(ingest, received, body_timeout)

    async def slack_events(request: Request) -> Response:
        if slack_app is None:
            return JSONResponse({"error": "Slack is not configured on this server."}, 404)
        length = request.headers.get("content-length")
        too_large = length is not None and length.isdigit() and int(length) > MAX_SLACK_BODY_BYTES
        try:
            # A declared length past the bound is refused at once, without waiting for the body.
            body = None if too_large else await _read_at_most(request, MAX_SLACK_BODY_BYTES, body_timeout)
        except ClientDisconnect:
            return Response(status_code=400)
        except _TooSlow:
            return _too_slow(body_timeout)
        if body is None:
            return JSONResponse({"error": f"The body is larger than {MAX_SLACK_BODY_BYTES} bytes."}, 413)
        # bolt checks the signature and the 5-minute timestamp window before any listener runs.
        metrics.slack_requests.labels(slack_kind(request.headers.get("content-type", ""), body)).inc()
        response = await slack_app.async_dispatch(to_async_bolt_request(request, body))
        return to_starlette_response(response)

    stripe_probe = StripeProbe(stripe_check) if stripe_check is not None else None

    async def healthz(_request: Request) -> Response:
        """200 while the process can do its job (Redis answers, the worker is not stalled), else 503;
        Stripe down is "degraded", still 200: cached cards and queued webhooks work without it."""
        redis_started = time.monotonic()
        try:
            redis_ok = await asyncio.wait_for(store.ping(), REDIS_PROBE_SECONDS)
        except TimeoutError:
            redis_ok = False
        redis = {"state": "ok" if redis_ok else "unavailable",
                 "latency_ms": round((time.monotonic() - redis_started) * 1000, 1)}
        stripe = await stripe_probe.report() if stripe_probe is not None else {"state": "unchecked"}
        now = time.time()
        if worker is None:
            worker_state = "not running here"
        elif worker.last_batch_at and now - worker.last_batch_at < WORKER_STALL_SECONDS:
            worker_state = "ok"
        elif not worker.last_batch_at and now - started_at < WORKER_STALL_SECONDS:
            worker_state = "starting"  # a deploy probe right after start must not see a failure
        else:
            worker_state = "stalled"
        ok = redis_ok and worker_state != "stalled"
        degraded = stripe["state"] in StripeProbe.FAILED
        body: dict[str, Any] = {
            "ok": ok, "status": "failing" if not ok else "degraded" if degraded else "ok",
            "redis": redis["state"], "stripe": stripe["state"], "worker": worker_state,
            "dependencies": {"redis": redis, "stripe": stripe},
        }
        if slack_status is not None:
            body["slack"] = slack_status()
        return JSONResponse(body, 200 if ok else 503)

    async def metrics_route(_request: Request) -> Response:
        # When Redis is down the stream gauges keep their last values; /healthz says Redis is down.
        with contextlib.suppress(*REDIS_ERRORS):
            metrics.update_health(await store.health())
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop)) if worker is not None else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task

    routes: list[BaseRoute] = [
        Route("/stripe/webhook", stripe_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/slack/events", slack_events, methods=["POST"]),
        *(extra_routes or []),
    ]
    return _App(stripe_webhook, routes=routes, lifespan=lifespan)
