"""Where a lookup by another thing than the email finds its customer in the cache.

A lookup may name a subscription (``sub_…``), an invoice (``in_…`` or its printed number), a charge
(``ch_…``), a payment intent (``pi_…``) or an id of the operator's own system kept in the customer's
metadata (``user_id:1234``, for the keys in ``BILLING_MATCH_METADATA_KEYS``). ``p`` is the tenant's
prefix::

    p:find:<00..ff>                      hash  8-byte digest of an index key -> customer id
    p:find:metadata:<key>:<value>        set   customer ids (several customers may share a value)

Index keys are the ids themselves (``sub_…``, ``in_…``, ``ch_…``, ``pi_…``) and ``prefix:<P>`` for the
invoice-number prefix ``P`` of the customer's stored invoices (``0HIAXQK6`` of ``0HIAXQK6-0004``): one
entry answers for every invoice number the cache holds, checked against the stored invoices on read.

Small on purpose (a cached customer, every key included, stays near 4 KiB): per customer only the
newest ``SUBSCRIPTIONS``, ``INVOICES`` (and any open one) and ``CHARGES`` (with their payment intents)
are indexed, as digests in 256 shared hashes (compact while small, and one slot each on a cluster):
about 30 bytes an entry, some 250 bytes a customer (measured: 3,786 -> 4,028 B per cached customer
in all at 2,000 customers). Past about 3,000 customers a bucket holds more than Redis's default
``hash-max-listpack-entries`` (128) and Redis stores it as a hashtable, about twice the bytes an
entry; raising that setting keeps it compact.
An older id is not lost: the service asks Stripe whose it is (one request) and answers from the
customer's cached card when it is fresh.

The index follows the customer's stored objects: ``sync`` is given them before and after each save
(a lookup's, a backfill's, the worker's), adds what they answer to now and removes what they no
longer do (a newer charge pushing an older one out, an invoice trimmed away, another metadata value,
a deleted customer); ``forget`` removes them all. So it holds at most a few entries per cached
customer. An entry that outlived its customer only sends a lookup to a context that is not there (a
miss: Stripe answers), and a metadata match is checked against the cached context before it is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from billing.cache.connections import as_text
from billing.domain.snapshot import StripeDict, id_of

SUBSCRIPTIONS = 3
INVOICES = 3
CHARGES = 3
MAX_VALUE_CHARS = 500  # Stripe's limit on a metadata value
_METADATA = "metadata:"
_PREFIX = "prefix:"


def number_prefix(number: str) -> str:
    """The invoice-number prefix (the customer's, or the account's): ``0HIAXQK6`` of ``0HIAXQK6-0004``."""
    return number.rsplit("-", 1)[0].upper()


def _newest(objects: Sequence[StripeDict], kind: str) -> list[StripeDict]:
    return sorted(
        (o for o in objects if o.get("object") == kind),
        key=lambda o: (o.get("created") or 0, str(o.get("id"))), reverse=True,
    )


def index_keys(objects: Iterable[StripeDict], metadata_keys: Sequence[str]) -> set[str]:
    """The index keys a customer's stored objects answer to; none once the customer is deleted."""
    listed = list(objects)
    if any(o.get("object") == "customer" and o.get("deleted") for o in listed):
        return set()
    live = [o for o in listed if not o.get("deleted") and isinstance(o.get("id"), str)]
    keys: set[str] = {str(s["id"]) for s in _newest(live, "subscription")[:SUBSCRIPTIONS]}
    invoices = _newest(live, "invoice")
    keys |= {str(i["id"]) for i in invoices[:INVOICES]}
    keys |= {str(i["id"]) for i in invoices if i.get("status") == "open"}  # money owed: asked about most
    keys |= {_PREFIX + number_prefix(n) for i in invoices if isinstance(n := i.get("number"), str) and n}
    for charge in _newest(live, "charge")[:CHARGES]:
        keys.add(str(charge["id"]))
        intent = id_of(charge.get("payment_intent"))
        if intent:
            keys.add(intent)
    for customer in (o for o in live if o.get("object") == "customer"):
        metadata = customer.get("metadata")
        if not isinstance(metadata, dict):
            continue
        for key in metadata_keys:
            value = metadata.get(key)
            if isinstance(value, str) and value and len(value) <= MAX_VALUE_CHARS:
                keys.add(f"{_METADATA}{key}:{value}")
    return keys


