"""Listing, cursor pagination, ``expand`` and customer search over the store (pure, no HTTP)."""

from __future__ import annotations

import base64
import bisect
import copy
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sandbox.errors import StripeError, bad_request, no_such
from sandbox.params import Params, as_bool, as_int, as_list, as_str, check_known, created_predicate, in_range
from sandbox.state import INCLUDABLE, KINDS, Entry, Obj, Store

MAX_EXPAND_DEPTH = 4
LIST_PARAMS = ("limit", "starting_after", "ending_before", "expand")

Filter = Callable[[Store, Obj, Params], bool]
SUBSCRIPTION_STATUSES = (
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "paused",
)


def _sub_customer_invoice(inv: Obj) -> str | None:
    parent = inv.get("parent") or {}
    details = parent.get("subscription_details") or {}
    sub = details.get("subscription")
    return sub if isinstance(sub, str) else None


def _sub_has_price(sub: Obj, price_id: str) -> bool:
    for item in sub.get("items", {}).get("data", []):
        price = item.get("price")
        if (price.get("id") if isinstance(price, dict) else price) == price_id:
            return True
    return False


def _subscription_status(store: Store, sub: Obj, params: Params) -> bool:
    wanted = params.get("status")
    status = sub.get("status")
    if wanted is None:
        return status != "canceled"
    wanted = as_str(wanted, "status")
    if wanted == "all":
        return True
    if wanted == "ended":
        return status in ("canceled", "incomplete_expired")
    if wanted not in SUBSCRIPTION_STATUSES:
        raise bad_request(
            f"Invalid status: must be one of {', '.join(SUBSCRIPTION_STATUSES)}, ended or all", param="status"
        )
    return bool(status == wanted)


def _event_type(store: Store, event: Obj, params: Params) -> bool:
    patterns: list[str] = []
    if "type" in params:
        patterns.append(as_str(params["type"], "type"))
    if "types" in params:
        patterns.extend(as_list(params["types"], "types"))
    if not patterns:
        return True
    kind = str(event.get("type"))
    return any(kind == p or (p.endswith(".*") and kind.startswith(p[:-1])) for p in patterns)


def _eq(field: str, param: str | None = None) -> Filter:
    name = param or field

    def check(store: Store, obj: Obj, params: Params) -> bool:
        if name not in params:
            return True
        value = obj.get(field)
        if isinstance(value, dict):
            value = value.get("id")
        return bool(value == as_str(params[name], name))

    return check


def _bool_eq(field: str) -> Filter:
    def check(store: Store, obj: Obj, params: Params) -> bool:
        return field not in params or bool(obj.get(field)) == as_bool(params[field], field)

    return check


def _param(name: str, test: Callable[[Obj, str], bool]) -> Filter:
    def check(store: Store, obj: Obj, params: Params) -> bool:
        return name not in params or test(obj, as_str(params[name], name))

    return check


def _not_deleted(store: Store, obj: Obj, params: Params) -> bool:
    return not obj.get("deleted")


@dataclass(frozen=True)
class Resource:
    """One ``/v1/<path>`` collection: its object type, permission and list filters."""

    path: str
    kind: str
    permission: str
    filters: tuple[tuple[str, Filter], ...]
    created_filter: bool = True

    def allowed_params(self) -> set[str]:
        names = set(LIST_PARAMS) | {name for name, _ in self.filters}
        if self.created_filter:
            names.add("created")
        if self.kind == "event":
            names.add("types")
        return names


