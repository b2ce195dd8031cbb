"""Run the sandbox: in a daemon thread for tests (``SandboxServer``) or blocking (``serve``)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import httpx
import uvicorn

from sandbox.app import build_app
from sandbox.core import Sandbox


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _config(sandbox: Sandbox, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        build_app(sandbox), host=host, port=port, log_level="warning", access_log=False, lifespan="off"
    )


class SandboxServer:
    """A sandbox on a loopback port in a daemon thread; ``start`` returns once it answers."""

    def __init__(self, dataset: str = "demo", host: str = "127.0.0.1", port: int = 0) -> None:
        self.sandbox = Sandbox()
        self.sandbox.reset(dataset)
        self.host = host
        self.port = port or _free_port(host)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> SandboxServer:
        self._server = uvicorn.Server(_config(self.sandbox, self.host, self.port))
        self._thread = threading.Thread(target=self._server.run, name="stripe-sandbox", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/_sandbox/status", timeout=1.0)
                return self
            except httpx.TransportError:
                if not self._thread.is_alive():
                    break
                time.sleep(0.02)
        raise RuntimeError(f"The Stripe sandbox did not start on {self.url}.")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(host: str = "127.0.0.1", port: int = 12111, dataset: str = "demo") -> None:
    """Serve until interrupted (``billing sandbox``, ``python -m sandbox``)."""
    sandbox = Sandbox()
    sandbox.reset(dataset)
    uvicorn.Server(_config(sandbox, host, port)).run()
