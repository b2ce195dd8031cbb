"""The Redis store: contexts, slim Stripe objects with versions, email index, links and the
sync-health record; the event stream (``streams``), dedup markers (``dedupe``), transition outbox
(``outbox``) and a backfill's checkpoint (``backfill_state``) through the classes it hands out.
Nothing outside ``billing.cache`` touches its Redis client.

Key layout (``p`` = ``{key_prefix}:{account_id}:{live|test}``)::

    p:{cus_1}:ctx       string  the BillingContext JSON, zlib-compressed
    p:{cus_1}:objs      string  {object id: slim object with "_v": [event created, event id]}, JSON, zlib
    p:{cus_1}:stage     hash    object id -> slim JSON: a backfill's pages, folded into objs when built
                                (expires STAGE_TTL_SECONDS after its last page; removed at a backfill's end)
    p:{cus_1}:refs      set     the price/coupon ids this customer is a member of in ``refs:*``
    p:{cus_1}:outbox    list    transitions found but not yet notified
    p:{cus_1}:sent:<k>  string  a transition already notified (7 days)
    p:prices|products|coupons   hash  object id -> slim JSON with "_v" (shared by customers)
    p:refs:<price|coupon id>    set   customers whose live subscriptions (or own discount) use it
    p:email:<lower email>       set   customer ids
    p:find:<00..ff>             hash  digest of a sub_/in_/ch_/pi_ id or invoice prefix -> customer id
    p:find:metadata:<key>:<v>   set   customer ids (``lookup_index``: lookups by other ids than email)
    p:link:<key>                string  manual link -> customer id
    p:customers                 set   cached customer ids
    p:events / p:events:dead    streams (webhook events, trimmed below what every group acknowledged /
                                dead letters, capped at about worker.DEAD_LETTER_MAX)
    p:evt:<event id>            string  event applied (7 days)
    p:health                    hash  sync-health record
    p:reminders:*               the reminder scheduler's (``reminder_state``); a saved context puts its
                                customer in ``p:reminders:dirty`` (``queue_saved``)
    p:previews:*                customers due for a preview refresh (``preview_state``)

One customer's keys share the hash tag ``{cus_…}``, so a customer update is one slot (one MULTI) on a
cluster as on a single server; index keys live in their own slots and are written in separate calls.

A customer's objects are one compressed document rather than a hash of JSON values: every update
reads and rewrites them all anyway (to rebuild the context), and the document is a quarter of the
size (a year of invoices and charges: ~1 KiB instead of ~12 KiB), which keeps a cached customer,
every key included, under 4 KiB.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import RedisError, ResponseError, WatchError

from billing.cache.audit import AuditLog
from billing.cache.backfill_state import BackfillState
from billing.cache.connections import REDIS_ERRORS, RedisClient, as_text, open_redis
from billing.cache.dedupe import DEDUP_TTL_SECONDS, Dedupe
from billing.cache.event_timeline import TIMELINE_PART, decode_entries
from billing.cache.lookup_index import LookupIndex
from billing.cache.outbox import Outbox, Outboxes
from billing.cache.preview_state import PreviewState
from billing.cache.reminder_state import TICKED_AT, ReminderState
from billing.cache.streams import EventStream
from billing.domain.builder import build_context
from billing.domain.models import BillingContext, Match
from billing.domain.snapshot import CustomerData, StripeDict
from billing.errors import StoreUnavailableError
from billing.ports import StripeReader, Tenant
from billing.stripe.slim import (
    VERSION_FIELD,
    Version,
    coupon_ids_of_discount,
    join_prices,
    keep_included,
    prices_of_subscription,
    referenced_ids,
    slim,
    version_of,
    with_version,
    without_version,
)

log = logging.getLogger(__name__)
_BY_ID = Match(method="customer_id", confidence="exact")
TOMBSTONE_TTL_SECONDS = 31 * 24 * 3600  # longer than Stripe retries a webhook or lists past events
SNAPSHOT_EVENT_ID = "snapshot"
# A backfill's staged pages of a customer live this long after its last page (a resumed run must find
# them: days, not minutes); a finished backfill removes those it could not build at once.
STAGE_TTL_SECONDS = 14 * 24 * 3600
MAX_STORED_INVOICES = 12
TenantKind = Literal["prices", "products", "coupons"]
_TENANT_KIND_OF = {"price": "prices", "plan": "prices", "product": "products", "coupon": "coupons"}

Decision = Literal["apply", "skip", "refetch"]


def decide(stored: Version | None, incoming: Version, seen: Iterable[str] = ()) -> Decision:
    """Whether an incoming object version replaces the stored one.

    Newer second wins, older loses, the same event is a duplicate; two different events of the same
    second cannot be ordered (``created`` has one-second resolution), so the object is re-fetched.
    ``seen`` holds the events of the stored second already settled by a re-fetch (duplicates of them
    need no second re-fetch).
    """
    if stored is None:
        return "apply"
    if incoming[0] > stored[0]:
        return "apply"
    if incoming[0] < stored[0] or incoming[1] == stored[1] or incoming[1] in seen:
        return "skip"
    return "refetch"


_COMPRESSION_LEVEL = 1  # ~30 µs for a year of a customer's objects; higher levels gain a few %


def encode_objects(objects: Mapping[str, StripeDict]) -> bytes:
    """A customer's slim objects (id -> object with its version) as one compressed document."""
    return zlib.compress(json.dumps(objects, separators=(",", ":"), ensure_ascii=False).encode(),
                         _COMPRESSION_LEVEL)


def decode_objects(raw: bytes | str | None) -> dict[str, StripeDict]:
    if not raw:
        return {}
    decoded: dict[str, StripeDict] = json.loads(_inflate(raw))
    return decoded