RESOURCES: dict[str, Resource] = {
    r.path: r
    for r in (
        Resource(
            "customers",
            "customer",
            "rak_customer_read",
            (
                ("email", _eq("email")),
                ("_deleted", _not_deleted),
            ),
        ),
        Resource(
            "subscriptions",
            "subscription",
            "rak_subscription_read",
            (
                ("customer", _eq("customer")),
                ("status", _subscription_status),
                ("price", _param("price", _sub_has_price)),
            ),
        ),
        Resource(
            "subscription_items",
            "subscription_item",
            "rak_subscription_read",
            (("subscription", _eq("subscription")),),
            created_filter=False,
        ),
        Resource(
            "invoices",
            "invoice",
            "rak_invoice_read",
            (
                ("customer", _eq("customer")),
                ("subscription", _param("subscription", lambda inv, sid: _sub_customer_invoice(inv) == sid)),
                ("status", _eq("status")),
            ),
        ),
        Resource(
            "charges",
            "charge",
            "rak_charge_read",
            (
                ("customer", _eq("customer")),
                ("payment_intent", _eq("payment_intent")),
            ),
        ),
        Resource(
            "disputes",
            "dispute",
            "rak_dispute_read",
            (
                ("charge", _eq("charge")),
                ("payment_intent", _eq("payment_intent")),
            ),
        ),
        Resource(
            "credit_notes",
            "credit_note",
            "rak_credit_note_read",
            (
                ("customer", _eq("customer")),
                ("invoice", _eq("invoice")),
            ),
            created_filter=False,
        ),
        Resource(
            "prices",
            "price",
            "rak_plan_read",
            (
                ("product", _eq("product")),
                ("active", _bool_eq("active")),
                ("currency", _eq("currency")),
                ("type", _eq("type")),
            ),
        ),
        Resource("products", "product", "rak_product_read", (("active", _bool_eq("active")),)),
        Resource("coupons", "coupon", "rak_coupon_read", ()),
        Resource(
            "payment_intents", "payment_intent", "rak_payment_intent_read", (("customer", _eq("customer")),)
        ),
        Resource("events", "event", "rak_event_read", (("type", _event_type),)),
    )
}
# "_deleted" is an internal filter, never a parameter
_INTERNAL = {"_deleted"}


def list_objects(store: Store, resource: Resource, params: Params, livemode: bool) -> Obj:
    allowed = resource.allowed_params() - _INTERNAL
    check_known(params, allowed)
    if resource.kind == "subscription_item" and "subscription" not in params:
        raise bad_request("Missing required param: subscription.", param="subscription")
    paths = expand_paths(params, is_list=True)
    bounds = created_predicate(params["created"]) if "created" in params else None
    if resource.kind != "subscription_item" and "ending_before" not in params:
        page, has_more = _newest_page(store, resource, params, livemode, bounds)
        return _list_result(store, resource, page, has_more, paths, livemode)
    if resource.kind == "subscription_item":
        candidates: Iterable[Obj] = store.all(resource.kind, livemode)
    else:
        objects = store.objects_of(resource.kind)
        candidates = (objects[entry[2]] for entry in _candidates(store, resource, params))
    matched = [
        obj
        for obj in candidates
        if store.livemode_of(obj) == livemode
        and all(check(store, obj, params) for _, check in resource.filters)
        and (bounds is None or in_range(int(obj.get("created") or 0), bounds))
    ]
    matched.sort(key=store.order_key, reverse=True)
    page, has_more = paginate(store, resource.kind, matched, params)
    return _list_result(store, resource, page, has_more, paths, livemode)


def _candidates(store: Store, resource: Resource, params: Params) -> list[Entry]:
    """The ordered entries a list has to look at: one value's index when a filter on an indexed field
    is given (every object it could match, in ``Store.ordered`` order), else every object of the type.
    Filters still run on each candidate, so the index only narrows the walk."""
    for field in store.indexed_fields(resource.kind):
        if field in params:
            return store.ordered_by(resource.kind, field, as_str(params[field], field))
    return store.ordered(resource.kind)


def _list_result(
    store: Store, resource: Resource, page: list[Obj], has_more: bool, paths: list[list[str]], livemode: bool
) -> Obj:
    result: Obj = {
        "object": "list",
        "data": [store.render(obj) for obj in page],
        "has_more": has_more,
        "url": f"/v1/{resource.path}",
    }
    for path in paths:
        result = apply_expand(result, path, store, livemode)
    return result


