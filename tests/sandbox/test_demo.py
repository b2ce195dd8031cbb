"""The demo dataset covers every case other tests and the demo rely on, deterministically."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sandbox.demo import DEMO_CUSTOMERS, build

NOW = 1_800_000_000


def by_type(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["object"] == kind]


def test_build_is_deterministic_and_relative_to_now() -> None:
    assert build(NOW) == build(NOW)
    later = build(NOW + 1000)
    assert [o["id"] for o in later] == [o["id"] for o in build(NOW)]
    assert by_type(later, "customer")[0]["created"] == by_type(build(NOW), "customer")[0]["created"] + 1000


def test_coverage() -> None:
    objects = build(NOW)
    customers = [c for c in by_type(objects, "customer") if not c.get("deleted")]
    subs = by_type(objects, "subscription")
    assert len(customers) >= 50
    assert {s["status"] for s in subs} == {
        "incomplete",
        "incomplete_expired",
        "trialing",
        "active",
        "past_due",
        "canceled",
        "unpaid",
        "paused",
    }
    assert any(s["pause_collection"] for s in subs)
    prices = by_type(objects, "price")
    assert {p["currency"] for p in prices} >= {"usd", "eur", "jpy"}
    assert {p["recurring"]["interval"] for p in prices} >= {"month", "year", "week"}
    assert any(p["recurring"]["interval_count"] > 1 for p in prices)
    assert {p["tiers_mode"] for p in prices} >= {"graduated", "volume"}
    assert any(p["recurring"]["usage_type"] == "metered" for p in prices)
    assert any(p["tax_behavior"] == "inclusive" for p in prices)
    assert any(p["transform_quantity"] for p in prices)
    assert {c["duration"] for c in by_type(objects, "coupon")} == {"forever", "repeating", "once"}
    assert any(c["amount_off"] for c in by_type(objects, "coupon"))
    assert any(c["discount"] for c in customers)
    assert any(i["quantity"] and i["quantity"] > 1 for s in subs for i in s["items"]["data"])
    assert max(Counter(s["customer"] for s in subs).values()) >= 2
    assert any(c["status"] == "lost" for c in by_type(objects, "dispute"))
    assert any(c["amount_refunded"] for c in by_type(objects, "charge"))
    assert any(c.get("deleted") for c in by_type(objects, "customer"))
    modes = {(c["email"], c["livemode"]) for c in customers}
    assert {("both@example.com", False), ("both@example.com", True)} <= modes
    assert sum(1 for c in customers if c["email"] == "shared@example.com") == 2
    assert all(email in {c["email"] for c in customers} for email in DEMO_CUSTOMERS)


def test_current_api_shape() -> None:
    objects = build(NOW)
    for sub in by_type(objects, "subscription"):
        assert "current_period_end" not in sub
        assert all("current_period_end" in item for item in sub["items"]["data"])
        assert all(isinstance(d, str) for d in sub["discounts"])
        if sub["status"] == "active":
            assert all(item["current_period_end"] > NOW for item in sub["items"]["data"])
    for invoice in by_type(objects, "invoice"):
        assert "subscription" not in invoice
    discounts = by_type(objects, "discount")
    assert all(d["source"]["type"] == "coupon" and isinstance(d["source"]["coupon"], str) for d in discounts)


def test_jane() -> None:
    objects = build(NOW)
    jane = next(c for c in by_type(objects, "customer") if c.get("email") == "jane@acme.com")
    [sub] = [s for s in by_type(objects, "subscription") if s["customer"] == jane["id"]]
    assert sub["status"] == "past_due"
    [item] = sub["items"]["data"]
    assert item["current_period_end"] == NOW + 12 * 86400
    invoices = [i for i in by_type(objects, "invoice") if i["customer"] == jane["id"]]
    [open_invoice] = [i for i in invoices if i["status"] == "open"]
    assert (open_invoice["attempt_count"], open_invoice["amount_due"]) == (2, 2900)
    assert open_invoice["next_payment_attempt"] > NOW
    charges = Counter(c["status"] for c in by_type(objects, "charge") if c["customer"] == jane["id"])
    assert charges == {"succeeded": 3, "failed": 2}
