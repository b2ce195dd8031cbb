"""`billing` CLI commands: serve (webhook endpoint + in-process worker), worker, status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from typing import Annotated, Any

import typer

from billing.cache.store import SyncHealth
from billing.config import Settings
from billing.errors import ConfigurationError, StoreUnavailableError
from billing.sync.worker import EventWorker
from bot.alerts import build_notifier, build_scheduler
from bot.cli_support import handles_errors, run_async
from bot.runtime import load_settings, open_runtime
from bot.slack.credentials import bot_token, check_slack_settings

log = logging.getLogger("billing.serve")


def _webhook_secret(settings: Settings) -> str:
    if settings.stripe_webhook_secret is None:
        raise ConfigurationError("STRIPE_WEBHOOK_SECRET is not set; use the whsec_… secret of the endpoint.")
    secret = settings.stripe_webhook_secret.get_secret_value()
    if not secret.startswith("whsec_"):
        raise ConfigurationError("STRIPE_WEBHOOK_SECRET must start with whsec_.")
    return secret


def _refuse_memory_store(settings: Settings, command: str) -> None:
    """``serve`` and ``worker`` need a Redis server: on ``memory://`` every queued event, already
    acknowledged to Stripe, dies with the process. Only ``BILLING_DEMO=1`` says that is fine."""
    if settings.redis_url.startswith("memory:") and not settings.demo:
        raise ConfigurationError(
            f"REDIS_URL is memory:// (the default when unset), so billing {command} would acknowledge "
            "Stripe's events and lose them when the process stops; point REDIS_URL at a Redis server "
            "(redis://…), or set BILLING_DEMO=1 for a demo."
        )


async def _serve(settings: Settings, host: str, port: int, with_worker: bool, socket_mode: bool) -> None:
    import uvicorn

    from bot.asgi import SERVER_OPTIONS, build_asgi_app
    from bot.metrics import Metrics
    from bot.slack.app import build_slack_app, slack_web_client

    _refuse_memory_store(settings, "serve")
    secret = _webhook_secret(settings)
    # Before Stripe's permission probes: a wrong Slack setting is said at once, even with Stripe hanging.
    slack_on = check_slack_settings(settings, socket_mode=socket_mode)
    async with open_runtime(settings, verify_permissions=True, require_store=True) as runtime:
        store = runtime.store
        assert store is not None
        runtime.rules()  # a bad rules file is one sentence now, not at the first alert
        slack_client = slack_web_client(settings) if slack_on else None
        notifier = build_notifier(runtime, slack_client=slack_client)
        worker = EventWorker(store, runtime.gateway, notifier,
                             scheduler=build_scheduler(store, runtime.rules)) if with_worker else None
        slack_app = None
        handler = None
        slack_status: Any = None
        if slack_client is None:
            log.warning("Slack is off: SLACK_BOT_TOKEN is not set. Serving Stripe webhooks only; "
                        "alerts are written to this log.")
        elif socket_mode:
            from bot.slack.socket_mode import start_socket_mode

            slack_app = build_slack_app(runtime, client=slack_client, socket_mode=True)
            handler, status = await start_socket_mode(slack_app, settings)
            slack_status = status.to_dict
            slack_app = None  # Slack talks over the socket; POST /slack/events stays off
        else:
            slack_app = build_slack_app(runtime, client=slack_client)
            slack_status = lambda: {"mode": "http"}  # noqa: E731
        metrics = Metrics()
        runtime.default.on_lookup = metrics.record_lookup
        metrics.watch("billing_stripe", "Stripe requests", runtime.gateway)
        app = build_asgi_app(settings=settings, store=store, webhook_secret=secret, tenant=store.tenant,
                             worker=worker, stripe_check=runtime.gateway.ping, slack_app=slack_app,
                             slack_status=slack_status, metrics=metrics)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", **SERVER_OPTIONS))
        try:
            await server.serve()
        finally:
            if handler is not None:
                await handler.close_async()  # type: ignore[no-untyped-call]


async def _work(settings: Settings) -> None:
    from bot.slack.app import slack_web_client

    _refuse_memory_store(settings, "worker")
    slack_on = settings.slack_bot_token is not None
    if slack_on:
        bot_token(settings)  # the worker posts alerts: a wrong token is said before Stripe is asked
    async with open_runtime(settings, verify_permissions=True, require_store=True) as runtime:
        assert runtime.store is not None
        runtime.rules()
        slack_client = slack_web_client(settings) if slack_on else None
        notifier = build_notifier(runtime, slack_client=slack_client)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        scheduler = build_scheduler(runtime.store, runtime.rules)
        # A worker has no port to probe: this line is how an operator knows it started, and where.
        said = logging.getLogger("billing.worker")
        said.info("Worker applying queued Stripe events of %s (Ctrl-C stops).", runtime.default.tenant.key)
        if not slack_on:
            said.warning("Slack is off: SLACK_BOT_TOKEN is not set. Alerts are written to this log.")
        await EventWorker(runtime.store, runtime.gateway, notifier, scheduler=scheduler).run(stop)


async def _status(settings: Settings) -> SyncHealth:
    async with open_runtime(settings, require_store=True) as runtime:
        if runtime.store is None:
            raise StoreUnavailableError("Redis is not reachable; check REDIS_URL.")
        return await runtime.store.health()


@handles_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 3000,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Do not run a worker in-process.")] = False,
    socket_mode: Annotated[
        bool, typer.Option("--socket-mode", help="Talk to Slack over Socket Mode (SLACK_APP_TOKEN).")
    ] = False,
) -> None:
    """Serve POST /stripe/webhook, POST /slack/events, GET /healthz and GET /metrics, with a worker."""
    run_async(_serve(load_settings(), host, port, not no_worker, socket_mode))


@handles_errors
def worker() -> None:
    """Apply queued Stripe events to the cache until interrupted (run as many as you like)."""
    run_async(_work(load_settings()))


@handles_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the sync-health record as JSON.")] = False,
) -> None:
    """Key mode and account, customers cached, last webhook/backfill, stream lag, pending, dead letters."""
    health = run_async(_status(load_settings()))
    data = health.to_dict()
    account, _, mode = health.tenant.partition(":")
    data = {"account": account, "mode": mode, **data}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        typer.echo(f"{key.replace('_', ' '):<{width}}  {'-' if value is None else value}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root CLI."""
    app.command()(serve)
    app.command()(worker)
    app.command()(status)
