"""Where a lookup by another thing than the email finds its customer in the cache.

A lookup may name a subscription (``sub_…``), an invoice (``in_…`` or its printed number), a charge
(``ch_…``), a payment intent (``pi_…``) or an id of the operator's own system kept in the customer's
metadata (``user_id:1234``, for the keys in ``BILLING_MATCH_METADATA_KEYS``). Each of these is an index
key naming the customers it belongs to (``p`` = the tenant's prefix)::

    p:find:subscription:sub_1          set  customer ids (one, for an object id)
    p:find:invoice:in_1                set
    p:find:invoice_number:0HIAXQK6-0004 set
    p:find:charge:ch_1                 set
    p:find:payment_intent:pi_1         set
    p:find:metadata:user_id:1234       set  (several customers may share a value)
    p:{cus_1}:find                     set  the index keys this customer is a member of

The index mirrors the customer's stored objects: it is made from them (``index_keys``) each time they
are saved, and what they no longer hold (an invoice trimmed away, a changed metadata value, a deleted
customer) leaves the index at the same time, found through the customer's own record. So it holds at
most what the cache holds, and is bounded as the objects are.

A stale entry can only send a lookup to a cached customer that no longer matches; the service checks
the cached context (a metadata value must still be the customer's) before answering from it, and a
miss asks Stripe, which is always right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from billing.domain.snapshot import StripeDict, id_of

MAX_VALUE_CHARS = 500  # Stripe's limit on a metadata value: longer is not an id anybody types


def index_key(kind: str, text: str) -> str:
    """The index key of a lookup (``Query.kind``, ``Query.text``): ``invoice_number:0HIAXQK6-0004``."""
    return f"{kind}:{text}"


def index_keys(objects: Iterable[StripeDict], metadata_keys: Sequence[str]) -> set[str]:
    """Every index key a customer's stored objects answer to; none once the customer is deleted."""
    keys: set[str] = set()
    for obj in objects:
        kind, object_id = obj.get("object"), obj.get("id")
        if obj.get("deleted"):
            if kind == "customer":
                return set()
            continue
        if not isinstance(object_id, str):
            continue
        if kind == "subscription":
            keys.add(index_key("subscription", object_id))
        elif kind == "invoice":
            keys.add(index_key("invoice", object_id))
            number = obj.get("number")
            if isinstance(number, str) and number:
                keys.add(index_key("invoice_number", number.upper()))
        elif kind == "charge":
            keys.add(index_key("charge", object_id))
            intent = id_of(obj.get("payment_intent"))
            if intent:
                keys.add(index_key("payment_intent", intent))
        elif kind == "customer":
            metadata = obj.get("metadata")
            if not isinstance(metadata, dict):
                continue
            for key in metadata_keys:
                value = metadata.get(key)
                if isinstance(value, str) and value and len(value) <= MAX_VALUE_CHARS:
                    keys.add(index_key("metadata", f"{key}:{value}"))
    return keys


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LookupIndex:
    """The index of one tenant; ``key_of(part)`` and ``customer_key(id, part)`` are the store's."""

    def __init__(
        self, client: Any, key_of: Callable[[str], str], customer_key: Callable[[str, str], str],
        metadata_keys: Sequence[str] = (),
    ) -> None:
        self.client = client
        self._key_of = key_of
        self._customer_key = customer_key
        self.metadata_keys = tuple(metadata_keys)

    def key(self, index: str) -> str:
        return self._key_of(f"find:{index}")

    async def customer_ids(self, kind: str, text: str) -> list[str]:
        """The customers cached under a lookup, in id order."""
        members = await self.client.smembers(self.key(index_key(kind, text)))
        return sorted(_text(m) for m in members)

    async def sync(self, customer_id: str, objects: Iterable[StripeDict]) -> None:
        """Make the index name the customer under exactly the keys its stored ``objects`` answer to
        (read after they were written: the last writer decides from the newest objects). Two round
        trips, the second only when something changed."""
        record = self._customer_key(customer_id, "find")
        wanted = index_keys(objects, self.metadata_keys)
        recorded = {_text(m) for m in await self.client.smembers(record)}
        if wanted == recorded:
            return
        pipe = self.client.pipeline(transaction=False)
        for stale in sorted(recorded - wanted):
            pipe.srem(self.key(stale), customer_id)
        for fresh in sorted(wanted - recorded):
            pipe.sadd(self.key(fresh), customer_id)
        pipe.delete(record)
        if wanted:
            pipe.sadd(record, *sorted(wanted))
        await pipe.execute()

    async def forget(self, customer_id: str) -> int:
        """Take the customer out of every index key it is recorded under; how many it left."""
        record = self._customer_key(customer_id, "find")
        recorded = sorted(_text(m) for m in await self.client.smembers(record))
        if not recorded:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for index in recorded:
            pipe.srem(self.key(index), customer_id)
        pipe.delete(record)
        removed = await pipe.execute()
        return sum(int(n) for n in removed[:-1])


def index_changed(
    stored: Mapping[str, StripeDict], updates: Mapping[str, StripeDict], metadata_keys: Sequence[str]
) -> bool:
    """Whether ``updates`` (object id -> new stored object) change what the customer is indexed under:
    a new subscription, invoice or charge, an invoice given its number at finalization, a deleted
    object, another metadata value. Most events change none of it (a status, an amount)."""
    before = [stored[k] for k in updates if k in stored]
    return index_keys(updates.values(), metadata_keys) != index_keys(before, metadata_keys)
