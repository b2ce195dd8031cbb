"""A customer's timeline entries that only webhook events give (``billing.domain.event_timeline``),
kept beside its objects in the customer's slot (``{p}:{cus}:tl``, JSON, newest first), so that the
worker reads and writes them in the same optimistic transaction as the objects and the context.
Bounded to ``EVENT_ENTRIES_KEPT``; an event already kept keeps its entry (duplicates add nothing)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from billing.domain.event_timeline import EventEntry, newest_entries

TIMELINE_PART = "tl"
"""``RedisStore.customer_key(customer_id, TIMELINE_PART)``."""


def decode_entries(raw: bytes | str | None) -> list[EventEntry]:
    if not raw:
        return []
    try:
        values = json.loads(raw)
    except ValueError:
        return []  # unreadable: rebuilt from the next events
    if not isinstance(values, list):
        return []
    entries = (EventEntry.from_dict(v) for v in values if isinstance(v, dict))
    return [e for e in entries if e is not None]


def encode_entries(entries: Iterable[EventEntry]) -> str:
    return json.dumps([e.to_dict() for e in entries], separators=(",", ":"), ensure_ascii=False)


def with_new_entries(stored: list[EventEntry], new: Iterable[EventEntry]) -> list[EventEntry] | None:
    """The entries to keep once ``new`` are added; None when that changes nothing (nothing to write)."""
    kept = newest_entries(stored, new)
    return None if kept == stored else kept
