"""MRR, LTV and renewal date from Stripe objects: pure functions, exact arithmetic (see MRR.md).

Amounts stay in Stripe's minor units throughout: currency exponents matter for display and for
rule thresholds, never for MRR math. Every intermediate is a ``Fraction``; an item's period amount is
rounded half-up once (Stripe rounds per invoice line), and each currency's total once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from billing.domain.models import Money
from billing.domain.snapshot import StripeDict, id_of

COUNTED_STATUSES = frozenset({"active", "past_due"})
_EMPTY: Mapping[str, StripeDict] = {}

# Months per billing interval of one unit; divided by interval_count.
_MONTHS_PER_INTERVAL: dict[str, Fraction] = {
    "month": Fraction(1),
    "year": Fraction(12),
    "week": Fraction(12, 52),
    "day": Fraction(12, 365),
}


@dataclass(frozen=True)
class MrrResult:
    mrr: Money
    """Primary MRR: forever discounts only."""
    with_temporary_discounts: Money
    scheduled_cancel: bool
    has_metered_items: bool
    excluded_trialing: Money
    """Would-be MRR of trialing subscriptions."""
    excluded_paused: Money
    """Would-be MRR of paused subscriptions and of subscriptions with ``pause_collection``."""
    per_subscription: dict[str, Money] = field(default_factory=dict)
    """Subscription id -> its primary MRR (subscriptions contributing nothing may be absent)."""


# ---------------------------------------------------------------- small tolerant readers


def _dict(value: Any) -> StripeDict | None:
    return value if isinstance(value, dict) else None


def _fraction(value: Any) -> Fraction | None:
    """An exact rational from Stripe's ints, decimal strings or floats (via their shortest repr)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | Fraction):
        return Fraction(value)
    try:
        return Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None


def _ts(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def round_half_up(value: Fraction) -> int:
    """Nearest integer, halves away from zero (the amounts here are never negative)."""
    if value >= 0:
        return math.floor(value + Fraction(1, 2))
    return -math.floor(-value + Fraction(1, 2))


def _money(totals: Mapping[str, Fraction]) -> Money:
    """Round each currency half-up once; zero amounts are left out."""
    out: Money = {}
    for currency, amount in sorted(totals.items()):
        rounded = round_half_up(amount)
        if rounded:
            out[currency] = rounded
    return out


def items_of(subscription: StripeDict) -> list[StripeDict]:
    """Subscription items, whether ``items`` is a list object or (in slim projections) a plain list."""
    items = subscription.get("items")
    if isinstance(items, dict):
        items = items.get("data")
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict)]


def product_id_of(price: StripeDict) -> str | None:
    product = price.get("product")
    if isinstance(product, dict):
        product = product.get("id")
    return product if isinstance(product, str) else None


# ---------------------------------------------------------------- prices


@dataclass(frozen=True)
class PriceTerms:
    """What MRR needs of a price, read from a ``price`` or a legacy ``plan``."""

    id: str | None
    currency: str | None
    product_id: str | None
    nickname: str | None
    recurring: bool
    interval: str | None
    interval_count: int
    metered: bool
    billing_scheme: str
    tiers_mode: str | None
    tiers: list[StripeDict] | None
    unit_amount: Fraction | None
    divide_by: int | None
    round_up: bool
    tax_inclusive: bool


