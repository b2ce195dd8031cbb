"""The tenant's event stream: what the webhook queues, the worker group reads, acknowledges, claims
back from dead consumers and dead-letters, trimmed below what every group has acknowledged.

``p:events`` holds one field per entry, ``e`` (the event's JSON as Stripe sent it); ``p:events:dead``
holds ``e``, ``error`` and ``entry`` (the id it had in ``p:events``) and is capped (``XADD MAXLEN ~``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from billing.cache.connections import RedisClient, as_text

# Adds every ARGV as one entry, in order: one command for a batch of webhooks (see queue_append_all).
_APPEND_ALL = "for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end return #ARGV"

StreamEntry = tuple[Any, Any]
"""``(entry id, {field: value})`` as redis-py returns it (bytes unless the client decodes)."""


class EventStream:
    """The stream ``key``, its consumer group ``group`` and its dead-letter stream ``dead_letter_key``.

    The ``queue_*`` methods add their commands to a pipeline the caller runs (``RedisStore.pipeline``),
    so that an ack rides with the dedup markers and the health record in one round trip."""

    def __init__(self, client: RedisClient, key: str, dead_letter_key: str, group: str) -> None:
        self._client = client
        self.key = key
        self.dead_letter_key = dead_letter_key
        self.group = group

    # ---- the webhook's side -----------------------------------------------------------------------
    async def append(self, body: bytes | str) -> None:
        await self._client.xadd(self.key, {"e": body})

    def queue_append(self, pipe: Any, body: bytes | str) -> None:
        pipe.xadd(self.key, {"e": body})

    def queue_append_all(self, pipe: Any, bodies: Sequence[bytes | str]) -> None:
        """``bodies`` as entries in order, one command of ``pipe`` (a script adding each, the same
        entries as ``queue_append``): redis-py packs and parses each command of a pipeline in Python,
        about a tenth of an accepted webhook's CPU when every body was its own XADD."""
        if len(bodies) == 1:
            self.queue_append(pipe, bodies[0])
        elif bodies:
            pipe.eval(_APPEND_ALL, 1, self.key, *bodies)

    async def append_all(self, bodies: Sequence[bytes | str]) -> None:
        """``queue_append_all`` as one command of its own: without a pipeline's per-call work (about a
        tenth of a batch of 32 webhooks' write)."""
        if len(bodies) == 1:
            await self.append(bodies[0])
        elif bodies:
            await self._client.eval(_APPEND_ALL, 1, self.key, *bodies)

    async def append_many(self, bodies: Iterable[bytes | str]) -> None:
        """Queue ``bodies`` in order, in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for body in bodies:
            self.queue_append(pipe, body)
        await pipe.execute()

    # ---- the worker group's side -------------------------------------------------------------------
    async def ensure_group(self) -> None:
        """Create the group (and the stream) unless it exists; it reads from the stream's beginning."""
        try:
            await self._client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, consumer: str, *, count: int, block_ms: int) -> list[StreamEntry]:
        """Entries never delivered to the group, at most ``count``, waiting up to ``block_ms``."""
        response: Any = await self._client.xreadgroup(
            self.group, consumer, {self.key: ">"}, count=count, block=block_ms,
        )
        return [entry for _stream, entries in response or [] for entry in entries]

    async def claim_idle(
        self, consumer: str, *, min_idle_ms: int, start: str, count: int
    ) -> tuple[str, list[StreamEntry]]:
        """``XAUTOCLAIM`` from ``start``: (where to go on, "0-0" at the end; the entries still there)."""
        result = await self._client.xautoclaim(
            self.key, self.group, consumer, min_idle_time=min_idle_ms, start_id=start, count=count,
        )
        return as_text(result[0]), [e for e in result[1] if e and e[1]]

    async def deliveries(self, entry_id: str) -> int | None:
        """How many times the group was handed ``entry_id``; None when it is not pending."""
        pending = await self._client.xpending_range(
            self.key, self.group, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else None

    def queue_ack(self, pipe: Any, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            pipe.xack(self.key, self.group, *entry_ids)

    async def dead_letter(self, entry_id: str, raw: bytes | str, reason: str, *, max_entries: int) -> None:
        """Move ``entry_id`` to the dead-letter stream (capped at about ``max_entries``) and ack it,
        in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(self.dead_letter_key, {"e": raw, "error": reason[:500], "entry": entry_id},
                  maxlen=max_entries, approximate=True)
        pipe.xack(self.key, self.group, entry_id)
        await pipe.execute()

    # ---- bounds ------------------------------------------------------------------------------------
    async def acknowledged_below(self) -> str | None:
        """The id below which every consumer group of the stream has acknowledged every entry: the
        lowest of each group's oldest pending entry, or, with nothing pending, the id just after its
        last delivered one. None without groups (nobody has read anything: nothing may go)."""
        groups = await self._client.xinfo_groups(self.key)
        if not groups:
            return None
        # Each group's bound: just after its last delivered entry (as read here: it only grows)...
        bounds: dict[str, tuple[int, int]] = {}
        for group in groups:
            ms, seq = _stream_id(group.get("last-delivered-id") or "0-0")
            bounds[as_text(group["name"])] = (ms, seq + 1)
        # ... or, while it has entries pending, its oldest pending one. One acknowledged between the
        # two reads has no oldest any more: its bound above still holds.
        pending = [as_text(g["name"]) for g in groups if int(g.get("pending") or 0) > 0]
        if pending:
            pipe = self._client.pipeline(transaction=False)
            for name in pending:
                pipe.xpending(self.key, name)
            for name, summary in zip(pending, await pipe.execute(), strict=True):
                if summary.get("min") is not None:
                    bounds[name] = _stream_id(summary["min"])
        ms, seq = min(bounds.values())
        return f"{ms}-{seq}"

    async def trim(self) -> int:
        """Drop the entries every consumer group has acknowledged (``XTRIM MINID``), never one a group
        has yet to read or to acknowledge; returns how many went.

        Safe without a lock: what every group acknowledged only grows, and new entries are newer."""
        minid = await self.acknowledged_below()
        if minid is None:
            return 0
        return int(await self._client.xtrim(self.key, minid=minid, approximate=False))


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (as_text(raw) or "0-0").partition("-")
    return int(ms), int(seq or 0)


__all__ = ["EventStream", "StreamEntry"]
