"""Fixtures for a real Redis server and a private key prefix (owned by the store work).

- ``redis_url``: the shared server (``REDIS_URL`` or redis://127.0.0.1:6379/0); tests only touch keys
  under their own ``key_prefix`` and unlink them afterwards, never FLUSHDB.
- ``redis_cluster``: a local 3-master Redis Cluster for the session.
- ``any_redis_url``: parametrised over ``single`` and ``cluster``.
- ``store``: a RedisStore on ``any_redis_url`` with a unique prefix, cleaned up after the test.
- ``private_redis``: an own ``redis-server`` on a free port that a test may stop and start.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.ports import Tenant
from tests.cluster import RedisCluster, RedisServer

TEST_TENANT = Tenant(account_id="acct_test123", livemode=False)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def any_redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return redis_url


@pytest.fixture
def key_prefix() -> str:
    return f"bltest{uuid.uuid4().hex[:10]}"


async def unlink_prefix(url: str, prefix: str) -> None:
    """Unlink every key under ``prefix`` (and only those), on a single server or every cluster node."""
    client = await open_redis(url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
        for key in batch:  # one by one: keys of a cluster live in different slots
            await client.unlink(key)
    finally:
        await client.aclose()


@pytest.fixture
async def store(any_redis_url: str, key_prefix: str) -> AsyncIterator[RedisStore]:
    client = await open_redis(any_redis_url)
    store = RedisStore(client, TEST_TENANT, prefix=key_prefix)
    try:
        yield store
    finally:
        await client.aclose()
        await unlink_prefix(any_redis_url, key_prefix)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    # Durable like a production server, so a restart keeps what was acknowledged.
    durable = ("--appendonly", "yes", "--appendfsync", "always")
    server = RedisServer(tmp_path / "private-redis", extra_args=durable)
    server.start()
    try:
        yield server
    finally:
        server.stop()
