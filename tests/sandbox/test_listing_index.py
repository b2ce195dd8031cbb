"""Per-customer lists answered from the store's index give exactly what a walk over every object gives.

Randomised accounts (objects put, replaced with another customer, changed in place through the
control API, a customer deleted) are listed with random filters, ``created`` ranges and cursors; the
expected page is computed here by filtering and sorting every stored object, as Stripe defines a list.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox import mutations
from sandbox.core import Sandbox
from sandbox.errors import StripeError
from sandbox.listing import RESOURCES, list_objects
from sandbox.state import Obj, Store

CUSTOMERS = ["cus_a", "cus_b", "cus_c"]
KIND_OF = {"invoices": "invoice", "charges": "charge", "subscriptions": "subscription"}
STATUSES = {
    "invoice": ["draft", "open", "paid", "void"],
    "charge": ["succeeded", "failed"],
    "subscription": ["active", "canceled", "past_due", "trialing"],
}

customer_ref = st.one_of(
    st.sampled_from(CUSTOMERS),
    # an expanded customer, as a loaded object may hold it
    st.sampled_from(CUSTOMERS).map(lambda c: {"id": c, "object": "customer"}),
    st.none(),
)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Puts of invoices, charges and subscriptions (ids reused, so some replace an earlier object),
    in-place updates of a customer or ``created``, and customer deletions."""
    ops: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 40))):
        action = draw(st.sampled_from(["put", "put", "put", "update", "delete_customer"]))
        kind = draw(st.sampled_from(sorted(STATUSES)))
        object_id = f"{kind[:3]}_{draw(st.integers(0, 4))}"
        if action == "put":
            ops.append(("put", {
                "id": object_id, "object": kind, "customer": draw(customer_ref),
                "created": draw(st.integers(100, 110)),  # narrow: many ties on created
                "status": draw(st.sampled_from(STATUSES[kind])), "livemode": draw(st.booleans()),
            }))
        elif action == "update":
            field = draw(st.sampled_from(["customer", "created", "status"]))
            value = {"customer": st.sampled_from(CUSTOMERS), "created": st.integers(100, 110),
                     "status": st.sampled_from(STATUSES[kind])}[field]
            ops.append(("update", (object_id, {field: draw(value)})))
        else:
            ops.append(("delete_customer", draw(st.sampled_from(CUSTOMERS))))
    return ops


def apply(sandbox: Sandbox, ops: list[tuple[str, Any]]) -> None:
    for action, arg in ops:
        if action == "put":
            sandbox.store.put(arg)
        elif action == "update" and sandbox.store.find(arg[0]) is not None:
            mutations.update(sandbox.store, sandbox.events, arg[0], arg[1])
        elif action == "delete_customer":
            sandbox.store.put({"id": arg, "object": "customer", "created": 1})
            mutations.delete(sandbox.store, sandbox.events, arg)


def customer_of(obj: Obj) -> Any:
    value = obj.get("customer")
    return value.get("id") if isinstance(value, dict) else value


def expected(store: Store, path: str, params: dict[str, Any], livemode: bool) -> tuple[list[str], bool]:
    """Every object of the type filtered and sorted newest first, then the cursor and limit applied."""
    kind = KIND_OF[path]
    status = params.get("status")
    matched = []
    for obj in store.objects_of(kind).values():
        if bool(obj.get("livemode")) != livemode or customer_of(obj) != params["customer"]:
            continue
        if kind == "subscription":
            if (status is None and obj["status"] == "canceled") or (
                status not in (None, "all") and obj["status"] != status
            ):
                continue
        elif status is not None and obj["status"] != status:
            continue
        created = int(obj["created"])
        bounds = params.get("created", {})
        if not (int(bounds.get("gte", 0)) <= created <= int(bounds.get("lte", 10**9))):
            continue
        matched.append(obj)
    matched.sort(key=store.order_key, reverse=True)
    limit = int(params["limit"])
    if "starting_after" in params:
        key = store.order_key(store.objects_of(kind)[params["starting_after"]])
        rest = [o for o in matched if store.order_key(o) < key]
        return [o["id"] for o in rest[:limit]], len(rest) > limit
    if "ending_before" in params:
        key = store.order_key(store.objects_of(kind)[params["ending_before"]])
        before = [o for o in matched if store.order_key(o) > key]
        return [o["id"] for o in before[-limit:]], len(before) > limit
    return [o["id"] for o in matched[:limit]], len(matched) > limit


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, dict[str, Any], bool]:
    path = draw(st.sampled_from(sorted(KIND_OF)))
    kind = KIND_OF[path]
    params: dict[str, Any] = {"customer": draw(st.sampled_from([*CUSTOMERS, "cus_none"])),
                              "limit": str(draw(st.integers(1, 5)))}
    if kind != "charge" and draw(st.booleans()):  # charges have no status filter
        extra = ["all"] if kind == "subscription" else []
        params["status"] = draw(st.sampled_from(STATUSES[kind] + extra))
    if draw(st.booleans()):
        params["created"] = {"gte": str(draw(st.integers(99, 106))), "lte": str(draw(st.integers(104, 111)))}
    cursor = draw(st.sampled_from(["", "starting_after", "ending_before"]))
    if cursor:
        params[cursor] = f"{kind[:3]}_{draw(st.integers(0, 4))}"
    return path, params, draw(st.booleans())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations(), asked=st.lists(queries(), min_size=1, max_size=8))
def test_indexed_lists_match_a_full_scan(ops: list[tuple[str, Any]],
                                         asked: list[tuple[str, dict[str, Any], bool]]) -> None:
    sandbox = Sandbox()
    apply(sandbox, ops)
    for path, params, livemode in asked:
        cursor = params.get("starting_after") or params.get("ending_before")
        if cursor is not None and cursor not in sandbox.store.objects_of(KIND_OF[path]):
            try:
                list_objects(sandbox.store, RESOURCES[path], params, livemode)
            except StripeError as error:
                assert error.status == 404
            else:
                raise AssertionError(f"an unknown cursor {cursor} was listed")
            continue
        listed = list_objects(sandbox.store, RESOURCES[path], params, livemode)
        assert ([o["id"] for o in listed["data"]], listed["has_more"]) == expected(
            sandbox.store, path, params, livemode
        ), (path, params, livemode)


def test_an_object_moved_to_another_customer_leaves_the_first_customers_list() -> None:
    sandbox = Sandbox()
    sandbox.store.put({"id": "in_1", "object": "invoice", "customer": "cus_a", "created": 5})
    mutations.update(sandbox.store, sandbox.events, "in_1", {"customer": "cus_b"})
    sandbox.store.put({"id": "ch_1", "object": "charge", "customer": "cus_a", "created": 5})
    sandbox.store.put({"id": "ch_1", "object": "charge", "customer": "cus_b", "created": 6})

    def ids(path: str, customer: str) -> list[str]:
        listed = list_objects(sandbox.store, RESOURCES[path], {"customer": customer}, False)
        return [o["id"] for o in listed["data"]]

    assert ids("invoices", "cus_a") == [] and ids("invoices", "cus_b") == ["in_1"]
    assert ids("charges", "cus_a") == [] and ids("charges", "cus_b") == ["ch_1"]
