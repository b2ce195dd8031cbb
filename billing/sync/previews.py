"""Next-invoice previews, refreshed off the event path.

Applying an event never waits on Stripe's ``create_preview``: the worker saves the event's state with
the stored preview kept, and when a subscription or invoice event touched a subscription that will
invoice again, the customer is marked due (``billing.cache.preview_state``, in the save's round trip on
a single server). ``EventWorker.run`` ticks this refresher between batches; a tick starts one bounded
refresh in the background (the loop goes on with the next batch): up to ``max_per_tick`` due
customers, ``concurrency`` at a time (the gateway's shared Stripe rate limit applies to every request),
each fetched within ``timeout`` and applied by ``EventWorker.save_previews`` (a version-checked update
of the stored subscriptions and a rebuild of the context). A failure or a timeout keeps the previous
preview; the customer is retried with backoff, at most ``max_attempts`` times in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from billing.cache.connections import REDIS_ERRORS
from billing.cache.store import RedisStore
from billing.domain.snapshot import StripeDict
from billing.ports import StripeReader
from billing.stripe.gateway import background_work
from billing.stripe.slim import Version, version_of

log = logging.getLogger("billing.sync.previews")

SavePreviews = Callable[[str, Mapping[str, Version | None], Mapping[str, StripeDict | None]], Awaitable[bool]]
"""``EventWorker.save_previews(customer_id, asked, previews)``: ``asked`` holds the version of each
subscription the previews were asked for; True when the context changed."""


@dataclass
class PreviewStats:
    ticks: int = 0
    refreshed: int = 0  # customers whose previews were fetched and applied
    changed: int = 0  # of those, customers whose card changed
    failed: int = 0  # fetches that failed or timed out (retried later)
    given_up: int = 0  # customers dropped after ``max_attempts`` failures in a row


@dataclass
class PreviewRefresher:
    store: RedisStore
    gateway: StripeReader
    save: SavePreviews
    timeout: float = 10.0  # one customer's previews, at most
    interval: float = 1.0  # seconds between ticks
    max_per_tick: int = 100
    concurrency: int = 8
    # A customer taken is leased this long (None: 2 * timeout + 10 s): a refresher that dies
    # mid-fetch (a restart) leaves it to the next one once the lease runs out.
    lease: float | None = None
    retry_base: float = 5.0
    retry_max: float = 600.0
    max_attempts: int = 6
    stats: PreviewStats = field(default_factory=PreviewStats)
    _last_tick: float | None = field(default=None, repr=False)
    _task: asyncio.Task[int] | None = field(default=None, repr=False)

    @property
    def lease_ms(self) -> int:
        return int((self.lease if self.lease is not None else 2 * self.timeout + 10) * 1000)

    async def maybe_tick(self) -> None:
        """Start a refresh in the background when ``interval`` has passed and none is running."""
        if self._task is not None:
            if not self._task.done():
                return
            task, self._task = self._task, None
            if not task.cancelled() and (error := task.exception()) is not None:
                if isinstance(error, REDIS_ERRORS):
                    raise error  # the worker waits Redis out; the leased customers come back
                log.error("refreshing previews failed", exc_info=error)
        now = time.monotonic()
        if self._last_tick is not None and now - self._last_tick < self.interval:
            return
        self._last_tick = now
        self._task = asyncio.create_task(self.refresh_due())

    async def stop(self) -> None:
        """Cancel a refresh under way (its customers stay due, leased: the next refresher takes them)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(BaseException):
                await task

    async def refresh_due(self) -> int:
        """Refresh up to ``max_per_tick`` due customers, ``concurrency`` at a time; returns how many
        were refreshed.

        Each customer is taken (leased) when a slot is free to fetch it, not with the whole batch: a
        lease covers one fetch (``timeout``), and a customer leased while waiting behind slow fetches
        would be taken again by another worker's refresher once its lease ran out (two requests to
        Stripe for it, during a 429 storm too)."""
        self.stats.ticks += 1
        budget = self.max_per_tick
        taking = asyncio.Lock()  # the slots of this refresher never take the same customer

        async def next_customer() -> tuple[str, int] | None:
            nonlocal budget
            async with taking:
                if budget <= 0:
                    return None
                taken = await self.store.previews.take(int(time.time() * 1000), 1, lease_ms=self.lease_ms)
                budget = budget - 1 if taken else 0
                return taken[0] if taken else None

        async def slot() -> int:
            refreshed = 0
            while (taken := await next_customer()) is not None:
                refreshed += await self._refresh(*taken)
            return refreshed

        with background_work():  # a 429 is waited out longer: nobody waits on this request
            done = await asyncio.gather(*(slot() for _ in range(max(1, self.concurrency))))
        return sum(done)

    async def _refresh(self, customer_id: str, lease: int) -> bool:
        objects = await self.store.get_objects(customer_id)
        subscriptions = [
            o for o in objects.values() if o.get("object") == "subscription" and not o.get("deleted")
        ]
        asked = {str(s["id"]): version_of(s) for s in subscriptions}
        try:
            previews = (
                await asyncio.wait_for(self.gateway.preview_next_invoices(subscriptions), self.timeout)
                if subscriptions else {}
            )
            changed = await self.save(customer_id, asked, previews) if previews else False
        except REDIS_ERRORS:
            raise
        except Exception as exc:  # Stripe down or slow: the card keeps its preview
            await self._failed(customer_id, lease, exc)
            return False
        await self.store.previews.finish(customer_id, lease)
        self.stats.refreshed += 1
        self.stats.changed += int(changed)
        return True

    async def _failed(self, customer_id: str, lease: int, exc: BaseException) -> None:
        self.stats.failed += 1
        failures = await self.store.previews.failed(customer_id)
        if failures >= self.max_attempts:
            self.stats.given_up += 1
            await self.store.previews.give_up(customer_id)
            log.warning("customer %s: next invoices not previewed after %d tries (%s: %s); the previous "
                        "ones are kept until the next subscription or invoice event", customer_id,
                        failures, type(exc).__name__, exc)
            return
        delay = min(self.retry_base * 2 ** (failures - 1), self.retry_max)
        await self.store.previews.retry_at(customer_id, lease, int((time.time() + delay) * 1000))
        log.info("customer %s: next invoices not previewed (%s: %s); the previous ones are kept, "
                 "tried again in %.0f s", customer_id, type(exc).__name__, exc, delay)
