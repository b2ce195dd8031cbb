"""Fixtures that run the Stripe sandbox on a loopback port (owned by the sandbox work).

``sandbox`` (function scope) is reset to the demo dataset with no faults, webhooks, key rules or
logged requests; ``empty_sandbox`` is the same with no objects. Both share one server per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sandbox.control import SandboxControl
from sandbox.server import SandboxServer

TEST_KEY = "rk_test_sandboxBillingLens0001"
LIVE_KEY = "rk_live_sandboxBillingLens0001"


@dataclass(frozen=True)
class SandboxHandle:
    url: str
    control: SandboxControl
    api_key: str = TEST_KEY
    live_api_key: str = LIVE_KEY


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(dataset="demo") as server:
        yield server


@pytest.fixture(scope="session")
def _sandbox_control(sandbox_server: SandboxServer) -> Iterator[SandboxControl]:
    with SandboxControl(sandbox_server.url) as control:
        yield control


@pytest.fixture
def sandbox(sandbox_server: SandboxServer, _sandbox_control: SandboxControl) -> SandboxHandle:
    _sandbox_control.reset("demo")
    return SandboxHandle(sandbox_server.url, _sandbox_control)


@pytest.fixture
def empty_sandbox(sandbox_server: SandboxServer, _sandbox_control: SandboxControl) -> SandboxHandle:
    _sandbox_control.reset("empty")
    return SandboxHandle(sandbox_server.url, _sandbox_control)
