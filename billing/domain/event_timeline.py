"""Timeline entries only a webhook event can give (pure, no I/O): what its ``previous_attributes``
say changed, which the objects themselves no longer show once changed (``billing.domain.timeline``
builds the rest from the objects): an upgrade or downgrade (the plan before, and the MRR before and
after), a quantity change, a coupon removed, a payment method changed, collection paused or resumed.

An entry is keyed by its event (and its place among the event's entries) and dated by the event's
``created``, and is made from the event alone (names and amounts from the tenant's catalogue), so
duplicated or shuffled deliveries give the same entries. The worker keeps the newest
``EVENT_ENTRIES_KEPT`` of a customer (``billing.cache.event_timeline``); the builder merges them into
the context's timeline (``CustomerData.event_entries``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billing.domain.builder import main_item, plan_name
from billing.domain.lifecycle import to_datetime
from billing.domain.metrics import compute_mrr
from billing.domain.models import TimelineEntry
from billing.domain.snapshot import StripeDict, id_of
from billing.domain.timeline import coupon_label, money

EVENT_ENTRIES_KEPT = 20


@dataclass(frozen=True)
class EventEntry:
    event_id: str
    at: int  # the event's ``created``
    kind: str
    text: str

    def to_timeline(self) -> TimelineEntry:
        return TimelineEntry(at=datetime.fromtimestamp(self.at, UTC), kind=self.kind, text=self.text)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.event_id, "at": self.at, "kind": self.kind, "text": self.text}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EventEntry | None:
        event_id, at, kind, text = raw.get("id"), raw.get("at"), raw.get("kind"), raw.get("text")
        if not (isinstance(event_id, str) and isinstance(at, int) and isinstance(kind, str)
                and isinstance(text, str)):
            return None
        return cls(event_id, at, kind, text)


def newest_entries(
    stored: Iterable[EventEntry], new: Iterable[EventEntry], keep: int = EVENT_ENTRIES_KEPT
) -> list[EventEntry]:
    """``stored`` with ``new`` added (an event already there keeps its entry), the newest ``keep``,
    newest first (by time, then event id: the same list whatever order they came in)."""
    by_event = {e.event_id: e for e in new}
    by_event.update({e.event_id: e for e in stored})
    return sorted(by_event.values(), key=lambda e: (e.at, e.event_id, e.kind), reverse=True)[:keep]


@dataclass(frozen=True)
class Catalogue:
    """Names and amounts for the words: the tenant's prices, products and coupons by id."""

    prices: Mapping[str, StripeDict]
    products: Mapping[str, StripeDict]
    coupons: Mapping[str, StripeDict]


def entries_of_event(
    event: Mapping[str, Any],
    catalogue: Catalogue,
    *,
    customer: StripeDict | None = None,
    before: StripeDict | None = None,
) -> list[EventEntry]:
    """The entries ``event`` gives. ``customer``: the customer's stored object (its discount and
    currency weigh in the MRR; its expanded card names a new default card); ``before``: the stored
    object the event changes, where its discounts are expanded (to name a removed coupon)."""
    event_id, created, kind = event.get("id"), event.get("created"), event.get("type")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    previous = data.get("previous_attributes") if isinstance(data, Mapping) else None
    if not (isinstance(event_id, str) and isinstance(created, int) and isinstance(obj, dict)
            and isinstance(obj.get("id"), str)):
        return []
    previous = previous if isinstance(previous, dict) else {}
    found: list[tuple[str, str]] = []
    if kind == "customer.updated":
        found += _card_change(obj, previous, customer)
    elif kind in ("customer.subscription.updated", "customer.subscription.paused",
                  "customer.subscription.resumed"):
        found += _subscription_changes(str(kind), obj, previous, catalogue, customer, before, created)
    # One event may give several entries (a plan change and two coupons removed): each is keyed by the
    # event and its place in it, so none replaces another and a redelivery gives the same keys.
    return [EventEntry(event_id if n == 0 else f"{event_id}#{n + 1}", created, entry_kind, text)
            for n, (entry_kind, text) in enumerate(found)]


def _card_change(
    obj: StripeDict, previous: Mapping[str, Any], customer: StripeDict | None
) -> list[tuple[str, str]]:
    settings = previous.get("invoice_settings")
    if not isinstance(settings, Mapping) or "default_payment_method" not in settings:
        return []
    now = _path(obj, "invoice_settings", "default_payment_method")
    if id_of(now) == id_of(settings.get("default_payment_method")):
        return []
    if now is None:
        return [("payment_method_updated", "Default payment method removed")]
    card = _path(customer or {}, "invoice_settings", "default_payment_method")
    if not isinstance(card, Mapping) or card.get("id") != id_of(now):
        card = now if isinstance(now, Mapping) else None
    return [("payment_method_updated", f"Default payment method changed{_card_words(card)}")]


