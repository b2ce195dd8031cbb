"""Stand-ins for a Stripe that is reachable but broken, over real loopback sockets.

``HangingStripe`` accepts every connection and never answers: what a test points ``STRIPE_API_BASE`` at
to show that a path does not wait on Stripe (it also records whether anything was sent at all). The
``hanging_stripe`` fixture (a plugin of ``tests/conftest.py``) runs one for a test.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest


class HangingStripe:
    """A TCP server that accepts every connection, reads what is sent and never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self.received = bytearray()
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._held.append(conn)  # held open, never answered
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            while chunk := conn.recv(65536):
                self.received += chunk
        except OSError:
            pass

    def __enter__(self) -> HangingStripe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._listener.close()


@pytest.fixture
def hanging_stripe() -> Iterator[HangingStripe]:
    with HangingStripe() as server:
        yield server
