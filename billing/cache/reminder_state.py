"""The reminder scheduler's keys (``billing.sync.scheduler`` decides what they mean)::

    p:reminders:due              zset    customer -> when to look at it next (unix seconds)
    p:reminders:dirty            set     customers to (re)compute the moment of
    p:reminders:taking           set     customers taken from ``dirty`` by a tick that has not stored
                                         their moments yet (a tick that died: the next one takes them)
    p:reminders:index            hash    the walk's state (leads, walking, cursor, walked_at) and
                                         the last tick (ticked_at, unix seconds: ``billing status``)
    p:reminders:lock             string  the scheduler ticking now (one per tenant at a time)

The once-markers of reminders live in the customer's slot and are written with its outbox entry
(``Outbox.push_once``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from billing.cache.connections import RedisClient, as_text

TICKED_AT = "ticked_at"
"""The field of ``p:reminders:index`` holding when a scheduler last ticked (unix seconds)."""


class ReminderState:
    def __init__(self, client: RedisClient, prefix: str, customers_key: str) -> None:
        self._client = client
        self.due_key = f"{prefix}:due"
        self.dirty_key = f"{prefix}:dirty"
        self.taking_key = f"{prefix}:taking"
        self.index_key = f"{prefix}:index"
        self.lock_key = f"{prefix}:lock"
        self._customers_key = customers_key

    # ---- the tick's lock ----------------------------------------------------------------------------
    async def lock(self, token: str, *, lock_ms: int) -> bool:
        """Take the lock for ``lock_ms`` unless another scheduler holds it."""
        return bool(await self._client.set(self.lock_key, token, nx=True, px=lock_ms))

    async def unlock(self, token: str) -> None:
        """Release the lock if ``token`` still holds it."""
        if as_text(await self._client.get(self.lock_key) or b"") == token:
            await self._client.delete(self.lock_key)

    async def record_tick(self, at: float) -> None:
        await self._client.hset(self.index_key, TICKED_AT, repr(at))

    # ---- the walk -----------------------------------------------------------------------------------
    async def walk_state(self) -> dict[str, str]:
        raw = await self._client.hgetall(self.index_key)
        return {as_text(k): as_text(v) for k, v in raw.items()}

    async def save_walk_state(self, state: Mapping[str, str]) -> None:
        await self._client.hset(self.index_key, mapping=dict(state))  # type: ignore[arg-type]

    async def scan_customers(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One ``SSCAN`` step over the tenant's cached customers: (next cursor, 0 at the end; ids)."""
        cursor, members = await self._client.sscan(self._customers_key, cursor, count=count)
        return int(cursor), [as_text(m) for m in members]

    async def mark_dirty(self, customer_ids: Sequence[str]) -> None:
        if customer_ids:
            await self._client.sadd(self.dirty_key, *customer_ids)

    async def take_dirty(self, count: int) -> list[str]:
        """Up to ``count`` customers to compute, kept in ``taking`` until ``computed``: those a tick
        took and did not finish first (it died, or Redis failed), else some of ``dirty``.

        At least once: a customer leaves ``dirty`` only once it is in ``taking``, and ``taking`` only
        once its moment is stored. Its context is read after it left ``dirty``, so a save meanwhile
        marks it dirty again (computed once more next tick) rather than being lost. The tick's lock
        makes ``taking`` one scheduler's at a time. No command names two keys (a cluster's slots)."""
        raw_ids: Any = await self._client.srandmember(self.taking_key, count)
        if not raw_ids:
            raw_ids = await self._client.srandmember(self.dirty_key, count)
            if not raw_ids:
                return []
            await self._client.sadd(self.taking_key, *raw_ids)
            await self._client.srem(self.dirty_key, *raw_ids)
        return [as_text(i) for i in raw_ids]

    async def computed(self, customer_ids: Sequence[str]) -> None:
        """Their moments are stored: out of ``taking``."""
        if customer_ids:
            await self._client.srem(self.taking_key, *customer_ids)

    # ---- moments ------------------------------------------------------------------------------------
    async def set_moments(self, moments: Mapping[str, float | None]) -> None:
        """Each customer's next moment (None: none, out of the schedule), in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for customer_id, moment in moments.items():
            if moment is None:
                pipe.zrem(self.due_key, customer_id)
            else:
                pipe.zadd(self.due_key, {customer_id: moment})
        await pipe.execute()

    async def set_moment(self, customer_id: str, moment: float | None) -> None:
        if moment is None:
            await self._client.zrem(self.due_key, customer_id)
        else:
            await self._client.zadd(self.due_key, {customer_id: moment})

    async def moment(self, customer_id: str) -> float | None:
        found: float | None = await self._client.zscore(self.due_key, customer_id)
        return found

    async def due(self, until: float, limit: int) -> list[str]:
        """Customers whose moment is at or before ``until``, soonest first, at most ``limit``."""
        raw_ids = await self._client.zrangebyscore(self.due_key, "-inf", until, start=0, num=limit)
        return [as_text(i) for i in raw_ids]


__all__ = ["TICKED_AT", "ReminderState"]
