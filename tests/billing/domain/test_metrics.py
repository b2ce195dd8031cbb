"""MRR, LTV and renewal date: every vector of MRR.md, then one test per rule beyond them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.metrics import compute_ltv, compute_mrr, renewal_date, round_half_up
from tests.billing.domain.test_metrics_shapes import (
    AS_OF,
    DAY,
    NOW,
    charge,
    coupon,
    discount,
    item,
    price,
    subscription,
    tax_rate,
)


def mrr_of(*subs: dict[str, Any], coupons: Sequence[dict[str, Any]] = (), **kw: Any) -> dict[str, int]:
    return compute_mrr(list(subs), coupons={c["id"]: c for c in coupons}, as_of=AS_OF, **kw).mrr


# ---------------------------------------------------------------- vectors V1–V15


@dataclass
class Vector:
    subs: list[dict[str, Any]]
    mrr: dict[str, int]
    coupons: list[dict[str, Any]] = field(default_factory=list)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    temporary: dict[str, int] | None = None
    scheduled_cancel: bool = False
    has_metered_items: bool = False
    excluded_trialing: dict[str, int] = field(default_factory=dict)


GRADUATED = [
    {"up_to": 5, "unit_amount": 700, "unit_amount_decimal": "700", "flat_amount": None,
     "flat_amount_decimal": None},
    {"up_to": 10, "unit_amount": 650, "unit_amount_decimal": "650", "flat_amount": None,
     "flat_amount_decimal": None},
    {"up_to": None, "unit_amount": 600, "unit_amount_decimal": "600", "flat_amount": None,
     "flat_amount_decimal": None},
]


def _tiered_price(mode: str, tiers: list[dict[str, Any]], *, price_id: str = "price_tiered",
                  with_tiers: bool = True) -> dict[str, Any]:
    body = price(None, price_id=price_id, billing_scheme="tiered", tiers_mode=mode)
    if with_tiers:
        body["tiers"] = tiers
    return body


VECTORS: dict[str, Vector] = {
    "V1": Vector([subscription(item(price(2900)))], {"usd": 2900}),
    "V2": Vector([subscription(item(price(1000), 3))], {"usd": 3000}),
    "V3": Vector([subscription(item(price(120000, interval="year")))], {"usd": 10000}),
    "V4": Vector([subscription(item(price(1000, interval="week")))], {"usd": 4333}),
    "V5": Vector([subscription(item(price(3000, currency="jpy")), currency="jpy")], {"jpy": 3000}),
    "V6": Vector(
        [subscription(item(price(5000)), discounts=[discount("p20")])], {"usd": 4000},
        coupons=[coupon("p20", percent_off=20)],
    ),
    "V7": Vector(
        [subscription(item(price(5000)), discounts=[discount("a500")])], {"usd": 4500},
        coupons=[coupon("a500", amount_off=500, currency="usd")],
    ),
    "V8": Vector(
        [subscription(item(price(5000)), discounts=[discount("rep50", end=NOW + 60 * DAY)])],
        {"usd": 5000}, coupons=[coupon("rep50", percent_off=50, duration="repeating")],
        temporary={"usd": 2500},
    ),
    "V9": Vector(
        [subscription(item(price(5000)), status="trialing", trial_end=NOW + 5 * DAY)], {},
        temporary={}, excluded_trialing={"usd": 5000},
    ),
    "V10": Vector([subscription(item(price(5000)), status="past_due")], {"usd": 5000}),
    "V11": Vector(
        [subscription(item(price(5000)), cancel_at_period_end=True)], {"usd": 5000},
        scheduled_cancel=True,
    ),
    "V12": Vector(
        [subscription(item(price(4900, product="prod_base")), item(price(1000, product="prod_seat"), 3))],
        {"usd": 7900},
    ),
    "V13": Vector(
        # the subscription embeds the price without tiers; the tiers-expanded copy comes in `prices`
        [subscription(item(_tiered_price("graduated", GRADUATED, with_tiers=False), 20))],
        {"usd": 12750}, prices={"price_tiered": _tiered_price("graduated", GRADUATED)},
    ),
    "V14": Vector(
        [subscription(item(price(10000)), item(price(None, usage_type="metered"), None))],
        {"usd": 10000}, has_metered_items=True,
    ),
    "V15": Vector(
        [subscription(item(price(5000))), subscription(item(price(4000, currency="eur")), currency="eur")],
        {"usd": 5000, "eur": 4000},
    ),
}


@pytest.mark.parametrize("name", list(VECTORS))
def test_mrr_vector(name: str) -> None:
    vector = VECTORS[name]
    result = compute_mrr(
        vector.subs, coupons={c["id"]: c for c in vector.coupons}, prices=vector.prices, as_of=AS_OF
    )
    assert result.mrr == vector.mrr
    expected_temporary = vector.mrr if vector.temporary is None else vector.temporary
    assert result.with_temporary_discounts == expected_temporary
    assert result.scheduled_cancel is vector.scheduled_cancel
    assert result.has_metered_items is vector.has_metered_items
    assert result.excluded_trialing == vector.excluded_trialing
    assert result.excluded_paused == {}


# ---------------------------------------------------------------- vectors W1–W3


@pytest.mark.parametrize(
    ("name", "charges", "expected"),
    [
        ("W1", [charge(2900), charge(2900), charge(2900, refunded=2900)], {"usd": 5800}),
        ("W2", [charge(5000), charge(5000, status="failed"), charge(5000, status="pending")],
         {"usd": 5000}),
        ("W3", [charge(5000), charge(3000, currency="eur"), charge(4000, currency="jpy")],
         {"usd": 5000, "eur": 3000, "jpy": 4000}),
    ],
)
def test_ltv_vector(name: str, charges: list[dict[str, Any]], expected: dict[str, int]) -> None:
    assert compute_ltv(charges) == expected


# ---------------------------------------------------------------- interval normalisation


@pytest.mark.parametrize(
    ("amount", "interval", "count", "expected"),
    [
        (6000, "month", 2, 3000),
        (9000, "month", 3, 3000),
        (240000, "year", 2, 10000),
        (1200, "week", 1, 5200),  # 1200 × 52 / 12
        (3000, "week", 2, 6500),  # 3000 × 52 / 24
        (100, "day", 1, 3042),  # 100 × 365 / 12 = 3041.67
        (700, "day", 7, 3042),  # a 7-day cadence is not a calendar week: 700 × 365 / 84 = 3041.67
    ],
)
def test_interval_count_divides(amount: int, interval: str, count: int, expected: int) -> None:
    assert mrr_of(subscription(item(price(amount, interval=interval, interval_count=count)))) == {
        "usd": expected
    }


def test_half_up_rounding_happens_once_per_currency() -> None:
    # 1000/week → 4333.33; three of them sum to 12999.99... → 13000, not 3 × 4333
    subs = [subscription(item(price(1000, interval="week"))) for _ in range(3)]
    assert mrr_of(*subs) == {"usd": 13000}


def test_half_up_rounds_a_half_up() -> None:
    # 1 cent per 2 months → 0.5 → 1; 1 cent per 3 months → 0.33 → 0
    assert mrr_of(subscription(item(price(1, interval_count=2)))) == {"usd": 1}
    assert mrr_of(subscription(item(price(1, interval_count=3)))) == {}
    assert round_half_up(Fraction(5, 2)) == 3
    assert round_half_up(Fraction(7, 3)) == 2


def test_item_period_amount_rounds_before_summing() -> None:
    # each invoice line of 0.5 × 1 seat is billed as 1: three subscriptions make 3, not round(1.5)
    fractional = price(None, unit_amount_decimal="0.5")
    subs = [subscription(item(fractional, 1)) for _ in range(3)]
    assert mrr_of(*subs) == {"usd": 3}


# ---------------------------------------------------------------- price shapes


def test_unit_amount_null_uses_unit_amount_decimal() -> None:
    fractional = price(None, unit_amount_decimal="2500.5")
    assert mrr_of(subscription(item(fractional, 3))) == {"usd": 7502}  # 7501.5 → 7502


@pytest.mark.parametrize(("rounding", "expected"), [("up", 2000), ("down", 1000)])
def test_transform_quantity(rounding: str, expected: int) -> None:
    packs = price(1000, transform_quantity={"divide_by": 10, "round": rounding})
    assert mrr_of(subscription(item(packs, 15))) == {"usd": expected}


def test_volume_tiers_with_flat_amount() -> None:
    tiers = [
        {"up_to": 10, "unit_amount": 500, "unit_amount_decimal": "500", "flat_amount": 1000,
         "flat_amount_decimal": "1000"},
        {"up_to": None, "unit_amount": 400, "unit_amount_decimal": "400", "flat_amount": 2000,
         "flat_amount_decimal": "2000"},
    ]
    volume = _tiered_price("volume", tiers)
    assert mrr_of(subscription(item(volume, 10))) == {"usd": 6000}  # 10 × 500 + 1000
    assert mrr_of(subscription(item(volume, 11))) == {"usd": 6400}  # all 11 × 400 + 2000


def test_graduated_tiers_with_flat_amounts() -> None:
    tiers = [
        {"up_to": 1, "unit_amount": 0, "unit_amount_decimal": "0", "flat_amount": 5000,
         "flat_amount_decimal": "5000"},
        {"up_to": None, "unit_amount": 1000, "unit_amount_decimal": "1000", "flat_amount": 300,
         "flat_amount_decimal": "300"},
    ]
    graduated = _tiered_price("graduated", tiers)
    assert mrr_of(subscription(item(graduated, 1))) == {"usd": 5000}  # second tier not reached
    assert mrr_of(subscription(item(graduated, 4))) == {"usd": 8300}  # 5000 + 3 × 1000 + 300


def test_tiered_price_without_tiers_counts_nothing_rather_than_guessing() -> None:
    unexpanded = _tiered_price("graduated", GRADUATED, with_tiers=False)
    assert mrr_of(subscription(item(unexpanded, 20))) == {}


def test_legacy_plan_fallback() -> None:
    plan = {"id": "plan_old", "object": "plan", "amount": 1500, "amount_decimal": "1500",
            "billing_scheme": "per_unit", "currency": "usd", "interval": "month", "interval_count": 3,
            "usage_type": "licensed", "product": "prod_old", "nickname": "Old", "transform_usage": None}
    legacy = {"id": "si_old", "plan": plan, "quantity": 2, "current_period_end": NOW + DAY}
    assert mrr_of(subscription(legacy)) == {"usd": 1000}


def test_quantity_none_bills_one() -> None:
    assert mrr_of(subscription(item(price(2900), None))) == {"usd": 2900}


def test_one_time_prices_on_a_subscription_are_not_recurring_revenue() -> None:
    once = price(9900, type="one_time", recurring=None)
    assert mrr_of(subscription(item(price(2900)), item(once))) == {"usd": 2900}


# ---------------------------------------------------------------- discounts


def test_percent_discount_respects_applies_to_products() -> None:
    sub = subscription(
        item(price(4900, product="prod_base")),
        item(price(1000, product="prod_seat"), 3),
        discounts=[discount("seats50")],
    )
    seats_only = coupon("seats50", percent_off=50, applies_to={"products": ["prod_seat"]})
    assert mrr_of(sub, coupons=[seats_only]) == {"usd": 6400}  # 4900 + 1500


def test_amount_off_in_another_currency_does_not_apply() -> None:
    sub = subscription(item(price(5000)), discounts=[discount("eur5")])
    assert mrr_of(sub, coupons=[coupon("eur5", amount_off=500, currency="eur")]) == {"usd": 5000}


def test_amount_off_uses_currency_options() -> None:
    sub = subscription(item(price(5000)), discounts=[discount("multi")])
    multi = coupon("multi", amount_off=500, currency="eur",
                   currency_options={"usd": {"amount_off": 700}})
    assert mrr_of(sub, coupons=[multi]) == {"usd": 4300}


def test_amount_off_larger_than_the_invoice_floors_at_zero() -> None:
    sub = subscription(item(price(1000)), discounts=[discount("big")])
    other = subscription(item(price(2000)))
    result = compute_mrr([sub, other], coupons={"big": coupon("big", amount_off=5000, currency="usd")},
                         as_of=AS_OF)
    assert result.mrr == {"usd": 2000}
    assert sub["id"] not in result.per_subscription


def test_amount_off_applies_once_per_invoice_not_per_item() -> None:
    sub = subscription(item(price(3000, product="a")), item(price(2000, product="b")),
                       discounts=[discount("a500")])
    assert mrr_of(sub, coupons=[coupon("a500", amount_off=500, currency="usd")]) == {"usd": 4500}


def test_amount_off_once_per_invoice_of_each_cadence() -> None:
    # a yearly invoice gets 1200 off once a year (100/month), the monthly one 1200 off every month
    sub = subscription(
        item(price(3000, product="a")),
        item(price(120000, product="b", interval="year")),
        discounts=[discount("off")],
    )
    off = coupon("off", amount_off=1200, currency="usd")
    assert mrr_of(sub, coupons=[off]) == {"usd": 1800 + 9900}


def test_item_level_discount_applies_before_subscription_level() -> None:
    discounted = item(price(10000, product="a"), discounts=[discount("a5000")])
    sub = subscription(discounted, discounts=[discount("p10")])
    coupons = [coupon("a5000", amount_off=5000, currency="usd"), coupon("p10", percent_off=10)]
    assert mrr_of(sub, coupons=coupons) == {"usd": 4500}  # (10000 − 5000) × 0.9, not 9000 − 5000


def test_customer_discount_applies_only_without_subscription_discounts() -> None:
    customer = {"id": "cus_jane", "discount": discount("cust25")}
    coupons = [coupon("cust25", percent_off=25), coupon("p10", percent_off=10)]
    plain = subscription(item(price(4000)))
    own = subscription(item(price(4000)), discounts=[discount("p10")])
    assert mrr_of(plain, coupons=coupons, customer=customer) == {"usd": 3000}
    assert mrr_of(own, coupons=coupons, customer=customer) == {"usd": 3600}


def test_expired_discount_is_inactive() -> None:
    sub = subscription(item(price(5000)), discounts=[discount("p20", end=NOW - DAY)])
    assert mrr_of(sub, coupons=[coupon("p20", percent_off=20)]) == {"usd": 5000}


def test_once_coupon_only_in_temporary_figure() -> None:
    sub = subscription(item(price(5000)), discounts=[discount("once10")])
    result = compute_mrr([sub], coupons={"once10": coupon("once10", amount_off=1000, currency="usd",
                                                          duration="once")}, as_of=AS_OF)
    assert result.mrr == {"usd": 5000}
    assert result.with_temporary_discounts == {"usd": 4000}


def test_unresolvable_discount_ids_are_ignored() -> None:
    sub = subscription(item(price(5000)), discounts=["di_not_expanded"])
    assert mrr_of(sub, coupons=[]) == {"usd": 5000}


def test_fractional_percent_is_exact() -> None:
    sub = subscription(item(price(10000)), discounts=[discount("p255")])
    assert mrr_of(sub, coupons=[coupon("p255", percent_off=25.5)]) == {"usd": 7450}


# ---------------------------------------------------------------- tax


def test_inclusive_tax_rate_is_removed() -> None:
    sub = subscription(item(price(11900), tax_rates=[tax_rate(19, inclusive=True)]))
    assert mrr_of(sub) == {"usd": 10000}


def test_inclusive_price_with_default_tax_rates() -> None:
    sub = subscription(
        item(price(12000, tax_behavior="inclusive")),
        default_tax_rates=[tax_rate(20, inclusive=False)],
    )
    assert mrr_of(sub) == {"usd": 10000}


def test_exclusive_tax_is_ignored() -> None:
    sub = subscription(item(price(10000), tax_rates=[tax_rate(19, inclusive=False)]))
    assert mrr_of(sub) == {"usd": 10000}


# ---------------------------------------------------------------- statuses


def test_pause_collection_reports_would_be_amount_apart() -> None:
    sub = subscription(item(price(5000)), pause_collection={"behavior": "void", "resumes_at": None})
    result = compute_mrr([sub], as_of=AS_OF)
    assert result.mrr == {}
    assert result.excluded_paused == {"usd": 5000}


def test_paused_status_reports_would_be_amount_apart() -> None:
    result = compute_mrr([subscription(item(price(5000)), status="paused")], as_of=AS_OF)
    assert (result.mrr, result.excluded_paused) == ({}, {"usd": 5000})


@pytest.mark.parametrize("status", ["incomplete", "incomplete_expired", "unpaid", "canceled"])
def test_uncounted_statuses(status: str) -> None:
    result = compute_mrr([subscription(item(price(5000)), status=status)], as_of=AS_OF)
    assert result.mrr == {}
    assert result.excluded_trialing == result.excluded_paused == {}


def test_future_cancel_at_flags_scheduled_cancel() -> None:
    result = compute_mrr([subscription(item(price(5000)), cancel_at=NOW + 9 * DAY)], as_of=AS_OF)
    assert result.scheduled_cancel is True
    assert result.mrr == {"usd": 5000}


def test_per_subscription_contributions() -> None:
    a = subscription(item(price(2900)))
    b = subscription(item(price(1000, currency="eur")), currency="eur")
    trial = subscription(item(price(5000)), status="trialing")
    result = compute_mrr([a, b, trial], as_of=AS_OF)
    assert result.per_subscription == {a["id"]: {"usd": 2900}, b["id"]: {"eur": 1000}}


# ---------------------------------------------------------------- currencies


def test_three_decimal_currency_is_not_divided() -> None:
    sub = subscription(item(price(12500, currency="kwd", interval="year")), currency="kwd")
    assert mrr_of(sub) == {"kwd": 1042}  # 12.500 KWD a year → 1.042 KWD a month


def test_zero_decimal_currency_is_not_divided() -> None:
    sub = subscription(item(price(1000, currency="jpy", interval="week")), currency="jpy")
    assert mrr_of(sub) == {"jpy": 4333}


# ---------------------------------------------------------------- slim objects


def test_slim_projection_works() -> None:
    slim = {
        "id": "sub_slim", "status": "active", "currency": "usd",
        "items": {"data": [{"quantity": 2, "current_period_end": NOW + DAY,
                            "price": {"id": "price_s", "unit_amount": 1500,
                                      "recurring": {"interval": "month"}}}]},
    }
    assert mrr_of(slim) == {"usd": 3000}
    assert renewal_date([slim]) == datetime.fromtimestamp(NOW + DAY, UTC)


def test_odd_but_valid_data_does_not_raise() -> None:
    odd = {"id": "sub_odd", "status": "active", "items": {"data": [{"price": None}, {}]},
           "discounts": None, "currency": None}
    assert compute_mrr([odd, {}], as_of=AS_OF).mrr == {}


# ---------------------------------------------------------------- renewal date


def test_renewal_date_is_earliest_counted_item_end() -> None:
    soon, later = NOW + 3 * DAY, NOW + 10 * DAY
    active = subscription(item(price(1000), period_end=later), item(price(500), period_end=soon + DAY))
    metered = subscription(item(price(None, usage_type="metered"), None, period_end=soon - DAY),
                           item(price(800), period_end=soon))
    trialing = subscription(item(price(1000), period_end=NOW + DAY), status="trialing")
    assert renewal_date([active, metered, trialing]) == datetime.fromtimestamp(soon, UTC)
    assert renewal_date([trialing]) is None


# ---------------------------------------------------------------- LTV rules


def test_ltv_uncaptured_authorisation_counts_zero() -> None:
    auth = charge(5000, captured=False)
    assert compute_ltv([auth, charge(100)]) == {"usd": 100}


def test_ltv_partial_refund() -> None:
    assert compute_ltv([charge(5000, refunded=1200)]) == {"usd": 3800}


def test_ltv_lost_dispute_subtracted_won_not() -> None:
    lost, won = charge(5000, charge_id="ch_lost"), charge(3000, charge_id="ch_won")
    disputes = [
        {"id": "dp_1", "object": "dispute", "amount": 5000, "charge": "ch_lost", "currency": "usd",
         "status": "lost"},
        {"id": "dp_2", "object": "dispute", "amount": 3000, "charge": "ch_won", "currency": "usd",
         "status": "won"},
    ]
    assert compute_ltv([lost, won], disputes=disputes) == {"usd": 3000}


def test_ltv_out_of_band_credit_note_subtracted_and_floored() -> None:
    notes = [
        {"id": "cn_1", "object": "credit_note", "currency": "usd", "out_of_band_amount": 1000,
         "status": "issued"},
        {"id": "cn_2", "object": "credit_note", "currency": "eur", "out_of_band_amount": 9000,
         "status": "issued"},
        {"id": "cn_3", "object": "credit_note", "currency": "usd", "out_of_band_amount": None,
         "status": "issued"},
    ]
    ltv = compute_ltv([charge(5000), charge(2000, currency="eur")], credit_notes=notes)
    assert ltv == {"usd": 4000}


# ---------------------------------------------------------------- properties


_coupon_strategy = st.one_of(
    st.builds(lambda p: coupon("c", percent_off=p), st.floats(0, 100, allow_nan=False)),
    st.builds(lambda a: coupon("c", amount_off=a, currency="usd"), st.integers(0, 10**7)),
)


@given(
    amounts=st.lists(st.integers(0, 10**7), min_size=1, max_size=4),
    quantity=st.one_of(st.none(), st.integers(0, 1000)),
    interval=st.sampled_from(["day", "week", "month", "year"]),
    interval_count=st.integers(1, 12),
    chosen=_coupon_strategy,
)
def test_mrr_is_never_negative(
    amounts: list[int], quantity: int | None, interval: str, interval_count: int, chosen: dict[str, Any]
) -> None:
    items = [item(price(a, interval=interval, interval_count=interval_count), quantity) for a in amounts]
    sub = subscription(*items, discounts=[discount("c")])
    result = compute_mrr([sub], coupons={"c": chosen}, as_of=AS_OF)
    assert all(v >= 0 for v in result.mrr.values())
    assert all(v >= 0 for v in result.with_temporary_discounts.values())


@given(unit=st.integers(1, 10**6), quantity=st.integers(1, 500))
def test_per_unit_mrr_scales_linearly_with_quantity(unit: int, quantity: int) -> None:
    one = mrr_of(subscription(item(price(unit), 1)))["usd"]
    many = mrr_of(subscription(item(price(unit), quantity)))["usd"]
    assert many == one * quantity


def test_plan_stored_under_price_key_is_read_as_a_plan() -> None:
    plan = {"id": "plan_old", "object": "plan", "amount": 1200, "currency": "usd", "interval": "year",
            "interval_count": 1, "usage_type": "licensed"}
    joined = {"id": "si_old", "price": plan, "plan": plan, "quantity": 1}
    assert mrr_of(subscription(joined)) == {"usd": 100}


def test_price_given_by_id_is_resolved_through_prices() -> None:
    full = price(2500, price_id="price_by_id")
    sub = subscription(item("price_by_id"))  # type: ignore[arg-type]
    assert compute_mrr([sub], prices={"price_by_id": full}, as_of=AS_OF).mrr == {"usd": 2500}
    assert renewal_date([sub]) is None  # unknown price: not known to be licensed
    assert renewal_date([sub], prices={"price_by_id": full}) is not None


def test_last_tier_given_as_inf_is_unbounded() -> None:
    tiers = [{**GRADUATED[0]}, {**GRADUATED[2], "up_to": "inf"}]
    assert mrr_of(subscription(item(_tiered_price("graduated", tiers), 7))) == {"usd": 3500 + 1200}


# ---------------------------------------------------------------- multi-currency prices


def test_subscription_in_another_currency_uses_the_price_currency_option() -> None:
    # A USD price with a EUR option, billed to a EUR subscription: Stripe bills the EUR option's amount.
    multi = price(5000, price_id="price_multi",
                  currency_options={"usd": {"unit_amount": 5000, "unit_amount_decimal": "5000",
                                            "tax_behavior": "unspecified"},
                                    "eur": {"unit_amount": 4500, "unit_amount_decimal": "4500",
                                            "tax_behavior": "unspecified"}})
    sub = subscription(item(multi, 2), currency="eur")
    assert mrr_of(sub) == {"eur": 9000}
    # currency_options is only returned when expanded: the expanded copy in `prices` is used
    bare = {k: v for k, v in multi.items() if k != "currency_options"}
    assert compute_mrr([subscription(item(bare), currency="eur")], prices={"price_multi": multi},
                       as_of=AS_OF).mrr == {"eur": 4500}


def test_amount_in_another_currency_is_never_relabelled() -> None:
    # Without the option's amount the EUR figure is unknown: count nothing rather than call $50 €50.
    sub = subscription(item(price(5000)), currency="eur")
    assert mrr_of(sub) == {}