def _terms_from_price(price: StripeDict) -> PriceTerms:
    recurring = _dict(price.get("recurring"))
    transform = _dict(price.get("transform_quantity"))
    unit = _fraction(price.get("unit_amount_decimal"))
    if unit is None:
        unit = _fraction(price.get("unit_amount"))
    return PriceTerms(
        id=price.get("id"),
        currency=_lower(price.get("currency")),
        product_id=product_id_of(price),
        nickname=price.get("nickname"),
        # slim projections may drop `type`; `recurring` alone says it is recurring
        recurring=recurring is not None and price.get("type", "recurring") == "recurring",
        interval=(recurring or {}).get("interval"),
        interval_count=_positive_int((recurring or {}).get("interval_count")),
        metered=(recurring or {}).get("usage_type") == "metered",
        billing_scheme=price.get("billing_scheme") or "per_unit",
        tiers_mode=price.get("tiers_mode"),
        tiers=_tiers(price.get("tiers")),
        unit_amount=unit,
        divide_by=_divide_by(transform),
        round_up=(transform or {}).get("round") == "up",
        tax_inclusive=price.get("tax_behavior") == "inclusive",
    )


def _terms_from_plan(plan: StripeDict) -> PriceTerms:
    transform = _dict(plan.get("transform_usage"))
    unit = _fraction(plan.get("amount_decimal"))
    if unit is None:
        unit = _fraction(plan.get("amount"))
    return PriceTerms(
        id=plan.get("id"),
        currency=_lower(plan.get("currency")),
        product_id=product_id_of(plan),
        nickname=plan.get("nickname"),
        recurring=plan.get("interval") is not None,
        interval=plan.get("interval"),
        interval_count=_positive_int(plan.get("interval_count")),
        metered=plan.get("usage_type") == "metered",
        billing_scheme=plan.get("billing_scheme") or "per_unit",
        tiers_mode=plan.get("tiers_mode"),
        tiers=_tiers(plan.get("tiers")),
        unit_amount=unit,
        divide_by=_divide_by(transform),
        round_up=(transform or {}).get("round") == "up",
        tax_inclusive=False,
    )


def _lower(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) else None


def _positive_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _divide_by(transform: StripeDict | None) -> int | None:
    if transform is None:
        return None
    divide_by = transform.get("divide_by")
    return divide_by if isinstance(divide_by, int) and divide_by > 0 else None


def _tiers(value: Any) -> list[StripeDict] | None:
    if not isinstance(value, list):
        return None
    return [tier for tier in value if isinstance(tier, dict)]


def price_terms(
    item: StripeDict, prices: Mapping[str, StripeDict] = _EMPTY, currency: str | None = None
) -> PriceTerms | None:
    """The item's price terms: ``price`` (preferring the tiers-expanded copy in ``prices``), else ``plan``.

    ``currency`` is the subscription's: a multi-currency price bills the amounts of that currency's
    ``currency_options`` entry (only returned when expanded), not its default currency's.
    """
    for key in ("price", "plan"):
        found = item.get(key)
        if isinstance(found, str):
            found = prices.get(found)
        if not isinstance(found, dict):
            continue
        expanded = prices.get(found.get("id") or "")
        if expanded is not None and found.get("tiers") is None and expanded.get("tiers") is not None:
            found = {**found, "tiers": expanded["tiers"]}
        if _is_plan(found):
            return _terms_from_plan(found)
        own = _lower(found.get("currency"))
        if currency is not None and own is not None and own != currency:
            found = _in_currency(found, expanded, currency)
        return _terms_from_price(found)
    return None


def _in_currency(price: StripeDict, expanded: StripeDict | None, currency: str) -> StripeDict:
    """The price with its amounts in ``currency``; without that option its amounts are unknown (None),
    never the default currency's amounts under another currency's name."""
    options = _dict(price.get("currency_options")) or _dict((expanded or {}).get("currency_options")) or {}
    option = _dict(options.get(currency)) or {}
    return {
        **price,
        "currency": currency,
        "unit_amount": option.get("unit_amount"),
        "unit_amount_decimal": option.get("unit_amount_decimal"),
        "tiers": option.get("tiers"),
        "tax_behavior": option.get("tax_behavior", price.get("tax_behavior")),
    }


def _is_plan(obj: StripeDict) -> bool:
    """A legacy plan (even one stored under ``price`` by a projection): interval at the top level."""
    return obj.get("object") == "plan" or ("recurring" not in obj and "interval" in obj)