def encode_context(context: BillingContext) -> bytes:
    return zlib.compress(context.model_dump_json().encode(), _COMPRESSION_LEVEL)


def decode_context(raw: bytes | str) -> BillingContext:
    return BillingContext.model_validate_json(_inflate(raw))


def _inflate(raw: bytes | str) -> bytes:
    data = raw.encode() if isinstance(raw, str) else raw
    # Plain JSON (an object) is read as is; anything else is a zlib stream.
    return data if data[:1] == b"{" else zlib.decompress(data)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _text(value: bytes | str | None) -> str | None:
    return None if value is None else as_text(value)


# An email lookup's whole cache read in one round trip on a single server: the manual links in order,
# then the linked customer's context, or the email index and every indexed customer's context. It
# reads keys it is not given (the contexts, named after the index's members), which a single server
# allows; a cluster keeps them in other slots, so there the same reads are two pipelined round trips.
_READ_EMAIL_LUA = """
local links = tonumber(ARGV[3])
for i = 1, links do
  local linked = redis.call('GET', KEYS[i])
  if linked and linked ~= '' then
    return {1, linked, redis.call('GET', ARGV[1] .. linked .. ARGV[2])}
  end
end
local out = {0}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[links + 1])) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('GET', ARGV[1] .. id .. ARGV[2])
end
return out
"""


@dataclass(frozen=True)
class Namespace:
    """A Redis client and a tenant-scoped key prefix for one surface's own keys."""

    client: RedisClient
    prefix: str

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def get(self, key: str) -> str | None:
        return _text(await self.client.get(key))

    async def set(self, key: str, value: str, *, ex: int | None = None, nx: bool = False) -> bool:
        """Store ``value`` (for ``ex`` seconds; with ``nx`` only where ``key`` is free): True when set."""
        return bool(await self.client.set(key, value, ex=ex, nx=nx))

    async def delete(self, key: str) -> bool:
        return bool(await self.client.delete(key))

    async def lrange(self, key: str, start: int, stop: int) -> list[str]:
        """The list's items from ``start`` to ``stop`` (both included, negative from the end)."""
        return [_text(item) or "" for item in await self.client.lrange(key, start, stop)]

    def pipeline(self, *, transaction: bool) -> Pipeline | ClusterPipeline:
        """A pipeline on the namespace's client: ``transaction=True`` for a WATCH/MULTI update of keys
        that share one hash tag (one slot on a cluster), ``False`` to batch commands in a round trip."""
        return self.client.pipeline(transaction=transaction)


class _SharesLimits(Protocol):
    def share_limits(self, client: Any, key_prefix: str) -> None: ...


@dataclass
class CatalogueReads:
    """Prices, coupons and products already read from the tenant's hashes, for rebuilding one
    customer several times in a row (after each event of a batch) with one read of each. Only what was
    found is kept: an object missing now (stored later, e.g. from a subscription event) is read again."""

    prices: dict[str, StripeDict] = field(default_factory=dict)
    coupons: dict[str, StripeDict] = field(default_factory=dict)
    products: dict[str, StripeDict] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncHealth:
    """What ``billing status`` and ``/healthz`` show about keeping the cache current."""

    tenant: str
    customers_cached: int
    last_webhook_at: float | None
    last_event_at: float | None
    last_event_id: str | None
    backfill_started_at: float | None
    backfill_finished_at: float | None
    stream_length: int
    stream_lag: int | None
    pending: int
    dead_letters: int
    # Next-invoice previews waiting for a refresh (due now, leased or backing off), and the reminder
    # scheduler: customers with a moment, those whose moment has passed (a scheduler keeping up leaves
    # none for long), and its last tick (any process's).
    previews_due: int = 0
    reminders_scheduled: int = 0
    reminders_due: int = 0
    reminders_last_tick_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def iso(ts: float | None) -> str | None:
            if ts is None:
                return None
            return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        return {
            "tenant": self.tenant,
            "customers_cached": self.customers_cached,
            "last_webhook_at": iso(self.last_webhook_at),
            "last_event_at": iso(self.last_event_at),
            "last_event_id": self.last_event_id,
            "backfill_started_at": iso(self.backfill_started_at),
            "backfill_finished_at": iso(self.backfill_finished_at),
            "stream_length": self.stream_length,
            "stream_lag": self.stream_lag,
            "pending": self.pending,
            "dead_letters": self.dead_letters,
            "previews_due": self.previews_due,
            "reminders_scheduled": self.reminders_scheduled,
            "reminders_due": self.reminders_due,
            "reminders_last_tick_at": iso(self.reminders_last_tick_at),
        }


