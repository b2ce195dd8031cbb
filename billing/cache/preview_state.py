"""Customers whose next-invoice previews are due for a refresh (``billing.sync.previews`` refreshes
them off the event path).

Keys (``p`` = the tenant prefix)::

    p:previews:due        zset    customer -> when to refresh (unix milliseconds): now when an event
                                  marks it, a lease while a refresher fetches, a backoff after a failure
    p:previews:failures   hash    customer -> failed refreshes in a row

A customer is one member however many events mark it (coalescing). A mark lowers the score only
(``ZADD LT``): an event makes a customer due at once, even one waiting out a lease or a backoff, and a
refresh that finishes removes the member only when its score is still the lease it took, so an event
saved while the preview was being fetched has its own refresh. Everything lives in Redis: a restart
finds the due customers, and those whose fetch it cut short once their lease runs out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.exceptions import WatchError

from billing.cache.connections import RedisClient, as_text

_MAX_ABORTS = 100


class PreviewState:
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self.due_key = f"{prefix}:due"
        self.failures_key = f"{prefix}:failures"

    def queue_mark(self, pipe: Any, customer_ids: Iterable[str], *, now_ms: int) -> None:
        """Queue in ``pipe``: the customers are due at ``now_ms`` (or earlier, when already due)."""
        members = {customer_id: now_ms for customer_id in customer_ids}
        if members:
            pipe.zadd(self.due_key, members, lt=True)

    async def take(self, now_ms: int, limit: int, *, lease_ms: int) -> list[tuple[str, int]]:
        """Up to ``limit`` due customers, soonest first, each leased until ``now_ms + lease_ms``:
        (customer, lease score). Two refreshers racing may take one customer twice: both fetches are
        applied version-checked, so that costs a request, never a wrong preview."""
        raw = await self._client.zrangebyscore(self.due_key, "-inf", now_ms, start=0, num=limit)
        ids = [as_text(i) for i in raw]
        if not ids:
            return []
        lease = now_ms + lease_ms
        await self._client.zadd(self.due_key, dict.fromkeys(ids, lease), xx=True, gt=True)
        return [(customer_id, lease) for customer_id in ids]

    async def finish(self, customer_id: str, lease: int) -> bool:
        """The refresh taken with ``lease`` is done: forget the customer unless it was marked again
        meanwhile (its score is no longer the lease). True when forgotten."""
        forgotten = await self._if_leased(customer_id, lease, None)
        if forgotten:
            await self._client.hdel(self.failures_key, customer_id)
        return forgotten

    async def failed(self, customer_id: str) -> int:
        """Count one more failed refresh of the customer; returns the failures in a row."""
        return int(await self._client.hincrby(self.failures_key, customer_id, 1))

    async def retry_at(self, customer_id: str, lease: int, at_ms: int) -> bool:
        """The refresh taken with ``lease`` failed: due again at ``at_ms``, unless an event marked the
        customer meanwhile (then it is due already)."""
        return await self._if_leased(customer_id, lease, at_ms)

    async def _if_leased(self, customer_id: str, lease: int, at_ms: int | None) -> bool:
        """While the customer's score is ``lease``: due at ``at_ms`` (None: not due). True if so.

        The WATCH is on the whole set: another customer's take or finish aborts it too, so an abort is
        tried again (the score read again says whether this customer was marked meanwhile); it was
        taken for a mark before, and the customer stayed leased and was fetched again. After many
        aborts in a row it gives up as if marked: the customer stays due (one more fetch, no error)."""
        for _attempt in range(_MAX_ABORTS):
            async with self._client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.due_key)
                    score = await pipe.zscore(self.due_key, customer_id)
                    if score is None or int(score) != lease:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return False  # marked again (or taken) meanwhile: it stays due
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if at_ms is None:
                        pipe.zrem(self.due_key, customer_id)
                    else:
                        pipe.zadd(self.due_key, {customer_id: at_ms}, xx=True)
                    await pipe.execute()
                except WatchError:
                    continue
            return True
        return False

    async def give_up(self, customer_id: str) -> None:
        """Stop retrying: the next event that marks the customer starts again."""
        pipe = self._client.pipeline(transaction=False)
        pipe.zrem(self.due_key, customer_id)
        pipe.hdel(self.failures_key, customer_id)
        await pipe.execute()

    async def when(self, customer_id: str) -> int | None:
        """When the customer is due (unix milliseconds), None when it is not."""
        score = await self._client.zscore(self.due_key, customer_id)
        return None if score is None else int(score)

    async def due_count(self) -> int:
        return int(await self._client.zcard(self.due_key))


__all__ = ["PreviewState"]