def is_licensed(terms: PriceTerms | None) -> bool:
    return terms is not None and terms.recurring and not terms.metered


def _quantity(item: StripeDict) -> int:
    # None means Stripe omitted it (quantity-less prices): bill one. An explicit 0 bills nothing.
    quantity = item.get("quantity")
    if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity >= 0:
        return quantity
    return 1


def _up_to(tier: StripeDict) -> int | None:
    """A tier's upper bound; None for the last tier (Stripe returns null, request params say "inf")."""
    up_to = tier.get("up_to")
    return up_to if isinstance(up_to, int) and not isinstance(up_to, bool) else None


def _tier_parts(tier: StripeDict) -> tuple[Fraction, Fraction]:
    unit = _fraction(tier.get("unit_amount_decimal"))
    if unit is None:
        unit = _fraction(tier.get("unit_amount")) or Fraction(0)
    flat = _fraction(tier.get("flat_amount_decimal"))
    if flat is None:
        flat = _fraction(tier.get("flat_amount")) or Fraction(0)
    return unit, flat


def period_amount(terms: PriceTerms, quantity: int) -> Fraction | None:
    """Exact amount of one billing period in minor units, before rounding; None when unknowable
    (a tiered price whose tiers were not expanded, a price with no amount)."""
    if terms.billing_scheme == "tiered":
        if not terms.tiers:
            return None
        if terms.tiers_mode == "volume":
            for tier in terms.tiers:
                up_to = _up_to(tier)
                if up_to is None or quantity <= up_to:
                    unit, flat = _tier_parts(tier)
                    return quantity * unit + flat
            return None
        total = Fraction(0)
        floor = 0
        for tier in terms.tiers:
            if quantity <= floor:
                break
            up_to = _up_to(tier)
            ceiling = quantity if up_to is None else min(quantity, up_to)
            unit, flat = _tier_parts(tier)
            total += (ceiling - floor) * unit + flat
            if up_to is None:
                break
            floor = up_to
        return total
    if terms.unit_amount is None:
        return None
    if terms.divide_by is not None:
        divided = Fraction(quantity, terms.divide_by)
        quantity = math.ceil(divided) if terms.round_up else math.floor(divided)
    return quantity * terms.unit_amount


def monthly_factor(interval: str | None, interval_count: int) -> Fraction | None:
    """Months per period inverted: month 1/n, year 1/(12n), week 52/(12n), day 365/(12n)."""
    months = _MONTHS_PER_INTERVAL.get(interval or "")
    if months is None:
        return None
    return 1 / (months * interval_count)


# ---------------------------------------------------------------- discounts


@dataclass(frozen=True)
class _Coupon:
    duration: str
    percent_off: Fraction | None
    amount_off: Fraction | None  # in the subscription's currency, already resolved
    products: frozenset[str] | None


def _coupon_of(discount: StripeDict, coupons: Mapping[str, StripeDict]) -> StripeDict | None:
    source = _dict(discount.get("source")) or {}
    coupon = source.get("coupon")
    if coupon is None:
        coupon = discount.get("coupon")  # API versions before 2025-09-30.clover
    if isinstance(coupon, str):
        return coupons.get(coupon)
    return _dict(coupon)