def _newest_page(
    store: Store, resource: Resource, params: Params, livemode: bool,
    bounds: tuple[int | None, int | None, int | None, int | None] | None,
) -> tuple[list[Obj], bool]:
    """A page newest first (optionally ``starting_after`` a cursor) without sorting or filtering every
    object: the ``created`` window and the cursor are bisected out of ``Store.ordered``, and objects
    are filtered from the newest down until the page is full. Like Stripe, a malformed filter is a 400
    whether or not any object is listed (each filter checked once against an empty object)."""
    limit = parse_limit(params)
    filters = [check for _, check in resource.filters]
    for check in filters:
        check(store, {}, params)
    ordered = _candidates(store, resource, params)
    low, high = 0, len(ordered)
    if bounds is not None:
        gt, gte, lt, lte = bounds
        floor = max(x for x in (gte, gt + 1 if gt is not None else None, -(2**63)) if x is not None)
        ceiling = min(x for x in (lt, lte + 1 if lte is not None else None, 2**63) if x is not None)
        low = bisect.bisect_left(ordered, (floor, -1, ""))
        high = bisect.bisect_left(ordered, (ceiling, -1, ""))
    if "starting_after" in params:
        cursor_id = as_str(params["starting_after"], "starting_after")
        cursor = store.raw(resource.kind, cursor_id)
        if cursor is None:
            raise no_such(KINDS[resource.kind], cursor_id, param="starting_after")
        high = min(high, bisect.bisect_left(ordered, (*store.order_key(cursor), "")))
    objects = store.objects_of(resource.kind)
    page: list[Obj] = []
    for index in range(high - 1, low - 1, -1):
        obj = objects[ordered[index][2]]
        if store.livemode_of(obj) != livemode or not all(check(store, obj, params) for check in filters):
            continue
        if len(page) == limit:
            return page, True
        page.append(obj)
    return page, False


def parse_limit(params: Params) -> int:
    limit = as_int(params.get("limit", 10), "limit")
    if limit < 1:
        raise bad_request("This value must be greater than or equal to 1.", param="limit")
    if limit > 100:
        raise bad_request("This value must be less than or equal to 100.", param="limit")
    return limit


def paginate(store: Store, kind: str, ordered: list[Obj], params: Params) -> tuple[list[Obj], bool]:
    """Cursor pagination over a newest-first list; cursors need not match the filters, like Stripe."""
    limit = parse_limit(params)
    if "starting_after" in params and "ending_before" in params:
        raise bad_request("You may only specify one of these parameters: starting_after, ending_before.")
    for param in ("starting_after", "ending_before"):
        if param in params:
            cursor_id = as_str(params[param], param)
            cursor = store.raw(kind, cursor_id)
            if cursor is None:
                raise no_such(KINDS[kind], cursor_id, param=param)
            key = store.order_key(cursor)
            if param == "starting_after":
                rest = [o for o in ordered if store.order_key(o) < key]
                return rest[:limit], len(rest) > limit
            before = [o for o in ordered if store.order_key(o) > key]
            return before[-limit:], len(before) > limit
    return ordered[:limit], len(ordered) > limit


# ---- expand ------------------------------------------------------------------------------------
def expand_paths(params: Params, is_list: bool) -> list[list[str]]:
    paths: list[list[str]] = []
    for path in as_list(params.get("expand", []), "expand"):
        segments = path.split(".")
        # Every segment counts, ``data.`` and an includable field such as a price's ``tiers`` alike:
        # ``data.items.data.price.tiers`` is refused by Stripe just as ``…price.product`` is.
        if len(segments) > MAX_EXPAND_DEPTH:
            raise bad_request(
                f"You cannot expand more than {MAX_EXPAND_DEPTH} levels of a property. Property: {path}",
                param="expand",
            )
        if is_list and segments[0] != "data":
            raise bad_request(f"This property cannot be expanded ({path}).", param="expand")
        paths.append(segments)
    return paths


