"""The one ASGI app: ``POST /stripe/webhook``, ``POST /slack/events``, ``GET /healthz``, ``GET /metrics``.

Built by a factory (nothing happens at import); ``billing serve`` runs it with uvicorn, tests run it
on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
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


# The answers to Stripe's webhooks, encoded once (the same few bytes on every request).
_RECEIVED = {outcome: JSONResponse({"received": True, "outcome": outcome}).body
             for outcome in ("queued", "ignored")}


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


def _too_slow(seconds: float) -> Response:
    # Closing the connection: the rest of the body is never read, so the connection cannot be reused.
    return JSONResponse({"error": f"The body did not arrive in time ({seconds:g} s)."}, 408,
                        headers={"Connection": "close"})


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

    async def stripe_webhook(request: Request) -> Response:
        length = request.headers.get("content-length")
        too_large = length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES
        try:
            body = None if too_large else await _read_at_most(request, MAX_BODY_BYTES, body_timeout)
        except ClientDisconnect:  # the sender gave up mid-body: nothing to queue, nobody to answer
            received("rejected")
            return Response(status_code=400)
        except _TooSlow:
            received("rejected")
            return _too_slow(body_timeout)
        if body is None:
            received("rejected")
            return JSONResponse({"error": f"The body is larger than {MAX_BODY_BYTES} bytes."}, 413)
        result = await ingest.handle(body, request.headers.get("stripe-signature"))
        received(result.outcome, result.event_type)
        if result.status == 200:
            encoded = _RECEIVED.get(result.outcome)
            if encoded is not None:
                return Response(encoded, media_type="application/json")
            return JSONResponse({"received": True, "outcome": result.outcome})
        return JSONResponse({"error": result.message}, result.status)

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
    return Starlette(routes=routes, lifespan=lifespan)