def _resolve(
    discount: Any, currency: str | None, coupons: Mapping[str, StripeDict], now: int
) -> _Coupon | None:
    """An active discount's coupon terms in ``currency``; None when inactive, unknown or inapplicable."""
    discount = _dict(discount)
    if discount is None:
        return None  # an unexpanded id: nothing to apply
    end = _ts(discount.get("end"))
    if end is not None and end <= now:
        return None
    start = _ts(discount.get("start"))
    if start is not None and start > now:
        return None
    coupon = _coupon_of(discount, coupons)
    if coupon is None:
        return None
    percent = _fraction(coupon.get("percent_off"))
    amount: Fraction | None = None
    if percent is None:
        raw = coupon.get("amount_off")
        if raw is None:
            return None
        if currency is not None and _lower(coupon.get("currency")) == currency:
            amount = _fraction(raw)
        else:
            options = _dict(coupon.get("currency_options")) or {}
            option = _dict(options.get(currency or "")) or {}
            amount = _fraction(option.get("amount_off"))
        if amount is None:
            return None  # an amount in another currency does not apply
    applies_to = _dict(coupon.get("applies_to"))
    products = applies_to.get("products") if applies_to else None
    return _Coupon(
        duration=coupon.get("duration") or "forever",
        percent_off=percent,
        amount_off=amount,
        products=frozenset(products) if isinstance(products, list) else None,
    )


def _apply(coupon: _Coupon, lines: list[_Line]) -> None:
    """One discount over the lines of one invoice: percent per line, amount_off once, floored at 0."""
    targets = [ln for ln in lines if coupon.products is None or ln.product_id in coupon.products]
    if coupon.percent_off is not None:
        keep = max(Fraction(0), 1 - coupon.percent_off / 100)
        for line in targets:
            line.amount *= keep
        return
    assert coupon.amount_off is not None
    base = sum((ln.amount for ln in targets), Fraction(0))
    if base <= 0:
        return
    # Spread like Stripe's discount_amounts, so each line keeps its own tax rate and cadence.
    remaining = max(Fraction(0), base - coupon.amount_off) / base
    for line in targets:
        line.amount *= remaining


@dataclass
class _Line:
    """One licensed item of one subscription, as it would appear on an invoice."""

    product_id: str | None
    amount: Fraction
    cadence: tuple[str, int]
    factor: Fraction  # to monthly
    tax_divisor: Fraction
    item_discounts: list[Any]


def _tax_divisor(item: StripeDict, subscription: StripeDict, terms: PriceTerms) -> Fraction:
    rates = item.get("tax_rates")
    if not rates:  # item rates replace the subscription's defaults
        rates = subscription.get("default_tax_rates")
    inclusive = Fraction(0)
    for rate in rates if isinstance(rates, list) else []:
        rate = _dict(rate)
        if rate is None:
            continue
        if rate.get("inclusive") is True or terms.tax_inclusive:
            inclusive += _fraction(rate.get("percentage")) or Fraction(0)
    return 1 + inclusive / 100


def _lines(
    subscription: StripeDict, prices: Mapping[str, StripeDict]
) -> tuple[str | None, list[_Line], bool]:
    """(currency, licensed recurring lines, has metered items) of one subscription."""
    lines: list[_Line] = []
    metered = False
    currency = _lower(subscription.get("currency"))
    for item in items_of(subscription):
        terms = price_terms(item, prices, currency)
        if terms is None or not terms.recurring:
            continue
        if terms.metered:
            metered = True
            continue
        factor = monthly_factor(terms.interval, terms.interval_count)
        amount = period_amount(terms, _quantity(item))
        if factor is None or amount is None:
            continue
        currency = currency or terms.currency
        discounts = item.get("discounts")
        lines.append(
            _Line(
                product_id=terms.product_id,
                amount=Fraction(round_half_up(amount)),
                cadence=(terms.interval or "", terms.interval_count),
                factor=factor,
                tax_divisor=_tax_divisor(item, subscription, terms),
                item_discounts=discounts if isinstance(discounts, list) else [],
            )
        )
    return currency, lines, metered


def _discounts_of(subscription: StripeDict, customer: StripeDict | None) -> list[Any]:
    sub_discounts = subscription.get("discounts")
    if not isinstance(sub_discounts, list) or not sub_discounts:
        customer_discount = (customer or {}).get("discount")
        sub_discounts = [customer_discount] if customer_discount else []
    return sub_discounts


