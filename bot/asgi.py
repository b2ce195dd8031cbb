"""The one ASGI app: ``POST /stripe/webhook``, ``POST /slack/events``, ``GET /healthz``, ``GET /metrics``.

Built by a factory (nothing happens at import); ``billing serve`` runs it with uvicorn, tests run it
on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from slack_bolt.adapter.starlette.async_handler import to_async_bolt_request, to_starlette_response
from slack_bolt.async_app import AsyncApp
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from billing.config import Settings
from billing.ports import Tenant
from billing.store import RedisStore
from billing.webhook import MAX_BODY_BYTES, WebhookIngest
from billing.worker import EventWorker

WORKER_STALL_SECONDS = 30.0
BODY_READ_SECONDS = 10.0  # Stripe and Slack send a few KiB at once; a body taking longer is an attack
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


def _too_slow(seconds: float) -> Response:
    # Closing the connection: the rest of the body is never read, so the connection cannot be reused.
    return JSONResponse({"error": f"The body did not arrive in time ({seconds:g} s)."}, 408,
                        headers={"Connection": "close"})


def build_asgi_app(
    *,
    settings: Settings,
    store: RedisStore,
    webhook_secret: str,
    tenant: Tenant,
    worker: EventWorker | None = None,
    service: Any = None,
    stripe_check: Callable[[], Any] | None = None,
    slack_app: AsyncApp | None = None,
    slack_status: Callable[[], dict[str, Any]] | None = None,
    extra_routes: list[BaseRoute] | None = None,
    body_timeout: float = BODY_READ_SECONDS,
) -> Starlette:
    """The app. ``worker`` (if given) runs in-process for the app's lifetime; ``slack_app`` answers
    ``POST /slack/events`` (HTTP mode); ``slack_status`` reports Slack's state (e.g. Socket Mode
    reconnects) in ``/healthz``; ``stripe_check`` is an async callable used by ``/healthz``;
    ``body_timeout`` bounds the time to receive a request body (408 past it)."""
    del settings, tenant  # the store carries the tenant; settings kept in the signature for later mounts
    ingest = WebhookIngest(store, webhook_secret)
    started_at = time.time()
    registry = CollectorRegistry()
    received = Counter("billing_webhook_events", "Webhook requests by outcome.", ["outcome"],
                       registry=registry)
    registry.register(_WorkerCollector(worker))

    async def stripe_webhook(request: Request) -> Response:
        length = request.headers.get("content-length")
        too_large = length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES
        try:
            body = None if too_large else await _read_at_most(request, MAX_BODY_BYTES, body_timeout)
        except ClientDisconnect:  # the sender gave up mid-body: nothing to queue, nobody to answer
            received.labels("rejected").inc()
            return Response(status_code=400)
        except _TooSlow:
            received.labels("rejected").inc()
            return _too_slow(body_timeout)
        if body is None:
            received.labels("rejected").inc()
            return JSONResponse({"error": f"The body is larger than {MAX_BODY_BYTES} bytes."}, 413)
        result = await ingest.handle(body, request.headers.get("stripe-signature"))
        received.labels(result.outcome).inc()
        if result.status == 200:
            return JSONResponse({"received": True, "outcome": result.outcome})
        return JSONResponse({"error": result.message}, result.status)

    async def slack_events(request: Request) -> Response:
        if slack_app is None:
            return JSONResponse({"error": "Slack is not configured on this server."}, 404)
        try:
            body = await _read_at_most(request, MAX_SLACK_BODY_BYTES, body_timeout)
        except ClientDisconnect:
            return Response(status_code=400)
        except _TooSlow:
            return _too_slow(body_timeout)
        if body is None:
            return JSONResponse({"error": f"The body is larger than {MAX_SLACK_BODY_BYTES} bytes."}, 413)
        # bolt checks the signature and the 5-minute timestamp window before any listener runs.
        response = await slack_app.async_dispatch(to_async_bolt_request(request, body))
        return to_starlette_response(response)

    async def healthz(_request: Request) -> Response:
        redis_ok = await store.ping()
        stripe_state = "unchecked"
        if stripe_check is not None:
            try:
                await asyncio.wait_for(stripe_check(), timeout=3)
                stripe_state = "ok"
            except Exception:
                stripe_state = "unavailable"
        now = time.time()
        if worker is None:
            worker_state = "not running here"
        elif worker.last_batch_at and now - worker.last_batch_at < WORKER_STALL_SECONDS:
            worker_state = "ok"
        elif not worker.last_batch_at and now - started_at < WORKER_STALL_SECONDS:
            worker_state = "starting"  # a deploy probe right after start must not see a failure
        else:
            worker_state = "stalled"
        ok = redis_ok and stripe_state != "unavailable" and worker_state != "stalled"
        body: dict[str, Any] = {"ok": ok, "redis": "ok" if redis_ok else "unavailable",
                                "stripe": stripe_state, "worker": worker_state}
        if slack_status is not None:
            body["slack"] = slack_status()
        return JSONResponse(body, 200 if ok else 503)

    async def metrics(_request: Request) -> Response:
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
        Route("/metrics", metrics, methods=["GET"]),
        Route("/slack/events", slack_events, methods=["POST"]),
        *(extra_routes or []),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
