"""`billing` CLI commands: backfill [--resume], resync, reconcile."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from billing.cache.store import RedisStore
from billing.config import Settings
from billing.errors import BadQueryError, ConfigurationError
from billing.ports import Notifier
from billing.stripe.gateway import StripeGateway
from billing.sync.backfill import DEFAULT_CONCURRENCY, DEFAULT_WINDOWS, RESOURCES, Backfill, BackfillReport
from billing.sync.reconcile import ReconcileReport, reconcile
from billing.sync.worker import EventWorker
from bot.alerts import build_notifier
from bot.cli_support import handles_errors, run_async
from bot.runtime import load_settings, open_runtime


def parse_since(value: str | None) -> int | None:
    """``YYYY-MM-DD`` (UTC midnight) or unix seconds; anything else is one clear sentence."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise BadQueryError(
            f"--since {value!r} is not a date; give YYYY-MM-DD (UTC) or unix seconds."
        ) from None
    return int(day.timestamp())


@asynccontextmanager
async def _connected(settings: Settings) -> AsyncIterator[tuple[StripeGateway, RedisStore, Notifier]]:
    if settings.redis_url.startswith("memory://"):
        raise ConfigurationError(
            "REDIS_URL=memory:// keeps nothing once the command ends; point REDIS_URL at a Redis server "
            "(redis://…) to backfill."
        )
    # A missing read permission is one sentence now, not mid-run.
    async with open_runtime(settings, verify_permissions=True, require_store=True) as runtime:
        assert runtime.store is not None
        runtime.rules()  # a bad rules file is one sentence now, not at the first alert
        # Transitions found while catching up are alerted like the worker's (Slack when configured).
        yield runtime.gateway, runtime.store, build_notifier(runtime)


@dataclass
class _Counts:
    task: TaskID
    objects: int = 0


class ProgressDisplay:
    """A rich progress bar per resource (windows done, objects, objects/s), then one for contexts."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<13}"),
            BarColumn(),
            TextColumn("{task.completed:>4.0f}/{task.total:<4.0f}"),
            TextColumn("{task.fields[objects]:>8,} objects"),
            TextColumn("{task.fields[rate]:>7,.0f}/s"),
            TimeElapsedColumn(),
            console=console,
        )
        self.started = time.monotonic()
        self.counts: dict[str, _Counts] = {}
        self.build_task: TaskID | None = None

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _rate(self, objects: int) -> float:
        return objects / max(time.monotonic() - self.started, 1e-6)

    def planned(self, resource: str, windows: int, already_done: int, already_fetched: int) -> None:
        task = self.progress.add_task(
            resource.replace("_", " "), total=windows, completed=already_done, objects=already_fetched,
            rate=0.0,
        )
        self.counts[resource] = _Counts(task, already_fetched)

    def fetched(self, resource: str, count: int) -> None:
        counts = self.counts[resource]
        counts.objects += count
        self.progress.update(counts.task, objects=counts.objects, rate=self._rate(counts.objects))

    def window_done(self, resource: str) -> None:
        self.progress.advance(self.counts[resource].task)

    def building(self, total: int) -> None:
        self.started = time.monotonic()
        self.build_task = self.progress.add_task("contexts", total=total, objects=0, rate=0.0)

    def built(self, count: int) -> None:
        if self.build_task is None:
            return
        self.progress.advance(self.build_task, count)
        done = int(self.progress.tasks[self.build_task].completed)
        self.progress.update(self.build_task, objects=done, rate=self._rate(done))


def _count(number: int, plural: str) -> str:
    """``1 dispute``, ``2 disputes``, ``1 credit note`` (every noun here is plural with an s)."""
    return f"{number:,} {plural[:-1] if number == 1 else plural}"


def _reconciled(sync: ReconcileReport) -> str:
    return (
        f"Reconciled {_count(sync.listed, 'events')} since {_iso(sync.since)}: {sync.applied:,} applied, "
        f"{sync.already_applied:,} already applied."
    )


def _summary(report: BackfillReport, sync: ReconcileReport) -> str:
    fetched = ", ".join(_count(report.fetched.get(r, 0), r.replace("_", " ")) for r in RESOURCES)
    how = (f"resumed, {report.windows_skipped} of {_count(report.windows_total, 'windows')} already done"
           if report.resumed else _count(report.windows_total, "windows"))
    return (
        f"Backfilled {_count(report.contexts_built, 'customers')} in {report.seconds:.1f} s ({how}); "
        f"fetched {fetched}.\n{_reconciled(sync)}"
    )


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _backfill(
    settings: Settings, *, resume: bool, since: int | None, windows: int, concurrency: int, console: Console,
    previews: bool = False,
) -> str:
    async with _connected(settings) as (gateway, store, notifier):
        with ProgressDisplay(console) as display:
            report = await Backfill(
                gateway, store, windows=windows, concurrency=concurrency, observer=display, previews=previews,
            ).run(resume=resume, since=since)
        # Changes made while the backfill ran reach us through the events it started before.
        worker = EventWorker(store, gateway, notifier, block_ms=1)
        sync = await reconcile(gateway, store, worker)
        return _summary(report, sync)


async def _reconcile(settings: Settings, since: int | None) -> str:
    async with _connected(settings) as (gateway, store, notifier):
        sync = await reconcile(gateway, store, EventWorker(store, gateway, notifier, block_ms=1), since=since)
    return _reconciled(sync)


SinceOption = Annotated[
    str | None,
    typer.Option("--since", help="Start of the range: YYYY-MM-DD (UTC) or unix seconds."),
]
WindowsOption = Annotated[
    int, typer.Option("--windows", min=1, max=256, help="created ranges per list, fetched concurrently.")
]
ConcurrencyOption = Annotated[
    int, typer.Option("--concurrency", min=1, max=64, help="windows fetched at the same time.")
]
PreviewsOption = Annotated[
    bool, typer.Option("--previews", help="Also ask Stripe for each renewing subscription's next invoice "
                       "(one request each); without it cards show an estimate until next read from Stripe."),
]


def register(app: typer.Typer) -> None:
    """Add ``backfill``, ``resync`` and ``reconcile`` to the root CLI."""

    @app.command()
    @handles_errors
    def backfill(
        resume: Annotated[
            bool, typer.Option("--resume", help="Continue an interrupted backfill from its checkpoint.")
        ] = False,
        since: SinceOption = None,
        windows: WindowsOption = DEFAULT_WINDOWS,
        concurrency: ConcurrencyOption = DEFAULT_CONCURRENCY,
        previews: PreviewsOption = False,
    ) -> None:
        """Load every customer from Stripe into Redis and build every context, then reconcile events."""
        settings = load_settings()
        console = Console(stderr=True)
        typer.echo(run_async(_backfill(
            settings, resume=resume, since=parse_since(since), windows=windows, concurrency=concurrency,
            console=console, previews=previews,
        )))

    @app.command()
    @handles_errors
    def resync(
        since: SinceOption = None,
        windows: WindowsOption = DEFAULT_WINDOWS,
        concurrency: ConcurrencyOption = DEFAULT_CONCURRENCY,
        previews: PreviewsOption = False,
    ) -> None:
        """Backfill again over the cache without clearing it (contexts stay served until rebuilt)."""
        backfill(resume=False, since=since, windows=windows, concurrency=concurrency, previews=previews)

    @app.command("reconcile")
    @handles_errors
    def reconcile_command(since: SinceOption = None) -> None:
        """Replay Stripe events since the last processed one through the worker (repairs missed webhooks)."""
        settings = load_settings()
        typer.echo(run_async(_reconcile(settings, parse_since(since))))
