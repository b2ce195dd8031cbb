"""The seams between the billing core and its I/O: Stripe reader, context store, notifier.

``BillingService`` depends on these protocols; ``billing.stripe.gateway.StripeGateway``,
``billing.cache.store.RedisStore`` and the notifiers implement them. Tests swap the network under them
(the Stripe sandbox, a real Redis), never the logic above them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from billing.domain.models import BillingContext
from billing.domain.snapshot import CustomerData, StripeDict

ListableResource = Literal[
    "customers", "subscriptions", "invoices", "charges", "disputes", "credit_notes",
    "prices", "products", "coupons", "events",
]


@dataclass(frozen=True)
class Tenant:
    """Which Stripe account and mode the data belongs to; part of every Redis key."""

    account_id: str
    livemode: bool

    @property
    def key(self) -> str:
        return f"{self.account_id}:{'live' if self.livemode else 'test'}"


class StripeReader(Protocol):
    """Read-only access to Stripe (implemented by ``billing.stripe.gateway.StripeGateway``)."""

    async def tenant(self) -> Tenant: ...

    async def list_customers_by_email(self, email: str) -> list[StripeDict]:
        """Exact, case-sensitive ``customers.list(email=…)``; each with ``subscriptions`` expanded."""

    async def search_customers_by_email(self, email: str) -> list[StripeDict]:
        """Search API fallback, post-filtered to case-insensitive exact matches."""

    async def retrieve_customer(
        self, customer_id: str, *, refuse_other_mode: bool = False
    ) -> StripeDict | None:
        """The customer, or None when it does not exist or is deleted; with ``refuse_other_mode``, an id
        of the other mode (live vs test) raises BadQueryError naming the mode instead."""

    async def owner_of(self, kind: str, object_id: str) -> str | None:
        """The customer id of a ``subscription``, ``invoice``, ``charge`` or ``payment_intent`` (None when
        Stripe has no such object or it has no customer)."""

    async def customers_of_invoice_number(self, number: str) -> list[str]:
        """The customers of the invoices printed with ``number`` (Stripe's invoice search)."""

    async def search_customers_by_metadata(self, key: str, value: str) -> list[StripeDict]:
        """Customers whose metadata ``key`` is exactly ``value`` (Search API), ``subscriptions`` expanded."""

    async def fetch_customer_data(self, customer: StripeDict) -> CustomerData:
        """Everything a BillingContext needs, fetched concurrently (≤ 3 requests for a typical customer)."""

    async def retrieve(self, resource: ListableResource, object_id: str) -> StripeDict | None:
        """One object by id (None when missing), e.g. to settle an event ordering tie."""

    def iter_objects(
        self, resource: ListableResource, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[StripeDict]:
        """Every object of a list endpoint (cursor pagination, rate-limited, retried)."""
        ...

    async def price_with_tiers(self, price_id: str) -> StripeDict: ...

    async def coupon(self, coupon_id: str) -> StripeDict | None: ...

    async def product(self, product_id: str) -> StripeDict | None: ...

    async def preview_next_invoices(
        self, subscriptions: Iterable[StripeDict]
    ) -> dict[str, StripeDict | None]:
        """Stripe's invoice preview of each subscription that will invoice again, by id (None: the key
        may not preview, or nothing is upcoming). Attach with ``billing.stripe.gateway.with_previews``."""
        ...


class ContextStore(Protocol):
    """The cache the lookup path reads first (implemented by ``billing.cache.store.RedisStore``)."""

    async def get_context(self, customer_id: str) -> BillingContext | None: ...

    async def customer_ids_for_email(self, email: str) -> list[str]:
        """Customer ids whose lower-cased email equals ``email.lower()``."""

    async def linked_customer(self, key: str) -> str | None:
        """A manual link (e.g. a Slack user or an email) to a customer id, set by ``link``."""

    async def save_customer(
        self, data: CustomerData, context: BillingContext, *, fetched_at: float | None = None
    ) -> None:
        """Store slim projections of ``data``, the context and the email index, atomically per customer;
        ``fetched_at`` (when the fetch began) keeps newer stored state from being overwritten."""


@runtime_checkable
class EmailReader(Protocol):
    """A store that reads everything an email lookup needs at once (``RedisStore``: one round trip
    on a single server); ``BillingService`` uses it when the store has it, the three calls otherwise."""

    async def read_email(
        self, link_keys: Sequence[str], email: str
    ) -> tuple[str | None, list[BillingContext]]:
        """The first of ``link_keys`` manually linked and that customer's stored context (none when
        not cached), or, with no link, ``(None, contexts)`` of every customer indexed under
        ``email``, in customer id order; contexts as stored (``source`` as saved)."""
        ...


@runtime_checkable
class LookupReader(Protocol):
    """A store that indexes customers by their other ids (``RedisStore``); ``BillingService`` reads
    lookups by subscription, invoice, invoice number, charge, payment intent or metadata from it."""

    async def customer_ids_for_lookup(self, kind: str, text: str) -> list[str]:
        """Customer ids cached under a lookup (``Query.kind``, ``Query.text``), in id order."""
        ...


@dataclass(frozen=True)
class Transition:
    """A change worth telling people about, found by comparing old and new contexts."""

    name: Literal[
        "subscription.past_due",
        "subscription.recovered",
        "subscription.canceled",
        "subscription.trial_will_end",
        "invoice.payment_failed",
        "subscription.renewal_upcoming",
        "subscription.trial_ending",
    ]
    customer_id: str
    object_id: str
    event_id: str
    context: BillingContext
    # A reminder (renewal_upcoming, trial_ending) is sent N days ahead: the alerts with that
    # ``days_before`` fire for it, others of the same name wait for their own reminder.
    days_before: int | None = None

    @property
    def dedup_key(self) -> str:
        """Same transition of the same object from the same cause: alert exactly once."""
        return f"{self.name}:{self.object_id}:{self.event_id}"


class Notifier(Protocol):
    async def notify(self, transition: Transition) -> None: ...


class NotifyLater(RuntimeError):
    """Raised by a notifier when a transition cannot be notified yet and nothing failed (e.g. another
    poster holds its message's lease): the worker retries after ``retry_after`` seconds (or its
    backoff), logging no traceback."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
