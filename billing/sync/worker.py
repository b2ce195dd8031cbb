"""The event worker: a Redis Streams consumer group that keeps cached contexts current.

For each batch: skip events already applied (dedup markers), group the rest by customer, and per
customer, in one optimistic transaction (WATCH the customer's keys, all in one slot): apply each
event's object if its version is newer (re-fetching from Stripe on a tie or a missing object), rebuild
the context, compare it with the old one and put the transitions in the customer's outbox together
with the new context. A customer the cache has never seen is fetched from Stripe first, so the event's
own evidence (``previous_attributes``) still raises its transition. Then notify from the outbox, mark
the events applied, ``XACK``.

Notifying never holds an event back: the outbox is flushed by one worker at a time per customer (a
short lock), in order, each transition removed once its notifier returned (a ``sent`` marker keeps a
transition notified once across duplicates). When the notifier fails (Slack down), the transition stays
in the outbox, the customer goes into the tenant's pending-outbox set, and the event is acked all the
same: the sweeper (``sweep``, run by ``run`` every few seconds) retries pending outboxes with a backoff
per customer. The Slack notifier makes each message exactly once by itself (lease, post, mark), so a
notifier call repeated after a crash posts nothing twice.

A crash anywhere before ``XACK`` re-delivers the entry (claimed by another worker after
``claim_idle_ms``); re-applying is harmless because every write is version-checked. An entry that
fails ``max_deliveries`` times goes to the dead-letter stream.

Stripe's invoice previews are never fetched on this path: a subscription or invoice event marks its
customer due, and ``billing.sync.previews`` (ticked by ``run`` between batches, in the background)
refreshes the stored previews with a version-checked update of its own (``save_previews``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import stripe
from redis.exceptions import WatchError

from billing.cache.connections import REDIS_ERRORS, as_text
from billing.cache.event_timeline import TIMELINE_PART, decode_entries, encode_entries, with_new_entries
from billing.cache.lookup_index import index_changed
from billing.cache.store import (
    DEDUP_TTL_SECONDS,
    SNAPSHOT_EVENT_ID,
    CatalogueReads,
    RedisStore,
    customer_objects,
    decide,
    decode_context,
    decode_objects,
    encode_context,
    encode_objects,
    refs_of,
    trim_invoices,
)
from billing.domain.event_timeline import Catalogue, EventEntry, entries_of_event
from billing.domain.models import BillingContext, Match, TimelineEntry
from billing.domain.snapshot import PREVIEW_FIELD, CustomerData, StripeDict, id_of
from billing.ports import ListableResource, Notifier, NotifyLater, StripeReader, Transition
from billing.stripe.gateway import PREVIEWED_STATUSES, background_work
from billing.stripe.slim import (
    INCLUDABLE,
    SUBSCRIPTION,
    TENANT_OBJECTS,
    Version,
    completeness,
    keep_included,
    prices_of_subscription,
    project,
    slim,
    version_of,
    with_version,
    without_version,
)
from billing.sync.previews import PreviewRefresher
from billing.sync.transitions import Facts, Found, diff_contexts, diff_facts, facts_of, facts_of_data

if TYPE_CHECKING:
    from billing.sync.scheduler import ReminderScheduler

log = logging.getLogger("billing.sync.worker")
PINNED_API_VERSION: str = stripe.api_version
"""The API version stripe-python pins (the shapes this code reads)."""

ContextBuilder = Callable[..., BillingContext]
"""``billing.domain.builder.build_context(data, *, query, match, now, source, other_customers)``."""

_CATALOGUE_KIND: dict[str, Literal["prices", "products", "coupons"]] = {
    "price": "prices", "plan": "prices", "product": "products", "coupon": "coupons",
}
SEEN_FIELD = "_s"
_RESOURCES: dict[str, ListableResource] = {
    "subscription": "subscriptions", "invoice": "invoices", "charge": "charges",
    "dispute": "disputes", "credit_note": "credit_notes", "price": "prices", "plan": "prices",
    "product": "products", "coupon": "coupons",
}
_CUSTOMER_OBJECTS = frozenset({"customer", "subscription", "invoice", "charge", "dispute", "credit_note"})
# The event types ``_route`` gives to a customer or the catalogue (reconcile lists only these).
ROUTED_EVENT_TYPES: tuple[str, ...] = (
    "customer.created", "customer.updated", "customer.deleted",
    "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted",
    "customer.subscription.paused", "customer.subscription.resumed",
    "customer.subscription.trial_will_end", "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "invoice.created", "invoice.finalized", "invoice.updated", "invoice.paid", "invoice.payment_succeeded",
    "invoice.payment_failed", "invoice.payment_action_required", "invoice.voided",
    "invoice.marked_uncollectible", "invoice.deleted", "invoice.overdue",
    "charge.succeeded", "charge.failed", "charge.captured", "charge.refunded", "charge.updated",
    "charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed",
    "charge.dispute.funds_withdrawn", "charge.dispute.funds_reinstated",
    "credit_note.created", "credit_note.updated", "credit_note.voided",
    "price.created", "price.updated", "price.deleted", "plan.created", "plan.updated", "plan.deleted",
    "product.created", "product.updated", "product.deleted",
    "coupon.created", "coupon.updated", "coupon.deleted",
)
_MAX_CAS_ATTEMPTS = 20
# The dead-letter stream keeps about this many entries (``XADD MAXLEN ~``), the oldest going first:
# enough to inspect and replay a bad day, bounded however long events keep failing (~10 MiB of events).
DEAD_LETTER_MAX = 10_000


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _default_builder() -> ContextBuilder:
    from billing.domain.builder import build_context  # the builder module is owned by the core work

    return build_context


@dataclass
class WorkerStats:
    applied: int = 0
    duplicates: int = 0
    failed: int = 0
    dead_lettered: int = 0
    refetched: int = 0
    notified: int = 0
    notify_failed: int = 0
    fetched_customers: int = 0
    customer_steps: int = 0


@dataclass(frozen=True)
class _Entry:
    entry_id: str
    raw: bytes
    event: StripeDict


def _event_object(event: Mapping[str, Any]) -> StripeDict:
    obj = (event.get("data") or {}).get("object")
    return obj if isinstance(obj, dict) else {}


def _version(event: Mapping[str, Any]) -> Version:
    return int(event.get("created") or 0), str(event.get("id"))


@dataclass
class EventWorker:
    store: RedisStore
    gateway: StripeReader
    notifier: Notifier
    consumer: str = field(default_factory=default_consumer_name)
    batch_size: int = 200
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    max_deliveries: int = 5
    # Customers of one batch applied at once; each holds a Redis connection (WATCH) while it runs,
    # so this stays well under the client's connection-pool limit.
    max_parallel_customers: int = 32
    # Customers of one batch applied per step (a price or coupon event reaches all of its customers).
    customer_step: int = 500
    build: ContextBuilder | None = None
    # The sweeper: pending outboxes are retried every ``sweep_interval`` s, a customer's after
    # ``retry_base`` * 2^(failures - 1) s, at most ``retry_max`` s.
    sweep_interval: float = 2.0
    retry_base: float = 1.0
    retry_max: float = 300.0
    flush_lock_ms: int = 60_000
    # Next invoices: a subscription or invoice event marks its customer due for Stripe's previews;
    # ``previews`` (billing.sync.previews) fetches them between batches, off the event path, each
    # customer's waited for at most ``preview_timeout``. False: nothing is marked nor refreshed.
    refresh_previews: bool = True
    preview_timeout: float = 10.0
    stats: WorkerStats = field(default_factory=WorkerStats)
    last_batch_at: float | None = None
    last_sweep_at: float | None = None
    _last_claim: float = 0.0
    # Renewal and trial reminders (billing.sync.scheduler), ticked by ``run`` between batches.
    scheduler: ReminderScheduler | None = None
    # The preview refresher, ticked by ``run`` between batches (made with the worker's settings
    # unless given).
    previews: PreviewRefresher | None = None

    def __post_init__(self) -> None:
        if self.previews is None:
            self.previews = PreviewRefresher(
                self.store, self.gateway, self.save_previews, timeout=self.preview_timeout
            )

    # ---- the loop -------------------------------------------------------------------------
    async def ensure_group(self) -> None:
        await self.store.stream.ensure_group()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set; Redis outages are waited out, never fatal."""
        stop = stop or asyncio.Event()
        backoff = 0.1
        group_ready = False
        try:
            while not stop.is_set():
                try:
                    if not group_ready:
                        await self.ensure_group()
                        group_ready = True
                    await self.run_once()
                    if self.last_sweep_at is None or time.time() - self.last_sweep_at >= self.sweep_interval:
                        await self.sweep()
                    if self.scheduler is not None:
                        await self.scheduler.maybe_tick()
                    if self.refresh_previews and self.previews is not None:
                        await self.previews.maybe_tick()  # starts a refresh; the next batch does not wait
                    backoff = 0.1
                except REDIS_ERRORS as exc:
                    log.warning("worker waiting for Redis: %s", type(exc).__name__)
                    group_ready = False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:  # a refresh under way is dropped; its customers stay due (leased) in Redis
            if self.previews is not None:
                await self.previews.stop()

    async def run_once(self, block_ms: int | None = None) -> int:
        """Claim idle entries of dead consumers, then read and process one batch; returns entries seen."""
        handled = 0
        now = time.monotonic()
        if (now - self._last_claim) * 1000 >= min(self.claim_idle_ms, 5000):
            self._last_claim = now
            handled += await self.claim_idle()
        entries = await self.store.stream.read_new(
            self.consumer, count=self.batch_size, block_ms=self.block_ms if block_ms is None else block_ms,
        )
        if entries:
            await self.process(entries)
            handled += len(entries)
        self.last_batch_at = time.time()
        return handled

    async def claim_idle(self) -> int:
        """Take over entries idle for longer than ``claim_idle_ms`` (a dead or failing consumer's)."""
        total = 0
        start = "0-0"
        while True:
            next_start, entries = await self.store.stream.claim_idle(
                self.consumer, min_idle_ms=self.claim_idle_ms, start=start, count=self.batch_size,
            )
            if entries:
                await self.process(entries)
                total += len(entries)
            if next_start == "0-0":
                return total
            start = next_start

    # ---- one batch ------------------------------------------------------------------------
    async def process(self, entries: Sequence[Any]) -> None:
        """Apply one batch of stream entries (background work: a 429 is waited out longer)."""
        with background_work():
            await self._process(entries)
        await self.trim()

    async def trim(self) -> None:
        """Drop the stream entries every consumer group has acknowledged (``EventStream.trim``):
        run after each batch, so the stream holds only what some group has yet to finish. The
        dead-letter stream is capped at ``DEAD_LETTER_MAX`` entries instead (oldest first)."""
        await self.store.stream.trim()

    async def _process(self, entries: Sequence[Any]) -> None:
        parsed: list[_Entry] = []
        done_ids: list[str] = []
        for entry_id, fields in entries:
            raw = fields.get(b"e", fields.get("e"))
            try:
                event = json.loads(raw)
                if not isinstance(event, dict) or not isinstance(event.get("id"), str):
                    raise ValueError("not a Stripe event")
            except (TypeError, ValueError) as exc:
                await self._dead_letter(as_text(entry_id), raw or b"", f"unreadable entry: {exc}")
                continue
            body = raw if isinstance(raw, bytes) else str(raw).encode()
            parsed.append(_Entry(as_text(entry_id), body, event))
        if not parsed:
            return
        already = await self.store.dedupe.done([e.event["id"] for e in parsed])
        fresh = [e for e, done in zip(parsed, already, strict=True) if not done]
        done_ids += [e.entry_id for e, done in zip(parsed, already, strict=True) if done]
        self.stats.duplicates += len(parsed) - len(fresh)

        by_customer: dict[str, list[_Entry]] = {}
        applied: list[_Entry] = []
        failed: list[tuple[_Entry, BaseException]] = []
        for entry in fresh:
            try:
                targets = await self._route(entry)
            except Exception as exc:
                failed.append((entry, exc))
                continue
            if not targets:
                applied.append(entry)
            for customer_id in targets:
                by_customer.setdefault(customer_id, []).append(entry)

        customers = list(by_customer)
        gate = asyncio.Semaphore(self.max_parallel_customers)
        price_writes: PriceWrites = {}  # each price a subscription event carries, stored once a batch

        async def apply(customer_id: str) -> None:
            async with gate:
                await self._apply_customer(customer_id, by_customer[customer_id], price_writes)

        # A price or coupon event reaches every customer on it: ``customer_step`` customers at a time,
        # yielding between steps, so a fan-out to many customers never holds them all in flight nor
        # keeps the event loop (shared with the webhook endpoint in ``serve``) from anything else.
        results: list[BaseException | None] = []
        for start in range(0, len(customers), self.customer_step):
            step = customers[start:start + self.customer_step]
            results += await asyncio.gather(*(apply(c) for c in step), return_exceptions=True)
            self.stats.customer_steps += 1
            await asyncio.sleep(0)
        outcome: dict[str, BaseException | None] = {}
        for customer_id, result in zip(customers, results, strict=True):
            for entry in by_customer[customer_id]:
                error = result if isinstance(result, BaseException) else None
                if outcome.get(entry.entry_id) is None:
                    outcome[entry.entry_id] = error
        for entry in fresh:
            if entry.entry_id in outcome:
                error = outcome[entry.entry_id]
                if error is None:
                    applied.append(entry)
                else:
                    failed.append((entry, error))
        await self._finish(applied, done_ids)
        for entry, error in failed:
            await self._failed(entry, error)

    async def _finish(self, applied: Sequence[_Entry], done_ids: Sequence[str]) -> None:
        if not applied and not done_ids:
            return
        # One round trip: the dedup markers, the acks and the health record.
        pipe = self.store.pipeline(transaction=False)
        self.store.dedupe.queue_mark(pipe, [entry.event["id"] for entry in applied])
        self.store.stream.queue_ack(pipe, [e.entry_id for e in applied] + list(done_ids))
        if applied:
            last = max(applied, key=lambda e: int(e.event.get("created") or 0))
            self.store.queue_record(
                pipe, last_event_at=time.time(), last_event_id=last.event["id"],
                last_event_created=int(last.event.get("created") or 0),
            )
        await pipe.execute()
        self.stats.applied += len(applied)

    async def _failed(self, entry: _Entry, error: BaseException) -> None:
        self.stats.failed += 1
        log.warning("event %s failed: %s", entry.event.get("id"), error, exc_info=error)
        deliveries = await self.store.stream.deliveries(entry.entry_id)
        if deliveries is None or deliveries >= self.max_deliveries:
            await self._dead_letter(entry.entry_id, entry.raw, f"{type(error).__name__}: {error}")

    async def _dead_letter(self, entry_id: str, raw: bytes | str, reason: str) -> None:
        self.stats.dead_lettered += 1
        await self.store.stream.dead_letter(entry_id, raw, reason, max_entries=DEAD_LETTER_MAX)

    # ---- routing --------------------------------------------------------------------------
    async def _route(self, entry: _Entry) -> list[str]:
        """The customers an event affects (none for events this product does not use)."""
        obj = _event_object(entry.event)
        kind = obj.get("object")
        if kind in TENANT_OBJECTS:
            event = await self._in_current_shape(entry.event)  # customer objects: in _apply_customer
            obj = _event_object(event)
            if not await self._apply_tenant_object(event, obj):
                return []  # nothing the contexts read changed (e.g. metadata): nobody is rebuilt
            object_id = str(obj.get("id"))
            if kind == "product":  # customers refer to its prices, whose product names the plan
                return await self._customers_of_product(object_id)
            return await self.store.customers_referring_to(object_id)
        if kind == "customer":
            return [str(obj["id"])]
        if kind == "dispute":
            charge_id = id_of(obj.get("charge"))
            if charge_id is None:
                return []
            charge = await self.gateway.retrieve("charges", charge_id)
            owner = id_of((charge or {}).get("customer"))
            return [owner] if owner else []
        if kind in _CUSTOMER_OBJECTS:
            owner = id_of(obj.get("customer"))
            return [owner] if owner else []
        return []

    async def _customers_of_product(self, product_id: str) -> list[str]:
        """Customers whose subscriptions use a price of ``product_id`` (a product event is rare: the
        tenant's prices are scanned, never on a request path)."""
        customers: set[str] = set()
        async for price_id, price in self.store.scan_tenant_objects("prices"):
            if price.get("product") == product_id:
                customers.update(await self.store.customers_referring_to(price_id))
        return sorted(customers)

    async def _in_current_shape(self, event: StripeDict) -> StripeDict:
        """``event``, its object retrieved fresh from Stripe when the event was rendered at an API
        version older than the one the SDK pins (an endpoint created on an account's old default):
        its shapes differ, so only the object's id is trusted. The event keeps its id and ``created``,
        so the fresh state is versioned (ordered) by the event, like a re-fetch on a tie."""
        version = event.get("api_version")
        obj = _event_object(event)
        kind, object_id = obj.get("object"), obj.get("id")
        if (
            not isinstance(version, str) or version[:10] >= PINNED_API_VERSION[:10]
            or (kind not in _RESOURCES and kind != "customer") or not isinstance(object_id, str)
            or obj.get("deleted")
        ):
            return event
        fresh = await self._retrieve(str(kind), object_id)
        self.stats.refetched += 1
        if fresh is None:  # gone from Stripe: the event's own word is all there is
            return event
        log.info("event %s rendered at API version %s (pinned %s): %s %s re-fetched",
                 event.get("id"), version, PINNED_API_VERSION, kind, object_id)
        data = {k: v for k, v in (event.get("data") or {}).items() if k != "previous_attributes"}
        return {**event, "data": {**data, "object": {**fresh, "object": kind}}}

    async def _apply_tenant_object(self, event: StripeDict, obj: StripeDict) -> bool:
        """Store a price, product or coupon from its event; True when the customers using it must be
        rebuilt: its slim projection (every field a context reads) changed, or this is a redelivery of
        the event that stored it (its fan-out may not have finished). An older event, or one changing
        only what no context reads (metadata, a lookup key), rebuilds nobody."""
        kind = str(obj["object"])
        candidate = slim(obj)
        stored = await self.store.get_tenant_objects(_CATALOGUE_KIND[kind], [str(obj["id"])])
        before = stored.get(str(obj["id"]))
        if (
            kind in INCLUDABLE and completeness(candidate) < len(INCLUDABLE[kind])
            and not obj.get("deleted") and not stored
        ):
            # Events never carry tiers, applies_to or currency options: the store keeps those of its
            # copy; without one, the complete object is fetched once.
            complete = await (
                self.gateway.coupon(str(obj["id"])) if kind == "coupon"
                else self.gateway.price_with_tiers(str(obj["id"]))
            )
            if complete is not None:
                candidate = slim({**complete, "object": kind})
        decision = await self.store.put_tenant_object(candidate, _version(event))
        if decision == "skip":
            return version_of(before) == _version(event)
        if decision == "apply":
            if before is None:
                return True
            return without_version(keep_included(candidate, before)) != without_version(before)
        if decision == "refetch":
            fresh = await self.gateway.retrieve(_RESOURCES[kind], str(obj["id"]))
            if fresh is not None:
                self.stats.refetched += 1
                # Same second as the stored version: the fetched state is at least as new as both.
                await self.store.put_tenant_object(
                    slim({**fresh, "object": kind}), (_version(event)[0], f"~{event['id']}")
                )
        return True  # two versions of one second: whatever was settled, rebuild from it

    # ---- one customer ---------------------------------------------------------------------
    async def _apply_customer(
        self, customer_id: str, entries: Sequence[_Entry], price_writes: PriceWrites | None = None
    ) -> None:
        """Apply ``entries`` (the batch's events of one customer); ``price_writes`` is shared by the
        batch's customers (``_store_prices``)."""
        price_writes = {} if price_writes is None else price_writes
        events = sorted([await self._in_current_shape(e.event) for e in entries], key=lambda ev: _version(ev))
        deletion = next((ev for ev in events if ev.get("type") == "customer.deleted"), None)
        if deletion is not None:
            stored = await self.store.get_objects(customer_id)
            email = (stored.get(customer_id) or _event_object(deletion)).get("email")
            await self.store.delete_customer(
                customer_id, email if isinstance(email, str) else None, version=_version(deletion)
            )
            return
        fetched: dict[str, StripeDict | None] = {}
        snapshot: _Snapshot | None = None
        objs_key = self.store.customer_key(customer_id, "objs")
        ctx_key = self.store.customer_key(customer_id, "ctx")
        outbox_key = self.store.customer_key(customer_id, "outbox")
        timeline_key = self.store.customer_key(customer_id, TIMELINE_PART)
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            async with self.store.pipeline(transaction=True) as pipe:
                try:
                    # The outbox is watched too: a transition is queued once, unless already queued
                    # or notified (checked below), whatever another worker does meanwhile.
                    await pipe.watch(objs_key, ctx_key, outbox_key, timeline_key)
                    # The keys share the customer's slot: one MGET (redis-py's cluster pipeline
                    # refuses its mget() helper, not the command).
                    both: Any = await pipe.execute_command("MGET", objs_key, ctx_key, timeline_key)
                    raw_objs, old_raw, raw_timeline = both
                    stored = decode_objects(raw_objs)
                    old = decode_context(old_raw) if old_raw else None
                    kept_entries = decode_entries(raw_timeline)
                    timeline = [e.to_timeline() for e in kept_entries]
                    # Event by event in version order, each against the state before it: the
                    # transitions are those of one-per-batch delivery, however events are grouped.
                    catalogue = CatalogueReads()
                    applied = await self._apply_events(
                        customer_id, events, stored, fetched, old, catalogue, price_writes, timeline
                    )
                    updates, absorbed, transitions = applied.updates, applied.absorbed, applied.transitions
                    merged = trim_invoices({**stored, **updates})
                    # What only the events can tell (a plan before an upgrade …), whatever their order.
                    history = await self._event_entries(customer_id, events, stored, merged, kept_entries,
                                                        catalogue)
                    if history is not None:
                        timeline = [e.to_timeline() for e in history]
                    rebuild = history is not None or bool(updates) or bool(absorbed) or any(
                        _event_object(ev).get("object") in TENANT_OBJECTS
                        or ev.get("type") == "customer.subscription.trial_will_end"
                        for ev in events
                    )
                    if not rebuild:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        # A redelivery after a crash between saving and notifying: finish notifying.
                        await self._flush_outbox(customer_id)
                        return
                    from_stripe = False
                    if customer_id not in merged:
                        # Never seen (no backfill yet, or created since): what the cache lacks comes
                        # from Stripe, versioned by when the fetch began, like a lookup's snapshot.
                        if snapshot is None:
                            snapshot = await self._fetch_snapshot(customer_id)
                        if snapshot is not None:
                            merged = trim_invoices(_with_snapshot(merged, snapshot))
                            from_stripe = True
                    # The last state an event made, already joined (and built, when it made a
                    # transition) unless a snapshot came in since.
                    latest = None if from_stripe or history is not None else applied.latest
                    data = latest.data if latest is not None and latest.data else (
                        await self.store.load_customer_data(customer_id, merged, catalogue=catalogue)
                    )
                    if data is None:
                        # Deleted (a tombstone), or gone from Stripe: keep the objects, build later.
                        pipe.multi()  # type: ignore[no-untyped-call]
                        if updates:  # keepttl: a deleted customer's tombstone still expires
                            pipe.set(objs_key, encode_objects(merged), keepttl=True)
                        await pipe.execute()
                        return
                    data = replace(data, event_entries=timeline)
                    new = latest.context if latest is not None and latest.context else self._build(data, old)
                    if from_stripe:
                        # Stripe's current state: each event is the evidence of what changed (keyed by
                        # the event, as when a snapshot absorbed it, so a redelivery adds nothing).
                        transitions = [t for ev in events for t in diff_contexts(None, new, ev, versions={
                            str(_event_object(ev).get("id")): str(ev.get("id"))})]
                    else:
                        versions = {k: str((version_of(v) or (0, ""))[1]) for k, v in merged.items()}
                        facts = facts_of(new)
                        for ev, was_absorbed in applied.unseen:
                            # Met before the customer itself was known: the event speaks for itself.
                            if was_absorbed and facts is not None:
                                transitions += _transitions(_evidence(facts, ev), new)
                            elif not was_absorbed:
                                transitions += diff_contexts(None, new, ev, versions=versions)
                    transitions = await self._not_yet_queued(pipe, customer_id, transitions)
                    queued = [_dumps(_transition_to_dict(t)) for t in transitions]
                    # A snapshot came with Stripe's previews; otherwise the stored ones are kept
                    # (``_with_kept_preview``) and the refresher brings new ones after the save.
                    due = [customer_id] if not from_stripe and self._preview_due(events, merged) else []
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if updates or from_stripe or len(merged) < len(stored):
                        pipe.set(objs_key, encode_objects(merged))
                    pipe.set(ctx_key, encode_context(new))
                    if queued:
                        pipe.rpush(outbox_key, *queued)
                    if history is not None:
                        pipe.set(timeline_key, encode_entries(history))
                    marked = self.store.queue_saved(pipe, [customer_id], preview_due=due, transaction=True)
                    changed = {**updates, **merged} if from_stripe else updates
                    if marked and self._index_due(stored, changed, first_build=old is None):
                        # A single server: the lookup index rides in the save (same rule as above).
                        self.store.lookup.queue_sync(
                            pipe, customer_id, stored.values(), trim_invoices({**stored, **changed}).values()
                        )
                    await pipe.execute()
                except WatchError:
                    continue
            if snapshot is not None and from_stripe:
                self.stats.fetched_customers += 1
            if not marked:  # a cluster: the tenant's keys are in other slots than the customer's
                await self.store.mark_saved([customer_id], preview_due=due)
            if transitions:
                # Notified first (people wait for it; the indexes below do not). A crash before the
                # event is acked redelivers it, and its redelivery finishes this outbox.
                await self._flush_outbox(customer_id, fresh=queued)
            await self._after_save(
                customer_id, stored, changed, data, first_build=old is None, indexed=marked
            )
            return
        raise RuntimeError(f"customer {customer_id} kept changing under the worker")

    async def _apply_events(
        self, customer_id: str, events: Sequence[StripeDict], stored: dict[str, StripeDict],
        fetched: dict[str, StripeDict | None], old: BillingContext | None, catalogue: CatalogueReads,
        price_writes: PriceWrites, timeline: Sequence[TimelineEntry],
    ) -> _Applied:
        """``_merge`` one event at a time (same result as all at once), with the transitions each
        event makes against the state just before it.

        A duplicate or an older event changes nothing, so it adds no transition; a transition's key
        (status and the event that set it) is the one a one-per-batch delivery gives. Each state is
        compared by its ``Facts`` (what ``diff_contexts`` reads, found from the objects alone); a
        state is joined with the catalogue (read once, ``catalogue``) and built only when it makes a
        transition (the context it carries), and the newest state is handed on to be saved.
        """
        out = _Applied()
        before = facts_of(old)
        current = before
        # The newest state: the stored context until an event changes the objects.
        latest = _Latest(None, context=old) if before is not None else None
        final = False  # ``latest`` is the state after the last change (the one to save)
        for ev in events:
            changed, seen_first = await self._merge(
                customer_id, [ev], {**stored, **out.updates}, fetched, price_writes
            )
            out.updates.update(changed)
            out.absorbed += seen_first
            state = trim_invoices({**stored, **out.updates})
            if changed:
                # A charge, dispute or credit note changes no facts: only the state to save.
                facts = current if final and not _FACT_KINDS.intersection(
                    str(o.get("object")) for o in changed.values()
                ) else _facts_of_state(state) if customer_id in state else None
                if facts is not None:
                    current, latest = facts, _Latest(state)
                final = facts is not None
            if current is None:
                out.unseen += [(ev, False), *((evt, True) for evt in seen_first)]
                continue
            versions = {k: str((version_of(v) or (0, ""))[1]) for k, v in state.items()}
            found = diff_facts(before, current, ev, versions=versions)
            for evt in seen_first:
                found += _evidence(current, evt)
            if found and latest is not None:
                context = await self._context_of(customer_id, latest, old, catalogue, timeline)
                out.transitions += _transitions(found, context)
            before = current
        out.latest = latest if final else None
        return out

    async def _context_of(
        self, customer_id: str, latest: _Latest, old: BillingContext | None, catalogue: CatalogueReads,
        timeline: Sequence[TimelineEntry],
    ) -> BillingContext:
        if latest.context is None:
            if latest.data is None and latest.objects is not None:
                latest.data = await self.store.load_customer_data(
                    customer_id, latest.objects, catalogue=catalogue
                )
            if latest.data is None:  # not when its facts were found: a customer, not deleted
                raise RuntimeError(f"customer {customer_id}: a state with facts but no data")
            latest.context = self._build(replace(latest.data, event_entries=list(timeline)), old)
        return latest.context

    async def _event_entries(
        self, customer_id: str, events: Sequence[StripeDict], stored: Mapping[str, StripeDict],
        merged: Mapping[str, StripeDict], kept: list[EventEntry], catalogue: CatalogueReads,
    ) -> list[EventEntry] | None:
        """The customer's webhook-only timeline entries with those of ``events`` (None when they add
        none). Each is made from its event and the catalogue's names, so an event older than the
        stored state (delivered late) still gives its entry."""
        telling = [ev for ev in events if _tells_history(ev)]
        if not telling:
            return None
        data = await self.store.load_customer_data(customer_id, merged, catalogue=catalogue)
        names = Catalogue(prices=dict(data.prices), products=dict(data.products), coupons=dict(data.coupons)
                          ) if data is not None else Catalogue({}, {}, {})
        old_products = {
            str(product) for ev in telling for item in _items_before(ev)
            if isinstance(product := (item.get("price") or item.get("plan") or {}).get("product"), str)
        } - set(names.products)
        if old_products:  # the plan before a change names its own product
            names = replace(names, products={
                **names.products, **await self.store.get_tenant_objects("products", old_products)
            })
        # A removed coupon is named by its discount as stored or as another of the batch's events
        # shows it (events name discounts by id; the stored objects hold them expanded).
        discounts = {
            str(d["id"]): d for obj in (*stored.values(), *(_event_object(ev) for ev in events))
            for d in obj.get("discounts") or [] if isinstance(d, dict) and isinstance(d.get("id"), str)
        }
        new = [
            entry for ev in telling for entry in entries_of_event(
                ev, names, customer=merged.get(customer_id), before={"discounts": list(discounts.values())},
            )
        ]
        return with_new_entries(kept, new)

    async def _not_yet_queued(
        self, pipe: Any, customer_id: str, transitions: Sequence[Transition]
    ) -> list[Transition]:
        """``transitions`` without repeats, without those already in the outbox and without those
        already notified (read in ``pipe``'s WATCH phase: same slot, no extra key in the MULTI)."""
        unique = list({t.dedup_key: t for t in transitions}.values())
        if not unique:
            return []
        outbox_key = self.store.customer_key(customer_id, "outbox")
        queued = {_key_of(json.loads(raw)) for raw in await pipe.lrange(outbox_key, 0, -1)}
        sent_keys = [self.store.customer_key(customer_id, f"sent:{t.dedup_key}") for t in unique]
        notified: Any = await pipe.execute_command("MGET", *sent_keys)
        return [t for t, done in zip(unique, notified, strict=True)
                if done is None and t.dedup_key not in queued]

    async def _fetch_snapshot(self, customer_id: str) -> _Snapshot | None:
        """The customer's data from Stripe and when the fetch began; None when Stripe has no such
        customer (deleted, or not of this account)."""
        started = time.time()
        customer = await self.gateway.retrieve_customer(customer_id)
        if customer is None:
            return None
        data = await self.gateway.fetch_customer_data(customer)
        version: Version = (int(started), SNAPSHOT_EVENT_ID)
        # Prices, products and coupons first: the build joins them from the tenant's hashes (each
        # only where newer than the stored copy, as a lookup's).
        await self.store.put_catalogue([data], version)
        objects = {str(o["id"]): with_version(o, version) for o in customer_objects(data)}
        return _Snapshot(objects)

    def _build(self, data: CustomerData, old: BillingContext | None) -> BillingContext:
        build = self.build or _default_builder()
        return build(
            data,
            query=old.query if old else str(data.customer["id"]),
            match=old.match if old and old.match else Match(method="customer_id", confidence="exact"),
            now=datetime.now(UTC),
            source="stripe",
            other_customers=old.other_customers if old else (),
        )

    async def _merge(
        self, customer_id: str, events: Sequence[StripeDict], stored: dict[str, StripeDict],
        fetched: dict[str, StripeDict | None], price_writes: PriceWrites,
    ) -> tuple[dict[str, StripeDict], list[StripeDict]]:
        """The stored objects that the events change (version-checked), keyed by object id, and the
        recent events whose change a snapshot (a lookup or a backfill) had already stored."""
        updates: dict[str, StripeDict] = {}
        absorbed: list[StripeDict] = []
        for event in events:
            obj = _event_object(event)
            kind = obj.get("object")
            object_id = obj.get("id")
            if kind not in _CUSTOMER_OBJECTS or not isinstance(object_id, str):
                continue
            current = updates.get(object_id) or stored.get(object_id)
            version = _version(event)
            seen = current.get(SEEN_FIELD, []) if current else []
            decision = decide(version_of(current), version, seen)
            event_type = str(event.get("type", ""))
            if current is None and event_type.endswith(".updated") and kind != "customer":
                decision = "refetch"  # an update of an object we never saw: take Stripe's current state
            if decision == "skip":
                stored_version = version_of(current)
                if (
                    stored_version is not None and stored_version[1] == SNAPSHOT_EVENT_ID
                    and version[0] > time.time() - DEDUP_TTL_SECONDS  # older news is no news
                ):
                    absorbed.append(event)
                continue
            if decision == "refetch":
                if object_id not in fetched:
                    fetched[object_id] = await self._retrieve(str(kind), object_id)
                    self.stats.refetched += 1
                fresh = fetched[object_id]
                if fresh is None:
                    continue
                obj = fresh
                stored_version = version_of(current)
                if (
                    stored_version is not None and stored_version[1] == SNAPSHOT_EVENT_ID
                    and version[0] > time.time() - DEDUP_TTL_SECONDS
                ):
                    # A snapshot of the same second (a lookup, a backfill, or the fetch of a customer
                    # first seen through another event) may already hold this change: the event is
                    # the evidence, as when the snapshot is strictly newer.
                    absorbed.append(event)
                if stored_version and stored_version[0] == version[0]:
                    seen = [*seen, stored_version[1], version[1]]
                else:
                    seen = [version[1]]
            else:
                seen = []
            if kind == "subscription":
                obj = await self._with_discounts(obj, current)
                await self._store_prices(obj, price_writes)
                obj = _with_kept_card(obj, current, ("default_payment_method",))
                obj = _with_kept_preview(obj, current)
            if kind == "customer":
                obj = await self._with_card(obj, current)
            if kind == "invoice":
                obj = _with_action_flag(obj, current, event_type)
            entry = with_version(slim({**obj, "object": kind}), version)
            if event_type == "invoice.deleted":
                entry["deleted"] = True  # a versioned tombstone: the card drops it, late events stay out
            if seen:
                entry[SEEN_FIELD] = sorted(set(seen))
            updates[object_id] = entry
        return updates, absorbed

    def _preview_due(self, events: Sequence[StripeDict], objects: Mapping[str, StripeDict]) -> bool:
        """Whether a subscription or invoice event may have changed what a subscription of the
        customer that will invoice again bills next (its preview is then refreshed)."""
        if not self.refresh_previews or not {
            _event_object(ev).get("object") for ev in events
        } & {"subscription", "invoice"}:
            return False
        return any(
            o.get("object") == "subscription" and not o.get("deleted")
            and o.get("status") in PREVIEWED_STATUSES and not o.get("cancel_at_period_end")
            for o in objects.values()
        )

    async def save_previews(
        self, customer_id: str, asked: Mapping[str, Version | None], previews: Mapping[str, StripeDict | None]
    ) -> bool:
        """Put ``previews`` on the stored subscriptions and rebuild the context, in one optimistic
        transaction; True when the context changed. A preview goes only onto the version of the
        subscription it was asked for (``asked``): a newer one (an event saved meanwhile) marked the
        customer due again, and keeps its stored preview until that refresh."""
        objs_key = self.store.customer_key(customer_id, "objs")
        ctx_key = self.store.customer_key(customer_id, "ctx")
        timeline_key = self.store.customer_key(customer_id, TIMELINE_PART)
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            async with self.store.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(objs_key, ctx_key, timeline_key)
                    both: Any = await pipe.execute_command("MGET", objs_key, ctx_key, timeline_key)
                    raw_objs, old_raw, raw_timeline = both
                    stored = decode_objects(raw_objs)
                    same = {
                        sub_id: preview for sub_id, preview in previews.items()
                        if sub_id in stored and sub_id in asked
                        and version_of(stored[sub_id]) == asked[sub_id]
                    }
                    changed = _with_fresh_previews(stored, same)
                    data = await self.store.load_customer_data(customer_id, {**stored, **changed}) if (
                        changed and old_raw) else None
                    if data is None:  # nothing new, or no context to show it (deleted, not built)
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return False
                    old = decode_context(old_raw)
                    timeline = [e.to_timeline() for e in decode_entries(raw_timeline)]
                    new = self._build(replace(data, event_entries=timeline), old)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(objs_key, encode_objects({**stored, **changed}))
                    pipe.set(ctx_key, encode_context(new))
                    marked = self.store.queue_saved(pipe, [customer_id], transaction=True)
                    await pipe.execute()
                except WatchError:
                    continue
            if not marked:
                await self.store.mark_saved([customer_id])
            return True
        raise RuntimeError(f"customer {customer_id} kept changing under the preview refresher")

    async def _with_card(self, customer: StripeDict, current: StripeDict | None) -> StripeDict:
        """Events name the customer's default payment method by id only: the stored card (brand,
        last 4, expiry) stays while the id is the same; a new one is fetched (the customer, its card
        expanded); none clears it. A failed fetch leaves the id alone (no card shown), never the event."""
        kept = _with_kept_card(customer, current, ("invoice_settings", "default_payment_method"))
        new = _card_ref(kept, ("invoice_settings", "default_payment_method"))
        if not isinstance(new, str):
            return kept  # none, or the stored card kept
        try:
            fresh = await self.gateway.retrieve_customer(str(customer["id"]))
        except Exception as exc:  # the event is applied all the same; the next change fetches again
            log.warning("customer %s: its new default payment method could not be read (%s)",
                        customer.get("id"), exc)
            return kept
        card = _card_ref(fresh or {}, ("invoice_settings", "default_payment_method"))
        if not isinstance(card, dict) or card.get("id") != new:
            return kept  # the key may not read cards, or the card changed again since (its event follows)
        settings = kept.get("invoice_settings")
        return {**kept, "invoice_settings": {**(settings if isinstance(settings, dict) else {}),
                                             "default_payment_method": card}}

    async def _retrieve(self, kind: str, object_id: str) -> StripeDict | None:
        if kind == "customer":
            return await self.gateway.retrieve_customer(object_id)
        return await self.gateway.retrieve(_RESOURCES[kind], object_id)

    async def _with_discounts(self, sub: StripeDict, current: StripeDict | None) -> StripeDict:
        """Event payloads carry discount ids; the builder needs discount dicts (coupon inside)."""
        discounts = sub.get("discounts") or []
        if all(isinstance(d, dict) for d in discounts):
            return sub
        known = {d.get("id"): d for d in (current or {}).get("discounts") or [] if isinstance(d, dict)}
        resolved = [known.get(d, d) if isinstance(d, str) else d for d in discounts]
        if all(isinstance(d, dict) for d in resolved):
            return {**sub, "discounts": resolved}
        fresh = await self.gateway.retrieve("subscriptions", str(sub["id"]))
        if fresh is not None and all(isinstance(d, dict) for d in fresh.get("discounts") or []):
            return {**sub, "discounts": fresh.get("discounts") or []}
        log.warning("subscription %s: discounts could not be expanded", sub.get("id"))
        return {**sub, "discounts": [d for d in resolved if isinstance(d, dict)]}

    async def _after_save(
        self, customer_id: str, stored: Mapping[str, StripeDict], updates: Mapping[str, StripeDict],
        data: CustomerData | None, *, first_build: bool, indexed: bool = False,
    ) -> None:
        """Index writes in other slots: email index, customers set, price/coupon references, and the
        lookup index unless ``indexed`` (queued in the save already).

        Skipped when nothing they index changed (the common case: one more invoice or status, or a
        subscription renewed on the same prices: every writer of a customer's objects keeps its
        references current). The first build indexes every stored object: those kept while the
        customer was unknown had none.
        """
        if data is None:
            return
        if not indexed and self._index_due(stored, updates, first_build=first_build):
            await self.store.lookup.sync(
                customer_id, stored.values(), trim_invoices({**stored, **updates}).values()
            )
        previous = stored.get(customer_id)
        old_email = (previous or {}).get("email")
        new_email = data.customer.get("email")
        changed = {**stored, **updates}.values() if first_build else updates.values()
        referring = [o for o in changed if o.get("object") in {"subscription", "customer"}]
        if referring and not first_build and refs_of(stored.values()) == refs_of(
            {**stored, **updates}.values()
        ):
            referring = []
        if previous is not None and old_email == new_email and not referring:
            return
        await self.store.index_customer(customer_id, new_email, old_email)
        if referring:
            await self.store.update_refs(customer_id, stored.values())

    def _index_due(
        self, stored: Mapping[str, StripeDict], updates: Mapping[str, StripeDict], *, first_build: bool
    ) -> bool:
        """The lookup index needs a sync: a new invoice, charge or subscription, a number given at
        finalization, a new metadata value (or the first build, indexing every stored object)."""
        return first_build or index_changed(stored, updates, self.store.lookup.metadata_keys)

    async def _store_prices(self, subscription: StripeDict, writes: PriceWrites) -> None:
        """Prices carried by a subscription event, stored per tenant before the rebuild needs them.
        ``writes``: the batch's writes by price id, so that the customers of one price (a renewal
        day's batch is many of them) store it once, the others waiting for that write."""
        prices = [p for p in prices_of_subscription(subscription) if str(p.get("id")) not in writes]
        if prices:
            started = asyncio.ensure_future(self._put_prices(prices))
            writes.update((str(p.get("id")), started) for p in prices)
        for write in {id(w): w for p in prices_of_subscription(subscription)
                      if (w := writes.get(str(p.get("id")))) is not None}.values():
            await asyncio.shield(write)  # shared: one customer's cancellation is not the others'

    async def _put_prices(self, prices: Sequence[StripeDict]) -> None:
        """Store ``prices`` where the tenant has none (a tiered price is fetched with its tiers, which
        events never carry)."""
        objects = []
        for price in prices:
            if price.get("billing_scheme") == "tiered" and not price.get("tiers"):
                price = slim({**await self.gateway.price_with_tiers(str(price["id"])), "object": "price"})
            objects.append(price)
        await self.store.put_tenant_objects_if_missing(objects, (0, "from-subscription"))

    # ---- the outbox -------------------------------------------------------------------------
    async def _schedule(self, customer_id: str, *, delay: float) -> None:
        await self.store.outboxes.schedule(customer_id, delay=delay)

    async def _flush_outbox(
        self, customer_id: str, *, swept: bool = False, fresh: Sequence[str] = ()
    ) -> bool:
        """Notify the customer's outbox in order; True when it is empty afterwards.

        One worker flushes a customer at a time (a lock with a TTL, so a crashed holder only delays
        it). A notifier failure stops the flush (later transitions wait, so a thread's replies keep
        their order) and schedules a retry with backoff; it never raises but for Redis errors.
        ``fresh``: the entries this worker just queued, known to be neither queued before nor notified
        (when the outbox holds only them, the first is notified after one round trip).
        """
        outbox = self.store.outbox(customer_id)
        if not fresh and not await outbox.length():  # a duplicate with nothing to finish
            if swept:
                await self._unschedule(customer_id)
            return True
        token = uuid.uuid4().hex
        locked, queued = await outbox.lock_and_read(token, lock_ms=self.flush_lock_ms)
        if not locked:
            # Another worker is flushing; what it may miss is found by the sweeper.
            await self._schedule(customer_id, delay=self.retry_base)
            return False
        try:
            checked = [as_text(raw) for raw in queued] == list(fresh)
            while queued:
                if not await self._notify_in_order(customer_id, queued, checked=checked):
                    return False
                checked = False
                queued = await outbox.entries()  # queued meanwhile
            await self._unschedule(customer_id)
        finally:
            await outbox.unlock(token)
        if await outbox.length():
            # A transition queued while this flush was finishing (its worker found the lock taken).
            await self._schedule(customer_id, delay=0)
            return False
        return True

    async def _notify_in_order(self, customer_id: str, queued: Sequence[Any], *, checked: bool) -> bool:
        """Notify ``queued`` (the outbox's entries, oldest first) and drop each from the outbox; a
        transition already notified (``sent`` marker) is dropped unnotified, unless ``checked`` says
        none is. False at the first failure."""
        outbox = self.store.outbox(customer_id)
        transitions = [_transition_from_dict(json.loads(raw)) for raw in queued]
        already = (
            [False] * len(transitions) if checked else await outbox.sent([t.dedup_key for t in transitions])
        )
        for raw, transition, done in zip(queued, transitions, already, strict=True):
            if not done:
                try:
                    await self.notifier.notify(transition)
                except NotifyLater as later:
                    delay = await self._retry_later(customer_id, later.retry_after)
                    log.info("%s of customer %s waits: %s; retried in %.1f s", transition.name,
                             customer_id, later, delay)
                    return False
                except Exception as exc:
                    self.stats.notify_failed += 1
                    delay = await self._retry_later(customer_id)
                    log.warning("notifying %s of customer %s failed (%s); kept in its outbox, retried "
                                "in %.0f s", transition.name, customer_id, exc, delay, exc_info=True)
                    return False
                self.stats.notified += 1
            await outbox.mark_sent(transition.dedup_key, raw)
        return True

    async def _unschedule(self, customer_id: str) -> None:
        await self.store.outboxes.unschedule(customer_id)

    async def _retry_later(self, customer_id: str, after: float | None = None) -> float:
        if after is not None:  # the notifier knows when: no failure counted
            await self._schedule(customer_id, delay=min(max(after, 0.0), self.retry_max))
            return min(max(after, 0.0), self.retry_max)
        failures = await self.store.outboxes.count_failure(customer_id)
        delay: float = min(self.retry_base * 2 ** min(failures - 1, 30), self.retry_max)
        await self._schedule(customer_id, delay=delay)
        return delay

    async def sweep(self, limit: int = 100) -> int:
        """Retry the outboxes that are due (failed notifications, flushes cut short by a crash);
        returns how many were emptied. ``run`` calls it every ``sweep_interval`` seconds."""
        self.last_sweep_at = time.time()
        emptied = 0
        for customer_id in await self.store.outboxes.due(limit):
            try:
                if await self._flush_outbox(customer_id, swept=True):
                    emptied += 1
            except REDIS_ERRORS:
                raise
            except Exception:
                log.exception("sweeping the outbox of customer %s failed", customer_id)
                await self._retry_later(customer_id)
        return emptied