class RedisStore:
    """Implements ``billing.ports.ContextStore`` plus what the webhook, the worker and backfill need."""

    GROUP = "workers"

    def __init__(
        self, client: RedisClient, tenant: Tenant, *, prefix: str = "bl", metadata_keys: Sequence[str] = (),
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (they select Redis Cluster slots)")
        self.client = client
        self.tenant = tenant
        self.prefix = f"{prefix}:{tenant.key}"
        self._scripted: bool | None = None  # None: not decided yet (see _script_reads)
        self._email_script: Any = None
        # Lookups by subscription, invoice (id or number), charge, payment intent or ``metadata_keys``.
        self.lookup = LookupIndex(client, self.tenant_key, metadata_keys)
        self.stream = EventStream(client, self.stream_key, self.dead_letter_key, self.GROUP)
        self.dedupe = Dedupe(client, self.tenant_key)
        self.outboxes = Outboxes(
            client, self.tenant_key("outbox:pending"), self.tenant_key("outbox:failures")
        )
        self.previews = PreviewState(client, self.tenant_key("previews"))

    # ---- keys -------------------------------------------------------------------------------
    def customer_key(self, customer_id: str, part: str) -> str:
        return f"{self.prefix}:{{{customer_id}}}:{part}"

    def tenant_key(self, part: str) -> str:
        return f"{self.prefix}:{part}"

    @property
    def stream_key(self) -> str:
        return self.tenant_key("events")

    @property
    def dead_letter_key(self) -> str:
        return self.tenant_key("events:dead")

    def email_key(self, email: str) -> str:
        return self.tenant_key(f"email:{email.strip().lower()}")

    async def aclose(self) -> None:
        await self.client.aclose()

    def pipeline(self, *, transaction: bool) -> Pipeline | ClusterPipeline:
        """A pipeline on the store's client: ``transaction=True`` for an optimistic (WATCH/MULTI)
        update of keys of one slot; ``False`` to batch the ``queue_*`` commands of the classes below
        into one round trip."""
        return self.client.pipeline(transaction=transaction)

    def outbox(self, customer_id: str) -> Outbox:
        """The customer's transition outbox (see ``billing.cache.outbox``)."""
        return Outbox(self.client, lambda part: self.customer_key(customer_id, part))

    def backfill_state(self) -> BackfillState:
        """The tenant's backfill checkpoint keys."""
        return BackfillState(self.client, self.tenant_key("backfill"))

    def reminder_state(self) -> ReminderState:
        """The reminder scheduler's keys (see ``billing.cache.reminder_state``)."""
        return ReminderState(self.client, self.tenant_key("reminders"), self.tenant_key("customers"))

    def queue_saved(
        self, pipe: Any, customer_ids: Sequence[str], *, preview_due: Sequence[str] = (),
        transaction: bool = False,
    ) -> bool:
        """Queue in ``pipe`` what follows a saved context: the reminder scheduler looks at the
        customers again on its next tick (``reminders:dirty``), and ``preview_due`` are due for a
        preview refresh. False when not queued: a transaction on a cluster holds one slot only, and
        these keys are the tenant's (then ``mark_saved`` after it, one more round trip)."""
        if transaction and isinstance(self.client, RedisCluster):
            return False
        if customer_ids:
            pipe.sadd(self.reminder_state().dirty_key, *customer_ids)
        self.previews.queue_mark(pipe, preview_due, now_ms=int(time.time() * 1000))
        return True

    async def mark_saved(self, customer_ids: Sequence[str], *, preview_due: Sequence[str] = ()) -> None:
        """``queue_saved`` in a round trip of its own."""
        if not customer_ids and not preview_due:
            return
        pipe = self.client.pipeline(transaction=False)
        self.queue_saved(pipe, customer_ids, preview_due=preview_due)
        await pipe.execute()

    def share_rate_limits(self, gateway: _SharesLimits) -> None:
        """Let ``gateway`` share the tenant's Stripe budget with every process on this Redis."""
        gateway.share_limits(self.client, self.tenant_key("ratelimit"))

    def audit_log(self) -> AuditLog:
        """The tenant's bounded audit stream of lookups."""
        return AuditLog(self.client, self.tenant_key("audit"))

    def namespace(self, name: str) -> Namespace:
        """Keys of one surface (e.g. ``slack``) under this tenant: what the surface stores is its own
        business, but it always carries the tenant, like every other key."""
        return Namespace(self.client, self.tenant_key(name))

    # ---- ContextStore ----------------------------------------------------------------------
    async def get_context(self, customer_id: str) -> BillingContext | None:
        raw = await self.client.get(self.customer_key(customer_id, "ctx"))
        if raw is None:
            return None
        return decode_context(raw).model_copy(update={"source": "cache"})

    async def contexts_as_stored(self, customer_ids: Sequence[str]) -> list[bytes | None]:
        """The customers' stored contexts, compressed as stored (``decode_context`` reads one), in
        one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for customer_id in customer_ids:
            pipe.get(self.customer_key(customer_id, "ctx"))
        return list(await pipe.execute())

    async def get_context_raw(self, customer_id: str) -> bytes | None:
        """The stored context's JSON, byte for byte as written."""
        raw = await self.client.get(self.customer_key(customer_id, "ctx"))
        return None if raw is None else _inflate(raw)

    async def customer_ids_for_email(self, email: str) -> list[str]:
        members = await self.client.smembers(self.email_key(email))
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def customer_ids_for_lookup(self, kind: str, text: str) -> list[str]:
        """``billing.ports.LookupReader``: the customers indexed under a lookup by another id (for an
        invoice number, the customer of its prefix when one of its stored invoices has the number)."""
        found = await self.lookup.customer_ids(kind, text)
        if kind != "invoice_number":
            return found
        return [c for c in found if any(
            o.get("object") == "invoice" and str(o.get("number") or "").upper() == text
            for o in (await self.get_objects(c)).values()
        )]

    async def linked_customer(self, key: str) -> str | None:
        return _text(await self.client.get(self.tenant_key(f"link:{key}")))

    async def link(self, key: str, customer_id: str) -> None:
        await self.client.set(self.tenant_key(f"link:{key}"), customer_id)

    async def unlink(self, key: str) -> bool:
        return bool(await self.client.delete(self.tenant_key(f"link:{key}")))

    async def read_email(
        self, link_keys: Sequence[str], email: str
    ) -> tuple[str | None, list[BillingContext]]:
        """``billing.ports.EmailReader``: the manual links, the email index and the contexts they
        name, in one scripted round trip on a single server, two pipelined ones on a cluster."""
        links = [self.tenant_key(f"link:{k}") for k in link_keys]
        reply: list[Any] | None = None
        if self._script_reads():
            try:
                reply = await self._read_email_script(
                    keys=[*links, self.email_key(email)],
                    args=[f"{self.prefix}:{{", "}:ctx", len(links)],
                )
            except ResponseError as err:  # scripting refused (ACL, a proxy): never ask again
                self._scripted = False
                log.info("Redis refused the lookup script (%s); reading in pipelined round trips", err)
        if reply is None:
            reply = await self._read_email_pipelined(links, email)
        if reply[0] == 1:
            linked = _text(reply[1]) or ""
            return linked, [decode_context(reply[2])] if reply[2] is not None else []
        pairs = sorted((_text(i) or "", raw) for i, raw in zip(reply[1::2], reply[2::2], strict=True))
        return None, [decode_context(raw) for _, raw in pairs if raw is not None]

    def _script_reads(self) -> bool:
        if self._scripted is None:
            # fakeredis (memory://) runs Lua only with an optional package; it has no round trips.
            self._scripted = isinstance(self.client, Redis) and not type(self.client).__module__.startswith(
                "fakeredis"
            )
        return self._scripted

    async def _read_email_script(self, *, keys: list[str], args: list[Any]) -> list[Any]:
        if self._email_script is None:
            self._email_script = self.client.register_script(_READ_EMAIL_LUA)
        reply: list[Any] = await self._email_script(keys=keys, args=args)
        return reply

    async def _read_email_pipelined(self, links: Sequence[str], email: str) -> list[Any]:
        """The script's reply, read in two pipelined round trips (keys of different slots)."""
        pipe = self.client.pipeline(transaction=False)
        for key in links:
            pipe.get(key)
        pipe.smembers(self.email_key(email))
        *linked, members = await pipe.execute()
        found = next((t for t in map(_text, linked) if t), None)
        ids = [found] if found is not None else sorted(_text(m) or "" for m in members)
        if not ids:
            return [0]
        pipe = self.client.pipeline(transaction=False)
        for customer_id in ids:
            pipe.get(self.customer_key(customer_id, "ctx"))
        if found is not None:
            try:
                [raw] = await pipe.execute()
            except REDIS_ERRORS as err:  # the link still decides whom Stripe is asked for
                log.warning("Store unavailable (%s); asking Stripe", type(err).__name__)
                raw = None
            return [1, found, raw]
        raws = await pipe.execute()
        return [0, *(x for pair in zip(ids, raws, strict=True) for x in pair)]

    async def save_customer(
        self, data: CustomerData, context: BillingContext, *, fetched_at: float | None = None
    ) -> None:
        """Store what a lookup fetched from Stripe.

        With ``fetched_at`` (when the fetch began) each object is versioned by that moment and merged
        with the stored ones in one optimistic transaction: what the worker applied meanwhile, or
        applies later from an event newer than the fetch, is never overwritten by the snapshot. The
        context is then rebuilt from the merged objects.
        """
        if fetched_at is None:
            await self.save_customers([(data, context)])
            return
        customer_id = str(data.customer["id"])
        version: Version = (int(fetched_at), SNAPSHOT_EVENT_ID)
        # Prices, products and coupons obey the same rule: never over a newer stored version.
        await self.put_catalogue([data], version)
        pipe = self.client.pipeline(transaction=False)
        self.stage_objects(pipe, customer_id, [with_version(o, version) for o in customer_objects(data)])
        await pipe.execute()

        def rebuild(merged: CustomerData) -> BillingContext:
            return build_context(
                merged, query=context.query, match=context.match or _BY_ID,
                now=context.as_of or datetime.now(UTC), source="stripe",
                other_customers=context.other_customers,
            )

        await self.fold_stage(customer_id, rebuild)

    async def save_customers(self, items: Sequence[tuple[CustomerData, BillingContext]]) -> None:
        """Store many customers in pipelined round trips (backfill writes batches of them).

        Objects carry the version ``(as_of, "snapshot")``: events older than the snapshot are ignored,
        events of the same second are settled by re-fetching.
        """
        by_version: dict[Version, list[CustomerData]] = {}
        for data, context in items:
            by_version.setdefault(_snapshot_version(context), []).append(data)
        for version, datas in sorted(by_version.items()):
            await self.put_catalogue(datas, version)
        ids = [str(data.customer["id"]) for data, _ in items]
        # The objects replaced: what only they were indexed under (an email, an invoice) is removed.
        pipe = self.client.pipeline(transaction=False)
        for customer_id in ids:
            pipe.get(self.customer_key(customer_id, "objs"))
        previous = [decode_objects(raw) for raw in await pipe.execute()]
        pipe = self.client.pipeline(transaction=False)
        for customer_id, (data, context), stored in zip(ids, items, previous, strict=True):
            version = _snapshot_version(context)
            objects = trim_invoices({str(o["id"]): with_version(o, version) for o in customer_objects(data)})
            pipe.set(self.customer_key(customer_id, "objs"), encode_objects(objects))
            pipe.delete(self.customer_key(customer_id, "stage"))
            pipe.set(self.customer_key(customer_id, "ctx"), encode_context(context))
            old_email = (stored.get(customer_id) or {}).get("email")
            self._queue_indexes(pipe, customer_id, data.customer.get("email"), old_email)
        self.queue_saved(pipe, ids)
        await pipe.execute()
        for customer_id, stored in zip(ids, previous, strict=True):
            await self.update_refs(customer_id, stored.values())

    async def put_catalogue(self, datas: Iterable[CustomerData], version: Version) -> None:
        """Store the prices, products and coupons fetched with ``datas`` (a lookup's, a snapshot's)
        as of ``version`` (when the fetch began), each only where it is newer than the stored copy
        (``decide``): what the worker applied from a later event is never overwritten by an older fetch.

        A price embedded in a subscription is fresh but lacks its includable fields (tiers, currency
        options): those of the stored copy are kept. One optimistic transaction per kind.
        """
        fetched: dict[TenantKind, dict[str, StripeDict]] = {"prices": {}, "products": {}, "coupons": {}}
        datas = list(datas)
        for data in datas:
            for price in _embedded_prices(data):
                fetched["prices"][str(price["id"])] = price
        for data in datas:  # complete prices (tiers expanded) over embedded ones
            for p in data.prices.values():
                fetched["prices"][str(p["id"])] = slim({**p, "object": "price"})
            for p in data.products.values():
                fetched["products"][str(p["id"])] = slim({**p, "object": "product"})
            for c in data.coupons.values():
                fetched["coupons"][str(c["id"])] = slim({**c, "object": "coupon"})
        for kind, objects in fetched.items():
            if objects:
                await self._put_newer(kind, objects, version)

    async def _put_newer(
        self, kind: TenantKind, objects: Mapping[str, StripeDict], version: Version
    ) -> dict[str, Decision]:
        """Store each of ``objects`` (of one kind) where it is newer than the stored copy, in one
        optimistic transaction (retried); what was decided for each object id."""
        key = self.tenant_key(kind)
        ids = sorted(objects)
        while True:
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raws = await pipe.hmget(key, ids)
                    decisions: dict[str, Decision] = {}
                    writes: dict[str, str] = {}
                    for object_id, raw in zip(ids, raws, strict=True):
                        stored = json.loads(raw) if raw is not None else None
                        decisions[object_id] = decide(version_of(stored), version)
                        if decisions[object_id] != "apply":
                            continue  # a newer (or same-second) stored version stays
                        obj = keep_included(objects[object_id], stored)
                        writes[object_id] = _dumps(with_version(obj, version))
                    if not writes:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return decisions
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, mapping={k: v for k, v in writes.items()})
                    await pipe.execute()
                    return decisions
                except WatchError:
                    continue

    async def index_customer(self, customer_id: str, email: Any, old_email: Any) -> None:
        """Index the customer under ``email`` (out of ``old_email``'s entry) and among the cached."""
        pipe = self.client.pipeline(transaction=False)
        self._queue_indexes(pipe, customer_id, email, old_email)
        await pipe.execute()

    def _queue_indexes(self, pipe: Any, customer_id: str, email: Any, old_email: Any) -> None:
        if isinstance(old_email, str) and old_email and old_email.lower() != str(email or "").lower():
            pipe.srem(self.email_key(old_email), customer_id)
        if isinstance(email, str) and email:
            pipe.sadd(self.email_key(email), customer_id)
        pipe.sadd(self.tenant_key("customers"), customer_id)

    def _queue_refs(self, pipe: Any, customer_id: str, objects: Iterable[StripeDict]) -> None:
        """Add the customer to the ``refs`` sets of what ``objects`` use (see ``update_refs``, which
        also removes it from those no longer used)."""
        for ref in refs_of(objects):
            pipe.sadd(self.tenant_key(f"refs:{ref}"), customer_id)

    async def update_refs(self, customer_id: str, previous: Iterable[StripeDict] = ()) -> None:
        """Make the ``refs:<price|coupon>`` sets name the customer for exactly the prices and coupons
        its stored objects use now (``refs_of``): added where new, removed where a subscription
        changed plan or coupon, ended, or the customer was deleted.

        What was added is recorded in ``{cus}:refs`` (the customer's slot), so that what to remove is
        known; ``previous`` (the objects before the change) covers a customer recorded before that.
        Read after the customer's objects were written, so the last writer decides from the newest
        objects; a stale member costs one needless rebuild, never a missed one.
        """
        previous = list(previous)  # read twice: for the refs and for the lookup index
        record = self.customer_key(customer_id, "refs")
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.customer_key(customer_id, "objs"))
        pipe.smembers(record)
        raw, recorded = await pipe.execute()
        objects = decode_objects(raw)
        wanted = refs_of(objects.values())
        before = {_text(m) or "" for m in recorded} | refs_of(previous)
        pipe = self.client.pipeline(transaction=False)
        for ref in sorted(before - wanted):
            pipe.srem(self.tenant_key(f"refs:{ref}"), customer_id)
        for ref in sorted(wanted):
            pipe.sadd(self.tenant_key(f"refs:{ref}"), customer_id)
        pipe.delete(record)
        if wanted:
            pipe.sadd(record, *sorted(wanted))
        await pipe.execute()
        # The lookup index follows the same objects, whoever saved them (a lookup, a backfill, the worker).
        await self.lookup.sync(customer_id, previous, objects.values())

    # ---- per-customer objects ----------------------------------------------------------------
    async def get_objects(self, customer_id: str) -> dict[str, StripeDict]:
        """The customer's stored objects, with a running backfill's staged pages where newer."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.customer_key(customer_id, "objs"))
        pipe.hgetall(self.customer_key(customer_id, "stage"))
        raw, staged = await pipe.execute()
        return _with_staged(decode_objects(raw), staged)

    def stage_objects(self, pipe: Any, customer_id: str, objects: Iterable[StripeDict]) -> None:
        """Queue a backfill page's objects of one customer (built into ``objs`` by ``fold_stage``).

        The staged pages expire ``STAGE_TTL_SECONDS`` after the last page written to them: a backfill
        folds or removes them when it ends, so only an abandoned run's pages ever wait that long."""
        key = self.customer_key(customer_id, "stage")
        pipe.hset(key, mapping={str(o["id"]): _dumps(o) for o in objects})
        pipe.expire(key, STAGE_TTL_SECONDS)

    async def fold_stage(
        self, customer_id: str, build: Callable[[CustomerData], BillingContext]
    ) -> bool:
        """Fold a backfill's staged pages into the customer's objects and store the context ``build``
        makes of them, in one optimistic transaction with the worker's writes.

        Every object keeps its own version (a page's is the moment it was listed), so an event newer
        than the page still applies when it arrives late. False when there is no customer to build
        (not staged, or deleted): the staged pages are then left as they are.
        """
        objs_key = self.customer_key(customer_id, "objs")
        stage_key = self.customer_key(customer_id, "stage")
        ctx_key = self.customer_key(customer_id, "ctx")
        while True:
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(objs_key, stage_key, self.customer_key(customer_id, TIMELINE_PART))
                    stored = decode_objects(await pipe.get(objs_key))
                    merged = _with_staged(dict(stored), await pipe.hgetall(stage_key))
                    data = await self.load_customer_data(customer_id, merged)
                    if data is None:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return False
                    # The timeline entries only webhook events gave stay in the rebuilt context.
                    history = decode_entries(await pipe.get(self.customer_key(customer_id, TIMELINE_PART)))
                    context = build(replace(data, event_entries=[e.to_timeline() for e in history]))
                    kept = trim_invoices(merged)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(objs_key, encode_objects(kept))
                    pipe.delete(stage_key)
                    pipe.set(ctx_key, encode_context(context))
                    marked = self.queue_saved(pipe, [customer_id], transaction=True)
                    await pipe.execute()
                except WatchError:
                    continue
            break
        if not marked:
            await self.mark_saved([customer_id])
        old_email = (stored.get(customer_id) or {}).get("email")
        await self.index_customer(customer_id, data.customer.get("email"), old_email)
        await self.update_refs(customer_id, stored.values())
        return True

    async def has_stage(self, customer_id: str) -> bool:
        """Whether backfill pages are staged under the customer (not folded into its objects yet)."""
        return bool(await self.client.exists(self.customer_key(customer_id, "stage")))

    async def drop_stage(self, customer_id: str) -> int:
        """Remove the customer's staged pages; 1 when there were some."""
        return int(await self.client.delete(self.customer_key(customer_id, "stage")))

    async def get_tenant_objects(self, kind: TenantKind, ids: Iterable[str]) -> dict[str, StripeDict]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        values = await self.client.hmget(self.tenant_key(kind), wanted)
        return {i: json.loads(v) for i, v in zip(wanted, values, strict=True) if v is not None}

    async def put_tenant_object(self, obj: StripeDict, version: Version) -> Decision:
        """Store a price, product or coupon if it is newer than the stored one (optimistic, retried)."""
        kind: TenantKind = _TENANT_KIND_OF[str(obj["object"])]  # type: ignore[assignment]
        object_id = str(obj["id"])
        return (await self._put_newer(kind, {object_id: obj}, version))[object_id]

    async def put_tenant_objects_if_missing(self, objects: Sequence[StripeDict], version: Version) -> None:
        """Prices carried inside a subscription event: stored only when the tenant has none yet."""
        pipe = self.client.pipeline(transaction=False)
        for obj in objects:
            kind = _TENANT_KIND_OF[str(obj["object"])]
            pipe.hsetnx(self.tenant_key(kind), str(obj["id"]), _dumps(with_version(obj, version)))
        await pipe.execute()

    async def scan_tenant_objects(self, kind: TenantKind) -> AsyncIterator[tuple[str, StripeDict]]:
        """Every stored price, product or coupon (``kind``), in batches: an operator's or a rare
        event's path, never a request's."""
        async for object_id, raw in self.client.hscan_iter(self.tenant_key(kind), count=500):
            yield _text(object_id) or "", json.loads(raw)

    async def customers_referring_to(self, object_id: str) -> list[str]:
        members = await self.client.smembers(self.tenant_key(f"refs:{object_id}"))
        return sorted(_text(m) or "" for m in members)

    async def load_customer_data(
        self, customer_id: str, objects: Mapping[str, StripeDict] | None = None,
        *, catalogue: CatalogueReads | None = None,
    ) -> CustomerData | None:
        """The stored slim objects of a customer joined with the tenant's prices, products and coupons
        (those ``catalogue`` holds are not read again; those read are added to it)."""
        if objects is None:
            objects = await self.get_objects(customer_id)
        plain = [without_version(o) for o in objects.values()]
        customers = [o for o in plain if o.get("object") == "customer"]
        if not customers or customers[0].get("deleted"):
            return None

        def of(kind: str) -> list[StripeDict]:
            return sorted(
                (o for o in plain if o.get("object") == kind and not o.get("deleted")),
                key=lambda o: (o.get("created") or 0, str(o.get("id"))), reverse=True,
            )

        subscriptions = of("subscription")
        price_ids: set[str] = set()
        coupon_ids: set[str] = coupon_ids_of_discount(customers[0].get("discount"))
        for sub in subscriptions:
            sub_prices, sub_coupons = referenced_ids(sub)
            price_ids |= sub_prices
            coupon_ids |= sub_coupons
        known = catalogue if catalogue is not None else CatalogueReads()
        # Prices and coupons in one round trip, then the products the prices name (two, not three).
        wanted_prices, wanted_coupons = sorted(price_ids - known.prices.keys()), sorted(
            coupon_ids - known.coupons.keys()
        )
        if wanted_prices or wanted_coupons:
            pipe = self.client.pipeline(transaction=False)
            if wanted_prices:
                pipe.hmget(self.tenant_key("prices"), wanted_prices)
            if wanted_coupons:
                pipe.hmget(self.tenant_key("coupons"), wanted_coupons)
            replies: list[Any] = await pipe.execute()
            known.prices.update(_plain(_found(wanted_prices, replies.pop(0) if wanted_prices else [])))
            known.coupons.update(_plain(_found(wanted_coupons, replies.pop(0) if wanted_coupons else [])))
        prices = {i: known.prices[i] for i in sorted(price_ids) if i in known.prices}
        coupons = {i: known.coupons[i] for i in sorted(coupon_ids) if i in known.coupons}
        product_ids = {str(p["product"]) for p in prices.values() if isinstance(p.get("product"), str)}
        known.products.update(
            _plain(await self.get_tenant_objects("products", product_ids - known.products.keys()))
        )
        products = {i: known.products[i] for i in sorted(product_ids) if i in known.products}
        return CustomerData(
            customer=customers[0],
            subscriptions=[join_prices(s, prices) for s in subscriptions],
            invoices=of("invoice"),
            charges=of("charge"),
            disputes=of("dispute"),
            credit_notes=of("credit_note"),
            coupons=coupons,
            prices=prices,
            products=products,
        )

    async def delete_customer(
        self, customer_id: str, email: str | None, *, version: Version | None = None
    ) -> None:
        """Forget a customer. With the deletion's ``version``, a tombstone is kept in its objects for
        ``TOMBSTONE_TTL_SECONDS`` so that a late, older event does not bring the customer back."""
        objs_key = self.customer_key(customer_id, "objs")
        others = (self.customer_key(customer_id, "ctx"), self.customer_key(customer_id, "stage"),
                  self.customer_key(customer_id, TIMELINE_PART))
        previous = decode_objects(await self.client.get(objs_key))
        if version is None:
            await self.client.delete(objs_key, *others)
        else:
            tombstone = {"id": customer_id, "object": "customer", "deleted": True}
            tx = self.client.pipeline(transaction=True)
            tx.set(objs_key, encode_objects({customer_id: with_version(tombstone, version)}),
                   ex=TOMBSTONE_TTL_SECONDS)
            tx.delete(*others)
            await tx.execute()
        pipe = self.client.pipeline(transaction=False)
        if email:
            pipe.srem(self.email_key(email), customer_id)
        pipe.srem(self.tenant_key("customers"), customer_id)
        await pipe.execute()
        await self.update_refs(customer_id, previous.values())  # a deleted customer uses nothing

    async def forget_customer(self, customer_id: str) -> int:
        """Remove everything cached about a customer (context with its timeline, objects, staged
        pages, outbox, sent markers, email and lookup index entries, manual links, price/coupon
        references, the reminder and preview schedulers' entries);
        returns how many keys were deleted or updated. An operator's command, not a request path:
        it scans the tenant's link and reference keys."""
        objects = decode_objects(await self.client.get(self.customer_key(customer_id, "objs")))
        emails = {str(o["email"]) for o in objects.values()
                  if o.get("object") == "customer" and isinstance(o.get("email"), str)}
        touched = await self.lookup.forget(customer_id, objects.values())
        async for key in self.client.scan_iter(match=f"{self.prefix}:{{{customer_id}}}:*", count=500):
            touched += int(await self.client.delete(key))
        for email in emails:
            touched += int(await self.client.srem(self.email_key(email), customer_id))
        touched += int(await self.client.srem(self.tenant_key("customers"), customer_id))
        async for key in self.client.scan_iter(match=self.tenant_key("link:*"), count=500):
            if _text(await self.client.get(key)) == customer_id:
                touched += int(await self.client.delete(key))
        async for key in self.client.scan_iter(match=self.tenant_key("refs:*"), count=500):
            touched += int(await self.client.srem(key, customer_id))
        # The schedulers' queues name the customer too: nothing due for someone forgotten.
        reminders = self.reminder_state()
        touched += int(await self.client.srem(reminders.dirty_key, customer_id))
        touched += int(await self.client.srem(reminders.taking_key, customer_id))
        touched += int(await self.client.zrem(reminders.due_key, customer_id))
        touched += int(await self.client.zrem(self.previews.due_key, customer_id))
        touched += int(await self.client.hdel(self.previews.failures_key, customer_id))
        return touched

    # ---- health ------------------------------------------------------------------------------
    async def record(self, **fields: float | str) -> None:
        """Update sync-health fields (``last_webhook_at``, ``backfill_started_at`` …)."""
        await self.client.hset(self.tenant_key("health"), mapping=dict(fields))  # type: ignore[arg-type]

    async def health_record(self) -> dict[str, str]:
        """The sync-health fields as stored (``record``)."""
        raw: Mapping[Any, Any] = await self.client.hgetall(self.tenant_key("health"))
        return {_text(k) or "": _text(v) or "" for k, v in raw.items()}

    def queue_record(self, pipe: Any, **fields: float | str) -> None:
        """``record`` as a command of ``pipe`` (riding with the writes it describes)."""
        pipe.hset(self.tenant_key("health"), mapping=dict(fields))

    async def health(self) -> SyncHealth:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.tenant_key("health"))
        pipe.scard(self.tenant_key("customers"))
        pipe.xlen(self.stream_key)
        pipe.xlen(self.dead_letter_key)
        reminders = self.reminder_state()
        pipe.zcard(self.previews.due_key)
        pipe.zcard(reminders.due_key)
        pipe.zcount(reminders.due_key, "-inf", time.time())
        pipe.hget(reminders.index_key, TICKED_AT)
        record, customers, length, dead, previews_due, scheduled, due, ticked = await pipe.execute()
        fields = {_text(k): _text(v) for k, v in record.items()}
        lag: int | None = None
        pending = 0
        try:
            for group in await self.client.xinfo_groups(self.stream_key):
                name = _text(group.get("name"))
                if name == self.GROUP:
                    pending = int(group.get("pending") or 0)
                    raw_lag = group.get("lag")
                    lag = int(raw_lag) if raw_lag is not None else None
        except RedisError:
            pass  # no stream yet

        def num(name: str) -> float | None:
            value = fields.get(name)
            return float(value) if value else None

        return SyncHealth(
            tenant=self.tenant.key,
            customers_cached=int(customers),
            last_webhook_at=num("last_webhook_at"),
            last_event_at=num("last_event_at"),
            last_event_id=fields.get("last_event_id"),
            backfill_started_at=num("backfill_started_at"),
            backfill_finished_at=num("backfill_finished_at"),
            stream_length=int(length),
            stream_lag=lag,
            pending=pending,
            dead_letters=int(dead),
            previews_due=int(previews_due),
            reminders_scheduled=int(scheduled),
            reminders_due=int(due),
            reminders_last_tick_at=float(ticked) if ticked else None,
        )

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except REDIS_ERRORS:
            return False


