"""The transition outbox: what the worker found but has not notified yet, per customer, and the
tenant's set of outboxes the sweeper must come back to.

Keys (``p`` = the tenant prefix)::

    p:{cus_1}:outbox      list    transitions queued (JSON), oldest first
    p:{cus_1}:sent:<k>    string  a transition already notified (``DEDUP_TTL_SECONDS``)
    p:{cus_1}:flushing    string  the flush lock: the token of the worker flushing (with a TTL)
    p:{cus_1}:<marker>    hash    once-markers written with the entries they guard (``push_once``)
    p:outbox:pending      zset    customers whose outbox still holds transitions, scored by when to retry
    p:outbox:failures     hash    customer -> notifier failures in a row (the sweeper's backoff)

A customer's keys share its hash tag, so its outbox, markers and lock are one slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.exceptions import WatchError

from billing.cache.connections import RedisClient, as_text
from billing.cache.dedupe import DEDUP_TTL_SECONDS


class Outbox:
    """One customer's outbox, its ``sent`` markers and its flush lock."""

    def __init__(self, client: RedisClient, key_of: Callable[[str], str]) -> None:
        self._client = client
        self._key_of = key_of  # part -> the customer's key for it
        self.key = key_of("outbox")
        self.lock_key = key_of("flushing")

    def sent_key(self, dedup_key: str) -> str:
        return self._key_of(f"sent:{dedup_key}")

    async def length(self) -> int:
        return int(await self._client.llen(self.key))

    async def entries(self) -> list[Any]:
        """The queued transitions (raw JSON), oldest first."""
        return list(await self._client.lrange(self.key, 0, -1))

    async def lock_and_read(self, token: str, *, lock_ms: int) -> tuple[bool, list[Any]]:
        """Take the flush lock (for ``lock_ms``, unless another holds it) and read the outbox, in one
        round trip: (whether the lock is ours, the queued entries)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self.lock_key, token, nx=True, px=lock_ms)
        pipe.lrange(self.key, 0, -1)
        locked, queued = await pipe.execute()
        return bool(locked), list(queued)

    async def unlock(self, token: str) -> None:
        """Release the flush lock if ``token`` still holds it (it may have expired and been taken)."""
        async with self._client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.lock_key)
                if as_text(await pipe.get(self.lock_key) or b"") != token:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                    return
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.delete(self.lock_key)
                await pipe.execute()
            except WatchError:
                return  # expired and taken by another worker meanwhile: theirs now

    async def sent(self, dedup_keys: Sequence[str]) -> list[bool]:
        """Which of the transitions ``dedup_keys`` were notified already."""
        if not dedup_keys:
            return []
        # One slot (the customer's): one MGET, sent as a command (a cluster client refuses mget()).
        found: Any = await self._client.execute_command("MGET", *map(self.sent_key, dedup_keys))
        return [value is not None for value in found]

    async def push_once(
        self, marker_part: str, field: str, value: str, entry: str, *,
        done: Callable[[set[str]], bool], marker_seconds: int, attempts: int = 10,
        legacy: Mapping[str, str] | None = None,
    ) -> bool | None:
        """Queue ``entry`` unless ``done`` says the fields of the customer's hash ``marker_part`` cover
        it, and set its ``field`` (to ``value``; the hash lives ``marker_seconds``) in the same MULTI,
        watched: True when queued, False when ``done``, None when it kept changing for ``attempts``
        tries. One hash holds what several entries marked: ``done`` sees them all (a once-marker
        per period whose lead times the rules may change). ``legacy`` maps a field to the customer's
        key that marked it before markers were hashes (set by an older version: counted as set)."""
        marker_key = self._key_of(marker_part)
        legacy_keys = {name: self._key_of(part) for name, part in (legacy or {}).items()}
        for _attempt in range(attempts):
            async with self._client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(marker_key, *legacy_keys.values())
                    fields = {as_text(name) for name in await pipe.hkeys(marker_key)}
                    for name, key in legacy_keys.items():
                        if await pipe.get(key) is not None:  # a cluster's watching pipeline: no EXISTS
                            fields.add(name)
                    if done(fields):
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(marker_key, field, value)
                    pipe.expire(marker_key, marker_seconds)
                    pipe.rpush(self.key, entry)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        return None

    async def mark_sent(self, dedup_key: str, raw: bytes | str) -> None:
        """Mark a transition notified and drop its entry ``raw`` from the outbox (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self.sent_key(dedup_key), 1, ex=DEDUP_TTL_SECONDS)
        pipe.lrem(self.key, 1, as_text(raw))
        await pipe.execute()


class Outboxes:
    """The tenant's pending outboxes (when each is retried) and their failure counts."""

    def __init__(self, client: RedisClient, pending_key: str, failures_key: str) -> None:
        self._client = client
        self.pending_key = pending_key
        self.failures_key = failures_key

    async def schedule(self, customer_id: str, *, delay: float) -> None:
        await self._client.zadd(self.pending_key, {customer_id: time.time() + delay})

    async def unschedule(self, customer_id: str) -> None:
        """Nothing pending for the customer any more: out of the set, its failure count forgotten."""
        pipe = self._client.pipeline(transaction=False)
        pipe.zrem(self.pending_key, customer_id)
        pipe.hdel(self.failures_key, customer_id)
        await pipe.execute()

    async def count_failure(self, customer_id: str) -> int:
        """One more failure in a row; returns how many so far."""
        return int(await self._client.hincrby(self.failures_key, customer_id, 1))

    async def due(self, limit: int) -> list[str]:
        """Customers whose retry time has come, soonest first, at most ``limit``."""
        raws = await self._client.zrangebyscore(self.pending_key, "-inf", time.time(), start=0, num=limit)
        return [as_text(raw) for raw in raws]


__all__ = ["Outbox", "Outboxes"]