def apply_expand(obj: Obj, segments: list[str], store: Store, livemode: bool) -> Obj:
    full = ".".join(segments)
    result = _expand(obj, segments, store, livemode, full)
    assert isinstance(result, dict)
    return result


def _resolve(value: Any, store: Store) -> Any:
    if isinstance(value, str):
        found = store.find(value)
        return store.render(found) if found is not None else value
    if isinstance(value, list):
        return [_resolve(v, store) for v in value]
    return value


def _expand(value: Any, segments: list[str], store: Store, livemode: bool, full: str) -> Any:
    if not segments:
        return value
    if isinstance(value, list):
        return [_expand(v, segments, store, livemode, full) for v in value]
    if not isinstance(value, dict):
        return value
    seg, rest = segments[0], segments[1:]
    kind = value.get("object")
    if kind in ("list", "search_result") and seg == "data":
        value["data"] = [_expand(v, rest, store, livemode, full) for v in value["data"]]
        return value
    if kind == "customer" and seg == "subscriptions" and not value.get("deleted"):
        objects = store.objects_of("subscription")
        subs = [
            s
            for s in (objects[e[2]] for e in store.ordered_by("subscription", "customer", value["id"]))
            if store.livemode_of(s) == livemode and s.get("customer") == value["id"]
            and s.get("status") != "canceled"
        ]
        subs.sort(key=store.order_key, reverse=True)
        listing: Obj = {
            "object": "list",
            "data": [store.render(s) for s in subs],
            "has_more": False,
            "total_count": len(subs),
            "url": f"/v1/customers/{value['id']}/subscriptions",
        }
        value["subscriptions"] = _expand(listing, rest, store, livemode, full)
        return value
    if seg in INCLUDABLE.get(str(kind), ()):
        stored = store.raw(str(kind), value["id"])
        value[seg] = copy.deepcopy(stored.get(seg)) if stored is not None else None
        return value
    if seg not in value:
        raise bad_request(f"This property cannot be expanded ({full}).", param="expand")
    value[seg] = _expand(_resolve(value[seg], store), rest, store, livemode, full)
    return value


# ---- search ------------------------------------------------------------------------------------
_CLAUSE = re.compile(
    r"""\s*(?P<field>[a-z_]+(?:\[['"][^'"]+['"]\])?)\s*(?P<op>:|~|>=|<=|>|<)\s*"""
    r"""(?:'(?P<sq>(?:[^'\\]|\\.)*)'|"(?P<dq>(?:[^"\\]|\\.)*)"|(?P<num>-?\d+))\s*"""
)
_ESCAPED = re.compile(r"\\(.)")  # Stripe's query language escapes a quote (or backslash) with a backslash
_SEARCH_FIELDS = ("email", "name", "phone", "created", "metadata")
# Stripe's query fields for invoices (docs "Search query language"); ``total`` and ``created`` are numbers.
_INVOICE_SEARCH_FIELDS = (
    "created", "currency", "customer", "last_finalization_error_code", "last_finalization_error_type",
    "metadata", "number", "receipt_number", "status", "subscription", "total",
)
_NUMERIC_FIELDS = frozenset({"created", "total"})


def _parse_query(
    query: str, resource: str = "customers", fields: tuple[str, ...] = _SEARCH_FIELDS
) -> tuple[str, list[tuple[str, str, str]]]:
    clauses: list[tuple[str, str, str]] = []
    joiner = ""
    pos = 0
    while True:
        match = _CLAUSE.match(query, pos)
        if match is None:
            raise _query_error(query)
        value = match.group("sq") if match.group("sq") is not None else match.group("dq")
        value = _ESCAPED.sub(r"\1", value) if value is not None else match.group("num")
        clauses.append((match.group("field"), match.group("op"), value))
        pos = match.end()
        if pos >= len(query):
            break
        word = re.match(r"(AND|OR)\s+", query[pos:])
        if word is None or (joiner and word.group(1) != joiner):
            raise _query_error(query)
        joiner = word.group(1)
        pos += word.end()
    for field, _, _ in clauses:
        if field.split("[")[0] not in fields:
            raise bad_request(
                f"Field '{field}' is an unsupported search field for resource `{resource}`. "
                f"Supported fields: {', '.join(fields)}.",
                param="query",
            )
    return joiner or "AND", clauses


