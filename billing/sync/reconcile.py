"""Reconcile: replay Stripe's ``/v1/events`` since the last processed event, to repair missed webhooks.

Listed events are appended to the same Redis Stream the webhook endpoint writes to, so they take the
one apply path (``billing.sync.worker.EventWorker``: dedup, version checks, rebuild, transitions). Delivery
is unordered, so the listing starts ``overlap_seconds`` before the newest event known to be processed:
an event missed before it is still found, and events already applied are skipped here (and deduped by
the worker anyway).

Thirty days of events are never held at once: they are listed page by page (only the types the worker
routes, ``types[]``, at most 20 a listing as Stripe allows), each page queued and, with a worker, applied
before the next is asked for. Stripe lists newest first; a page is queued oldest first, and an older
page applied after a newer one changes nothing the version checks would not refuse.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from billing.cache.store import RedisStore
from billing.domain.snapshot import StripeDict
from billing.ports import StripeReader
from billing.sync.worker import ROUTED_EVENT_TYPES, EventWorker

EVENT_RETENTION_SECONDS = 30 * 86_400  # Stripe lists events of the last 30 days
DEFAULT_OVERLAP_SECONDS = 300
PAGE_SIZE = 100  # Stripe's largest list page
MAX_TYPES_PER_LISTING = 20  # Stripe's limit on ``types[]``


def reconcile_start(
    *,
    now: float,
    reconciled_through: float | None,
    last_event_created: float | None,
    backfill_started_at: float | None,
    overlap_seconds: int = DEFAULT_OVERLAP_SECONDS,
) -> int:
    """The ``created[gte]`` to list events from, minus the overlap, never further back than Stripe
    keeps events.

    Every event after the previous reconcile's horizon is uncertain (a webhook may have been lost
    while later ones arrived), so that horizon wins; before any reconcile, the backfill's start; with
    neither, the last event the worker applied; with nothing known, every event Stripe still has.
    """
    oldest = int(now) - EVENT_RETENTION_SECONDS
    for known in (reconciled_through, backfill_started_at, last_event_created):
        if known is not None:
            return max(oldest, int(known) - overlap_seconds)
    return oldest


@dataclass(frozen=True)
class ReconcileReport:
    since: int
    listed: int
    queued: int
    already_applied: int
    applied: int = 0


async def queue_missed_events(
    gateway: StripeReader,
    store: RedisStore,
    *,
    since: int | None = None,
    overlap_seconds: int = DEFAULT_OVERLAP_SECONDS,
    clock: Callable[[], float] = time.time,
    worker: EventWorker | None = None,
    page_size: int = PAGE_SIZE,
) -> ReconcileReport:
    """List events since the last processed one and append those not yet applied to the stream, a page
    at a time; with ``worker``, each page is applied (``drain``) before the next is listed."""
    fields = await store.health_record()
    if since is None:
        since = reconcile_start(
            now=clock(),
            reconciled_through=_number(fields.get("reconciled_through")),
            last_event_created=_number(fields.get("last_event_created"))
            or await _created_of_event(gateway, fields.get("last_event_id")),
            backfill_started_at=_number(fields.get("backfill_started_at")),
            overlap_seconds=overlap_seconds,
        )
    listed = queued = 0
    newest: int | None = None
    for start in range(0, len(ROUTED_EVENT_TYPES), MAX_TYPES_PER_LISTING):
        params = {
            "created": {"gte": since}, "limit": page_size,
            "types": list(ROUTED_EVENT_TYPES[start:start + MAX_TYPES_PER_LISTING]),
        }
        page: list[StripeDict] = []
        async for event in gateway.iter_objects("events", params):
            page.append(event)
            if len(page) >= page_size:
                queued += await _queue_page(store, page, worker)
                listed += len(page)
                newest = max(newest or 0, *(int(e.get("created") or 0) for e in page))
                page = []
        if page:
            queued += await _queue_page(store, page, worker)
            listed += len(page)
            newest = max(newest or 0, *(int(e.get("created") or 0) for e in page))
    record: dict[str, float | str] = {"reconciled_at": clock()}
    if newest is not None:
        record["reconciled_through"] = newest
    await store.record(**record)
    return ReconcileReport(since=since, listed=listed, queued=queued, already_applied=listed - queued)


async def _queue_page(store: RedisStore, page: list[StripeDict], worker: EventWorker | None) -> int:
    """Queue a page's events not applied yet, oldest first; with ``worker``, apply them now."""
    events = sorted(page, key=lambda e: (int(e.get("created") or 0), str(e.get("id"))))
    done = await store.dedupe.done([str(e["id"]) for e in events])
    missed = [e for e, applied in zip(events, done, strict=True) if not applied]
    if missed:
        await store.stream.append_many(json.dumps(event, separators=(",", ":")) for event in missed)
        if worker is not None:
            await drain(worker)
    return len(missed)


async def drain(worker: EventWorker, *, max_rounds: int = 100_000) -> int:
    """Let ``worker`` process the stream until nothing is left for it; returns entries handled."""
    await worker.ensure_group()
    handled = 0
    for _ in range(max_rounds):
        count = await worker.run_once(block_ms=1)
        handled += count
        if count == 0:
            break
    return handled


async def reconcile(
    gateway: StripeReader,
    store: RedisStore,
    worker: EventWorker,
    *,
    since: int | None = None,
    overlap_seconds: int = DEFAULT_OVERLAP_SECONDS,
    page_size: int = PAGE_SIZE,
) -> ReconcileReport:
    """Queue the missed events and apply them through ``worker`` page by page (and anything else
    queued)."""
    before = worker.stats.applied
    report = await queue_missed_events(
        gateway, store, since=since, overlap_seconds=overlap_seconds, worker=worker, page_size=page_size
    )
    await drain(worker)
    return ReconcileReport(
        since=report.since, listed=report.listed, queued=report.queued,
        already_applied=report.already_applied, applied=worker.stats.applied - before,
    )


async def _created_of_event(gateway: StripeReader, event_id: str | None) -> float | None:
    """The worker records the id of the newest event it applied; Stripe knows when it was created."""
    if not event_id:
        return None
    event: StripeDict | None = await gateway.retrieve("events", event_id)
    created = (event or {}).get("created")
    return float(created) if isinstance(created, int | float) else None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


__all__ = ["ReconcileReport", "drain", "queue_missed_events", "reconcile", "reconcile_start"]