def customer_objects(data: CustomerData) -> list[StripeDict]:
    """A fetched customer's own objects (not the catalogue), slim, each with its ``object`` kind."""
    objects: list[StripeDict] = [slim({**data.customer, "object": "customer"})]
    objects += [slim({**s, "object": "subscription"}) for s in data.subscriptions]
    objects += [slim({**i, "object": "invoice"}) for i in data.invoices]
    objects += [slim({**c, "object": "charge"}) for c in data.charges]
    objects += [slim({**d, "object": "dispute"}) for d in data.disputes]
    objects += [slim({**n, "object": "credit_note"}) for n in data.credit_notes]
    return objects


def _snapshot_version(context: BillingContext) -> Version:
    as_of = context.as_of or datetime.now(UTC)
    return int(as_of.timestamp()), SNAPSHOT_EVENT_ID


def _embedded_prices(data: CustomerData) -> list[StripeDict]:
    return [
        price for sub in data.subscriptions for price in prices_of_subscription(sub)
        if price["id"] not in data.prices
    ]


def _with_staged(objects: dict[str, StripeDict], staged: Mapping[Any, Any]) -> dict[str, StripeDict]:
    """``objects`` with each staged object that is newer than the stored one."""
    for key, value in staged.items():
        object_id, candidate = _text(key) or "", json.loads(value)
        current = objects.get(object_id)
        if current is None or decide(version_of(current), version_of(candidate) or (0, "")) == "apply":
            objects[object_id] = candidate
    return objects


