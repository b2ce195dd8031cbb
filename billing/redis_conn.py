"""Open a Redis client from ``REDIS_URL``: ``redis://``, ``rediss://`` (single server or cluster) or
``memory://`` (fakeredis, in-process, for the demo and a first run without a server).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from billing.errors import ConfigurationError, StoreUnavailableError

RedisClient = Redis | RedisCluster
"""Either client: the store only uses commands both support, keys of one customer share a slot."""

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)
"""What an unreachable Redis raises: the cluster client's "cannot be connected" is no RedisError."""

# One in-process server per name, so the webhook endpoint and an in-process worker share data.
_MEMORY_SERVERS: dict[str, Any] = {}

_TIMEOUTS: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}


def _memory_client(name: str) -> Redis:
    import fakeredis  # imported lazily: only the demo and first runs use it

    server = _MEMORY_SERVERS.get(name)
    if server is None:
        server = _MEMORY_SERVERS[name] = fakeredis.FakeServer()
    client: Redis = fakeredis.FakeAsyncRedis(server=server, decode_responses=False)
    return client


def _wants_cluster(url: str) -> bool | None:
    values = parse_qs(urlsplit(url).query).get("cluster")
    if not values:
        return None
    return values[-1].lower() in {"1", "true", "yes"}


def _without_cluster_param(url: str) -> str:
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("cluster="))
    return parts._replace(query=query).geturl()


async def open_redis(url: str) -> RedisClient:
    """A connected client. A server with ``cluster_enabled:1`` gets a cluster client automatically;
    ``?cluster=true|false`` in the URL skips the detection.

    Raises ConfigurationError for an unsupported URL, StoreUnavailableError when no server answers.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return _memory_client(urlsplit(url).netloc or "default")
    if scheme not in {"redis", "rediss"}:
        raise ConfigurationError(
            f"REDIS_URL has scheme {scheme or '(none)'!r}; use redis://, rediss:// or memory://."
        )
    wants = _wants_cluster(url)
    plain_url = _without_cluster_param(url)
    host = urlsplit(url).hostname or "localhost"
    try:
        if wants is None:
            probe: Redis = Redis.from_url(plain_url, **_TIMEOUTS)
            try:
                info = await probe.info("cluster")
            finally:
                await probe.aclose()
            wants = bool(info.get("cluster_enabled"))
        if wants:
            cluster: RedisCluster = RedisCluster.from_url(plain_url, **_TIMEOUTS)
            await cluster.initialize()
            return cluster
        client: Redis = Redis.from_url(plain_url, **_TIMEOUTS)
        await client.ping()
        return client
    except (RedisError, RedisClusterException) as exc:
        raise StoreUnavailableError(f"Redis at {host} is not reachable ({type(exc).__name__}).") from exc
    except OSError as exc:
        raise StoreUnavailableError(f"Redis at {host} is not reachable ({exc.strerror or exc}).") from exc
