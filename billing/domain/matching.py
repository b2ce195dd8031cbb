"""Reading what an agent typed into a lookup query, and ranking the customers that match it.

Pure: text in, data out. The service decides what to ask Stripe or the store with the result.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal
from urllib.parse import urlsplit

from billing.domain.models import Match
from billing.domain.snapshot import StripeDict
from billing.errors import BadQueryError

ACCEPTED_FORMS = (
    "give an email (jane@acme.com or <mailto:jane@acme.com|jane@acme.com>), a Stripe id (cus_…, sub_…, "
    "in_…, ch_…, pi_…, or a dashboard link to one) or an invoice number as printed (0HIAXQK6-0004)"
)
MAX_METADATA_VALUE = 500  # Stripe's limit on a metadata value
# The longest query Stripe's data can call for: a 40-character metadata key, its colon and a value of
# MAX_METADATA_VALUE, with room for the spaces and quotes people paste around it (an email is shorter).
MAX_QUERY_LENGTH = 600

# Lenient on purpose: Stripe stores whatever address the merchant gave it, so we accept any
# dot-atom local part (RFC 5322 atext, Unicode letters too) and a dotted domain, never whitespace.
_LOCAL = r"[\w.!#$%&'*+/=?^`{|}~-]+"
_LABEL = r"[^\W_](?:[\w-]*[^\W_])?"
_EMAIL = re.compile(rf"{_LOCAL}@(?:{_LABEL}\.)+{_LABEL}")
_CUSTOMER_ID = re.compile(r"cus_[A-Za-z0-9]+")
# Stripe's invoice numbers: the customer's (or the account's) invoice prefix, 3 to 12 upper-case letters
# or digits, a dash, and a sequence of at least 4 digits. Typed in any case; stored upper-case.
_INVOICE_NUMBER = re.compile(r"[A-Za-z0-9]{3,12}-[0-9]{4,}")
# A bare value for the one configured metadata key: no spaces, no "@" (a mistyped email stays an error).
_BARE_VALUE = re.compile(r"[^\s@<>:|]{1,200}")
# A payment intent's client secret (a checkout page holds it): the id is read, the secret never.
_CLIENT_SECRET = re.compile(r"(pi_[A-Za-z0-9]+)_secret_[A-Za-z0-9]+")
# Any Stripe client secret (``pi_…_secret_…``, ``seti_…_secret_…``) in text that may be shown or stored.
_SECRET_PART = re.compile(r"_secret_[A-Za-z0-9]+")
_ANY_CLIENT_SECRET = re.compile(r"[a-z]{2,8}_[A-Za-z0-9]+_secret_[A-Za-z0-9]+")
_LINK = re.compile(r"(?i)https?://|dashboard\.stripe\.com/")
_DASHBOARD_HOST = "dashboard.stripe.com"
# Pairs an agent (or Slack) may wrap a query in; stripped from the outside in.
_WRAPPERS = {'"': '"', "'": "'", "`": "`", "<": ">", "“": "”", "‘": "’"}

_PAYING = frozenset({"active", "past_due"})

QueryKind = Literal[
    "email", "customer_id", "subscription", "invoice", "invoice_number", "charge", "payment_intent",
    "metadata",
]
# Other Stripe ids that belong to one customer. ASCII letters and digits only: the id goes into a
# request path as is (``sub_sched_…``, a subscription schedule, is not a subscription).
_OWNED_IDS: tuple[tuple[QueryKind, re.Pattern[str]], ...] = (
    ("subscription", re.compile(r"sub_[A-Za-z0-9]+")),
    ("invoice", re.compile(r"in_[A-Za-z0-9]+")),
    ("charge", re.compile(r"ch_[A-Za-z0-9]+")),
    ("payment_intent", re.compile(r"pi_[A-Za-z0-9]+")),
)


@dataclass(frozen=True)
class Query:
    """A parsed lookup query. An email keeps the case it was typed in (exact match is tried first);
    an invoice number is upper-case; a metadata query names its ``key``."""

    kind: QueryKind
    value: str
    key: str | None = None

    @property
    def text(self) -> str:
        """The query as a context and the index name it: ``user_id:1234`` for metadata, else the value."""
        return f"{self.key}:{self.value}" if self.kind == "metadata" else self.value


def accepted_forms(metadata_keys: Sequence[str] = ()) -> str:
    """What a lookup accepts, as the end of a sentence (``give an email …``)."""
    if not metadata_keys:
        return ACCEPTED_FORMS
    forms = " or ".join(f"{key}:…" for key in metadata_keys)
    if len(metadata_keys) == 1:
        forms += f" (or the {metadata_keys[0]} alone)"
    return ACCEPTED_FORMS.replace(" or an invoice number", ", an invoice number") + f" or {forms}"


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


def without_secrets(text: str) -> str:
    """``text`` with the secret part of any Stripe client secret cut (``pi_123_secret_…``): what a
    refusal repeats, or the audit trail keeps, of what was typed."""
    return _SECRET_PART.sub("_secret_…", text)


def _describe(raw: str) -> str:
    shown = without_secrets(raw.strip())
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return repr(shown)


def _stripe_id(text: str) -> Query | None:
    if _CUSTOMER_ID.fullmatch(text):
        return Query(kind="customer_id", value=text)
    for kind, pattern in _OWNED_IDS:
        if pattern.fullmatch(text):
            return Query(kind=kind, value=text)
    return None


# The dashboard's pages of the objects a lookup takes: the path segment before the object's id.
_DASHBOARD_PAGES: dict[str, tuple[QueryKind, ...]] = {
    "customers": ("customer_id",), "subscriptions": ("subscription",), "invoices": ("invoice",),
    "payments": ("payment_intent", "charge"),  # an older payment's page is its charge's
}


def _dashboard_query(text: str, raw: str, accepted: str) -> Query:
    """The object of a Stripe dashboard link (``https://dashboard.stripe.com/test/customers/cus_…``,
    Slack's ``<…|label>`` already unwrapped to ``…|label``); else one sentence. Any path before the
    page (an account id, ``test``) and the query string are the dashboard's, not the object's."""
    link = text.partition("|")[0].strip()
    if "://" not in link:
        link = f"https://{link}"
    try:
        parts = urlsplit(link)
        host = parts.hostname
    except ValueError:
        host = None
    if host != _DASHBOARD_HOST:
        raise BadQueryError(
            f"{_describe(raw)} is a link to another site than the Stripe dashboard ({_DASHBOARD_HOST}); "
            f"{accepted}."
        )
    segments = [segment for segment in parts.path.split("/") if segment]
    for page, segment in pairwise(segments):
        found = _stripe_id(segment)
        if found is not None and found.kind in _DASHBOARD_PAGES.get(page, ()):
            return found
    raise BadQueryError(
        f"{_describe(raw)} is a Stripe dashboard link, but not to a customer, subscription, invoice or "
        f"payment; {accepted}."
    )


def _names_a_key(text: str, metadata_keys: Sequence[str]) -> bool:
    typed_key = text.partition(":")[0].strip().lower()
    return any(key.lower() == typed_key for key in metadata_keys)


def _metadata_query(text: str, raw: str, metadata_keys: Sequence[str]) -> Query:
    """``key:value`` for a configured key, else one sentence saying what is accepted."""
    accepted = accepted_forms(metadata_keys)
    typed_key, _, value = text.partition(":")
    typed_key, value = typed_key.strip(), value.strip()
    if not metadata_keys:
        raise BadQueryError(
            f"{_describe(raw)} is not an email address, a Stripe id or an invoice number, and no metadata "
            f"key is set for lookups (BILLING_MATCH_METADATA_KEYS); {accepted}."
        )
    key = next((k for k in metadata_keys if k == typed_key), None)
    if key is None:  # metadata keys are case-sensitive in Stripe; a key differing only in case is still ours
        key = next((k for k in metadata_keys if k.lower() == typed_key.lower()), None)
    if key is None:
        known = ", ".join(metadata_keys)
        raise BadQueryError(
            f"{_describe(typed_key)} is not a metadata key lookups use (they use {known}); {accepted}."
        )
    # Quotes pasted around the value, or Slack's <mailto:…|…> around an address, are not part of it.
    value = _strip_wrappers(value)
    if value[:7].lower() == "mailto:":
        value = _strip_wrappers(_mailto_address(value[7:]))
    if not value:
        raise BadQueryError(f"{key}: needs a value after the colon, e.g. {key}:1234; {accepted}.")
    if len(value) > MAX_METADATA_VALUE or not value.isprintable():
        raise BadQueryError(
            f"The {key} value must be printable and at most {MAX_METADATA_VALUE} characters; {accepted}."
        )
    return Query(kind="metadata", value=value, key=key)


def parse_query(raw: str, metadata_keys: Sequence[str] = ()) -> Query:
    """An email, Slack's ``<mailto:a@b.com|a@b.com>``, a ``cus_``/``sub_``/``in_``/``ch_``/``pi_`` id (or
    a Stripe dashboard link to one, or a payment intent's client secret: its id), an invoice number,
    or ``key:value`` for one of ``metadata_keys`` (a bare value when there is exactly one); else
    ``BadQueryError``, one sentence naming what is accepted."""
    accepted = accepted_forms(metadata_keys)
    if not isinstance(raw, str) or not raw.strip():
        raise BadQueryError(f"The query is empty; {accepted}.")
    if len(raw) > MAX_QUERY_LENGTH:
        raise BadQueryError(
            f"The query is {len(raw)} characters long (at most {MAX_QUERY_LENGTH}); {accepted}."
        )
    text = _strip_wrappers(raw)
    if text[:7].lower() == "mailto:":
        text = _strip_wrappers(_mailto_address(text[7:]))
    if _LINK.match(text):  # before key:value: "https" is no metadata key
        return _dashboard_query(text, raw, accepted)
    found = _stripe_id(text)
    if found is not None:
        return found
    secret = _CLIENT_SECRET.fullmatch(text)
    if secret is not None:
        return Query(kind="payment_intent", value=secret[1])
    if _EMAIL.fullmatch(text):
        return Query(kind="email", value=text)
    if _INVOICE_NUMBER.fullmatch(text):
        return Query(kind="invoice_number", value=text.upper())
    # A configured key before the colon makes it a metadata query whatever the value holds (an id of
    # the operator's system may be an address); otherwise an "@" means a mistyped email.
    if ":" in text and ("@" not in text or _names_a_key(text, metadata_keys)):
        return _metadata_query(text, raw, metadata_keys)
    if _ANY_CLIENT_SECRET.fullmatch(text):  # never a bare value: it would go to Stripe's search
        raise BadQueryError(
            f"{_describe(raw)} is a Stripe client secret, not an id a lookup takes; {accepted}."
        )
    if len(metadata_keys) == 1 and _BARE_VALUE.fullmatch(text):
        return Query(kind="metadata", value=text, key=metadata_keys[0])
    raise BadQueryError(
        f"{_describe(raw)} is not an email address, a Stripe id or an invoice number; {accepted}."
    )


_LOOKALIKES = frozenset({"invoice_number", "subscription", "invoice", "charge", "payment_intent"})


def bare_metadata_query(raw: str, metadata_keys: Sequence[str]) -> Query | None:
    """The reading of a bare value as the one metadata key, when ``parse_query`` took it for an invoice
    number or a Stripe id (the operator's ids may look like one: ``ACC-1234``, ``in_progress``); a
    lookup that finds nobody that way tries this. None with several keys (a bare value names no key),
    for ``key:value``, an email or a ``cus_`` id."""
    if len(metadata_keys) != 1:
        return None
    try:
        parsed = parse_query(raw, metadata_keys)
    except BadQueryError:
        return None
    text = _strip_wrappers(raw)
    if parsed.kind not in _LOOKALIKES or not _BARE_VALUE.fullmatch(text):
        return None
    if parsed.value.upper() != text.upper():
        return None  # the id was read out of a link or a client secret: the whole is nobody's value
    return Query(kind="metadata", value=text, key=metadata_keys[0])


_MATCHED_BY = {
    "subscription": "subscription", "invoice": "invoice", "invoice_number": "invoice",
    "charge": "charge", "payment_intent": "payment intent",
}


def matched_by(query: str, match: Match | None) -> str | None:
    """``matched by invoice 0HIAXQK6-0004`` (or metadata ``user_id 1234``, subscription, charge, payment
    intent) when the customer was found by something other than the email or the customer id; None
    otherwise. What a card says so that an agent knows the email played no part."""
    if match is None:
        return None
    if match.method == "metadata":
        key, _, value = query.partition(":")
        return f"matched by metadata {key} {value}"
    what = _MATCHED_BY.get(match.method)
    return f"matched by {what} {query}" if what is not None else None


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
