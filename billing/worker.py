"""The event worker: a Redis Streams consumer group that keeps cached contexts current.

For each batch: skip events already applied (dedup markers), group the rest by customer, and per
customer, in one optimistic transaction (WATCH the customer's keys, all in one slot): apply each
event's object if its version is newer (re-fetching from Stripe on a tie or a missing object), rebuild
the context, compare it with the old one and put the transitions in the customer's outbox together
with the new context. Then notify from the outbox (a ``SET NX`` per transition makes it exactly once
across duplicate deliveries and workers), mark the events applied, ``XACK``.

A crash anywhere before ``XACK`` re-delivers the entry (claimed by another worker after
``claim_idle_ms``); re-applying is harmless because every write is version-checked and every
notification is claimed first. An entry that fails ``max_deliveries`` times goes to the dead-letter
stream.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from redis.exceptions import ResponseError, WatchError

from billing.models import BillingContext, Match
from billing.ports import ListableResource, Notifier, StripeReader, Transition
from billing.redis_conn import REDIS_ERRORS
from billing.slim import (
    INCLUDABLE,
    TENANT_OBJECTS,
    Version,
    completeness,
    prices_of_subscription,
    slim,
    version_of,
    with_version,
)
from billing.snapshot import CustomerData, StripeDict, id_of
from billing.store import (
    DEDUP_TTL_SECONDS,
    SNAPSHOT_EVENT_ID,
    RedisStore,
    decide,
    decode_context,
    decode_objects,
    encode_context,
    encode_objects,
    trim_invoices,
)
from billing.transitions import diff_contexts

log = logging.getLogger("billing.worker")

ContextBuilder = Callable[..., BillingContext]
"""``billing.builder.build_context(data, *, query, match, now, source, other_customers)``."""

_TENANT_KIND: dict[str, Literal["prices", "coupons"]] = {
    "price": "prices", "plan": "prices", "coupon": "coupons",
}
SEEN_FIELD = "_s"
_RESOURCES: dict[str, ListableResource] = {
    "subscription": "subscriptions", "invoice": "invoices", "charge": "charges",
    "dispute": "disputes", "credit_note": "credit_notes", "price": "prices", "plan": "prices",
    "product": "products", "coupon": "coupons",
}
_CUSTOMER_OBJECTS = frozenset({"customer", "subscription", "invoice", "charge", "dispute", "credit_note"})
_MAX_CAS_ATTEMPTS = 20


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _default_builder() -> ContextBuilder:
    from billing.builder import build_context  # the builder module is owned by the core work

    return build_context


@dataclass
class WorkerStats:
    applied: int = 0
    duplicates: int = 0
    failed: int = 0
    dead_lettered: int = 0
    refetched: int = 0
    notified: int = 0


@dataclass(frozen=True)
class _Entry:
    entry_id: str
    raw: bytes
    event: StripeDict


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
    build: ContextBuilder | None = None
    stats: WorkerStats = field(default_factory=WorkerStats)
    last_batch_at: float | None = None
    _last_claim: float = 0.0

    # ---- the loop -------------------------------------------------------------------------
    async def ensure_group(self) -> None:
        try:
            await self.store.client.xgroup_create(
                self.store.stream_key, self.store.GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set; Redis outages are waited out, never fatal."""
        stop = stop or asyncio.Event()
        backoff = 0.1
        group_ready = False
        while not stop.is_set():
            try:
                if not group_ready:
                    await self.ensure_group()
                    group_ready = True
                await self.run_once()
                backoff = 0.1
            except REDIS_ERRORS as exc:
                log.warning("worker waiting for Redis: %s", type(exc).__name__)
                group_ready = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, 5.0)

    async def run_once(self, block_ms: int | None = None) -> int:
        """Claim idle entries of dead consumers, then read and process one batch; returns entries seen."""
        handled = 0
        now = time.monotonic()
        if (now - self._last_claim) * 1000 >= min(self.claim_idle_ms, 5000):
            self._last_claim = now
            handled += await self.claim_idle()
        response: Any = await self.store.client.xreadgroup(
            self.store.GROUP, self.consumer, {self.store.stream_key: ">"},
            count=self.batch_size, block=self.block_ms if block_ms is None else block_ms,
        )
        for _stream, entries in response or []:
            await self.process(entries)
            handled += len(entries)
        self.last_batch_at = time.time()
        return handled

    async def claim_idle(self) -> int:
        """Take over entries idle for longer than ``claim_idle_ms`` (a dead or failing consumer's)."""
        total = 0
        start = "0-0"
        while True:
            result = await self.store.client.xautoclaim(
                self.store.stream_key, self.store.GROUP, self.consumer,
                min_idle_time=self.claim_idle_ms, start_id=start, count=self.batch_size,
            )
            next_start, entries = _text(result[0]), [e for e in result[1] if e and e[1]]
            if entries:
                await self.process(entries)
                total += len(entries)
            if next_start == "0-0":
                return total
            start = next_start

    # ---- one batch ------------------------------------------------------------------------
    async def process(self, entries: Sequence[Any]) -> None:
        parsed: list[_Entry] = []
        done_ids: list[str] = []
        for entry_id, fields in entries:
            raw = fields.get(b"e", fields.get("e"))
            try:
                event = json.loads(raw)
                if not isinstance(event, dict) or not isinstance(event.get("id"), str):
                    raise ValueError("not a Stripe event")
            except (TypeError, ValueError) as exc:
                await self._dead_letter(_text(entry_id), raw or b"", f"unreadable entry: {exc}")
                continue
            body = raw if isinstance(raw, bytes) else str(raw).encode()
            parsed.append(_Entry(_text(entry_id), body, event))
        if not parsed:
            return
        already = await self.store.events_done([e.event["id"] for e in parsed])
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

        async def apply(customer_id: str) -> None:
            async with gate:
                await self._apply_customer(customer_id, by_customer[customer_id])

        results = await asyncio.gather(*(apply(c) for c in customers), return_exceptions=True)
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
        pipe = self.store.client.pipeline(transaction=False)
        for entry in applied:
            pipe.set(self.store.event_key(entry.event["id"]), 1, ex=DEDUP_TTL_SECONDS)
        ids = [e.entry_id for e in applied] + list(done_ids)
        pipe.xack(self.store.stream_key, self.store.GROUP, *ids)
        pipe.xdel(self.store.stream_key, *ids)
        if applied:
            last = max(applied, key=lambda e: int(e.event.get("created") or 0))
            pipe.hset(self.store.tenant_key("health"), mapping={
                "last_event_at": time.time(), "last_event_id": last.event["id"],
                "last_event_created": int(last.event.get("created") or 0),
            })
        await pipe.execute()
        self.stats.applied += len(applied)

    async def _failed(self, entry: _Entry, error: BaseException) -> None:
        self.stats.failed += 1
        log.warning("event %s failed: %s", entry.event.get("id"), error)
        pending = await self.store.client.xpending_range(
            self.store.stream_key, self.store.GROUP, min=entry.entry_id, max=entry.entry_id, count=1
        )
        deliveries = int(pending[0]["times_delivered"]) if pending else self.max_deliveries
        if deliveries >= self.max_deliveries:
            await self._dead_letter(entry.entry_id, entry.raw, f"{type(error).__name__}: {error}")

    async def _dead_letter(self, entry_id: str, raw: bytes | str, reason: str) -> None:
        self.stats.dead_lettered += 1
        pipe = self.store.client.pipeline(transaction=False)
        pipe.xadd(self.store.dead_letter_key, {"e": raw, "error": reason[:500], "entry": entry_id})
        pipe.xack(self.store.stream_key, self.store.GROUP, entry_id)
        pipe.xdel(self.store.stream_key, entry_id)
        await pipe.execute()

    # ---- routing --------------------------------------------------------------------------
    async def _route(self, entry: _Entry) -> list[str]:
        """The customers an event affects (none for events this product does not use)."""
        obj = _event_object(entry.event)
        kind = obj.get("object")
        if kind in TENANT_OBJECTS:
            await self._apply_tenant_object(entry.event, obj)
            object_id = str(obj.get("id"))
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

    async def _apply_tenant_object(self, event: StripeDict, obj: StripeDict) -> None:
        kind = str(obj["object"])
        candidate = slim(obj)
        if kind in INCLUDABLE and completeness(candidate) < len(INCLUDABLE[kind]) and not obj.get("deleted"):
            # Events never carry tiers, applies_to or currency options: the store keeps those of its
            # copy; without one, the complete object is fetched once.
            stored = await self.store.get_tenant_objects(_TENANT_KIND[kind], [str(obj["id"])])
            if not stored:
                complete = await (
                    self.gateway.coupon(str(obj["id"])) if kind == "coupon"
                    else self.gateway.price_with_tiers(str(obj["id"]))
                )
                if complete is not None:
                    candidate = slim({**complete, "object": kind})
        decision = await self.store.put_tenant_object(candidate, _version(event))
        if decision == "refetch":
            fresh = await self.gateway.retrieve(_RESOURCES[kind], str(obj["id"]))
            if fresh is not None:
                self.stats.refetched += 1
                # Same second as the stored version: the fetched state is at least as new as both.
                await self.store.put_tenant_object(
                    slim({**fresh, "object": kind}), (_version(event)[0], f"~{event['id']}")
                )

    # ---- one customer ---------------------------------------------------------------------
    async def _apply_customer(self, customer_id: str, entries: Sequence[_Entry]) -> None:
        events = sorted((e.event for e in entries), key=lambda ev: _version(ev))
        deletion = next((ev for ev in events if ev.get("type") == "customer.deleted"), None)
        if deletion is not None:
            stored = await self.store.get_objects(customer_id)
            email = (stored.get(customer_id) or _event_object(deletion)).get("email")
            await self.store.delete_customer(
                customer_id, email if isinstance(email, str) else None, version=_version(deletion)
            )
            return
        fetched: dict[str, StripeDict | None] = {}
        objs_key = self.store.customer_key(customer_id, "objs")
        ctx_key = self.store.customer_key(customer_id, "ctx")
        outbox_key = self.store.customer_key(customer_id, "outbox")
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            async with self.store.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(objs_key, ctx_key)
                    # Both keys share the customer's slot: one MGET (redis-py's cluster pipeline
                    # refuses its mget() helper, not the command).
                    both: Any = await pipe.execute_command("MGET", objs_key, ctx_key)
                    raw_objs, old_raw = both
                    stored = decode_objects(raw_objs)
                    updates, absorbed = await self._merge(customer_id, events, stored, fetched)
                    merged = trim_invoices({**stored, **updates})
                    rebuild = bool(updates) or bool(absorbed) or any(
                        _event_object(ev).get("object") in TENANT_OBJECTS
                        or ev.get("type") == "customer.subscription.trial_will_end"
                        for ev in events
                    )
                    if not rebuild:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        # A redelivery after a crash between saving and notifying: finish notifying.
                        await self._flush_outbox(customer_id)
                        return
                    data = await self.store.load_customer_data(customer_id, merged)
                    if data is None:
                        # The customer object itself is not known yet: keep the objects, build later.
                        pipe.multi()  # type: ignore[no-untyped-call]
                        if updates:  # keepttl: a deleted customer's tombstone still expires
                            pipe.set(objs_key, encode_objects(merged), keepttl=True)
                        await pipe.execute()
                        return
                    old = decode_context(old_raw) if old_raw else None
                    new = self._build(data, old)
                    versions = {k: str((version_of(v) or (0, ""))[1]) for k, v in merged.items()}
                    transitions = diff_contexts(old, new, events[-1], versions=versions)
                    for ev in events[:-1]:
                        # Without an old context each event speaks for itself (first sight of a customer).
                        if old is None or ev.get("type") == "customer.subscription.trial_will_end":
                            transitions += diff_contexts(None, new, ev, versions=versions)
                    for ev in absorbed:
                        # A lookup or backfill saw this change first and alerts nobody: the event
                        # itself is the evidence (keyed by the event, so a duplicate adds nothing).
                        evidence = {str(_event_object(ev).get("id")): str(ev.get("id"))}
                        transitions += diff_contexts(None, new, ev, versions=evidence)
                    transitions = list({t.dedup_key: t for t in transitions}.values())
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if updates or len(merged) < len(stored):
                        pipe.set(objs_key, encode_objects(merged))
                    pipe.set(ctx_key, encode_context(new))
                    for transition in transitions:
                        pipe.rpush(outbox_key, _dumps(_transition_to_dict(transition)))
                    await pipe.execute()
                except WatchError:
                    continue
            await self._after_save(customer_id, stored, updates, data, first_build=old is None)
            if transitions:
                await self._flush_outbox(customer_id)
            return
        raise RuntimeError(f"customer {customer_id} kept changing under the worker")

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
        fetched: dict[str, StripeDict | None],
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
                if stored_version and stored_version[0] == version[0]:
                    seen = [*seen, stored_version[1], version[1]]
                else:
                    seen = [version[1]]
            else:
                seen = []
            if kind == "subscription":
                obj = await self._with_discounts(obj, current)
                await self._store_prices(obj)
            if kind == "invoice":
                obj = _with_action_flag(obj, current, event_type)
            entry = with_version(slim({**obj, "object": kind}), version)
            if seen:
                entry[SEEN_FIELD] = sorted(set(seen))
            updates[object_id] = entry
        return updates, absorbed

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
        data: CustomerData | None, *, first_build: bool,
    ) -> None:
        """Index writes in other slots: email index, customers set, price/coupon references.

        Skipped when nothing they index changed (the common case: one more invoice or status). The
        first build indexes every stored object: those kept while the customer was unknown had none.
        """
        if data is None:
            return
        previous = stored.get(customer_id)
        old_email = (previous or {}).get("email")
        new_email = data.customer.get("email")
        changed = {**stored, **updates}.values() if first_build else updates.values()
        referring = [o for o in changed if o.get("object") in {"subscription", "customer"}]
        if previous is not None and old_email == new_email and not referring:
            return
        pipe = self.store.client.pipeline(transaction=False)
        self.store._queue_indexes(pipe, customer_id, new_email, old_email)
        self.store._queue_refs(pipe, customer_id, referring)
        await pipe.execute()

    async def _store_prices(self, subscription: StripeDict) -> None:
        """Prices carried by a subscription event, stored per tenant before the rebuild needs them
        (a tiered price is fetched with its tiers, which events never carry)."""
        objects = []
        for price in prices_of_subscription(subscription):
            if price.get("billing_scheme") == "tiered" and not price.get("tiers"):
                price = slim({**await self.gateway.price_with_tiers(str(price["id"])), "object": "price"})
            objects.append(price)
        if objects:
            await self.store.put_tenant_objects_if_missing(objects, (0, "from-subscription"))

    async def _flush_outbox(self, customer_id: str) -> None:
        outbox_key = self.store.customer_key(customer_id, "outbox")
        for raw in await self.store.client.lrange(outbox_key, 0, -1):
            transition = _transition_from_dict(json.loads(raw))
            sent_key = self.store.customer_key(customer_id, f"sent:{transition.dedup_key}")
            if await self.store.client.set(sent_key, 1, nx=True, ex=DEDUP_TTL_SECONDS):
                try:
                    await self.notifier.notify(transition)
                except BaseException:
                    await self.store.client.delete(sent_key)
                    raise
                self.stats.notified += 1
            await self.store.client.lrem(outbox_key, 1, _text(raw))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _with_action_flag(invoice: StripeDict, current: StripeDict | None, event_type: str) -> StripeDict:
    """``requires_action``: set by ``invoice.payment_action_required``, kept while the invoice is open."""
    if event_type == "invoice.payment_action_required":
        return {**invoice, "requires_action": True}
    if current and current.get("requires_action") and invoice.get("status") == "open":
        return {**invoice, "requires_action": True}
    return invoice


def _transition_to_dict(t: Transition) -> dict[str, Any]:
    return {
        "name": t.name, "customer_id": t.customer_id, "object_id": t.object_id, "event_id": t.event_id,
        "context": t.context.model_dump(mode="json"),
    }


def _transition_from_dict(d: Mapping[str, Any]) -> Transition:
    return Transition(
        name=d["name"], customer_id=d["customer_id"], object_id=d["object_id"], event_id=d["event_id"],
        context=BillingContext.model_validate(d["context"]),
    )

