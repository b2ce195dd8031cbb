"""Events (what every mutation records), webhook signing and delivery to registered endpoints."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from sandbox.errors import StripeError
from sandbox.state import Obj, Store

# The API version of stripe-python 16.x, which renders these shapes (a sandbox imports none of the SDK).
API_VERSION = "2026-10-28.endive"


class EventLog:
    """Creates Event objects in the store.

    Ids are sequential within a reset, under a token that changes at every reset: a consumer that
    dedupes on ``event.id`` (as Billing Lens does for 7 days) must not mistake a new world's events
    for ones it has already seen.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.counter = 0
        self.generation = secrets.token_hex(3)

    def reset(self) -> None:
        self.counter = 0
        self.generation = secrets.token_hex(3)

    def emit(self, event_type: str, obj: Obj, previous: Obj | None = None) -> Obj:
        self.counter += 1
        data: Obj = {"object": self.store.render(obj)}
        if previous is not None:
            data["previous_attributes"] = copy.deepcopy(previous)
        event: Obj = {
            "id": f"evt_1Sbx{self.generation}{self.counter:012d}",
            "object": "event",
            "api_version": API_VERSION,
            "created": self.store.clock.now(),
            "data": data,
            "livemode": bool(self.store.livemode_of(obj)),
            "pending_webhooks": 0,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        return self.store.put(event)


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header: ``t=<unix>,v1=<hmac-sha256 of "{t}.{body}">``."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass
class Endpoint:
    id: str
    url: str
    secret: str
    livemode: bool | None = None  # None: events of both modes


@dataclass
class Attempt:
    event_id: str
    endpoint_id: str
    url: str
    status: int | None
    ok: bool
    error: str | None
    at: float


@dataclass
class Webhooks:
    """Registered endpoints, delivery mode and every delivery attempt's result."""

    store: Store
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    mode: str = "sync"
    timeout: float = 10.0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _counter: int = 0

    def reset(self) -> None:
        self.endpoints.clear()
        self.attempts.clear()
        self.mode = "sync"

    def register(self, url: str, secret: str | None, livemode: bool | None) -> Endpoint:
        if not url.startswith(("http://", "https://")):
            raise StripeError(
                400, f"Invalid webhook url {url!r}: use an http:// or https:// URL.", param="url"
            )
        if secret is not None and not secret.startswith("whsec_"):
            raise StripeError(400, "A webhook secret must start with 'whsec_'.", param="secret")
        self._counter += 1
        endpoint = Endpoint(
            id=f"we_sandbox{self._counter:06d}",
            url=url,
            secret=secret or f"whsec_{secrets.token_hex(16)}",
            livemode=livemode,
        )
        self.endpoints[endpoint.id] = endpoint
        return endpoint

    def set_mode(self, mode: str) -> None:
        if mode not in ("sync", "background"):
            raise StripeError(
                400, f"Unknown delivery mode {mode!r}; accepted: sync, background.", param="mode"
            )
        self.mode = mode

    def targets(self, event: Obj, endpoint_id: str | None = None) -> list[Endpoint]:
        if endpoint_id is not None:
            if endpoint_id not in self.endpoints:
                raise StripeError(404, f"No such webhook endpoint: '{endpoint_id}'", code="resource_missing")
            return [self.endpoints[endpoint_id]]
        return [e for e in self.endpoints.values() if e.livemode is None or e.livemode == event["livemode"]]

    def results(self, event_id: str | None = None) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.attempts if event_id is None or a.event_id == event_id]

    def failed_event_ids(self) -> list[tuple[str, str]]:
        """(event id, endpoint id) pairs whose latest attempt failed, oldest first."""
        latest: dict[tuple[str, str], Attempt] = {}
        for attempt in self.attempts:
            latest[(attempt.event_id, attempt.endpoint_id)] = attempt
        return [pair for pair, attempt in latest.items() if not attempt.ok]

    async def dispatch(self, jobs: list[tuple[Obj, Endpoint]], timestamp: int | None = None) -> None:
        """Deliver in order; in background mode the caller does not wait."""
        if not jobs:
            return
        if self.mode == "background":
            task = asyncio.get_running_loop().create_task(self._deliver_all(jobs, timestamp))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        await self._deliver_all(jobs, timestamp)

    async def _deliver_all(self, jobs: list[tuple[Obj, Endpoint]], timestamp: int | None) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for event, endpoint in jobs:
                await self._deliver(client, event, endpoint, timestamp)

    async def _deliver(
        self, client: httpx.AsyncClient, event: Obj, endpoint: Endpoint, timestamp: int | None
    ) -> None:
        payload = json.dumps(event, indent=2).encode()
        header = sign(payload, endpoint.secret, timestamp if timestamp is not None else int(time.time()))
        status: int | None = None
        error: str | None = None
        try:
            response = await client.post(
                endpoint.url,
                content=payload,
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": header,
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                },
            )
            status = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        ok = status is not None and 200 <= status < 300
        self.attempts.append(Attempt(event["id"], endpoint.id, endpoint.url, status, ok, error, time.time()))
