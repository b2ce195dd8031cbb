"""Dedup markers: ``p:evt:<event id>`` says an event was applied (kept ``DEDUP_TTL_SECONDS``, longer
than Stripe retries a delivery), so a duplicate delivery or a reconcile's re-listing is skipped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from billing.cache.connections import RedisClient

DEDUP_TTL_SECONDS = 7 * 24 * 3600


class Dedupe:
    """The tenant's applied-event markers."""

    def __init__(self, client: RedisClient, key_of: Callable[[str], str]) -> None:
        self._client = client
        self._key_of = key_of  # tenant part -> key

    def key(self, event_id: str) -> str:
        return self._key_of(f"evt:{event_id}")

    async def done(self, event_ids: Sequence[str]) -> list[bool]:
        """Whether each event was applied already (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.exists(self.key(event_id))
        return [bool(x) for x in await pipe.execute()]

    def queue_mark(self, pipe: Any, event_ids: Sequence[str]) -> None:
        """Add the markers of ``event_ids`` to ``pipe`` (run with the acks that settle the events)."""
        for event_id in event_ids:
            pipe.set(self.key(event_id), 1, ex=DEDUP_TTL_SECONDS)

    async def mark(self, event_ids: Sequence[str]) -> None:
        pipe = self._client.pipeline(transaction=False)
        self.queue_mark(pipe, event_ids)
        await pipe.execute()


__all__ = ["DEDUP_TTL_SECONDS", "Dedupe"]