def trim_invoices(objects: Mapping[str, StripeDict]) -> dict[str, StripeDict]:
    """``objects`` without the settled invoices beyond the newest ``MAX_STORED_INVOICES``; an open
    invoice is kept however old (money still owed decides payment status and past-due age)."""
    invoices = sorted(
        (o for o in objects.values() if o.get("object") == "invoice"),
        key=lambda o: (o.get("created") or 0, str(o.get("id"))), reverse=True,
    )
    dropped = {str(o["id"]) for o in invoices[MAX_STORED_INVOICES:] if o.get("status") != "open"}
    return {k: v for k, v in objects.items() if k not in dropped}


ENDED_SUBSCRIPTIONS = frozenset({"canceled", "incomplete_expired"})


def refs_of(objects: Iterable[StripeDict]) -> set[str]:
    """The prices and coupons that reach a customer's context: those of its subscriptions that have
    not ended, and its own discount's coupon; none for a deleted customer."""
    refs: set[str] = set()
    for obj in objects:
        if obj.get("deleted"):
            if obj.get("object") == "customer":
                return set()
            continue
        if obj.get("object") == "subscription" and obj.get("status") not in ENDED_SUBSCRIPTIONS:
            prices, coupons = referenced_ids(obj)
            refs |= prices | coupons
        elif obj.get("object") == "customer":
            refs |= coupon_ids_of_discount(obj.get("discount"))
    return refs


