"""Issue #9, item 3: ``GET /healthz`` of ``billing serve`` tells the truth.

Stripe is probed for real (a cheap request, remembered a few seconds, bounded in time), each
dependency's state and latency is reported, and the answer is 503 only when the process cannot do its
job: Redis down. Stripe down is "degraded" and still 200: cached cards and queued webhooks work.

Real parts: ``billing serve`` as a subprocess (the installed console script), a Stripe sandbox of its
own (this test stops it) and a private ``redis-server`` (this test stops it too).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.control import SandboxControl
from sandbox.server import SandboxServer
from tests.cluster import RedisServer, free_port
from tests.fixtures_sandbox import TEST_KEY

BILLING = Path(sys.executable).with_name("billing")
OUR_VARIABLES = ("STRIPE_", "BILLING_", "REDIS_", "SLACK_")
WITHIN_SECONDS = 20.0  # a state change shows within the probe's few seconds; generous for a loaded machine


@pytest.fixture
def own_sandbox() -> Iterator[SandboxServer]:
    """A sandbox this test may stop (the session's one is shared)."""
    server = SandboxServer(dataset="demo").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def served(own_sandbox: SandboxServer, private_redis: RedisServer, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    env.update({"STRIPE_API_KEY": TEST_KEY, "STRIPE_API_BASE": own_sandbox.url,
                "REDIS_URL": private_redis.url, "STRIPE_WEBHOOK_SECRET": "whsec_test",
                "BILLING_STRIPE_RETRIES": "0"})
    log_path = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([str(BILLING), "serve", "--port", str(port)], env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
        try:
            health = wait_for(url, lambda r, body: r.status_code == 200 and body["stripe"] == "ok",
                              process=process, log_path=log_path)
            assert health["status"] == "ok"
            yield url
        finally:
            process.terminate()
            process.wait(timeout=15)
    assert "Traceback" not in log_path.read_text()


def wait_for(url: str, condition: Callable[[httpx.Response, dict[str, Any]], bool], *,
             process: subprocess.Popen[bytes] | None = None, log_path: Path | None = None,
             ) -> dict[str, Any]:
    """Poll /healthz until ``condition`` holds; every answer must come back within 4 s."""
    deadline = time.monotonic() + WITHIN_SECONDS
    last: Any = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"billing serve exited: {log_path.read_text() if log_path else ''}")
        started = time.monotonic()
        try:
            response = httpx.get(f"{url}/healthz", timeout=10)
        except httpx.HTTPError as err:
            last = err
            time.sleep(0.1)
            continue
        assert time.monotonic() - started < 4.0, "a health check waited on a dependency"
        body: dict[str, Any] = response.json()
        last = (response.status_code, body)
        if condition(response, body):
            return body
        time.sleep(0.1)
    pytest.fail(f"/healthz never satisfied the condition; last answer: {last}")


def test_healthz_reports_each_dependency_and_follows_stripe_down_and_up(
    served: str, own_sandbox: SandboxServer, private_redis: RedisServer
) -> None:
    healthy = wait_for(served, lambda r, b: r.status_code == 200)
    for name in ("redis", "stripe"):
        detail = healthy["dependencies"][name]
        assert detail["state"] == "ok" and detail["latency_ms"] >= 0, healthy
    assert healthy["redis"] == "ok" and healthy["worker"] in {"ok", "starting"}

    # Stripe hangs: the probe gives up quickly, and serving goes on (200, degraded).
    control = SandboxControl(own_sandbox.url)
    control.set_faults(latency_ms=8_000)  # longer than any probe may wait, short enough to drain
    hung = wait_for(served, lambda r, b: b["stripe"] == "unavailable")
    assert hung["status"] == "degraded" and hung["ok"] is True
    assert hung["dependencies"]["stripe"]["latency_ms"] < 4000
    control.clear_faults()
    control.close()
    wait_for(served, lambda r, b: r.status_code == 200 and b["stripe"] == "ok" and b["status"] == "ok")

    # Stripe killed: never "ok" from a remembered answer.
    own_sandbox.stop()
    down = wait_for(served, lambda r, b: b["stripe"] == "unavailable")
    assert down["status"] == "degraded"
    response = httpx.get(f"{served}/healthz", timeout=10)
    assert response.status_code == 200

    # Redis down: the process cannot queue Stripe's events, so it is not healthy.
    private_redis.stop()
    failing = wait_for(served, lambda r, b: r.status_code == 503)
    assert failing["redis"] == "unavailable" and failing["ok"] is False
    assert failing["dependencies"]["redis"]["state"] == "unavailable"
