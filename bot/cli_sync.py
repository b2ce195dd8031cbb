"""`billing` CLI commands: serve (webhook endpoint + in-process worker), worker, status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Annotated

import typer

from billing.config import Settings
from billing.errors import ConfigurationError
from billing.store import RedisStore, SyncHealth, open_tenant_store
from billing.stripe_api import StripeGateway, check_key, key_account_id
from billing.worker import EventWorker
from bot.alerts import alert_notifier
from bot.cli_support import handles_errors, run_async
from bot.runtime import load_settings


async def _open(settings: Settings, *, verify: bool = False) -> tuple[StripeGateway, RedisStore]:
    """The gateway and store; ``verify`` checks every read permission first (long-running commands)."""
    key = check_key(settings)
    gateway = StripeGateway.from_settings(settings)
    try:
        if verify:
            await gateway.verify_permissions()
        store = await open_tenant_store(
            settings.redis_url, gateway, key_account_id(key), prefix=settings.key_prefix
        )
    except BaseException:
        await gateway.aclose()
        raise
    return gateway, store


def _webhook_secret(settings: Settings) -> str:
    if settings.stripe_webhook_secret is None:
        raise ConfigurationError("STRIPE_WEBHOOK_SECRET is not set; use the whsec_… secret of the endpoint.")
    secret = settings.stripe_webhook_secret.get_secret_value()
    if not secret.startswith("whsec_"):
        raise ConfigurationError("STRIPE_WEBHOOK_SECRET must start with whsec_.")
    return secret


async def _serve(settings: Settings, host: str, port: int, with_worker: bool) -> None:
    import uvicorn

    from bot.asgi import build_asgi_app

    secret = _webhook_secret(settings)
    notifier = alert_notifier(settings)
    gateway, store = await _open(settings, verify=True)
    try:
        worker = EventWorker(store, gateway, notifier) if with_worker else None
        app = build_asgi_app(settings=settings, store=store, webhook_secret=secret, tenant=store.tenant,
                             worker=worker, stripe_check=gateway.tenant)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
        await server.serve()
    finally:
        await store.aclose()
        await gateway.aclose()


async def _work(settings: Settings) -> None:
    notifier = alert_notifier(settings)
    gateway, store = await _open(settings, verify=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await EventWorker(store, gateway, notifier).run(stop)
    finally:
        await store.aclose()
        await gateway.aclose()


async def _status(settings: Settings) -> SyncHealth:
    gateway, store = await _open(settings)
    try:
        return await store.health()
    finally:
        await store.aclose()
        await gateway.aclose()


@handles_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Do not run a worker in-process.")] = False,
) -> None:
    """Serve POST /stripe/webhook, GET /healthz and GET /metrics (and a worker unless --no-worker)."""
    run_async(_serve(load_settings(), host, port, not no_worker))


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
