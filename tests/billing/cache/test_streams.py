"""The event stream's trim bound (``EventStream.acknowledged_below``) when a group acknowledges
between the two reads it is made of (``XINFO GROUPS``, then ``XPENDING``): seen on the cluster
variant of the Slack alert test as a ``ValueError`` out of the worker's trim."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from billing.cache.streams import EventStream
from tests.fixtures_redis import unlink_prefix


class AcksBetweenReads(Redis):
    """A real client; right after ``XINFO GROUPS`` answers, the group ``acker`` acknowledges everything
    it has pending (another worker finishing its batch at that moment)."""

    acker = ""

    async def xinfo_groups(self, name: Any) -> Any:
        groups = await super().xinfo_groups(name)
        if self.acker:
            pending = await self.xpending_range(name, self.acker, min="-", max="+", count=1000)
            if pending:
                await self.xack(name, self.acker, *[p["message_id"] for p in pending])
        return groups


@pytest.fixture
async def client(redis_url: str, key_prefix: str) -> AsyncIterator[AcksBetweenReads]:
    redis: AcksBetweenReads = AcksBetweenReads.from_url(redis_url)  # type: ignore[assignment]
    try:
        yield redis
    finally:
        await redis.aclose()
        await unlink_prefix(redis_url, key_prefix)


async def _read(client: Redis, key: str, group: str, count: int) -> list[Any]:
    reply: Any = await client.xreadgroup(group, "c1", {key: ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]]


async def test_a_group_acknowledging_between_the_reads_keeps_what_it_has_not_read(
    client: AcksBetweenReads, key_prefix: str
) -> None:
    stream = EventStream(client, f"{key_prefix}:events", f"{key_prefix}:events:dead", "workers")
    await stream.ensure_group()
    await client.xgroup_create(stream.key, "audit", id="0")
    ids = [await client.xadd(stream.key, {"e": f"{n}"}) for n in range(5)]
    assert await _read(client, stream.key, "workers", 2) == ids[:2]  # pending, 3 never read
    read = await _read(client, stream.key, "audit", 5)
    await client.xack(stream.key, "audit", *read)  # audit is done with all five

    client.acker = "workers"
    assert await stream.trim() == 2
    left: Any = await client.xrange(stream.key)
    assert [entry_id for entry_id, _ in left] == ids[2:]


async def test_the_only_group_acknowledging_between_the_reads_is_no_error(
    client: AcksBetweenReads, key_prefix: str
) -> None:
    stream = EventStream(client, f"{key_prefix}:events", f"{key_prefix}:events:dead", "workers")
    await stream.ensure_group()
    ids = [await client.xadd(stream.key, {"e": f"{n}"}) for n in range(3)]
    assert [e for e, _ in await stream.read_new("c1", count=3, block_ms=1)] == ids

    client.acker = "workers"
    assert await stream.trim() == 3
    assert await client.xlen(stream.key) == 0