def _subscription_mrr(
    subscription: StripeDict,
    *,
    customer: StripeDict | None,
    coupons: Mapping[str, StripeDict],
    prices: Mapping[str, StripeDict],
    now: int,
) -> tuple[str | None, Fraction, Fraction, bool]:
    """(currency, primary, with temporary discounts, has metered items) of one subscription."""
    currency, lines, metered = _lines(subscription, prices)
    sub_discounts = _discounts_of(subscription, customer)

    def total(durations: frozenset[str]) -> Fraction:
        work = [_Line(ln.product_id, ln.amount, ln.cadence, ln.factor, ln.tax_divisor, []) for ln in lines]
        for line, original in zip(work, lines, strict=True):
            for discount in original.item_discounts:
                coupon = _resolve(discount, currency, coupons, now)
                if coupon is not None and coupon.duration in durations:
                    _apply(coupon, [line])
        for cadence in {ln.cadence for ln in work}:
            invoice = [ln for ln in work if ln.cadence == cadence]
            for discount in sub_discounts:
                coupon = _resolve(discount, currency, coupons, now)
                if coupon is not None and coupon.duration in durations:
                    _apply(coupon, invoice)
        return sum((ln.amount / ln.tax_divisor * ln.factor for ln in work), Fraction(0))

    primary = total(frozenset({"forever"}))
    temporary = total(frozenset({"forever", "repeating", "once"}))
    return currency, primary, temporary, metered


def next_invoice_estimate(
    subscription: StripeDict,
    *,
    customer: StripeDict | None = None,
    coupons: Mapping[str, StripeDict] | None = None,
    prices: Mapping[str, StripeDict] | None = None,
    at: datetime,
) -> tuple[str, int] | None:
    """(currency, amount) of the subscription's next regular invoice at ``at``, estimated from its
    licensed items × quantity with the ``forever`` and ``repeating`` discounts still running then.

    An estimate: no prorations, pending invoice items, metered usage, exclusive tax or customer
    balance (Stripe's invoice preview has them). None when no licensed recurring item is priced.
    """
    coupons = coupons or _EMPTY
    currency, lines, _ = _lines(subscription, prices or _EMPTY)
    if currency is None or not lines:
        return None
    now = _unix(at)
    work = [_Line(ln.product_id, ln.amount, ln.cadence, Fraction(1), Fraction(1), []) for ln in lines]
    durations = frozenset({"forever", "repeating"})
    for line, original in zip(work, lines, strict=True):
        for discount in original.item_discounts:
            coupon = _resolve(discount, currency, coupons, now)
            if coupon is not None and coupon.duration in durations:
                _apply(coupon, [line])
    for discount in _discounts_of(subscription, customer):
        coupon = _resolve(discount, currency, coupons, now)
        if coupon is not None and coupon.duration in durations:
            _apply(coupon, work)
    return currency, round_half_up(sum((ln.amount for ln in work), Fraction(0)))