def _found(ids: Sequence[str], values: Sequence[Any]) -> dict[str, StripeDict]:
    """An ``HMGET`` reply as id -> object, without the ids the hash does not have."""
    return {i: json.loads(v) for i, v in zip(ids, values, strict=True) if v is not None}


def _plain(objects: Mapping[str, StripeDict]) -> dict[str, StripeDict]:
    return {k: without_version(v) for k, v in objects.items()}


async def open_tenant_store(
    url: str, gateway: StripeReader, key_fingerprint: str, *, prefix: str = "bl",
    metadata_keys: Sequence[str] = (),
) -> RedisStore:
    """A store for the account the gateway's key belongs to.

    Redis first: the account a key belongs to never changes, so once Stripe has named it, the answer
    remembered under a fingerprint of the key is the answer, and a cache hit never waits on Stripe
    (nor fails with it). Stripe is asked only for a key seen for the first time.
    """
    client = await open_redis(url)
    memo = f"{prefix}:tenant-of:{key_fingerprint}"
    try:
        remembered = _text(await client.get(memo))
        if remembered is not None:
            account, _, mode = remembered.rpartition(":")
            tenant = Tenant(account_id=account, livemode=mode == "live")
        else:
            tenant = await gateway.tenant()
            await client.set(memo, tenant.key)
    except BaseException:
        await client.aclose()
        raise
    return RedisStore(client, tenant, prefix=prefix, metadata_keys=metadata_keys)


async def open_store(
    url: str, tenant: Tenant, *, prefix: str = "bl", metadata_keys: Sequence[str] = ()
) -> RedisStore:
    """A store on a fresh client for ``url`` (``redis://``, ``rediss://``, ``memory://``)."""
    client = await open_redis(url)
    return RedisStore(client, tenant, prefix=prefix, metadata_keys=metadata_keys)




__all__ = [
    "DEDUP_TTL_SECONDS", "VERSION_FIELD", "RedisStore", "StoreUnavailableError", "SyncHealth", "decide",
    "decode_context", "decode_objects", "encode_context", "encode_objects", "open_store", "open_tenant_store",
    "trim_invoices",
]