PriceWrites = dict[str, "asyncio.Future[None]"]
"""The writes of a batch's prices (``EventWorker._store_prices``), by price id."""


@dataclass
class _Latest:
    """A state of a customer's objects, joined with the catalogue (``data``) and built (``context``)
    once needed."""

    objects: Mapping[str, StripeDict] | None
    data: CustomerData | None = None
    context: BillingContext | None = None


_FACT_KINDS = frozenset({"customer", "subscription", "invoice"})  # the objects Facts are made of


def _facts_of_state(objects: Mapping[str, StripeDict]) -> Facts | None:
    """The facts of the context that ``objects`` build (``RedisStore.load_customer_data``, then the
    builder), found without joining the catalogue or building; None when they build none (no
    customer, or a deleted one)."""
    customer = next((o for o in objects.values() if o.get("object") == "customer"), None)
    if customer is None or customer.get("deleted"):
        return None

    def of(kind: str) -> list[StripeDict]:  # as load_customer_data lists them
        return sorted(
            (o for o in objects.values() if o.get("object") == kind and not o.get("deleted")),
            key=lambda o: (o.get("created") or 0, str(o.get("id"))), reverse=True,
        )

    return facts_of_data(CustomerData(customer=customer, subscriptions=of("subscription"),
                                      invoices=of("invoice")))


