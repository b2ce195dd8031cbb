"""``billing serve`` as a subprocess (the installed console script), shared by the end-to-end tests.

``served`` runs it on a single Redis and on the suite's local cluster; a test needing other settings
(Slack, say) opens ``running_serve`` itself with them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from billing.cache.connections import open_redis
from tests.cluster import free_port
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle

BILLING = Path(sys.executable).with_name("billing")  # the console script of the project's venv
OUR_VARIABLES = ("STRIPE_", "BILLING_", "REDIS_", "SLACK_")


def product_env(sandbox: SandboxHandle, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """The process environment without any of our settings from the outer shell, plus these."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    return {
        **base,
        "STRIPE_API_KEY": sandbox.api_key, "STRIPE_API_BASE": sandbox.url, "REDIS_URL": redis_url,
        "BILLING_KEY_PREFIX": prefix, "BILLING_STRIPE_RETRIES": "1", **extra,
    }


def wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"billing serve exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"billing serve did not become healthy:\n{log_path.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class Served:
    """A running ``billing serve`` and the means to run other ``billing`` commands beside it."""

    url: str
    env: dict[str, str]
    log_path: Path

    def billing(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BILLING), *args], env=self.env, capture_output=True, text=True,
                              timeout=60, check=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def _keys_under(url: str, prefix: str) -> list[bytes]:
    client = await open_redis(url)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    finally:
        await client.aclose()


@contextmanager
def running_serve(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str, log_path: Path, **extra_env: str
) -> Iterator[Served]:
    """``billing serve`` with ``extra_env``, healthy and its webhook endpoint registered in the sandbox;
    afterwards the process is stopped and the keys under ``key_prefix`` (only those) are unlinked."""
    secret = f"whsec_{secrets.token_hex(16)}"
    env = product_env(sandbox, redis_url, key_prefix, STRIPE_WEBHOOK_SECRET=secret, **extra_env)
    url = f"http://127.0.0.1:{free_port()}"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([str(BILLING), "serve", "--port", url.rsplit(":", 1)[1]], env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_healthy(url, process, log_path)
            sandbox.control.register_webhook(f"{url}/stripe/webhook", secret)
            yield Served(url, env, log_path)
        finally:
            stop(process)
            asyncio.run(unlink_prefix(redis_url, key_prefix))
    assert asyncio.run(_keys_under(redis_url, key_prefix)) == []


@pytest.fixture
def served(sandbox: SandboxHandle, any_redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Served]:
    """``billing serve`` on a single Redis and on the local cluster."""
    with running_serve(sandbox, any_redis_url, key_prefix, tmp_path / "serve.log") as running:
        yield running
