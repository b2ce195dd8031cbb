"""A backfill's checkpoint, beside the store's keys under the tenant (``p`` = the tenant prefix)::

    p:backfill:plan        string  the run's plan (its windows), JSON
    p:backfill:windows     hash    window -> {"done", "after", "count"}, JSON
    p:backfill:customers   set     customers listed by this run (built at its end)
    p:backfill:staged      set     every customer a page of this run was staged under (listed or not)

What the values mean is the backfill's business (``billing.sync.backfill``); this keeps the keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from billing.cache.connections import RedisClient, as_text


class BackfillState:
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self.plan_key = f"{prefix}:plan"
        self.windows_key = f"{prefix}:windows"
        self.customers_key = f"{prefix}:customers"
        self.staged_key = f"{prefix}:staged"

    async def plan(self) -> bytes | str | None:
        raw: bytes | str | None = await self._client.get(self.plan_key)
        return raw

    async def start(self, plan: str) -> None:
        """A new run: the previous run's checkpoint, customers and staged set go, ``plan`` is stored."""
        await self._client.delete(self.windows_key)
        await self._client.delete(self.customers_key)
        await self._client.delete(self.staged_key)
        await self._client.set(self.plan_key, plan)

    async def windows(self) -> dict[str, Any]:
        """Window key -> its stored state (raw JSON)."""
        raw = await self._client.hgetall(self.windows_key)
        return {as_text(k): v for k, v in raw.items()}

    async def save_window(self, window: str, state: str) -> None:
        await self._client.hset(self.windows_key, window, state)

    def queue_staged(self, pipe: Any, customer_id: str, *, listed: bool) -> None:
        """Add to ``pipe``: a page was staged under ``customer_id``; ``listed``: by the customers list."""
        pipe.sadd(self.staged_key, customer_id)
        if listed:
            pipe.sadd(self.customers_key, customer_id)

    async def customer_count(self) -> int:
        return int(await self._client.scard(self.customers_key))

    async def customers(self) -> AsyncIterator[str]:
        async for member in self._client.sscan_iter(self.customers_key, count=1000):
            yield as_text(member)

    async def staged(self) -> AsyncIterator[str]:
        async for member in self._client.sscan_iter(self.staged_key, count=1000):
            yield as_text(member)

    async def forget_staged(self) -> None:
        await self._client.delete(self.staged_key)


__all__ = ["BackfillState"]