@dataclass
class _Applied:
    """What one customer's events did: the objects they change, the recent events a snapshot had
    already stored (absorbed), their transitions, the events met before the customer could be built
    (whose evidence is weighed against the final context), and the state after the last change."""

    updates: dict[str, StripeDict] = field(default_factory=dict)
    absorbed: list[StripeDict] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    unseen: list[tuple[StripeDict, bool]] = field(default_factory=list)
    latest: _Latest | None = None


@dataclass(frozen=True)
class _Snapshot:
    """A never-seen customer's objects as fetched from Stripe, each versioned by the fetch start."""

    objects: dict[str, StripeDict]


def _with_snapshot(merged: Mapping[str, StripeDict], snapshot: _Snapshot) -> dict[str, StripeDict]:
    """``merged`` with each fetched object that is newer than the stored one (a tie keeps the stored
    one, like a lookup's snapshot: what an event applied is never overwritten by an older fetch)."""
    out = dict(merged)
    for object_id, candidate in snapshot.objects.items():
        current = out.get(object_id)
        if current is None or decide(version_of(current), version_of(candidate) or (0, "")) == "apply":
            out[object_id] = candidate
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _transitions(found: Sequence[Found], context: BillingContext) -> list[Transition]:
    if context.customer is None:
        return []
    return [Transition(name=name, customer_id=context.customer.id, object_id=object_id, event_id=cause,
                       context=context) for name, object_id, cause in found]