def _card_words(card: Mapping[str, Any] | None) -> str:
    details = card.get("card") if isinstance(card, Mapping) else None
    if not isinstance(details, Mapping) or not isinstance(details.get("last4"), str):
        return ""
    return f" to {details.get('brand') or 'card'} •••• {details['last4']}"


def _subscription_changes(
    kind: str, sub: StripeDict, previous: Mapping[str, Any], catalogue: Catalogue,
    customer: StripeDict | None, before: StripeDict | None, created: int,
) -> list[tuple[str, str]]:
    old = {**sub, **previous}
    plan = plan_name(sub, catalogue.prices, catalogue.products) or str(sub["id"])
    if kind == "customer.subscription.paused":
        return []  # the paused subscription shows it (billing.domain.timeline), with its reason
    if kind == "customer.subscription.resumed":
        return [("resumed", f"Subscription to {plan} resumed")]
    out: list[tuple[str, str]] = []
    if "items" in previous:
        out += _plan_change(sub, old, plan, catalogue, customer, created)
    if "discounts" in previous:
        out += _coupons_removed(sub, previous.get("discounts"), plan, catalogue, before)
    if "default_payment_method" in previous and id_of(sub.get("default_payment_method")) != id_of(
        previous.get("default_payment_method")
    ):
        verb = "removed" if sub.get("default_payment_method") is None else "changed"
        out.append(("payment_method_updated", f"Payment method of {plan} {verb}"))
    if "pause_collection" in previous:
        was, now = previous.get("pause_collection"), sub.get("pause_collection")
        if not was and now:
            resumes = to_datetime(now.get("resumes_at")) if isinstance(now, Mapping) else None
            until = f" until {resumes:%Y-%m-%d}" if resumes is not None else ""
            out.append(("paused", f"Payment collection for {plan} paused{until}"))
        elif was and not now:
            out.append(("resumed", f"Payment collection for {plan} resumed"))
    return out


def _plan_change(
    sub: StripeDict, old: StripeDict, plan: str, catalogue: Catalogue, customer: StripeDict | None,
    created: int,
) -> list[tuple[str, str]]:
    new_main, old_main = main_item(sub, catalogue.prices), main_item(old, catalogue.prices)
    if new_main is None or old_main is None:
        return []
    (new_item, new_terms), (old_item, old_terms) = new_main, old_main
    new_quantity, old_quantity = new_item.get("quantity"), old_item.get("quantity")
    if new_terms.id == old_terms.id and new_quantity == old_quantity:
        return []
    at = datetime.fromtimestamp(created, UTC)
    currency = str(sub.get("currency") or new_terms.currency or "")
    mrr_new, mrr_old = (
        compute_mrr([s], customer=customer, coupons=catalogue.coupons, prices=catalogue.prices, as_of=at)
        .per_subscription.get(str(sub["id"]), {}).get(currency)
        for s in (sub, old)
    )
    mrr = (f" (MRR {money(mrr_old, currency)} → {money(mrr_new, currency)})"
           if mrr_old is not None and mrr_new is not None else "")
    if new_terms.id == old_terms.id:
        text = f"Quantity of {plan} changed from {old_quantity} to {new_quantity}{mrr}"
        return [("quantity_changed", text)]
    old_plan = plan_name(old, catalogue.prices, catalogue.products) or str(old_terms.id)
    if mrr_old is not None and mrr_new is not None and mrr_new != mrr_old:
        verb, kind = ("Upgraded", "upgraded") if mrr_new > mrr_old else ("Downgraded", "downgraded")
    else:
        verb, kind = "Changed", "plan_switched"
    return [(kind, f"{verb} from {old_plan} to {plan}{mrr}")]


def _coupons_removed(
    sub: StripeDict, was: Any, plan: str, catalogue: Catalogue, before: StripeDict | None
) -> list[tuple[str, str]]:
    now = {id_of(d) for d in sub.get("discounts") or []}
    known = {d.get("id"): d for d in (before or {}).get("discounts") or [] if isinstance(d, dict)}
    out = []
    for discount in was if isinstance(was, Sequence) and not isinstance(was, str) else []:
        discount_id = id_of(discount)
        if discount_id is None or discount_id in now:
            continue
        expanded = discount if isinstance(discount, dict) else known.get(discount_id)
        label = coupon_label(expanded, catalogue.coupons) if expanded is not None else "A coupon"
        out.append(("coupon_removed", f"{label} removed from {plan}"))
    return out


def _path(obj: Mapping[str, Any], *keys: str) -> Any:
    value: Any = obj
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value
