"""Open a Redis client from ``REDIS_URL``: ``redis://``, ``rediss://`` (single server or cluster) or
``memory://`` (fakeredis, in-process, for the demo and a first run without a server).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    BusyLoadingError,
    MaxConnectionsError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from billing.config import check_redis_url
from billing.errors import ConfigurationError, StoreUnavailableError

RedisClient = Redis | RedisCluster
"""Either client: the store only uses commands both support, keys of one customer share a slot."""

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)
"""What an unreachable Redis raises: the cluster client's "cannot be connected" is no RedisError."""


def as_text(value: Any) -> str:
    """A Redis reply as text: clients without ``decode_responses`` give bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)

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
    try:
        check_redis_url(url)
    except ValueError as err:  # a port out of range, a named database: one sentence, not a traceback
        raise ConfigurationError(f"{err}.") from None
    wants = _wants_cluster(url)
    plain_url = _without_cluster_param(url)
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
    except (RedisError, RedisClusterException, OSError) as exc:
        raise await _diagnose(exc, url) from exc


_CREDENTIALS_REFUSED = ("WRONGPASS", "NOAUTH", "invalid password", "invalid username-password")


async def _diagnose(exc: BaseException, url: str) -> ConfigurationError | StoreUnavailableError:
    """Why Redis did not answer: a server that answers but refuses us (password, database, TLS) is
    configuration, exit 2, named after REDIS_URL; only a server out of reach is unavailable, exit 3.
    Messages never quote the URL (it may hold the password)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 6379
    where = f"Redis at {host}:{port}"
    text = str(exc)
    refused = (AuthenticationError, AuthenticationWrongNumberOfArgsError, AuthorizationError)
    if isinstance(exc, refused) or any(marker in text for marker in _CREDENTIALS_REFUSED):
        return ConfigurationError(
            f"{where} refused the credentials in REDIS_URL (a wrong or missing password or user); "
            "fix the password in REDIS_URL."
        )
    if isinstance(exc, NoPermissionError):
        return ConfigurationError(f"The REDIS_URL user may not run a command Billing Lens needs on {where}; "
                                  "grant it read and write on its keys (+@all ~* for a dedicated user).")
    if "DB index is out of range" in text:
        return ConfigurationError(
            f"REDIS_URL names database {parts.path.strip('/') or '0'}, which {where} does not have; "
            "use a database such as /0."
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return ConfigurationError(
            f"REDIS_URL asks for TLS but the certificate of {where} is not trusted; give its CA with "
            "?ssl_ca_certs=/path/to/ca.pem in REDIS_URL."
        )
    if isinstance(exc, ResponseError):
        return ConfigurationError(f"{where} refused to set up the connection ({text[:80]}); check REDIS_URL.")
    protocol_failure = isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)) and not isinstance(
        exc, (BusyLoadingError, MaxConnectionsError)
    ) and "max number of clients" not in text
    if protocol_failure and await _accepts_connections(host, port):
        if parts.scheme == "rediss" and (isinstance(exc, RedisTimeoutError) or "SSL" in text):
            return ConfigurationError(
                f"REDIS_URL uses rediss:// (TLS) but {where} did not complete a TLS handshake; "
                "use redis:// for a server without TLS."
            )
        if parts.scheme == "redis" and isinstance(exc, RedisConnectionError):
            return ConfigurationError(
                f"{where} accepted the connection but closed it without a Redis answer; if the server "
                "requires TLS, use rediss:// in REDIS_URL."
            )
    if isinstance(exc, OSError):
        return StoreUnavailableError(f"Redis at {host} is not reachable ({exc.strerror or exc}).")
    return StoreUnavailableError(f"Redis at {host} is not reachable ({type(exc).__name__}).")


async def _accepts_connections(host: str, port: int) -> bool:
    """Whether a TCP connection to the server opens (the server is there, the conversation failed)."""
    try:
        async with asyncio.timeout(1.0):
            _reader, writer = await asyncio.open_connection(host, port)
    except OSError:  # TimeoutError included
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