def _evidence(facts: Facts, event: StripeDict) -> list[Found]:
    """A change a lookup or backfill stored first and alerted nobody about: the event itself is the
    evidence (keyed by the event, so a duplicate adds nothing)."""
    evidence = {str(_event_object(event).get("id")): str(event.get("id"))}
    return diff_facts(None, facts, event, versions=evidence)


_HISTORY_FIELDS = frozenset({"items", "discounts", "default_payment_method", "pause_collection"})


def _tells_history(event: Mapping[str, Any]) -> bool:
    """Whether ``event`` may give a webhook-only timeline entry (``entries_of_event``)."""
    kind = event.get("type")
    if kind == "customer.subscription.resumed":
        return True
    previous = (event.get("data") or {}).get("previous_attributes")
    if not isinstance(previous, Mapping):
        return False
    if kind == "customer.subscription.updated":
        return bool(_HISTORY_FIELDS.intersection(previous))
    return kind == "customer.updated" and isinstance(previous.get("invoice_settings"), Mapping)


def _items_before(event: Mapping[str, Any]) -> list[StripeDict]:
    previous = (event.get("data") or {}).get("previous_attributes")
    items = previous.get("items") if isinstance(previous, Mapping) else None
    data = items.get("data") if isinstance(items, Mapping) else None
    return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []


def _card_ref(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = obj
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _with_kept_card(obj: StripeDict, current: StripeDict | None, path: tuple[str, ...]) -> StripeDict:
    """``obj`` with the stored expanded payment method at ``path`` where the event names the same one
    by id (event payloads never expand it)."""
    new, old = _card_ref(obj, path), _card_ref(current or {}, path)
    if not isinstance(new, str) or not isinstance(old, dict) or old.get("id") != new:
        return obj
    if len(path) == 1:
        return {**obj, path[0]: old}
    parent = obj.get(path[0])
    return {**obj, path[0]: {**(parent if isinstance(parent, dict) else {}), path[1]: old}}


def _with_fresh_previews(
    objects: Mapping[str, StripeDict], previews: Mapping[str, StripeDict | None]
) -> dict[str, StripeDict]:
    """The stored subscriptions whose preview ``previews`` changes (a preview of None: the key may
    not preview, or nothing is upcoming, so the card estimates), each keeping its version."""
    changed: dict[str, StripeDict] = {}
    for sub_id, preview in previews.items():
        sub = objects.get(sub_id)
        if sub is None or sub.get("object") != "subscription":
            continue
        projected = project(preview, SUBSCRIPTION[PREVIEW_FIELD]) if preview is not None else None
        if projected == sub.get(PREVIEW_FIELD):
            continue
        rest = {k: v for k, v in sub.items() if k != PREVIEW_FIELD}
        changed[sub_id] = {**rest, PREVIEW_FIELD: projected} if projected is not None else rest
    return changed


def _with_kept_preview(subscription: StripeDict, current: StripeDict | None) -> StripeDict:
    """The stored invoice preview stays on a subscription an event replaces until it is refreshed
    (a refresh that fails keeps it)."""
    if current is None or PREVIEW_FIELD in subscription or PREVIEW_FIELD not in current:
        return subscription
    return {**subscription, PREVIEW_FIELD: current[PREVIEW_FIELD]}


def _with_action_flag(invoice: StripeDict, current: StripeDict | None, event_type: str) -> StripeDict:
    """``requires_action``: set by ``invoice.payment_action_required``, kept while the invoice is open."""
    if event_type == "invoice.payment_action_required":
        return {**invoice, "requires_action": True}
    if current and current.get("requires_action") and invoice.get("status") == "open":
        return {**invoice, "requires_action": True}
    return invoice


def _key_of(entry: Mapping[str, Any]) -> str:
    """The ``dedup_key`` of a queued transition (``Transition.dedup_key``, without parsing its context)."""
    return str(entry.get("key") or f"{entry['name']}:{entry['object_id']}:{entry['event_id']}")


def _transition_to_dict(t: Transition) -> dict[str, Any]:
    return {
        "key": t.dedup_key, "name": t.name, "customer_id": t.customer_id, "object_id": t.object_id,
        "event_id": t.event_id, "context": t.context.model_dump(mode="json"),
        **({"days_before": t.days_before} if t.days_before is not None else {}),
    }


def _transition_from_dict(d: Mapping[str, Any]) -> Transition:
    return Transition(
        name=d["name"], customer_id=d["customer_id"], object_id=d["object_id"], event_id=d["event_id"],
        context=BillingContext.model_validate(d["context"]), days_before=d.get("days_before"),
    )

