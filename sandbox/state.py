"""The sandbox's objects: one store per server, keyed by Stripe object type and id.

Objects are kept raw (as loaded); ``render`` produces what the API returns, so derived or hidden
fields (a price's ``tiers``, the price embedded in a subscription item) stay consistent with the
stored originals.
"""

from __future__ import annotations

import bisect
import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

from sandbox.errors import bad_request, no_such

Obj = dict[str, Any]

# object type -> human name used in "No such …" messages
KINDS: dict[str, str] = {
    "customer": "customer",
    "subscription": "subscription",
    "subscription_item": "subscription_item",
    "invoice": "invoice",
    "charge": "charge",
    "dispute": "dispute",
    "credit_note": "credit_note",
    "price": "price",
    "product": "product",
    "coupon": "coupon",
    "discount": "discount",
    "tax_rate": "tax_rate",
    "event": "event",
    "payment_method": "payment_method",
    "payment_intent": "payment_intent",
}


# Fields Stripe leaves out unless asked for with ``expand[]`` (its "includable" fields).
INCLUDABLE: dict[str, tuple[str, ...]] = {
    "price": ("tiers", "currency_options"),
    "coupon": ("applies_to", "currency_options"),
}

# List parameters answered from a per-value index: a ``customer=`` list then costs that customer's
# objects, not a walk over every object of the account (Stripe's own lists are indexed this way).
INDEXED: dict[str, tuple[str, ...]] = {
    "subscription": ("customer",),
    "invoice": ("customer",),
    "charge": ("customer",),
    "credit_note": ("customer",),
    "payment_intent": ("customer",),
}

Entry = tuple[int, int, str]  # (created, insertion sequence, id): oldest first when sorted


def _index_value(obj: Obj, field: str) -> str | None:
    """The value a list filter compares for ``field`` (an expanded object compares by its id)."""
    value = obj.get(field)
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