def _unix(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


def compute_mrr(
    subscriptions: Sequence[StripeDict],
    *,
    customer: StripeDict | None = None,
    coupons: Mapping[str, StripeDict] | None = None,
    prices: Mapping[str, StripeDict] | None = None,
    as_of: datetime,
) -> MrrResult:
    """MRR of one customer at ``as_of`` per MRR.md: ``active``/``past_due`` subscriptions, licensed items,
    forever discounts; trialing and paused ones reported apart at their would-be amount."""
    now = _unix(as_of)
    coupons = coupons or _EMPTY
    prices = prices or _EMPTY
    primary: dict[str, Fraction] = {}
    temporary: dict[str, Fraction] = {}
    trialing: dict[str, Fraction] = {}
    paused: dict[str, Fraction] = {}
    per_subscription: dict[str, Money] = {}
    scheduled_cancel = False
    metered_any = False
    for subscription in subscriptions:
        status = subscription.get("status")
        if status not in COUNTED_STATUSES and status not in ("trialing", "paused"):
            continue
        currency, amount, with_temporary, metered = _subscription_mrr(
            subscription, customer=customer, coupons=coupons, prices=prices, now=now
        )
        if currency is None:
            continue
        if status == "trialing":
            _add(trialing, currency, amount)
            continue
        if status == "paused" or subscription.get("pause_collection"):
            _add(paused, currency, amount)
            continue
        metered_any = metered_any or metered
        cancel_at = _ts(subscription.get("cancel_at"))
        if subscription.get("cancel_at_period_end") or (cancel_at is not None and cancel_at > now):
            scheduled_cancel = True
        _add(primary, currency, amount)
        _add(temporary, currency, with_temporary)
        sub_money = _money({currency: amount})
        if sub_money and isinstance(subscription.get("id"), str):
            per_subscription[subscription["id"]] = sub_money
    return MrrResult(
        mrr=_money(primary),
        with_temporary_discounts=_money(temporary),
        scheduled_cancel=scheduled_cancel,
        has_metered_items=metered_any,
        excluded_trialing=_money(trialing),
        excluded_paused=_money(paused),
        per_subscription=per_subscription,
    )


def _add(totals: dict[str, Fraction], currency: str, amount: Fraction) -> None:
    totals[currency] = totals.get(currency, Fraction(0)) + amount


# ---------------------------------------------------------------- LTV and renewal


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def compute_ltv(
    charges: Sequence[StripeDict],
    *,
    disputes: Sequence[StripeDict] = (),
    credit_notes: Sequence[StripeDict] = (),
) -> Money:
    """Realised revenue per currency: succeeded charges' captured minus refunded minus lost disputes
    (each charge floored at 0), minus credit notes' out-of-band amounts, floored at 0 per currency."""
    lost: dict[str, int] = {}
    for dispute in disputes:
        charge_id = id_of(dispute.get("charge"))
        if dispute.get("status") == "lost" and charge_id is not None:
            lost[charge_id] = lost.get(charge_id, 0) + _int(dispute.get("amount"))
    totals: dict[str, int] = {}
    for charge in charges:
        currency = _lower(charge.get("currency"))
        if charge.get("status") != "succeeded" or currency is None:
            continue
        captured = charge.get("amount_captured")
        if captured is None:  # slim or older objects: a captured charge captured its amount
            captured = charge.get("amount") if charge.get("captured", True) else 0
        net = _int(captured) - _int(charge.get("amount_refunded")) - lost.get(id_of(charge) or "", 0)
        totals[currency] = totals.get(currency, 0) + max(0, net)
    for note in credit_notes:
        currency = _lower(note.get("currency"))
        if currency is None or note.get("status") == "void":
            continue
        totals[currency] = totals.get(currency, 0) - _int(note.get("out_of_band_amount"))
    return {currency: amount for currency, amount in sorted(totals.items()) if amount > 0}


def counted_items(
    subscriptions: Iterable[StripeDict], prices: Mapping[str, StripeDict] | None = None
) -> Iterable[tuple[StripeDict, StripeDict]]:
    """(subscription, item) for licensed items of subscriptions that count towards MRR."""
    for subscription in subscriptions:
        if subscription.get("status") not in COUNTED_STATUSES or subscription.get("pause_collection"):
            continue
        for item in items_of(subscription):
            if is_licensed(price_terms(item, prices or _EMPTY)):
                yield subscription, item


def renewal_date(
    subscriptions: Sequence[StripeDict], *, prices: Mapping[str, StripeDict] | None = None
) -> datetime | None:
    """Earliest ``current_period_end`` among counted items of counted subscriptions
    (``prices`` resolves items whose price is only an id)."""
    ends = [
        end
        for subscription, item in counted_items(subscriptions, prices)
        # before API 2025-03-31.basil the period lived on the subscription
        if (end := _ts(item.get("current_period_end")) or _ts(subscription.get("current_period_end")))
    ]
    return datetime.fromtimestamp(min(ends), UTC) if ends else None
