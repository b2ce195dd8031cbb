"""Emails that differ only by case (#9 item 4): the same query gives the same ranked answer, with
every case variant among the candidates, whatever was looked up before, from Stripe and from the cache."""

from __future__ import annotations

from typing import Any

import pytest

from billing.cache.store import RedisStore
from billing.domain.models import BillingContext
from billing.service import BillingService
from billing.stripe.gateway import StripeGateway
from tests.billing import stripe_factory as sf
from tests.fixtures_sandbox import SandboxHandle

DAY = 86400
QUERIES = ("Mixed.Case@x.io", "mixed.case@x.io", "MIXED.CASE@X.IO")


def _load(control: Any) -> None:
    """Two customers under ``Mixed.Case@x.io`` (one paying, one without a subscription) and one
    under ``mixed.case@x.io``, newest of all: paying first, then newest first."""
    product = {"id": "prod_pro", "object": "product", "name": "Pro", "active": True, "metadata": {}}
    sub = sf.subscription(sid="sub_P", cid="cus_Paying")
    for item in sub["items"]["data"]:
        item.update(price={"id": "price_pro"})
    control.load([
        product, sf.price(),
        sf.customer(cid="cus_Paying", email="Mixed.Case@x.io", created=sf.T0 - 30 * DAY),
        sf.customer(cid="cus_Idle", email="Mixed.Case@x.io", created=sf.T0 - 20 * DAY),
        sf.customer(cid="cus_Lower", email="mixed.case@x.io", created=sf.T0 - 10 * DAY),
        sub,
    ])


def _answer(context: BillingContext) -> tuple[str | None, tuple[str, ...]]:
    assert context.found and context.customer is not None
    return context.customer.id, tuple(o.id for o in context.other_customers)


EXPECTED = ("cus_Paying", ("cus_Lower", "cus_Idle"))


@pytest.mark.parametrize("order", [QUERIES, tuple(reversed(QUERIES))])
async def test_case_variants_give_one_ranked_answer_in_any_order_cold_and_cached(
    empty_sandbox: SandboxHandle, gateway: StripeGateway, store: RedisStore, order: tuple[str, ...]
) -> None:
    _load(empty_sandbox.control)
    service = BillingService(gateway, store)
    answers: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    for query in order:
        first = await service.lookup(query)  # cold for the first query, cached for the others
        again = await service.lookup(query)
        assert again.source == "cache"
        fresh = await service.lookup(query, refresh=True)
        assert fresh.source == "stripe"
        for context in (first, again, fresh):
            answers[f"{query} {context.source}"] = _answer(context)
    assert set(answers.values()) == {EXPECTED}, answers
    # The match says how the primary's email relates to what was typed.
    by_query = {q: (await service.lookup(q)).match for q in QUERIES}
    assert {q: m.method for q, m in by_query.items() if m is not None} == {
        "Mixed.Case@x.io": "email", "mixed.case@x.io": "search", "MIXED.CASE@X.IO": "search",
    }
