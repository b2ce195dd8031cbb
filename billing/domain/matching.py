"""Reading what an agent typed into a lookup query, and ranking the customers that match it.

Pure: text in, data out. The service decides what to ask Stripe or the store with the result.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from billing.domain.snapshot import StripeDict
from billing.errors import BadQueryError

ACCEPTED_FORMS = "give jane@acme.com, <mailto:jane@acme.com|jane@acme.com> or cus_…"
MAX_QUERY_LENGTH = 512

# Lenient on purpose: Stripe stores whatever address the merchant gave it, so we accept any
# dot-atom local part (RFC 5322 atext, Unicode letters too) and a dotted domain, never whitespace.
_LOCAL = r"[\w.!#$%&'*+/=?^`{|}~-]+"
_LABEL = r"[^\W_](?:[\w-]*[^\W_])?"
_EMAIL = re.compile(rf"{_LOCAL}@(?:{_LABEL}\.)+{_LABEL}")
_CUSTOMER_ID = re.compile(r"cus_[A-Za-z0-9]+")
# Pairs an agent (or Slack) may wrap a query in; stripped from the outside in.
_WRAPPERS = {'"': '"', "'": "'", "`": "`", "<": ">", "“": "”", "‘": "’"}

_PAYING = frozenset({"active", "past_due"})


@dataclass(frozen=True)
class Query:
    """A parsed lookup query. An email keeps the case it was typed in (exact match is tried first)."""

    kind: Literal["email", "customer_id"]
    value: str


def _strip_wrappers(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and _WRAPPERS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def _mailto_address(body: str) -> str:
    """The address of Slack's ``mailto:addr|label`` body; a ``|`` may also sit inside an address."""
    bars = [i for i, ch in enumerate(body) if ch == "|"]
    # Slack repeats the address as the label: the split whose halves are equal is the right one.
    for i in bars:
        if body[:i] == body[i + 1 :]:
            return body[:i]
    for i in bars:
        if _EMAIL.fullmatch(body[:i]):
            return body[:i]
    return body


def _describe(raw: str) -> str:
    shown = raw.strip()
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return repr(shown)


def parse_query(raw: str) -> Query:
    """An email, Slack's ``<mailto:a@b.com|a@b.com>`` or a ``cus_…`` id, else ``BadQueryError``."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadQueryError(f"The query is empty; {ACCEPTED_FORMS}.")
    if len(raw) > MAX_QUERY_LENGTH:
        raise BadQueryError(
            f"The query is {len(raw)} characters long (at most {MAX_QUERY_LENGTH}); {ACCEPTED_FORMS}."
        )
    text = _strip_wrappers(raw)
    if text[:7].lower() == "mailto:":
        text = _strip_wrappers(_mailto_address(text[7:]))
    if _CUSTOMER_ID.fullmatch(text):
        return Query(kind="customer_id", value=text)
    if _EMAIL.fullmatch(text):
        return Query(kind="email", value=text)
    raise BadQueryError(
        f"{_describe(raw)} is not an email address or a Stripe customer id; {ACCEPTED_FORMS}."
    )


def _subscriptions_of(customer: StripeDict) -> list[StripeDict]:
    subs: Any = customer.get("subscriptions")
    if isinstance(subs, dict):
        subs = subs.get("data")
    if not isinstance(subs, list):
        return []
    return [s for s in subs if isinstance(s, dict)]


def _billing_rank(customer: StripeDict) -> int:
    """0 paying, 1 trialing, 2 anything else; read from the expanded ``subscriptions``."""
    statuses = {s.get("status") for s in _subscriptions_of(customer)}
    if statuses & _PAYING:
        return 0
    if "trialing" in statuses:
        return 1
    return 2


def rank_customers(customers: Sequence[StripeDict]) -> list[StripeDict]:
    """Best first: live before test, paying before trialing before none, newest first."""

    def key(customer: StripeDict) -> tuple[int, int, int, str]:
        created = customer.get("created")
        return (
            0 if customer.get("livemode") else 1,
            _billing_rank(customer),
            -(created if isinstance(created, int) else 0),
            str(customer.get("id", "")),
        )

    return sorted(customers, key=key)