def index_changed(
    stored: Mapping[str, StripeDict], updates: Mapping[str, StripeDict], metadata_keys: Sequence[str]
) -> bool:
    """Whether ``updates`` (object id -> new stored object) may change what the customer is indexed
    under: a new subscription, invoice or charge, an invoice finalized (its number) or settled, a
    deleted object, another metadata value. Most events change none of it (an amount, a status)."""
    for object_id, new in updates.items():
        if new.get("object") not in ("subscription", "invoice", "charge", "customer"):
            continue
        old = stored.get(object_id)
        if old is None or _indexed_fields(old, metadata_keys) != _indexed_fields(new, metadata_keys):
            return True
    return False


def _indexed_fields(obj: StripeDict, metadata_keys: Sequence[str]) -> tuple[Any, ...]:
    metadata = obj.get("metadata") if obj.get("object") == "customer" else None
    values = tuple(metadata.get(k) for k in metadata_keys) if isinstance(metadata, dict) else ()
    return (bool(obj.get("deleted")), obj.get("number"), id_of(obj.get("payment_intent")),
            obj.get("status") == "open", values)


def _digest(index_key: str) -> bytes:
    return hashlib.blake2b(index_key.encode(), digest_size=8).digest()


class LookupIndex:
    """The index of one tenant; ``key_of(part)`` is the store's tenant key."""

    def __init__(
        self, client: Any, key_of: Callable[[str], str], metadata_keys: Sequence[str] = (),
    ) -> None:
        self.client = client
        self._key_of = key_of
        self.metadata_keys = tuple(metadata_keys)

    def key(self, index_key: str) -> str:
        """The Redis key holding ``index_key``: a metadata value's set, else the digest's bucket."""
        if index_key.startswith(_METADATA):
            return self._key_of(f"find:{index_key}")
        return self._key_of(f"find:{_digest(index_key)[0]:02x}")

    async def customer_ids(self, kind: str, text: str) -> list[str]:
        """The customers indexed under a lookup (``Query.kind``, ``Query.text``), in id order; for an
        invoice number, those of its prefix (the caller checks the number itself)."""
        if kind == "metadata":
            members = await self.client.smembers(self.key(_METADATA + text))
            return sorted(as_text(m) for m in members)
        index_key = _PREFIX + number_prefix(text) if kind == "invoice_number" else text
        found = await self.client.hget(self.key(index_key), _digest(index_key))
        return [as_text(found)] if found is not None else []

    def _queue(self, pipe: Any, customer_id: str, add: Iterable[str], remove: Iterable[str]) -> None:
        for index_key in sorted(remove):
            if index_key.startswith(_METADATA):
                pipe.srem(self.key(index_key), customer_id)
            else:
                pipe.hdel(self.key(index_key), _digest(index_key))
        for index_key in sorted(add):
            if index_key.startswith(_METADATA):
                pipe.sadd(self.key(index_key), customer_id)
            else:
                pipe.hset(self.key(index_key), _digest(index_key), customer_id)

    async def sync(
        self, customer_id: str, previous: Iterable[StripeDict], current: Iterable[StripeDict]
    ) -> None:
        """Index the customer under what its ``current`` stored objects answer to, and no longer under
        what only its ``previous`` ones did. One round trip; every current entry is written again, so
        a customer cached before the index existed is indexed by its next save."""
        pipe = self.client.pipeline(transaction=False)
        if self.queue_sync(pipe, customer_id, previous, current):
            await pipe.execute()

    def queue_sync(
        self, pipe: Any, customer_id: str, previous: Iterable[StripeDict], current: Iterable[StripeDict]
    ) -> bool:
        """``sync`` queued in the caller's ``pipe`` (a save's, saving its round trip); False when there
        was nothing to queue."""
        before = index_keys(previous, self.metadata_keys)
        after = index_keys(current, self.metadata_keys)
        if not before and not after:
            return False
        self._queue(pipe, customer_id, after, before - after)
        return True

    async def forget(self, customer_id: str, objects: Iterable[StripeDict]) -> int:
        """Take the customer out of what its stored ``objects`` are indexed under; how many it left."""
        keys = index_keys(objects, self.metadata_keys)
        touched = 0
        if keys:
            pipe = self.client.pipeline(transaction=False)
            self._queue(pipe, customer_id, (), keys)
            touched = sum(int(n) for n in await pipe.execute())
        # A value set under a key no longer in BILLING_MATCH_METADATA_KEYS, or one the stored objects no
        # longer show, still ties the operator's id to the customer: forgetting scans every metadata
        # set (an operator's command, not a request path).
        async for key in self.client.scan_iter(match=self._key_of("find:metadata:*"), count=500):
            touched += int(await self.client.srem(key, customer_id))
        return touched