def json_copy(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars): what ``copy.deepcopy`` does for it, at a
    fraction of the cost (every listed object is copied to render it)."""
    if type(value) is dict:
        return {key: json_copy(item) for key, item in value.items()}
    if type(value) is list:
        return [json_copy(item) for item in value]
    if isinstance(value, dict | list):  # a subclass: let deepcopy keep its type
        return copy.deepcopy(value)
    return value


class Clock:
    """Real time by default; a test can freeze it or shift it (whole seconds, like Stripe)."""

    def __init__(self) -> None:
        self._fixed: float | None = None
        self._offset = 0.0

    def now(self) -> int:
        base = self._fixed if self._fixed is not None else time.time() + self._offset
        return int(base)

    def set(self, now: float | None, frozen: bool = True) -> None:
        if now is None:
            self._fixed, self._offset = None, 0.0
        elif frozen:
            self._fixed, self._offset = float(now), 0.0
        else:
            self._fixed, self._offset = None, float(now) - time.time()

    def advance(self, seconds: float) -> None:
        if self._fixed is not None:
            self._fixed += seconds
        else:
            self._offset += seconds

    def describe(self) -> Obj:
        return {"now": self.now(), "frozen": self._fixed is not None}


class Store:
    """Every object by type and id, plus an insertion sequence to order ties on ``created``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.clock = Clock()
        self.clear()

    def clear(self) -> None:
        self._by_type: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self._seq: dict[str, int] = {}
        self._next_seq = 0
        self._item_owner: dict[str, str] = {}
        self._ordered: dict[str, list[Entry]] = {}
        # (kind, field) -> value -> entries oldest first; kept up to date on every write
        self._index: dict[tuple[str, str], dict[str, list[Entry]]] = {
            (kind, field): {} for kind, fields in INDEXED.items() for field in fields
        }
        # (kind, id) -> where the object is indexed now, so a re-index finds its old place even after
        # the stored object was changed in place
        self._indexed_at: dict[tuple[str, str], list[tuple[str, str, Entry]]] = {}

    # ---- writes -------------------------------------------------------------------------------
    def put(self, obj: Obj) -> Obj:
        """Insert or replace one Stripe-shaped object (needs ``id`` and ``object``)."""
        kind = obj.get("object")
        object_id = obj.get("id")
        if not isinstance(object_id, str) or not object_id:
            raise bad_request("Every loaded object needs a string 'id'.", param="id")
        if kind not in KINDS or kind == "subscription_item":
            accepted = ", ".join(k for k in KINDS if k != "subscription_item")
            raise bad_request(
                f"Cannot load object type {kind!r}; accepted types: {accepted}.", param="object"
            )
        obj = json_copy(obj)
        obj.setdefault("livemode", False)
        # fields Stripe always renders (null when unset), so expanding them works on any loaded object
        if kind == "customer" and not obj.get("deleted"):
            settings = obj.setdefault("invoice_settings", {"default_payment_method": None})
            if isinstance(settings, dict):
                settings.setdefault("default_payment_method", None)
        elif kind == "subscription":
            obj.setdefault("default_payment_method", None)
        obj.setdefault("created", self.clock.now())
        if object_id not in self._seq:
            self._seq[object_id] = self._next_seq
            self._next_seq += 1
        self._by_type[kind][object_id] = obj
        self.reindex(obj)
        if kind == "subscription":
            for item in obj.get("items", {}).get("data", []):
                self._item_owner[item["id"]] = object_id
        return obj

    def reindex(self, obj: Obj) -> None:
        """Bring the orderings and indexes up to date with a stored object, after ``put`` or after a
        change made to it in place (its ``created`` or an indexed field may have moved)."""
        kind, object_id = str(obj["object"]), str(obj["id"])
        self._ordered.pop(kind, None)
        fields = INDEXED.get(kind)
        if fields is None:
            return
        for field, value, entry in self._indexed_at.pop((kind, object_id), ()):
            entries = self._index[(kind, field)][value]
            at = bisect.bisect_left(entries, entry)
            if at < len(entries) and entries[at] == entry:
                del entries[at]
            if not entries:
                del self._index[(kind, field)][value]
        entry = (int(obj.get("created") or 0), self._seq.get(object_id, 0), object_id)
        placed: list[tuple[str, str, Entry]] = []
        for field in fields:
            now_value = _index_value(obj, field)
            if now_value is not None:
                bisect.insort(self._index[(kind, field)].setdefault(now_value, []), entry)
                placed.append((field, now_value, entry))
        if placed:
            self._indexed_at[(kind, object_id)] = placed

    # ---- reads --------------------------------------------------------------------------------
    def raw(self, kind: str, object_id: str) -> Obj | None:
        if kind == "subscription_item":
            owner = self._item_owner.get(object_id)
            sub = self._by_type["subscription"].get(owner or "")
            if sub is None:
                return None
            for item in sub.get("items", {}).get("data", []):
                if item["id"] == object_id:
                    result: Obj = item
                    return result
            return None
        return self._by_type[kind].get(object_id)

    def find(self, object_id: str) -> Obj | None:
        """The raw object with this id, whatever its type."""
        for kind in KINDS:
            found = self.raw(kind, object_id)
            if found is not None:
                return found
        return None

    def get(self, kind: str, object_id: str, livemode: bool, param: str = "id") -> Obj:
        """The raw object visible in this mode, or Stripe's 404."""
        obj = self.raw(kind, object_id)
        if obj is None:
            raise no_such(KINDS[kind], object_id, param)
        obj_live = self.livemode_of(obj)
        if obj_live != livemode:
            raise no_such(KINDS[kind], object_id, param, other_mode="live" if obj_live else "test")
        return obj

    def livemode_of(self, obj: Obj) -> bool:
        if obj.get("object") == "subscription_item":
            owner = self._by_type["subscription"].get(self._item_owner.get(obj["id"], ""))
            return bool(owner and owner.get("livemode"))
        return bool(obj.get("livemode"))

    def all(self, kind: str, livemode: bool | None = None) -> Iterator[Obj]:
        if kind == "subscription_item":
            for sub in self._by_type["subscription"].values():
                if livemode is None or bool(sub.get("livemode")) == livemode:
                    yield from sub.get("items", {}).get("data", [])
            return
        for obj in self._by_type[kind].values():
            if livemode is None or bool(obj.get("livemode")) == livemode:
                yield obj

    def objects_of(self, kind: str) -> dict[str, Obj]:
        """Every raw object of ``kind`` by id (both modes); not for ``subscription_item``."""
        return self._by_type[kind]

    def ordered(self, kind: str) -> list[Entry]:
        """``(created, sequence, id)`` of every object of ``kind`` (both modes), oldest first: list
        pages are bisected out of it instead of sorting every object for every page. Rebuilt after a
        ``put`` of that kind (every write goes through ``put``)."""
        ordered = self._ordered.get(kind)
        if ordered is None:
            seq = self._seq
            ordered = sorted(
                (int(obj.get("created") or 0), seq.get(object_id, 0), object_id)
                for object_id, obj in self._by_type[kind].items()
            )
            self._ordered[kind] = ordered
        return ordered

    def indexed_fields(self, kind: str) -> tuple[str, ...]:
        return INDEXED.get(kind, ())

    def ordered_by(self, kind: str, field: str, value: str) -> list[Entry]:
        """Like ``ordered``, only the objects of ``kind`` whose ``field`` is ``value`` (both modes);
        ``field`` must be one of ``indexed_fields(kind)``. Read-only: the store keeps it."""
        return self._index[(kind, field)].get(value, [])

    def order_key(self, obj: Obj) -> tuple[int, int]:
        """Newest first: ``created`` then insertion order (Stripe breaks ties by its own sequence)."""
        return (int(obj.get("created") or 0), self._seq.get(obj["id"], 0))

    def counts(self) -> dict[str, int]:
        return {kind: len(objs) for kind, objs in self._by_type.items() if objs}

    # ---- rendering ----------------------------------------------------------------------------
    def render(self, obj: Obj) -> Obj:
        """What the API returns for a stored object (hidden fields removed, embedded prices fresh)."""
        out: Obj = json_copy(obj)
        kind = out.get("object")
        if kind in INCLUDABLE:
            for name in INCLUDABLE[kind]:
                out.pop(name, None)
        elif kind == "subscription":
            for item in out.get("items", {}).get("data", []):
                self._refresh_item(item)
        elif kind == "subscription_item":
            self._refresh_item(out)
        return out

    def _refresh_item(self, item: Obj) -> None:
        price = item.get("price")
        price_id = price.get("id") if isinstance(price, dict) else price
        stored = self._by_type["price"].get(price_id or "")
        if stored is not None:
            fresh = json_copy(stored)
            for name in INCLUDABLE["price"]:
                fresh.pop(name, None)
            item["price"] = fresh
        elif isinstance(item.get("price"), dict):
            for name in INCLUDABLE["price"]:
                item["price"].pop(name, None)
