"""``BillingService``: the one façade every surface (Slack, LLM tools, CLI) asks for a BillingContext.

Lookup order (ARCHITECTURE.md "Lookup"): the store first, then Stripe (manual link → email exact →
lower-cased exact → Search API), then build, save and return. A store that fails is a cache that
missed; Stripe that fails is survivable only when a cached answer exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from billing.cache.connections import REDIS_ERRORS
from billing.domain.builder import build_context, other_customer
from billing.domain.lifecycle import most_urgent_status
from billing.domain.matching import Query, bare_metadata_query, parse_query, rank_customers
from billing.domain.models import BillingContext, Match, MatchMethod, OtherCustomer
from billing.domain.snapshot import StripeDict
from billing.errors import StoreUnavailableError, StripeUnavailableError
from billing.ports import ContextStore, EmailReader, LookupReader, StripeReader

log = logging.getLogger(__name__)

STRIPE_NEEDED: ContextVar[asyncio.Event | None] = ContextVar("billing_stripe_needed", default=None)
"""An event a caller puts here (before starting the lookup's task) to learn, as soon as it is known,
that the lookup must ask Stripe: the Slack command acknowledges at once then, instead of waiting for a
card that is seconds away."""

# A broken cache must never break a lookup: these mean "treat it as a miss" / "answer anyway".
_STORE_FAILURES: tuple[type[BaseException], ...] = (StoreUnavailableError, *REDIS_ERRORS)

EXACT = Match(method="email", confidence="exact")
LOWERCASE = Match(method="email_lowercase", confidence="case_insensitive")
SEARCH = Match(method="search", confidence="case_insensitive")
BY_ID = Match(method="customer_id", confidence="exact")
LINKED = Match(method="manual_link", confidence="manual")
# A lookup by another id than the email or the customer's: the id names one customer (or a metadata
# value the operator's system gave it), so the match is exact.
OTHER_ID_KINDS = frozenset({
    "subscription", "invoice", "invoice_number", "charge", "payment_intent", "metadata",
})


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _subscriptions_of(customer: StripeDict) -> list[StripeDict]:
    subs: Any = customer.get("subscriptions")
    if isinstance(subs, dict):
        subs = subs.get("data")
    return [s for s in subs if isinstance(s, dict)] if isinstance(subs, list) else []


def _status_of(customer: StripeDict) -> str | None:
    urgent = most_urgent_status(_subscriptions_of(customer))
    return urgent[0] if urgent else None


_EMAIL_READERS: dict[type, bool] = {}  # store class -> whether it is an EmailReader (isinstance: ~6 µs)


def _email_reader(store: ContextStore | None) -> EmailReader | None:
    if store is None:
        return None
    kind = type(store)
    known = _EMAIL_READERS.get(kind)
    if known is None:
        known = _EMAIL_READERS[kind] = isinstance(store, EmailReader)
    return cast(EmailReader, store) if known else None


def _lookup_reader(store: ContextStore | None) -> LookupReader | None:
    return store if isinstance(store, LookupReader) else None


def _by_other_id(parsed: Query) -> Match:
    return Match(method=cast(MatchMethod, parsed.kind), confidence="exact")


def _still_matches(parsed: Query, context: BillingContext) -> bool:
    """Whether a cached context still answers a lookup by metadata (an index entry may be older than
    the value); an id of a Stripe object never changes customer."""
    if parsed.kind != "metadata":
        return True
    customer = context.customer
    return customer is not None and customer.metadata.get(parsed.key or "") == parsed.value


def _link_keys(parsed: Query) -> list[str]:
    """Manual links are looked up under the email as given, then lower-cased."""
    return list(dict.fromkeys((parsed.value, parsed.value.lower())))


def _email_match(query: str, email: str | None) -> Match:
    """How the primary customer's email relates to what was typed (the same from Stripe or the cache)."""
    if email == query:
        return EXACT
    return LOWERCASE if email == query.lower() else SEARCH


def _merged(*found: Sequence[StripeDict]) -> list[StripeDict]:
    """Customers of several answers, each once (the first copy kept)."""
    out: dict[str, StripeDict] = {}
    for customers in found:
        for customer in customers:
            out.setdefault(str(customer.get("id")), customer)
    return list(out.values())


def _other_as_ranking_dict(other: OtherCustomer) -> StripeDict:
    """What ``rank_customers`` reads, for a customer known only as another one of a cached context."""
    return {
        "id": other.id,
        "livemode": other.livemode,
        "created": int(other.created.timestamp()),
        "subscriptions": {"data": [{"status": other.status}] if other.status else []},
    }


def _as_ranking_dict(context: BillingContext) -> StripeDict:
    """What ``rank_customers`` reads, taken from a cached context."""
    assert context.customer is not None
    return {
        "id": context.customer.id,
        "livemode": context.customer.livemode,
        "created": int(context.customer.created.timestamp()),
        "subscriptions": {"data": [{"status": s.status} for s in context.subscriptions]},
    }


def _as_other(context: BillingContext) -> OtherCustomer:
    assert context.customer is not None
    customer = context.customer
    return OtherCustomer(
        id=customer.id, email=customer.email, name=customer.name, livemode=customer.livemode,
        created=customer.created, status=context.status, dashboard_url=customer.dashboard_url,
    )


class BillingService:
    """Looks customers up (cache first), and builds contexts fresh from Stripe on demand."""

    def __init__(
        self,
        gateway: StripeReader,
        store: ContextStore | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        max_staleness: timedelta = timedelta(hours=24),
        metadata_keys: Sequence[str] = (),
    ) -> None:
        self.gateway = gateway
        self.store = store
        self._clock = clock or _utcnow
        self.max_staleness = max_staleness
        self.metadata_keys = tuple(metadata_keys)

    def parse(self, query: str) -> Query:
        """``parse_query`` with this service's metadata keys: what a lookup accepts, or BadQueryError."""
        return parse_query(query, self.metadata_keys)

    async def lookup(self, query: str, *, refresh: bool = False) -> BillingContext:
        """The customer's BillingContext, or ``BillingContext.not_found``; raises BadQueryError first.

        A bare value read as an invoice number or a Stripe id that finds nobody is tried as the one
        metadata key too (``bare_metadata_query``); not found, the answer names the query as read."""
        parsed = self.parse(query)
        context = await self._lookup(parsed, refresh=refresh)
        if context.found:
            return context
        alternative = bare_metadata_query(query, self.metadata_keys)
        if alternative is None:
            return context
        by_metadata = await self._lookup(alternative, refresh=refresh)
        return by_metadata if by_metadata.found else context

    async def _lookup(self, parsed: Query, *, refresh: bool) -> BillingContext:
        if refresh:
            link, cached = await self._manual_link(parsed), None
        else:
            link, cached = await self._cached(parsed)
        if cached is not None and not self._is_stale(cached):
            return cached
        needed = STRIPE_NEEDED.get()
        if needed is not None:
            needed.set()
        try:
            return await self._from_stripe(parsed, link, cached_ok=not refresh)
        except StripeUnavailableError:
            if cached is None:
                raise
            log.warning("Stripe unavailable; serving a cached context older than %s", self.max_staleness)
            return cached.model_copy(update={"stale": True})

    async def context_for_customer(self, customer_id: str) -> BillingContext | None:
        """A fresh context straight from Stripe (not saved); None when the customer is gone."""
        customer = await self.gateway.retrieve_customer(customer_id)
        if customer is None:
            return None
        return await self._build(customer, query=customer_id, match=BY_ID, others=[])

    # -- store side -----------------------------------------------------------------------------

    def _is_stale(self, context: BillingContext) -> bool:
        return context.as_of is None or self._clock() - context.as_of > self.max_staleness

    async def _cached(self, parsed: Query) -> tuple[str | None, BillingContext | None]:
        """The manual link (for an email) and the cached context: one read when the store can
        (``EmailReader``: a cache hit is one round trip to Redis), else link, index and contexts."""
        reader = _email_reader(self.store) if parsed.kind == "email" else None
        if reader is None:
            link = await self._manual_link(parsed)
            return link, await self._from_store(parsed, link)
        try:
            link, contexts = await reader.read_email(_link_keys(parsed), parsed.value)
        except _STORE_FAILURES as err:
            log.warning("Store unavailable (%s); asking Stripe", type(err).__name__)
            return None, None
        return link, self._choose(parsed, link, contexts)

    async def _manual_link(self, parsed: Query) -> str | None:
        if self.store is None or parsed.kind != "email":
            return None
        try:
            for key in _link_keys(parsed):
                linked = await self.store.linked_customer(key)
                if linked:
                    return linked
        except _STORE_FAILURES as err:
            log.warning("Store unavailable for manual links (%s); asking Stripe", type(err).__name__)
        return None

    async def _from_store(self, parsed: Query, link: str | None) -> BillingContext | None:
        if self.store is None:
            return None
        try:
            return await self._read_store(self.store, parsed, link)
        except _STORE_FAILURES as err:
            log.warning("Store unavailable (%s); asking Stripe", type(err).__name__)
            return None

    async def _read_store(
        self, store: ContextStore, parsed: Query, link: str | None
    ) -> BillingContext | None:
        if link is not None or parsed.kind == "customer_id":
            context = await store.get_context(link if link is not None else parsed.value)
            return self._choose(parsed, link, [context] if context is not None else [])
        if parsed.kind in OTHER_ID_KINDS:
            reader = _lookup_reader(store)
            ids = await reader.customer_ids_for_lookup(parsed.kind, parsed.text) if reader else []
            indexed = [await store.get_context(customer_id) for customer_id in ids]
            found = [c for c in indexed if c is not None]
            uncached = await self._uncached_sharers(store, parsed, found)
            return self._choose_by_other_id(parsed, found, uncached)
        contexts: list[BillingContext] = []
        for customer_id in await store.customer_ids_for_email(parsed.value):
            context = await store.get_context(customer_id)
            if context is not None:
                contexts.append(context)
        return self._choose(parsed, link, contexts)

    async def _uncached_sharers(
        self, store: ContextStore, parsed: Query, stored: Sequence[BillingContext]
    ) -> list[OtherCustomer]:
        """The customers a cached metadata answer named as sharing the value (its ``other_customers``,
        when it was built by this very query) that are not cached: a lookup from Stripe builds only
        the first, and the cached answer must still say that others share the value. One cached since
        answers for itself: through the index while it has the value, not at all once it has not."""
        if parsed.kind != "metadata":
            return []
        known = {c.customer.id for c in stored if c.customer is not None}
        out: dict[str, OtherCustomer] = {}
        for context in stored:
            if context.query != parsed.text or not _still_matches(parsed, context):
                continue
            for other in context.other_customers:
                if other.id in known or other.id in out:
                    continue
                if await store.get_context(other.id) is None:
                    out[other.id] = other
        return list(out.values())

    def _choose_by_other_id(
        self, parsed: Query, stored: Sequence[BillingContext], uncached: Sequence[OtherCustomer] = (),
    ) -> BillingContext | None:
        """The cached answer to a lookup by another id: the customers indexed under it that still
        match, ranked as Stripe's answer would be (several customers may share a metadata value),
        with those only named by a cached answer (``uncached``); None when one of those ranks first."""
        by_id = {
            c.customer.id: c for c in stored
            if c.found and c.customer is not None and _still_matches(parsed, c)
        }
        if not by_id:
            return None
        named = {o.id: o for o in uncached if o.id not in by_id}
        candidates = [_as_ranking_dict(c) for c in by_id.values()]
        candidates += [_other_as_ranking_dict(o) for o in named.values()]
        ranked = [str(d["id"]) for d in rank_customers(candidates)]
        if ranked[0] not in by_id:
            return None  # the best candidate is not cached: Stripe's answer builds (and caches) it
        return by_id[ranked[0]].model_copy(update={
            "query": parsed.text,
            "match": _by_other_id(parsed),
            "source": "cache",
            "other_customers": [_as_other(by_id[i]) if i in by_id else named[i] for i in ranked[1:]],
        })

    def _choose(
        self, parsed: Query, link: str | None, stored: Sequence[BillingContext]
    ) -> BillingContext | None:
        """The cached answer from the stored contexts of the linked customer, the customer id, or
        the customers indexed under the email (in customer id order)."""
        if link is not None or parsed.kind == "customer_id":
            if not stored or not stored[0].found:
                return None
            match = LINKED if link is not None else BY_ID
            return stored[0].model_copy(update={"query": parsed.value, "match": match, "source": "cache"})

        contexts = [c for c in stored if c.found and c.customer is not None]
        if not contexts:
            return None
        # Every candidate, ranked as a lookup from Stripe ranks them: the customers cached under the
        # (lower-cased) email, and those their lookups found but did not cache (``other_customers``).
        by_id = {c.customer.id: c for c in contexts if c.customer is not None}
        uncached: dict[str, OtherCustomer] = {}
        for context in contexts:
            for other in context.other_customers:
                if other.id not in by_id and other.email and other.email.lower() == parsed.value.lower():
                    uncached.setdefault(other.id, other)
        candidates = [_as_ranking_dict(c) for c in contexts]
        candidates += [_other_as_ranking_dict(o) for o in uncached.values()]
        ranked_ids = [str(d["id"]) for d in rank_customers(candidates)]
        if ranked_ids[0] not in by_id:
            return None  # the best candidate is not cached: Stripe's answer builds (and caches) it
        primary = by_id[ranked_ids[0]]
        assert primary.customer is not None
        match = _email_match(parsed.value, primary.customer.email)
        other_customers = [
            _as_other(by_id[i]) if i in by_id else uncached[i] for i in ranked_ids[1:]
        ]
        return primary.model_copy(update={
            "query": parsed.value,
            "match": match,
            "source": "cache",
            "other_customers": other_customers,
        })

    async def _save(self, data: Any, context: BillingContext, fetched_at: float) -> None:
        if self.store is None:
            return
        try:
            await self.store.save_customer(data, context, fetched_at=fetched_at)
        except _STORE_FAILURES as err:
            log.warning("Could not save %s to the store (%s)", context.customer.id if context.customer
                        else "?", type(err).__name__)

    # -- Stripe side ----------------------------------------------------------------------------

    async def _candidates(
        self, parsed: Query, link: str | None, owners: list[str] | None = None
    ) -> tuple[list[StripeDict], Match]:
        if link is not None:
            linked = await self.gateway.retrieve_customer(link)
            if linked is not None:
                return [linked], LINKED
        if parsed.kind == "customer_id":
            customer = await self.gateway.retrieve_customer(parsed.value, refuse_other_mode=True)
            return ([customer] if customer is not None else []), BY_ID
        if parsed.kind in OTHER_ID_KINDS:
            return await self._customers_by_other_id(parsed, owners), _by_other_id(parsed)
        # Every case variant: the exact list, the lower-cased list (both immediately consistent) and
        # the case-insensitive search (eventually consistent), merged, so the answer does not depend
        # on the case typed. Search failing is survivable when a list found someone. All three at
        # once: one round trip to Stripe, not two, before the customer's data is fetched.
        lowered = parsed.value.lower()
        lists = [self.gateway.list_customers_by_email(parsed.value)]
        if lowered != parsed.value:
            lists.append(self.gateway.list_customers_by_email(lowered))
        search = asyncio.ensure_future(self.gateway.search_customers_by_email(parsed.value))
        try:
            listed = await asyncio.gather(*lists)
        except BaseException:
            search.cancel()
            with contextlib.suppress(BaseException):
                await search
            raise
        try:
            searched = await search
        except StripeUnavailableError:
            if not any(listed):
                raise
            log.warning("Stripe search unavailable; answering from the exact email lists")
            searched = []
        found = _merged(*listed, searched)
        primary = rank_customers(found)[0] if found else None
        email = primary.get("email") if primary is not None else None
        return found, _email_match(parsed.value, email if isinstance(email, str) else None)

    async def _owners(self, parsed: Query) -> list[str]:
        """The customer ids Stripe gives for an object id (one retrieve) or an invoice number (search)."""
        if parsed.kind == "invoice_number":
            return await self.gateway.customers_of_invoice_number(parsed.value)
        owner = await self.gateway.owner_of(parsed.kind, parsed.value)
        return [owner] if owner is not None else []

    async def _customers_by_other_id(self, parsed: Query, owners: list[str] | None) -> list[StripeDict]:
        """Stripe's customers for a lookup by another id: the object's owner, the invoices' owners,
        or the customers with the metadata value (customer search)."""
        if parsed.kind == "metadata":
            return await self.gateway.search_customers_by_metadata(parsed.key or "", parsed.value)
        if owners is None:
            owners = await self._owners(parsed)
        found = [await self.gateway.retrieve_customer(customer_id) for customer_id in owners]
        return [c for c in found if c is not None]

    async def _fresh_cached(self, customer_id: str) -> BillingContext | None:
        if self.store is None:
            return None
        try:
            context = await self.store.get_context(customer_id)
        except _STORE_FAILURES as err:
            log.warning("Store unavailable (%s); asking Stripe", type(err).__name__)
            return None
        if context is None or not context.found or self._is_stale(context):
            return None
        return context

    async def _from_stripe(
        self, parsed: Query, link: str | None, *, cached_ok: bool = True
    ) -> BillingContext:
        owners: list[str] | None = None
        if parsed.kind in OTHER_ID_KINDS and parsed.kind != "metadata":
            # An id the index does not hold (an older charge, say): Stripe says whose it is in one
            # request, and that customer's cached card, when fresh, is the answer.
            owners = await self._owners(parsed)
            known = await self._fresh_cached(owners[0]) if cached_ok and len(owners) == 1 else None
            if known is not None:
                return known.model_copy(update={
                    "query": parsed.text, "match": _by_other_id(parsed), "source": "cache",
                    "other_customers": [],
                })
        candidates, match = await self._candidates(parsed, link, owners)
        if not candidates:
            return BillingContext.not_found(parsed.text)
        ranked = rank_customers(candidates)
        others = [other_customer(c, _status_of(c)) for c in ranked[1:]]
        return await self._build(ranked[0], query=parsed.text, match=match, others=others, save=True)

    async def _build(
        self,
        customer: StripeDict,
        *,
        query: str,
        match: Match,
        others: Sequence[OtherCustomer],
        save: bool = False,
    ) -> BillingContext:
        fetched_at = self._clock().timestamp()
        data = await self.gateway.fetch_customer_data(customer)
        context = build_context(
            data, query=query, match=match, now=self._clock(), source="stripe", other_customers=others
        )
        if save:
            await self._save(data, context, fetched_at)
        return context
