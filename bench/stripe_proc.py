"""The Stripe sandbox in its own process, for benchmarks that need Stripe's latency and rate limit.

``StripeProcess`` runs ``sandbox.app`` under uvicorn in a spawned process (so the sandbox's own work
never shares a core or the GIL with the code measured), wrapped in a small ASGI layer that

- enforces a rate limit like Stripe's (a token bucket of ``rate`` requests/s, bursts up to ``rate``;
  a request over it is Stripe's 429 ``rate_limit`` error), off unless set;
- records when each ``/v1`` request started and ended, so a benchmark can count Stripe requests and
  the sequential round trips on a lookup's critical path.

Latency is the sandbox's own fault injection (``/_sandbox/faults``); data is loaded with
``SandboxControl.load``. Bench routes: ``GET|DELETE /_bench/requests``, ``POST /_bench/rate``.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from common import free_port

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_RATE_LIMITED = json.dumps({"error": {
    "type": "invalid_request_error", "code": "rate_limit",
    "message": "Request rate limit exceeded (bench rate limit of the sandbox).",
}}).encode()


class _Bench:
    """Rate limit and request timing around the sandbox app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.rate = 0.0
        self.tokens = 0.0
        self.updated = time.monotonic()
        self.log: list[tuple[float, float, str, int]] = []  # (start, end, path, status)

    def _admit(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    async def _json(self, send: Send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if path == "/_bench/requests":
            if scope["method"] == "DELETE":
                self.log.clear()
            await self._json(send, 200, json.dumps(self.log).encode())
            return
        if path == "/_bench/rate":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            self.rate = float(json.loads(body)["rate"])
            self.tokens, self.updated = self.rate, time.monotonic()
            await self._json(send, 200, b"{}")
            return
        if not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        if not self._admit():
            await self._json(send, 429, _RATE_LIMITED)
            self.log.append((started, time.monotonic(), path, 429))
            return
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, recording_send)
        self.log.append((started, time.monotonic(), path, status))


def _serve(port: int, dataset: str) -> None:
    import uvicorn

    from sandbox.app import build_app
    from sandbox.core import Sandbox

    sandbox = Sandbox()
    sandbox.reset(dataset)
    app = _Bench(build_app(sandbox))
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                  access_log=False, lifespan="off")).run()


@dataclass(frozen=True)
class Request:
    start: float
    end: float
    path: str
    status: int


def round_trips(requests: Sequence[Request]) -> int:
    """The most requests that ran one after another (each starting after the previous ended): the
    sequential round trips on the critical path, whatever ran concurrently beside them."""
    chain, last_end = 0, float("-inf")
    for request in sorted(requests, key=lambda r: r.end):
        if request.start >= last_end:
            chain, last_end = chain + 1, request.end
    return chain


def busy_seconds(requests: Sequence[Request]) -> float:
    """How long at least one request was in Stripe's hands (the union of their start-end spans): on a
    lookup's critical path, Stripe's own time including its processing, which the floor's round trips
    x latency leaves out."""
    total, end = 0.0, float("-inf")
    for request in sorted(requests, key=lambda r: r.start):
        if request.end > end:
            total += request.end - max(request.start, end)
            end = request.end
    return total


class StripeProcess:
    """``with StripeProcess() as stripe:`` the sandbox at ``stripe.url`` in another process."""

    def __init__(self, dataset: str = "demo") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(self.port, dataset), daemon=True
        )
        self._http = httpx.Client(base_url=self.url, timeout=120)

    def __enter__(self) -> StripeProcess:
        self._process.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self._http.get("/_sandbox/status")
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("the sandbox process did not start")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._http.close()
        self._process.terminate()
        self._process.join(10)

    def set_faults(self, **faults: Any) -> None:
        response = self._http.post("/_sandbox/faults", json=faults)
        response.raise_for_status()

    def set_rate(self, rate: float) -> None:
        """Requests/s the sandbox admits before answering 429 (0: no limit)."""
        self._http.post("/_bench/rate", json={"rate": rate}).raise_for_status()

    def clear_requests(self) -> None:
        self._http.delete("/_bench/requests").raise_for_status()

    def requests(self) -> list[Request]:
        return [Request(*row) for row in self._http.get("/_bench/requests").json()]

    def load(self, objects: list[dict[str, Any]]) -> None:
        for start in range(0, len(objects), 20_000):  # bounded request bodies
            response = self._http.post("/_sandbox/objects", json={"objects": objects[start:start + 20_000]})
            response.raise_for_status()