def _query_error(query: str) -> StripeError:
    return bad_request(
        f"We were unable to parse your search query. Try using the format `field:'value'`. Query: {query}",
        param="query",
    )


def _field_value(obj: Obj, field: str) -> Any:
    """The value a search clause compares: a metadata entry, an invoice's subscription (under its
    ``parent``), the code or type of its last finalization error, or the field itself."""
    if field.startswith("metadata["):
        key = field[len("metadata[") + 1 : -2]
        return (obj.get("metadata") or {}).get(key)
    if obj.get("object") == "invoice":
        if field == "subscription":
            return _sub_customer_invoice(obj)
        if field.startswith("last_finalization_error_"):
            error = obj.get("last_finalization_error") or {}
            return error.get(field.removeprefix("last_finalization_error_"))
    value = obj.get(field)
    return value.get("id") if isinstance(value, dict) else value


def _clause_matches(obj: Obj, field: str, op: str, value: str) -> bool:
    actual = _field_value(obj, field)
    if field in _NUMERIC_FIELDS:
        if not re.fullmatch(r"-?\d+", value):
            raise bad_request(f"The value for '{field}' must be a number.", param="query")
        number = int(value)
        have = int(actual or 0)
        return {
            ":": have == number,
            ">": have > number,
            "<": have < number,
            ">=": have >= number,
            "<=": have <= number,
        }.get(op, False)
    if actual is None:
        return False
    if op == ":":
        return str(actual).lower() == value.lower()
    if op == "~":
        return value.lower() in str(actual).lower()
    return False


def _search(
    store: Store, kind: str, resource: str, fields: tuple[str, ...], params: Params, livemode: bool
) -> Obj:
    """One search endpoint: clauses joined by AND or OR, newest first, paged by ``page`` (an opaque
    offset here). Exact matches are case-insensitive, as Stripe's; results are immediately consistent
    (Stripe's can lag a minute: callers must not rely on either)."""
    check_known(params, {"query", "limit", "page", "expand"})
    if "query" not in params:
        raise bad_request("Missing required param: query.", param="query")
    joiner, clauses = _parse_query(as_str(params["query"], "query"), resource, fields)
    limit = parse_limit(params)
    offset = 0
    if "page" in params:
        try:
            offset = int(base64.urlsafe_b64decode(as_str(params["page"], "page").encode()).decode())
        except ValueError:
            raise bad_request(
                "Invalid page: use the next_page value of a previous search.", param="page"
            ) from None
    combine = all if joiner == "AND" else any
    matched = [
        o
        for o in store.all(kind, livemode)
        if not o.get("deleted") and combine(_clause_matches(o, f, op, v) for f, op, v in clauses)
    ]
    matched.sort(key=store.order_key, reverse=True)
    page = matched[offset : offset + limit]
    has_more = offset + limit < len(matched)
    next_page = base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if has_more else None
    result: Obj = {
        "object": "search_result",
        "data": [store.render(o) for o in page],
        "has_more": has_more,
        "next_page": next_page,
        "url": f"/v1/{resource}/search",
    }
    for path in expand_paths(params, is_list=True):
        result = apply_expand(result, path, store, livemode)
    return result


def search_invoices(store: Store, params: Params, livemode: bool) -> Obj:
    return _search(store, "invoice", "invoices", _INVOICE_SEARCH_FIELDS, params, livemode)


def search_customers(store: Store, params: Params, livemode: bool) -> Obj:
    return _search(store, "customer", "customers", _SEARCH_FIELDS, params, livemode)
