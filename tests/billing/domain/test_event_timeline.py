"""Timeline entries only a webhook event gives (billing.domain.event_timeline): pure."""

from __future__ import annotations

from typing import Any

from billing.domain.event_timeline import Catalogue, EventEntry, entries_of_event, newest_entries
from tests.billing import stripe_factory as sf

T = sf.T0
NAMES = Catalogue(prices={}, products={}, coupons={})


def _sub_event(price: dict[str, Any], previous: dict[str, Any], **extra: Any) -> dict[str, Any]:
    sub = sf.subscription(**extra)
    sub["items"]["data"][0]["price"] = price
    event = sf.event("customer.subscription.updated", sub, T)
    event["data"]["previous_attributes"] = previous
    return event


def _items(price: dict[str, Any], quantity: int = 1) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": "si_x", "quantity": quantity, "price": price}]}


def test_a_cheaper_plan_is_a_downgrade_with_both_mrrs() -> None:
    event = _sub_event(sf.price("price_basic", amount=1000, nickname="Basic"), {"items": _items(sf.price())})
    assert [(e.kind, e.text) for e in entries_of_event(event, NAMES)] == [
        ("downgraded", "Downgraded from Pro Monthly to Basic (MRR 29.00 USD → 10.00 USD)")
    ]


def test_the_same_price_at_another_name_is_a_plan_switch() -> None:
    other = sf.price("price_other", nickname="Team")
    assert [e.kind for e in entries_of_event(_sub_event(other, {"items": _items(sf.price())}), NAMES)] == [
        "plan_switched"
    ]


def test_what_changed_nothing_the_timeline_tells_gives_no_entry() -> None:
    assert entries_of_event(_sub_event(sf.price(), {"status": "past_due"}), NAMES) == []
    assert entries_of_event(_sub_event(sf.price(), {"items": _items(sf.price())}), NAMES) == []
    removed = _sub_event(sf.price(), {"default_payment_method": "pm_1"}, default_payment_method=None)
    assert [e.text for e in entries_of_event(removed, NAMES)] == ["Payment method of Pro Monthly removed"]


def test_a_new_default_card_is_named_from_the_stored_customer() -> None:
    card = {"id": "pm_2", "card": {"brand": "visa", "last4": "4242"}}
    event = sf.event("customer.updated", sf.customer(invoice_settings={"default_payment_method": "pm_2"}), T)
    event["data"]["previous_attributes"] = {"invoice_settings": {"default_payment_method": "pm_1"}}
    stored = sf.customer(invoice_settings={"default_payment_method": card})
    assert [e.text for e in entries_of_event(event, NAMES, customer=stored)] == [
        "Default payment method changed to visa •••• 4242"
    ]


def test_kept_entries_are_the_newest_whatever_the_order_and_an_event_keeps_its_first_entry() -> None:
    entries = [EventEntry(f"evt_{n}", T + n, "quantity_changed", f"q{n}") for n in range(30)]
    kept = newest_entries([], entries[::-1], keep=20)
    assert kept == newest_entries([], entries, keep=20) == entries[:9:-1]
    again = newest_entries(kept, [EventEntry("evt_29", T + 29, "quantity_changed", "other words")], keep=20)
    assert again == kept


def test_every_entry_of_one_event_is_kept_and_a_redelivery_adds_none() -> None:
    # One update can change the plan and remove two coupons: three entries sharing the event's id.
    event = _sub_event(sf.price("price_basic", amount=1000, nickname="Basic"), {
        "items": _items(sf.price()), "discounts": ["di_a", "di_b"],
    })
    entries = entries_of_event(event, NAMES)
    assert [e.kind for e in entries] == ["downgraded", "coupon_removed", "coupon_removed"]
    kept = newest_entries([], entries)
    assert sorted((e.kind, e.text) for e in kept) == sorted((e.kind, e.text) for e in entries)
    assert newest_entries([], entries + entries[::-1]) == kept  # duplicated within a batch
    reworded = [EventEntry(e.event_id, e.at, e.kind, e.text + " (renamed)") for e in entries]
    assert newest_entries(kept, reworded) == kept  # an event already kept keeps its entries
